"""PPO on the causal-LM families people fine-tune with RLHF, not only Llama: tiny random
configurations (no downloads) of each, saved with a small BPE tokenizer and loaded the way a
run loads --model (a pad token added, embeddings grown, saved again as SFT would). For every
family, with left-padded prompts of different lengths:
  * the sampler's log-probs equal a full forward's (`lm.response_logits`), which equal the
    model's own logits (its whole forward, whatever it does after the LM head);
  * one PPO rollout + update with policy = reference: KL 0, first ratio 1;
  * the RM and value model (AutoModelForSequenceClassification, num_labels=1) read the last real
    token and the positions that predict each response token (checked against one row at a time,
    without padding).
Gemma-2 has its final-logit soft-capping switched on and strong enough to matter (its forward
squashes logits after the head, which the LM head alone does not). Families transformers gives
no sequence-classification class are refused up front with one clear error."""
import random

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from plumbing import models
import ppo
import tiny_models
from tiny_models import bpe_tokenizer, prompt_corpus
import lm
import config

MAX_RESPONSE = 6  # response tokens of a test rollout

INSTRUCTIONS = ["Say hi.", "Name a colour that is warm and bright.", "What is two plus two?",
                "Write one short word about the sea, the sky and the wind."]
SOFTCAP = 0.5  # Gemma-2 checkpoints use 30 on logits of that size; our tiny logits need a small cap

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, max_position_embeddings=256, initializer_range=0.2)
FAMILIES = {  # model_type -> extra config fields
    "llama": {},
    "qwen2": {},
    "qwen3": dict(head_dim=16),
    "mistral": dict(sliding_window=None),
    "gemma2": dict(head_dim=16, final_logit_softcapping=SOFTCAP, query_pre_attn_scalar=16, sliding_window=8),
    "gemma3_text": dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=8),
    "phi3": {},
    "olmo2": {},
    "gpt_neox": dict(rotary_pct=0.5),  # rotary on half of each head, its own attention and layout
}


def save_family(path, model_type: str, **extra) -> str:
    """A random 2-layer model of `model_type` with a BPE tokenizer (no pad token), saved."""
    tok = bpe_tokenizer(prompt_corpus(INSTRUCTIONS), chat=False)
    cfg = AutoConfig.for_model(model_type, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                               bos_token_id=tok.bos_token_id, pad_token_id=None, **SMALL, **extra)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(model_type, folder of the 'SFT' checkpoint, tokenizer): loaded as --model is, then saved."""
    base = save_family(tmp_path_factory.mktemp(request.param + "_base"), request.param, **FAMILIES[request.param])
    model, tok = models.load_pretrained(base, torch.device("cpu"))
    assert model.config.model_type == request.param
    path = tmp_path_factory.mktemp(request.param)
    models.save_pretrained(model, tok, path)
    return request.param, path, tok


def ppo_config(**kw) -> config.PPOConfig:
    return tiny_models.ppo_config(**{"step_batch": 4, **kw})


def own_logprobs(model, prompt: list[int], resp: list[int], temperature: float) -> torch.Tensor:
    """log pi(resp | prompt) from the model's whole forward on one unpadded row."""
    ids = torch.tensor([prompt + resp])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:len(prompt) - 1 + len(resp)].float()
    return torch.log_softmax(logits / temperature, -1).gather(-1, torch.tensor(resp)[:, None]).squeeze(-1)


def rows(batch):
    """(prompt ids, response ids) of each rollout row, padding removed."""
    out = []
    for p, pm, r, m in zip(batch["p_ids"], batch["p_mask"], batch["r_ids"], batch["mask"]):
        out.append((p[pm.bool()].tolist(), r[:int(m.sum())].tolist()))
    return out


def test_rollout_logprobs_ratio_and_kl(family):
    """Sampler log-probs = rollout recompute = the model's own logits, row by row; KL 0 and first
    ratio 1 with policy = reference; one update changes the weights."""
    name, path, tok = family
    cpu = torch.device("cpu")
    policy, ref = models.load_policy(path, cpu), models.load_policy(path, cpu)
    rm, value = models.load_scorer(path, cpu), models.load_scorer(path, cpu, fresh_head=True)
    prompts = models.encode_prompts(tok, [{"instruction": q, "input": ""} for q in INSTRUCTIONS], "alpaca", 192)
    assert len({len(p) for p in prompts}) == len(prompts)  # every row left-padded differently
    cfg = ppo_config(temperature=0.7)
    batch = ppo.rollout(policy, ref, rm, value, tok, prompts, cfg, cfg.kl_coef, MAX_RESPONSE,
                        torch.Generator().manual_seed(0))
    torch.testing.assert_close(batch["logprobs"], batch["gen_logprobs"], atol=1e-5, rtol=0)
    assert torch.equal(batch["logprobs"], batch["ref_logprobs"])  # policy = reference: KL exactly 0
    for i, (p, r) in enumerate(rows(batch)):
        torch.testing.assert_close(batch["logprobs"][i, :len(r)], own_logprobs(policy, p, r, cfg.temperature),
                                   atol=1e-5, rtol=0)
    opt = torch.optim.AdamW(list(policy.parameters()) + list(value.parameters()), lr=cfg.ppo_lr)
    before = [p.detach().clone() for p in policy.parameters()]
    stats = ppo.update(policy, value, opt, batch, cfg, random.Random(0), max_grad_norm=1.0)
    assert stats["first_ratio"] == pytest.approx(1.0, abs=1e-5), name
    assert stats["approx_kl"] < 1e-10  # one minibatch, one epoch: measured before the step
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


