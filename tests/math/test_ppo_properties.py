"""Properties of the PPO pipeline on a tiny random Llama (docs/ppo_checklist.md 1-5, 9-10):
sampled log-probs = recomputed log-probs, ratio = 1 and KL = 0 when policy = reference,
the score on the last valid token, the response mask, and left padding that changes nothing.
"""
import copy
import random

import pytest
import torch
from transformers import LlamaForSequenceClassification

from plumbing import models
import ppo
import tiny_models
import lm

MAX_RESPONSE = 8  # response tokens of a test rollout

torch.set_num_threads(1)  # tiny tensors: on a shared 2-core box extra threads only cost time

TEXTS = ["Add 12 7 =", "Sort 3 9 1 4 =", "Reverse abc =", "Subtract 31 12 ="]  # different lengths


@pytest.fixture(scope="module")
def tok():
    return models.build_char_tokenizer()


@pytest.fixture(scope="module")
def policy(tok):
    return models.new_tiny_llama(tok, hidden=32, layers=2, heads=2, max_len=64, seed=0).eval()


def prompt_ids(tok):
    ids = [tok(t).input_ids for t in TEXTS]
    assert len({len(i) for i in ids}) == len(ids)  # really different lengths, so there is left padding
    return ids


def eos_biased(model, eos_id: int, bias: float = 3.0):
    """A copy whose EOS logit is raised by `bias` in every forward (sampling and recomputation
    alike), so that sampled responses end at different lengths and the masks are exercised."""
    m = copy.deepcopy(model)

    def hook(_module, _inputs, out):
        out = out.clone()
        out[..., eos_id] += bias
        return out

    m.lm_head.register_forward_hook(hook)
    return m


def scorer_from(policy, seed: int) -> LlamaForSequenceClassification:
    cfg = copy.deepcopy(policy.config)
    cfg.num_labels = 1
    torch.manual_seed(seed)
    m = LlamaForSequenceClassification(cfg)
    m.config.pad_token_id = cfg.pad_token_id
    torch.nn.init.normal_(m.score.weight, std=0.5)  # scores of a visible size
    return m.eval()


# ----------------------------------------------------------------------------- (a) sampled = recomputed

@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sample_logprobs_equal_recomputed(tok, policy, temperature):
    model = eos_biased(policy, tok.eos_token_id)
    p_ids, p_mask = lm.left_pad(prompt_ids(tok) * 2, tok.pad_token_id)
    g = torch.Generator().manual_seed(1)
    r_ids, gen_lp, mask = lm.sample(model, p_ids, p_mask, 12, temperature, tok.eos_token_id, tok.pad_token_id, g)
    lengths = mask.sum(-1)
    assert len(set(lengths.tolist())) > 1, "the test needs responses of different lengths"
    with torch.no_grad():
        lp = lm.token_logprobs(lm.response_logits(model, p_ids, p_mask, r_ids, mask), r_ids, temperature)
    torch.testing.assert_close(gen_lp, lp * mask, atol=1e-5, rtol=0)
    assert torch.all(gen_lp[mask == 0] == 0)
    assert torch.all(gen_lp[mask == 1] < 0)
    # after the first EOS, only pad
    for row, m in zip(r_ids.tolist(), mask.long().tolist()):
        L = sum(m)
        assert all(t == tok.pad_token_id for t in row[L:])
        assert tok.eos_token_id not in row[:L - 1]


