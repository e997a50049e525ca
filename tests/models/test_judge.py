"""The LM judge (RLAIF baseline): option log-probabilities against a slow full-forward loop, and
the both-orders rule with stubbed judges."""
import pytest
import torch

from extras import judge
from plumbing import models


@pytest.fixture(scope="module")
def tok():
    return models.build_char_tokenizer()


@pytest.fixture(scope="module")
def policy(tok):
    return models.new_tiny_llama(tok, 32, 2, 2, 64, seed=0).eval()


# the char tokenizer makes " A" two tokens and "A" one: options of several tokens, of one, and mixed
@pytest.mark.parametrize("options", [judge.OPTIONS, ("A", "B"), ("A", " B")])
@pytest.mark.parametrize("batch_size", [1, 2])
def test_option_logprobs_match_a_full_forward(tok, policy, options, batch_size):
    prompts = ["Add 1 2 = A or B? Response", "Sort 3 1 2 =", "Add 9 ="]
    got = judge.option_logprobs(policy, tok, prompts, options=options, batch_size=batch_size)
    for i, p in enumerate(prompts):
        for k, opt in enumerate(options):
            p_ids, o_ids = tok(p).input_ids, tok(opt, add_special_tokens=False).input_ids
            ids = torch.tensor([p_ids + o_ids])
            with torch.no_grad():
                logp = torch.log_softmax(policy(ids).logits[0].float(), -1)
            want = sum(logp[len(p_ids) - 1 + t, o].item() for t, o in enumerate(o_ids))
            assert got[i, k].item() == pytest.approx(want, abs=1e-4)


def test_both_orders_must_agree(monkeypatch, tok, policy):
    recs = [{"instruction": "Add", "input": "1 2"}] * 3
    first, second = ["3", "12", "x"], ["33", "3", "yy"]

    def always_a(model, tokenizer, prompts, options=judge.OPTIONS, batch_size=64, **kw):  # pure position bias
        return torch.tensor([[0.0, -1.0]] * len(prompts))
    monkeypatch.setattr(judge, "option_logprobs", always_a)
    assert judge.judge_pairs(policy, tok, recs, first, second) == [0, 0, 0]

    def shorter_wins(model, tokenizer, prompts, options=judge.OPTIONS, batch_size=64, **kw):
        out = []
        for p in prompts:
            a = p.split("Response A: ")[1].split("\n")[0]
            b = p.split("Response B: ")[1].split("\n")[0]
            out.append([-len(a), -len(b)])
        return torch.tensor(out, dtype=torch.float32)
    monkeypatch.setattr(judge, "option_logprobs", shorter_wins)
    assert judge.judge_pairs(policy, tok, recs, first, second) == [1, 2, 1]