def test_scores_and_values_read_the_right_tokens(family):
    """RM score = the head on the last real token, value V_t = the head on the state that predicts
    token t: both equal the same computed one row at a time with no padding; the RM's own
    transformers forward (AutoModelForSequenceClassification) gives the same score."""
    name, path, tok = family
    cpu = torch.device("cpu")
    rm = models.load_scorer(path, cpu)
    assert type(rm).__name__.endswith("ForSequenceClassification") and rm.score.out_features == 1
    prompts = models.encode_prompts(tok, [{"instruction": q, "input": ""} for q in INSTRUCTIONS], "alpaca", 192)
    resps = lm.encode_responses(tok, ["Hi.", "Red, like fire and the sun", "Four.", "Blue"], 12)
    p_ids, p_mask = lm.left_pad(prompts, tok.pad_token_id)
    r_ids, r_mask = lm.right_pad(resps, tok.pad_token_id)
    with torch.no_grad():
        scores = lm.sequence_scores(rm, p_ids, p_mask, r_ids, r_mask)
        values = lm.token_values(rm, p_ids, p_mask, r_ids, r_mask)
        for i, (p, r) in enumerate(zip(prompts, resps)):
            ids = torch.tensor([p + r])
            hidden = lm.backbone(rm)(input_ids=ids).last_hidden_state[0]
            torch.testing.assert_close(scores[i], lm.head_score(rm, hidden[-1]), atol=1e-5, rtol=0)
            torch.testing.assert_close(scores[i], rm(input_ids=ids).logits[0, 0], atol=1e-5, rtol=0)
            torch.testing.assert_close(values[i, :len(r)], rm.score(hidden[len(p) - 1:-1]).squeeze(-1),
                                       atol=1e-5, rtol=0)
    value = models.load_scorer(path, cpu, fresh_head=True)
    with torch.no_grad():
        assert torch.equal(lm.token_values(value, p_ids, p_mask, r_ids, r_mask), torch.zeros_like(values))


def test_gemma2_softcapping_matters(tmp_path):
    """The cap is strong enough that the LM head alone (what response_logits used to read without
    gradients) gives other log-probs than Gemma-2's forward: the matrix test above would catch it."""
    path = save_family(tmp_path, "gemma2", **FAMILIES["gemma2"])
    model = models.load_policy(path, torch.device("cpu"))
    ids = torch.arange(3, 20)[None]
    with torch.no_grad():
        capped = model(input_ids=ids).logits
        head_only = model.get_output_embeddings()(lm.backbone(model)(input_ids=ids).last_hidden_state)
    assert capped.abs().max() <= SOFTCAP
    assert (torch.log_softmax(capped, -1) - torch.log_softmax(head_only, -1)).abs().max() > 1.0


@pytest.mark.parametrize("model_type, extra", [("cohere", dict(logit_scale=4.0)),
                                               ("granite", dict(logits_scaling=0.25))])
def test_post_head_scaling_and_no_scorer_class(tmp_path, model_type, extra):
    """Cohere and Granite scale logits after the head: response_logits (no gradients, positions
    kept by the forward) equals their own forward. transformers has no sequence-classification
    class for them, so a run is refused before any training with one line naming the family."""
    import train

    path = save_family(tmp_path / "m", model_type, **extra)
    model = models.load_policy(path, torch.device("cpu"))
    p_ids, p_mask = lm.left_pad([[5, 6, 7, 8], [9, 10]], 0)
    r_ids, r_mask = lm.right_pad([[11, 12, 13], [14]], 0)
    with torch.no_grad():
        got = lm.response_logits(model, p_ids, p_mask, r_ids, r_mask)
        ids, attn, pos = lm.join(p_ids, p_mask, r_ids, r_mask)
        full = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits[:, 3:6]
    torch.testing.assert_close(got, full, atol=1e-5, rtol=0)  # the head on 3 rows or all: float order
    with pytest.raises(SystemExit, match=f"--model .*no sequence-classification class for the '{model_type}' family"):
        models.check_scorer_support("--model", path)
    cfg = config.make(model=path, stage="reward", out=str(tmp_path / "run"))
    with pytest.raises(SystemExit, match=f"'{model_type}' family"):
        train.check_models(cfg)


def test_check_models_passes_for_supported_families(tmp_path):
    """A supported family passes the check before the first stage: the RM and value model (its
    sequence-classification class) and, with its own data's LM judge, the judge are all found."""
    import train
    path = save_family(tmp_path / "m", "qwen2")
    cfg = config.make(model=path, stage="all", out=str(tmp_path / "run"))
    assert train.check_models(cfg) == [("--model", path, "scorer")]


def test_fresh_head_zeroes_a_bias_too(tmp_path, monkeypatch):
    """transformers' score heads have no bias, a custom one may: the value model's fresh head
    starts at V = 0 only if the bias is zeroed with the weight."""
    from transformers import AutoModelForSequenceClassification
    path = save_family(tmp_path / "m", "llama")
    load = AutoModelForSequenceClassification.from_pretrained

    def with_bias(*args, **kwargs):
        model = load(*args, **kwargs)
        model.score = torch.nn.Linear(model.score.in_features, 1, bias=True)
        torch.nn.init.constant_(model.score.bias, 0.7)
        return model

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", with_bias)
    kept = models.load_scorer(path, torch.device("cpu"))
    assert kept.score.bias.item() == pytest.approx(0.7)
    fresh = models.load_scorer(path, torch.device("cpu"), fresh_head=True)
    assert torch.count_nonzero(fresh.score.weight) == 0 and fresh.score.bias.item() == 0.0
    with torch.no_grad():
        v = lm.token_values(fresh, torch.tensor([[5, 6]]), torch.ones(1, 2), torch.tensor([[7, 8]]),
                                torch.ones(1, 2))
    assert torch.equal(v, torch.zeros_like(v))