def test_sample_logprobs_equal_each_prompt_alone(tok, policy):
    """The batched, left-padded sample scores each response as the prompt alone would."""
    model = eos_biased(policy, tok.eos_token_id)
    prompts = prompt_ids(tok)
    p_ids, p_mask = lm.left_pad(prompts, tok.pad_token_id)
    g = torch.Generator().manual_seed(2)
    r_ids, gen_lp, mask = lm.sample(model, p_ids, p_mask, 10, 1.0, tok.eos_token_id, tok.pad_token_id, g)
    for i, p in enumerate(prompts):
        L = int(mask[i].sum())
        one_p, one_pm = lm.left_pad([p], tok.pad_token_id)
        one_r, one_rm = lm.right_pad([r_ids[i, :L].tolist()], tok.pad_token_id)
        with torch.no_grad():
            lp = lm.token_logprobs(lm.response_logits(model, one_p, one_pm, one_r, one_rm), one_r, 1.0)
        torch.testing.assert_close(gen_lp[i, :L], lp[0], atol=1e-5, rtol=0)


def test_sample_uses_no_deprecated_transformers_argument(tok, policy, capfd):
    """The sampler passes the KV cache as `cache` (transformers 5.x deprecated `past_key_values`,
    to be removed in 5.40): no FutureWarning, and no deprecation line from transformers' logger."""
    import warnings
    import transformers
    transformers.logging.set_verbosity_warning()
    p_ids, p_mask = lm.left_pad(prompt_ids(tok), tok.pad_token_id)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning raised while sampling fails the test
        lm.sample(policy, p_ids, p_mask, 4, 1.0, tok.eos_token_id, tok.pad_token_id, torch.Generator().manual_seed(0))
    assert "deprecated" not in capfd.readouterr().err


def test_sample_greedy_is_argmax(tok, policy):
    p_ids, p_mask = lm.left_pad(prompt_ids(tok), tok.pad_token_id)
    r_ids, _, mask = lm.sample(policy, p_ids, p_mask, 6, 0.0, tok.eos_token_id, tok.pad_token_id)
    with torch.no_grad():
        logits = lm.response_logits(policy, p_ids, p_mask, r_ids, mask)
    assert torch.equal(logits.argmax(-1)[mask == 1], r_ids[mask == 1])


# ----------------------------------------------------------------------------- (b) policy = reference

@pytest.mark.parametrize("same_object", [True, False])
def test_ratio_one_and_kl_zero_when_policy_is_reference(tok, policy, same_object):
    ref = policy if same_object else copy.deepcopy(policy)
    p_ids, p_mask = lm.left_pad(prompt_ids(tok), tok.pad_token_id)
    g = torch.Generator().manual_seed(3)
    r_ids, _, mask = lm.sample(policy, p_ids, p_mask, 8, 1.0, tok.eos_token_id, tok.pad_token_id, g)
    with torch.no_grad():
        lp = lm.token_logprobs(lm.response_logits(policy, p_ids, p_mask, r_ids, mask), r_ids, 1.0) * mask
        ref_lp = lm.token_logprobs(lm.response_logits(ref, p_ids, p_mask, r_ids, mask), r_ids, 1.0) * mask
    ratio = torch.exp(lp - ref_lp)
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-6, rtol=0)
    torch.testing.assert_close(lp - ref_lp, torch.zeros_like(lp), atol=1e-6, rtol=0)
    adv = torch.randn(mask.shape, generator=torch.Generator().manual_seed(4))
    pl = ppo.policy_loss(lp, ref_lp, adv, mask, 0.2)
    assert pl.item() == pytest.approx(-ppo.masked_mean(adv, mask).item(), abs=1e-6)
    # the KL term vanishes: rewards are only the score on the last token
    scores = torch.tensor([1.0, -2.0, 0.5, 3.0])
    rewards = ppo.kl_penalized_rewards(scores, lp, ref_lp, mask, 0.1)
    assert rewards.sum(-1).tolist() == pytest.approx(scores.tolist(), abs=1e-6)


