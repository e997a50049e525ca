"""A language model as a pairwise judge: shown an instruction and two responses, which does it
prefer? The RLAIF baseline of the paper's Table 5 asks the policy itself.

The judge reads a fixed question (inside its chat template, when its tokenizer has one) and the
start of an answer, "The better response is Response"; we compare the log-probabilities it gives
to the continuations " A" and " B" (no sampling). `eval` uses the same judge, with an
instruction-tuned model, to compare a policy's answers with reference answers (--eval-judge lm). Each pair is asked
in both orders, to cancel position bias: a preference counts only when both orders agree, and
a disagreement is a tie (0). A small model that cannot judge gives mostly ties or coin flips;
that is a finding, not a bug.
"""
from __future__ import annotations

import torch

import lm
from plumbing import dist, models

JUDGE_QUESTION = "Which response follows the instruction better?\n\nInstruction: {instruction}\n{input}\n" \
                 "Response A: {a}\nResponse B: {b}"
JUDGE_ANSWER = "The better response is Response"
OPTIONS = (" A", " B")


def judge_prompt(tokenizer, record: dict, a: str, b: str) -> str:
    """The question, with the "Input:" line only when the record has an input; inside the
    judge's chat template (one user turn, then the start of the assistant's answer) when its
    tokenizer has one, else as plain text."""
    question = JUDGE_QUESTION.format(instruction=record["instruction"], a=a, b=b,
                                     input=f"Input: {record['input']}\n" if record.get("input") else "")
    if models.has_chat_template(tokenizer):
        return models.chat_prompt(tokenizer, question) + JUDGE_ANSWER
    return question + "\n\n" + JUDGE_ANSWER


@torch.no_grad()
def option_logprobs(model, tokenizer, prompts: list[str], options=OPTIONS, batch_size: int = 64,
                    add_special_tokens: bool = True) -> torch.Tensor:
    """[len(prompts), len(options)]: log p(option | prompt), summed over the option's tokens.
    Options of one token (" A" and " B" for most real tokenizers) all come from one forward over
    the prompts; an option of several tokens (the built-in char tokenizer's " A") takes a forward
    over prompt + option. add_special_tokens=False for prompts that a chat template wrote (it has
    its own BOS)."""
    device = next(model.parameters()).device
    model.eval()
    p_ids = [tokenizer(p, add_special_tokens=add_special_tokens).input_ids for p in prompts]
    o_ids = [tokenizer(o, add_special_tokens=False).input_ids for o in options]
    single = [k for k, opt in enumerate(o_ids) if len(opt) == 1]
    out = torch.zeros(len(prompts), len(options))
    for i in range(0, len(p_ids), batch_size):
        ids, mask = lm.left_pad(p_ids[i:i + batch_size], tokenizer.pad_token_id, device)
        rows = slice(i, i + len(ids))
        if single:
            with lm.autocast(device):
                logits = lm.next_token_logits(model, ids, mask)
            logp = torch.log_softmax(logits.float(), -1)
            out[rows, single] = logp[:, [o_ids[k][0] for k in single]].cpu()
        for k, opt in enumerate(o_ids):
            if len(opt) > 1:
                r_ids, r_mask = lm.right_pad([opt] * len(ids), tokenizer.pad_token_id, device)
                with lm.autocast(device):
                    logits = lm.response_logits(model, ids, mask, r_ids, r_mask)
                out[rows, k] = (lm.token_logprobs(logits.float(), r_ids, 1.0) * r_mask).sum(-1).cpu()
    return out


def judge_pairs(model, tokenizer, records: list[dict], first: list[str], second: list[str],
                batch_size: int = 64) -> list[int]:
    """For each (record, first, second): 1 if the judge prefers `first` in both orders, 2 if it
    prefers `second` in both, 0 if the two orders disagree. With several processes each judges
    its shard and every rank gets all the labels."""
    idx = dist.shard(list(range(len(records))))
    prompts = []
    for i in idx:
        prompts.append(judge_prompt(tokenizer, records[i], first[i], second[i]))
        prompts.append(judge_prompt(tokenizer, records[i], second[i], first[i]))
    lp = option_logprobs(model, tokenizer, prompts, batch_size=batch_size,
                         add_special_tokens=not models.has_chat_template(tokenizer))
    labels = []
    for j in range(len(idx)):
        first_wins_ab = lp[2 * j, 0] > lp[2 * j, 1]  # asked as (A = first, B = second)
        first_wins_ba = lp[2 * j + 1, 1] > lp[2 * j + 1, 0]  # asked as (A = second, B = first)
        labels.append(1 if first_wins_ab and first_wins_ba else 2 if not (first_wins_ab or first_wins_ba) else 0)
    return dist.gather(labels)
