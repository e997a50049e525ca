"""scripts/bench_memory.py's memory plan, checked against a hand count on a tiny Llama config, and
scripts/bench_gpu.py's code path on the CPU."""
from transformers import LlamaConfig

from scripts import bench_memory


def tiny_config():
    return LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=0)


def test_parameter_counts_by_hand():
    per_layer = 4 * 32 * 32 + 3 * 32 * 64 + 2 * 32  # attention, MLP, two norms
    policy = 2 * 100 * 32 + 2 * per_layer + 32  # embeddings, LM head, layers, final norm
    scorer = policy - 100 * 32 + 32  # a 1-output score head instead of the LM head
    counts = bench_memory.parameter_counts(tiny_config(), 0)
    assert counts == {"policy": (policy, policy), "scorer": (scorer, scorer)}
    r = 4
    adapters = 2 * r * (4 * (32 + 32) + 2 * (32 + 64) + (64 + 32))  # (in + out) * r per projection, 2 layers
    counts = bench_memory.parameter_counts(tiny_config(), r)
    assert counts == {"policy": (policy + adapters, adapters), "scorer": (scorer + adapters, adapters + 32)}


def test_planned_bytes_by_hand():
    """Trained weights in float32 (4 B), frozen ones in bf16 (2 B), 4 B of gradient and 8 B of Adam
    state per trained parameter; --fsdp divides everything by the GPUs."""
    (p, _), (s, _) = bench_memory.parameter_counts(tiny_config(), 0).values()
    plain = bench_memory.planned_bytes(tiny_config(), 8, fsdp=False, lora_rank=0)
    assert plain["weights"] == 4 * p + 2 * p + 2 * s + 4 * s  # policy, reference, RM, value
    assert plain["gradients"] == 4 * (p + s) and plain["adam"] == 8 * (p + s)
    sharded = bench_memory.planned_bytes(tiny_config(), 8, fsdp=True, lora_rank=0)
    assert all(sharded[k] == plain[k] / 8 for k in ("weights", "gradients", "adam"))
    (pl, pt), (sl, st) = bench_memory.parameter_counts(tiny_config(), 4).values()
    lora = bench_memory.planned_bytes(tiny_config(), 8, fsdp=False, lora_rank=4)
    # one frozen backbone for policy and reference, the RM frozen, the value model's backbone frozen
    assert lora["weights"] == 2 * (pl - pt) + 4 * pt + 2 * sl + 2 * (sl - st) + 4 * st
    assert lora["gradients"] == 4 * (pt + st) and lora["adam"] == 8 * (pt + st)


def test_memory_plan_by_hand():
    """The two peaks of a PPO iteration on the tiny config (h 32, f 64, 2 layers, 2 heads, vocab
    100), 1 rollout of 3 + 5 tokens and a micro-batch of 1, on 2 GPUs with --fsdp."""
    cfg = tiny_config()
    shape = {"rollouts_per_gpu": 1, "micro_batch": 1, "prompt": 3, "response": 5}
    plan = bench_memory.memory_plan(cfg, 2, True, 0, checkpointing=False, shape=shape)
    (p, _), _ = bench_memory.parameter_counts(cfg, 0).values()
    persistent = sum(bench_memory.planned_bytes(cfg, 2, True, 0)[k] for k in ("weights", "gradients", "adam"))
    kv = 1 * 8 * 2 * 2 * 32 * 2  # rollouts, tokens, layers, k and v, kv width, bf16
    acts = 2 * 2 * (32 * 32 + 8 * 64) * 8  # policy and value, layers, bytes per token, tokens
    logits = 100 * (2 * 8 + 8 * 5)  # vocab x (bf16 over every token, float32 copy and log-softmax over the response)
    gathered = 2 * 2 * (4 * 32 * 32 + 3 * 32 * 64)  # two layers in bf16
    assert plan["sampling_copy"] == 2 * p and plan["kv_cache"] == kv
    assert plan["activations"] == acts and plan["logits"] == logits and plan["gathered_layers"] == gathered
    assert plan["rollout_peak"] == persistent + 2 * p + kv and plan["update_peak"] == persistent + acts + logits + gathered
    assert plan["peak"] == max(plan["rollout_peak"], plan["update_peak"])
    ckpt = bench_memory.memory_plan(cfg, 2, True, 0, checkpointing=True, shape=shape)
    assert ckpt["activations"] == 2 * (2 * 2 * 32 * 8 + (32 * 32 + 8 * 64) * 8)  # layer inputs + one recomputed layer
    plain = bench_memory.memory_plan(cfg, 2, False, 0, checkpointing=False, shape=shape)
    assert plain["sampling_copy"] == 0 and plain["gathered_layers"] == 0


def test_bench_gpu_runs_on_the_cpu(tmp_path):
    """bench_gpu.py is for GPUs; on the CPU (float32) its first ratio is exactly 1 and its KL 0."""
    import json

    from scripts import bench_gpu
    bench_gpu.main(["--device", "cpu", "--tiny", "--out", str(tmp_path / "out.json")])
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [r["mode"] for r in rows] == ["", "--lora-rank 16"]
    assert all(r["first_ratio"] == 1.0 and r["kl"] == 0.0 and r["decode_tokens_per_s"] > 0 for r in rows)