def test_kl_nonzero_when_policy_differs(tok, policy):
    """The check above can fail: a perturbed policy gives KL != 0."""
    other = copy.deepcopy(policy)
    with torch.no_grad():
        other.model.norm.weight.mul_(3.0)
    p_ids, p_mask = lm.left_pad(prompt_ids(tok), tok.pad_token_id)
    r_ids, r_mask = lm.right_pad([[5, 6, 7], [8, 9]], tok.pad_token_id)
    p_ids, p_mask = p_ids[:2], p_mask[:2]
    with torch.no_grad():
        lp = lm.token_logprobs(lm.response_logits(policy, p_ids, p_mask, r_ids, r_mask), r_ids, 1.0)
        lp2 = lm.token_logprobs(lm.response_logits(other, p_ids, p_mask, r_ids, r_mask), r_ids, 1.0)
    assert ((lp - lp2).abs() * r_mask).max() > 1e-3


# ----------------------------------------------------------------------------- (c) score on the last valid token

def test_score_lands_on_last_valid_token(tok, policy):
    model = eos_biased(policy, tok.eos_token_id)
    p_ids, p_mask = lm.left_pad(prompt_ids(tok) * 2, tok.pad_token_id)
    g = torch.Generator().manual_seed(5)
    r_ids, gen_lp, mask = lm.sample(model, p_ids, p_mask, 12, 1.0, tok.eos_token_id, tok.pad_token_id, g)
    lengths = mask.sum(-1).long().tolist()
    assert len(set(lengths)) > 1
    scores = torch.arange(1, len(lengths) + 1, dtype=torch.float32) * 10.0
    rewards = ppo.kl_penalized_rewards(scores, gen_lp, gen_lp.clone(), mask, 0.3)  # KL term exactly 0
    for b, L in enumerate(lengths):
        for t in range(r_ids.shape[1]):
            want = scores[b].item() if t == L - 1 else 0.0
            assert rewards[b, t].item() == want
        if L < r_ids.shape[1]:  # the row ended with EOS: the score sits on the EOS token
            assert r_ids[b, L - 1].item() == tok.eos_token_id


# ----------------------------------------------------------------------------- (d) response_mask

def slow_response_mask(ids, eos):
    out = []
    for row in ids.tolist():
        m, seen = [], False
        for t in row:
            m.append(0.0 if seen else 1.0)
            seen = seen or t == eos
        out.append(m)
    return torch.tensor(out)


def test_response_mask_hand():
    E = 1
    ids = torch.tensor([[5, 6, E, 0, 0],    # EOS at 2 -> 3 valid
                        [E, 7, E, 8, 9],    # EOS first -> only it; the second EOS does not matter
                        [5, 6, 7, 8, 9],    # no EOS -> all ones
                        [5, 6, 7, 8, E]])   # EOS last -> all ones
    want = [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert torch.equal(lm.response_mask(ids, E), torch.tensor(want, dtype=torch.float32))


@pytest.mark.parametrize("seed", range(3))
def test_response_mask_matches_loop(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 5, (20, 9), generator=g)  # EOS (= 1) frequent, sometimes twice, sometimes absent
    assert torch.equal(lm.response_mask(ids, 1), slow_response_mask(ids, 1))


# ----------------------------------------------------------------------------- (e) left padding changes nothing

def test_left_padding_does_not_change_logits(tok, policy):
    prompts = prompt_ids(tok)
    responses = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14]]
    p_ids, p_mask = lm.left_pad(prompts, tok.pad_token_id)
    r_ids, r_mask = lm.right_pad(responses, tok.pad_token_id)
    with torch.no_grad():
        batched = lm.response_logits(policy, p_ids, p_mask, r_ids, r_mask)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            full = torch.tensor([p + r])
            alone = policy(input_ids=full).logits[0, len(p) - 1:len(p) - 1 + len(r)]
            torch.testing.assert_close(batched[i, :len(r)], alone, atol=1e-5, rtol=1e-5)


