"""Language-model tensors: the few operations every step of the paper is written in.

Conventions used everywhere (docs/ppo_checklist.md, "Tokens and masks"):
  * prompts are LEFT-padded, responses RIGHT-padded, so a joined sequence is
    [pad .. pad | prompt | response | pad .. pad] and every row's prompt ends at the same
    column P. Masks come from lengths, never from `ids != pad`.
  * position ids = cumsum(attention_mask) - 1 in every forward written here.
  * the response mask is 1.0 up to and including the first EOS, 0.0 after.
  * sampling is exactly softmax(logits / T): no top-k, no top-p (transformers' `generate`
    defaults to top_k=50 from a model's generation_config, a classic source of PPO ratio bugs).

Shapes: prompts [B, P], responses [B, R], logits [B, R, V], per-token values [B, R].
This file imports only torch. The two hooks for sharded models (`run_as_root_forward`,
`all_ranks_done`) are named where they are used; plumbing/fsdp.py installs them.
"""
from __future__ import annotations

import contextlib

import torch


def autocast(device: torch.device):
    """bf16 autocast on GPUs that support it, plain float32 on CPU."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- padding and masks

def left_pad(seqs, pad_id: int, device=None):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s):] = torch.tensor(s)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def right_pad(seqs, pad_id: int, device=None):
    width = max(max(len(s) for s in seqs), 1)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.float32)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1.0
    return ids.to(device), mask.to(device)


def response_mask(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1.0 up to and including the first EOS, 0.0 after; all ones if a row has no EOS."""
    is_eos = (ids == eos_id).long()
    eos_before = is_eos.cumsum(-1) - is_eos  # EOS tokens strictly before t
    return (eos_before == 0).float()


def join(prompt_ids, prompt_mask, resp_ids, resp_mask):
    """[left-padded prompt | right-padded response] -> ids, attention mask, position ids."""
    ids = torch.cat([prompt_ids, resp_ids], 1)
    attn = torch.cat([prompt_mask.long(), resp_mask.long()], 1)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids, attn, pos


def encode_responses(tokenizer, texts, max_len: int) -> list[list[int]]:
    """Response text -> ids + EOS, cut at `max_len` tokens (then it has no EOS, as a
    sampled response that ran out of room)."""
    return [(tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])[:max_len] for t in texts]


def decode_responses(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    out = []
    for row, m in zip(ids.tolist(), mask.sum(-1).long().tolist()):
        row = row[:m]
        if row and row[-1] == tokenizer.eos_token_id:
            row = row[:-1]
        out.append(tokenizer.decode(row))
    return out


# ----------------------------------------------------------------------------- forwards

def response_logits(model, prompt_ids, prompt_mask, resp_ids, resp_mask) -> torch.Tensor:
    """Logits that predict each response token: [B, R, V] (position P-1+t predicts token t).
    Always the model's own forward, so whatever it does after its LM head is applied (Gemma-2's
    final_logit_softcapping, Cohere's and Granite's logit scaling): a log-prob taken from the
    head alone would describe another distribution than the one sampled and trained.
    Without gradients (sampling, rollouts, judging) the forward keeps those R positions only
    (`logits_to_keep` as an index tensor): with a real vocabulary, logits for the prompt too
    would be most of the memory ([B, P+R, V] floats); the values are bitwise the same. Training
    forwards keep the full head: slicing changes the float summation order of the backward
    pass, and with it every number of the runs reported in README.md and RESULTS.md (use
    --micro-batch to bound their memory)."""
    ids, attn, pos = join(prompt_ids, prompt_mask, resp_ids, resp_mask)
    P, R = prompt_ids.shape[1], resp_ids.shape[1]
    if torch.is_grad_enabled():
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits
        return logits[:, P - 1:P - 1 + R].float()
    keep = torch.arange(P - 1, P - 1 + R, device=ids.device)
    out = model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, logits_to_keep=keep)
    return out.logits.float()


def next_token_logits(model, prompt_ids, prompt_mask) -> torch.Tensor:
    """Logits for the token after each left-padded prompt: [B, V], the LM head on the last
    position only (positions as in `join`)."""
    ids, attn, pos = join(prompt_ids, prompt_mask, prompt_ids[:, :0], prompt_mask[:, :0])  # no response
    return model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False, logits_to_keep=1).logits[:, -1]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) at the chosen tokens; the same T as the sampler (checklist 3)."""
    return torch.log_softmax(logits / temperature, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits / temperature, -1)
    return -(logp.exp() * logp).sum(-1)


def backbone(model):
    """The transformer without its head (`model.model` for Llama): final-layer hidden states."""
    return getattr(model, model.base_model_prefix)


def as_one_forward(model, fn):
    """fn(), which calls the backbone and the head separately, run as one forward of the whole
    model. Under --fsdp the model carries `run_as_root_forward` (plumbing/fsdp.py), which gathers
    the root unit's weights (embeddings, final norm, heads) for fn; otherwise it is just fn()."""
    run = getattr(model, "run_as_root_forward", None)
    return run(fn) if run is not None else fn()


def _last_token_hidden(model, prompt_ids, prompt_mask, resp_ids, resp_mask) -> torch.Tensor:
    ids, attn, pos = join(prompt_ids, prompt_mask, resp_ids, resp_mask)
    hidden = backbone(model)(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).last_hidden_state
    last = prompt_ids.shape[1] + resp_mask.sum(-1).long() - 1
    return hidden[torch.arange(len(ids), device=ids.device), last]


