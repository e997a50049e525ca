"""LoRA (plumbing/lora.py): only adapters (and a score head) train; the reference is the policy with its
adapters off, exactly the SFT model; saved models are merged Hugging Face folders."""
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from plumbing import lora
from plumbing import models
import ppo
import reward
import sft
import task
import config
import tiny_models
from plumbing import runs
import lm

RANK = 4


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny SFT checkpoint (random Llama) and a few demonstrations."""
    path = tmp_path_factory.mktemp("lora") / "sft"
    tok = models.build_char_tokenizer()
    models.save_pretrained(models.new_tiny_llama(tok, 32, 2, 2, 48, seed=0), tok, path)
    demos = task.make_splits(0, n_sft=32, n_pref=8, n_unlabeled=16, n_eval=4, sft_noise=0.3)
    prompts = models.encode_prompts(tok, demos["sft"], "compact", 32)
    responses = lm.encode_responses(tok, [r["output"] for r in demos["sft"]], 10)
    return path, tok, demos, prompts, responses


def adapted_policy(path, seed=0):
    torch.manual_seed(seed)
    return lora.add_adapters(models.load_policy(path, "cpu"), RANK, 8.0)


def train_a_little(model, tok, prompts, responses, steps=3):
    sft.train_sft(model, tok, prompts, responses, steps=steps, batch_size=8, lr=1e-2, warmup=1, max_grad_norm=1.0,
                  seed=0, show=False)


def batch(tok, prompts, responses, n=6):
    p_ids, p_mask = lm.left_pad(prompts[:n], tok.pad_token_id)
    r_ids, r_mask = lm.right_pad(responses[:n], tok.pad_token_id)
    return p_ids, p_mask, r_ids, r_mask


def test_adapters_on_every_projection_of_every_layer_and_nothing_else_trains(setup):
    path, *_ = setup
    model = adapted_policy(path)
    names = model.lora_settings["modules"]
    per_layer = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj"}
    assert sorted(names) == sorted(f"model.layers.{i}.{m}" for i in range(2) for m in per_layer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{m}.lora_{x}" for m in names for x in "AB"}
    scorer = lora.add_adapters(models.load_scorer(path, "cpu"), RANK, 8.0, trainable_head=True)
    assert {n for n, p in scorer.named_parameters() if p.requires_grad} == \
        {f"{m}.lora_{x}" for m in scorer.lora_settings["modules"] for x in "AB"} | {"score.weight"}


def test_b_zero_at_start_computes_exactly_the_base_model(setup):
    path, tok, _, prompts, responses = setup
    base, model = models.load_policy(path, "cpu"), adapted_policy(path)
    assert all(m.lora_B.abs().sum() == 0 and m.lora_A.abs().sum() > 0 for m in lora.adapter_modules(model))
    with torch.no_grad():
        assert torch.equal(lm.response_logits(model, *batch(tok, prompts, responses)),
                           lm.response_logits(base, *batch(tok, prompts, responses)))


def test_only_adapters_get_gradients_and_adam_state(setup, monkeypatch):
    path, tok, _, prompts, responses = setup
    model = adapted_policy(path)
    made = []

    class Recording(torch.optim.AdamW):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)
    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_a_little(model, tok, prompts, responses)
    params = {id(p): n for n, p in model.named_parameters()}
    in_optimizer = {params[id(p)] for g in made[0].param_groups for p in g["params"]}
    with_state = {params[id(p)] for p in made[0].state}
    adapters = {n for n in params.values() if ".lora_" in n}
    assert in_optimizer == adapters and with_state == adapters
    assert all(p.grad is None for n, p in model.named_parameters() if n not in adapters)
    for n, p in model.named_parameters():  # the backbone did not move; the adapters did
        if n in frozen_before:
            assert torch.equal(p, frozen_before[n]), n
    assert any(m.lora_B.abs().sum() > 0 for m in lora.adapter_modules(model))


def test_reference_is_the_sft_model_after_training(setup):
    """The policy with adapters off gives exactly a separately loaded SFT model's log-probs,
    after the adapters have trained (with and without gradients), and switching back restores
    the adapted policy."""
    path, tok, _, prompts, responses = setup
    model = adapted_policy(path)
    train_a_little(model, tok, prompts, responses)
    ref, sft_model = lora.reference(model), models.load_policy(path, "cpu")
    b = batch(tok, prompts, responses)
    assert list(ref.parameters()) == []  # no second backbone
    ref.requires_grad_(False)  # as train_ppo does: must not freeze the policy
    assert any(p.requires_grad for p in model.parameters())
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            want = lm.token_logprobs(lm.response_logits(sft_model, *b), b[2], 1.0)
            got = lm.token_logprobs(lm.response_logits(ref, *b), b[2], 1.0)
            adapted = lm.token_logprobs(lm.response_logits(model, *b), b[2], 1.0)
        assert torch.equal(got, want)
        assert (adapted - want).abs().max() > 1e-4  # the adapters are switched back on
    assert all(m.adapters_on for m in lora.adapter_modules(model))


def test_kl_zero_and_ratio_one_before_the_first_step(setup):
    path, tok, demos, *_ = setup
    policy = adapted_policy(path)
    rm = models.load_scorer(path, "cpu")
    torch.manual_seed(3)
    value = lora.add_adapters(models.load_scorer(path, "cpu", fresh_head=True), RANK, 8.0, trainable_head=True)
    unl = demos["unlabeled"]
    cfg = config.PPOConfig(ppo_iterations=1, rollout_batch=8, step_batch=4, ppo_epochs=2, ppo_lr=1e-2, kl_coef=0.05)
    log = tiny_models.RowLog()
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    ppo.train_ppo(policy, lora.reference(policy), rm, value, tok, models.encode_prompts(tok, unl, "compact", 32),
                  unl, cfg, config.seeds(0), max_response_len=8, max_grad_norm=1.0, log=log, show=False)
    assert log.rows[0]["kl"] == 0.0 and log.rows[0]["first_ratio"] == 1.0
    moved = {n for n, p in policy.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(".lora_" in n for n in moved)


def test_gradient_checkpointing_gives_the_same_adapter_gradients(setup):
    path, tok, _, prompts, responses = setup
    grads = []
    for on in (False, True):
        model = models.gradient_checkpointing(adapted_policy(path), on)
        train_a_little(model, tok, prompts, responses, steps=1)  # B moves off zero: A gets gradients too
        model.train()
        model.zero_grad()
        sft.sft_loss(model, *batch(tok, prompts, responses)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and all(".lora_" in n for n in grads[0])
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-7, rtol=1e-5)
    assert max(g.abs().max() for g in grads[0].values()) > 1e-4


def test_saved_models_are_merged_hf_folders(setup, tmp_path):
    """Run.save_model writes W + (alpha/r) B A in transformers' own layout: from_pretrained loads
    it without our code and gives the adapted model's logits and scores; the adapters are also
    saved on their own and, added to the base model, give the same model again."""
    from safetensors.torch import load_file
    path, tok, demos, prompts, responses = setup
    run = runs.Run(config.make(out=str(tmp_path)), torch.device("cpu"))
    model = adapted_policy(path)
    train_a_little(model, tok, prompts, responses)
    run.save_model(model, tok, tmp_path / "policy")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    b = batch(tok, prompts, responses)
    with torch.no_grad():
        want = lm.response_logits(model, *b)
        torch.testing.assert_close(lm.response_logits(loaded, *b), want, atol=2e-5, rtol=1e-5)
        assert set(load_file(tmp_path / "policy" / "model.safetensors")) == set(
            load_file(path / "model.safetensors"))  # the base's keys: no lora_* left
        again = adapted_policy(path, seed=9)  # other random A: the saved adapters replace it
        again.load_state_dict(load_file(tmp_path / "policy" / "lora_adapters.safetensors"), strict=False)
        torch.testing.assert_close(lm.response_logits(again, *b), want, atol=0, rtol=0)
    settings = json.loads((tmp_path / "policy" / "lora_adapters.json").read_text())
    assert settings["rank"] == RANK and settings["alpha"] == 8.0

    # a reward model: adapters and the score head
    torch.manual_seed(4)
    rm = lora.add_adapters(models.load_scorer(path, "cpu"), RANK, 8.0, trainable_head=True)
    recs = [{"instruction": d["instruction"], "input": d["input"], "output_1": d["output"],
             "output_2": d["output"] + "9", "preference": 1} for d in demos["sft"][:16]]
    pairs = reward.make_pairs(tok, recs, "compact", 32, 10)
    reward.train_reward_model(rm, pairs, tok.pad_token_id, lr=1e-2, batch_size=8, epochs=1, max_grad_norm=1.0, seed=0,
                              show=False)
    rm.config.score_mean, rm.config.score_std = 0.0, 1.0
    run.save_model(rm, tok, tmp_path / "rm")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm", num_labels=1)
    assert "score.weight" in load_file(tmp_path / "rm" / "lora_adapters.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(lm.sequence_scores(loaded, *b), lm.sequence_scores(rm, *b), atol=2e-5,
                                   rtol=1e-5)


def test_only_rank_0_merges_and_on_the_cpu(setup, tmp_path, monkeypatch):
    """Saving a LoRA model: the other ranks merge nothing and write nothing; rank 0 merges each
    adapted weight on the CPU (a GPU run would otherwise hold a second copy of the model)."""
    path, tok, demos, prompts, responses = setup
    model = adapted_policy(path)
    train_a_little(model, tok, prompts, responses)
    run = runs.Run(config.make(out=str(tmp_path)), torch.device("cpu"))
    run.main = False  # as on rank 1
    calls = []
    real = lora.merged_state_dict
    monkeypatch.setattr(lora, "merged_state_dict", lambda *a: calls.append(a) or real(*a))
    run.save_model(model, tok, tmp_path / "other")
    assert not calls and not (tmp_path / "other").exists()
    run.main = True
    run.save_model(model, tok, tmp_path / "main")
    assert len(calls) == 1
    merged = real(*calls[0])
    assert all(v.device.type == "cpu" for v in merged.values())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real(model.state_dict(), model.lora_settings)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model's weights untouched


def test_lora_flags_are_checked():
    with pytest.raises(SystemExit, match="--lora-rank"):
        config.make(lora_rank=-1)


def test_frozen_weights_are_kept_in_bf16_on_a_gpu(setup):
    """models.frozen_to_bf16 (applied on a GPU): a model that only runs forwards goes to bf16 but its
    score head; a LoRA model keeps its adapters and score head in float32, its backbone in bf16."""
    path = setup[0]
    rm = models.frozen_to_bf16(models.load_scorer(path, "cpu"), train=False)
    assert {p.dtype for n, p in rm.named_parameters() if not n.startswith("score.")} == {torch.bfloat16}
    assert rm.score.weight.dtype == torch.float32
    value = lora.add_adapters(models.load_scorer(path, "cpu"), RANK, 8.0, trainable_head=True)
    models.frozen_to_bf16(value, train=True)
    for name, p in value.named_parameters():
        assert p.dtype == (torch.float32 if p.requires_grad else torch.bfloat16), name
    assert any(p.requires_grad for p in value.parameters()) and value.score.weight.requires_grad