def test_scores_and_values_padding_invariant_and_aligned(tok, policy):
    """sequence_scores reads the last real token; token_values[t] reads the state that predicts
    token t, i.e. the last token of prompt + response[:t] (docs/ppo_checklist.md 10)."""
    value = scorer_from(policy, seed=1)
    prompts = prompt_ids(tok)
    responses = [[5, 6, 7, 8], [9, 10], [11, 12, 13], [14]]
    p_ids, p_mask = lm.left_pad(prompts, tok.pad_token_id)
    r_ids, r_mask = lm.right_pad(responses, tok.pad_token_id)
    with torch.no_grad():
        scores = lm.sequence_scores(value, p_ids, p_mask, r_ids, r_mask)
        values = lm.token_values(value, p_ids, p_mask, r_ids, r_mask)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            h = value.model(input_ids=torch.tensor([p + r])).last_hidden_state[0]
            assert scores[i].item() == pytest.approx(value.score(h[-1]).item(), abs=1e-5)
            for t in range(len(r)):
                assert values[i, t].item() == pytest.approx(value.score(h[len(p) - 1 + t]).item(), abs=1e-5)


# ----------------------------------------------------------------------------- rollout + update

def tiny_cfg(**kw):
    return tiny_models.ppo_config(**{"ppo_epochs": 2, "whiten_rewards": False, **kw})


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_rollout_and_first_ratio(tok, policy, temperature):
    pol = eos_biased(policy, tok.eos_token_id, bias=2.0)
    ref = copy.deepcopy(pol)
    rm, value = scorer_from(policy, seed=1), scorer_from(policy, seed=2)
    cfg = tiny_cfg(temperature=temperature)
    batch = ppo.rollout(pol, ref, rm, value, tok, prompt_ids(tok), cfg, cfg.kl_coef, MAX_RESPONSE,
                        torch.Generator().manual_seed(0))
    mask = batch["mask"]
    torch.testing.assert_close(batch["logprobs"], batch["gen_logprobs"], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch["logprobs"], batch["ref_logprobs"], atol=1e-6, rtol=0)  # ref = policy
    # gamma = lam = 1, KL = 0: the return of every valid token is the sequence's score
    want = batch["rm_scores"][:, None].expand_as(mask) * mask
    torch.testing.assert_close(batch["returns"], want, atol=1e-5, rtol=0)
    assert ppo.masked_mean(batch["advantages"], mask).item() == pytest.approx(0.0, abs=1e-5)
    assert torch.all(batch["advantages"][mask == 0] == 0)
    opt = torch.optim.AdamW(list(pol.parameters()) + list(value.parameters()), lr=cfg.ppo_lr)
    before = [p.detach().clone() for p in pol.parameters()]
    stats = ppo.update(pol, value, opt, batch, cfg, random.Random(0), max_grad_norm=1.0)
    assert stats["first_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, pol.parameters()))  # it did train
    assert stats["approx_kl"] > 0  # later minibatches see a moved policy


def test_rollout_with_a_text_reward_scores_each_records_text(tok, policy):
    """ppo.TextReward (stage ppo_gold): each rollout's score is the function of its own record and
    its decoded response text, and it enters the returns exactly as an RM's score would."""
    pol = eos_biased(policy, tok.eos_token_id, bias=2.0)
    value = scorer_from(policy, seed=2)
    records = [{"instruction": t, "input": str(i)} for i, t in enumerate(TEXTS)]
    seen = []

    def score(recs, texts):
        seen.append((recs, texts))
        return [10.0 * int(r["input"]) + len(t) for r, t in zip(recs, texts)]

    cfg = tiny_cfg()
    batch = ppo.rollout(pol, copy.deepcopy(pol), ppo.TextReward(score), value, tok, prompt_ids(tok), cfg, cfg.kl_coef,
                        MAX_RESPONSE, torch.Generator().manual_seed(0), records=records)
    recs, texts = seen[0]
    assert recs == records and texts == lm.decode_responses(tok, batch["r_ids"], batch["mask"])
    want = torch.tensor([10.0 * i + len(t) for i, t in enumerate(texts)])
    assert torch.equal(batch["rm_scores"], want)
    returns = want[:, None].expand_as(batch["mask"]) * batch["mask"]  # gamma = lam = 1, KL = 0 (policy = ref)
    torch.testing.assert_close(batch["returns"], returns, atol=1e-4, rtol=1e-5)


def test_no_eos_penalty_replaces_the_score_of_responses_that_never_end(tok, policy):
    """--no-eos-penalty (checklist 8): a response without EOS gets the fixed score in place of the
    RM's, one with EOS keeps the RM's; with the penalty off (nan) every response keeps the RM's."""
    pol = eos_biased(policy, tok.eos_token_id, bias=3.0)
    value = scorer_from(policy, seed=2)
    seen = {}

    def score(recs, texts):
        return [float(len(t)) for t in texts]

    for penalty in (-7.0, float("nan")):
        cfg = tiny_cfg(no_eos_penalty=penalty)
        batch = ppo.rollout(pol, copy.deepcopy(pol), ppo.TextReward(score), value, tok, prompt_ids(tok), cfg,
                            cfg.kl_coef, 3, torch.Generator().manual_seed(0), records=[{}] * len(TEXTS))
        seen[penalty == penalty] = batch
        want = batch["rm_scores"].clone()
        if penalty == penalty:
            want[~batch["has_eos"]] = penalty
        # gamma = lam = 1, KL = 0 (policy = ref), no reward whitening: every valid token's return is the score
        torch.testing.assert_close(batch["returns"], want[:, None].expand_as(batch["mask"]) * batch["mask"],
                                   atol=1e-4, rtol=1e-5)
    assert 0 < seen[True]["has_eos"].sum() < len(TEXTS)  # both kinds of response occur


def test_scores_and_values_are_float32_under_bf16_autocast(policy):
    """Under bf16 autocast (a GPU's, here the CPU's), the backbone's matrix products run in bf16 but
    the score head in float32 (lm.score_head): a raw score of a few dozen is not rounded to bf16's
    steps (1/16 at 8, 0.25 at 32). The scores equal the float32 head applied to the backbone's own
    hidden states; a head under autocast would not."""
    rm = scorer_from(policy, seed=3)
    torch.nn.init.normal_(rm.score.weight, std=5.0)  # raw scores of a few dozen
    tok = models.build_char_tokenizer()
    p_ids, p_mask = lm.left_pad(prompt_ids(tok), tok.pad_token_id)
    r_ids, r_mask = lm.right_pad([[5, 6, 1], [7, 1], [8, 9, 10, 1], [11, 1]], tok.pad_token_id)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = lm.last_token_hidden(rm, p_ids, p_mask, r_ids, r_mask)
        scores = lm.sequence_scores(rm, p_ids, p_mask, r_ids, r_mask)
        values = lm.token_values(rm, p_ids, p_mask, r_ids, r_mask)
        states = lm.backbone(rm)(input_ids=lm.join(p_ids, p_mask, r_ids, r_mask)[0],
                                 attention_mask=lm.join(p_ids, p_mask, r_ids, r_mask)[1],
                                 position_ids=lm.join(p_ids, p_mask, r_ids, r_mask)[2]).last_hidden_state
    assert scores.dtype == values.dtype == torch.float32
    want = hidden.float() @ rm.score.weight.float().T
    assert want.abs().max() > 8  # large enough for bf16's rounding to show (its steps are 1/16 at 8)
    torch.testing.assert_close(scores, want.squeeze(-1), atol=1e-4, rtol=1e-5)
    P = p_ids.shape[1]
    torch.testing.assert_close(values, (states[:, P - 1:P - 1 + r_ids.shape[1]].float() @ rm.score.weight.float().T)
                               .squeeze(-1), atol=1e-4, rtol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = rm.score(hidden).float().squeeze(-1)  # the head as autocast runs it
    assert (bf16 - want.squeeze(-1)).abs().max() > 1e-3  # what a bf16 head would have given
