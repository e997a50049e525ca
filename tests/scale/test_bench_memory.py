"""scripts/bench_memory.py's planned table: parameter counts on the meta device and the bytes per GPU,
checked against a hand count on a tiny Llama config."""
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
    (p, _), (s, _) = bench_memory.parameter_counts(tiny_config(), 0).values()
    plain = bench_memory.planned_bytes(tiny_config(), 8, fsdp=False, lora_rank=0)
    assert plain["weights"] == 4 * (2 * p + 2 * s) and plain["gradients"] == 4 * (p + s)
    assert plain["adam"] == 8 * (p + s)  # 40 bytes per parameter in all, as docs/scale.md says
    sharded = bench_memory.planned_bytes(tiny_config(), 8, fsdp=True, lora_rank=0)
    assert all(sharded[k] == plain[k] / 8 for k in ("weights", "gradients", "adam"))
    (pl, pt), (sl, st) = bench_memory.parameter_counts(tiny_config(), 4).values()
    lora = bench_memory.planned_bytes(tiny_config(), 8, fsdp=False, lora_rank=4)
    assert lora["weights"] == 4 * (pl + 2 * sl)  # no reference copy
    assert lora["gradients"] == 4 * (pt + st) and lora["adam"] == 8 * (pt + st)