def last_token_hidden(model, prompt_ids, prompt_mask, resp_ids, resp_mask) -> torch.Tensor:
    """Final-layer hidden state of the last real token of prompt+response: [B, H]."""
    return as_one_forward(model, lambda: _last_token_hidden(model, prompt_ids, prompt_mask, resp_ids, resp_mask))


def score_head(model, hidden: torch.Tensor) -> torch.Tensor:
    """The scalar head of a reward or value model, in float32 whatever the backbone computed in:
    under bf16 (autocast, or FSDP's bf16 policy, where plumbing/fsdp.py makes the head a float32
    unit of its own) a raw score of a few dozen would be rounded to steps of 0.25."""
    with torch.autocast(hidden.device.type, enabled=False):
        return model.score(hidden.float()).squeeze(-1)


def head_score(model, hidden: torch.Tensor) -> torch.Tensor:
    """Scalar score from a hidden state, with the RM's stored normalisation
    (checklist 7: scores on SFT samples have mean 0, std 1)."""
    raw = score_head(model, hidden)
    mean = getattr(model.config, "score_mean", 0.0)
    std = getattr(model.config, "score_std", 1.0)
    return (raw - mean) / std


def sequence_scores(model, prompt_ids, prompt_mask, resp_ids, resp_mask) -> torch.Tensor:
    """Reward model r(x, y): the score head on the last real token of prompt+response (Step 2)."""
    return as_one_forward(model, lambda: head_score(model, _last_token_hidden(model, prompt_ids, prompt_mask,
                                                                              resp_ids, resp_mask)))


def token_values(model, prompt_ids, prompt_mask, resp_ids, resp_mask) -> torch.Tensor:
    """V_t for every response token, read at the hidden state that predicts token t
    (the same positions as `response_logits`, checklist 10): [B, R]."""
    ids, attn, pos = join(prompt_ids, prompt_mask, resp_ids, resp_mask)
    P, R = prompt_ids.shape[1], resp_ids.shape[1]

    def values():  # backbone and head: one forward under --fsdp
        out = backbone(model)(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False)
        return score_head(model, out.last_hidden_state[:, P - 1:P - 1 + R])
    return as_one_forward(model, values)


# ----------------------------------------------------------------------------- sampling

def all_rows_done(done: torch.Tensor) -> bool:
    return bool(done.all())


@torch.no_grad()
def sample(model, prompt_ids, prompt_mask, max_new_tokens: int, temperature: float, eos_id: int, pad_id: int,
           generator: torch.Generator | None = None):
    """Batched sampling with a KV cache from exactly softmax(logits / T) (T = 0: greedy).
    Returns response ids [B, R] (pad after the first EOS), their log-probs under the
    same temperature, and the response mask. Decoding stops when every row has ended; under
    --fsdp, where every forward is a collective, when every rank's rows have (the model then
    carries `all_ranks_done`, plumbing/fsdp.py)."""
    device = prompt_ids.device
    B = prompt_ids.shape[0]
    finished = getattr(model, "all_ranks_done", all_rows_done)
    # under --fsdp the whole model is gathered once for the decode, not at every step (plumbing/fsdp.py)
    with getattr(model, "gathered_for_decoding", contextlib.nullcontext)():
        tokens, logps = _decode(model, prompt_ids, prompt_mask, max_new_tokens, temperature, eos_id, pad_id,
                                generator, finished)
    ids = torch.stack(tokens, 1)
    mask = response_mask(ids, eos_id)
    width = int(mask.sum(-1).max())  # under --fsdp, steps after this rank's rows all ended: dropped
    return ids[:, :width], (torch.stack(logps, 1) * mask)[:, :width], mask[:, :width]


def _decode(model, prompt_ids, prompt_mask, max_new_tokens: int, temperature: float, eos_id: int, pad_id: int,
            generator, finished) -> tuple[list, list]:
    """`sample`'s loop: the prompt's forward, then one cached forward per new token."""
    device = prompt_ids.device
    B = prompt_ids.shape[0]
    attn = prompt_mask.long()
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=prompt_ids, attention_mask=attn, position_ids=pos, use_cache=True, logits_to_keep=1)
    # `cache` (in and out) is the KV cache's name since transformers 5.x deprecated `past_key_values`
    cache, logits = out.cache, out.logits[:, -1].float()
    next_pos = pos[:, -1:] + 1
    done = torch.zeros(B, dtype=torch.bool, device=device)
    tokens, logps = [], []
    for _ in range(max_new_tokens):
        if temperature > 0:
            probs = torch.softmax(logits / temperature, -1)
            tok = torch.multinomial(probs.to(generator.device if generator else device), 1,
                                    generator=generator).to(device).squeeze(-1)
            logp = token_logprobs(logits, tok, temperature)
        else:
            tok = logits.argmax(-1)
            logp = torch.zeros(B, device=device)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        logps.append(torch.where(done, torch.zeros_like(logp), logp))
        done |= tok == eos_id
        if finished(done):
            break
        attn = torch.cat([attn, torch.ones(B, 1, dtype=attn.dtype, device=device)], 1)
        out = model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos, cache=cache, use_cache=True)
        cache, logits = out.cache, out.logits[:, -1].float()
        next_pos = next_pos + 1
    return tokens, logps
