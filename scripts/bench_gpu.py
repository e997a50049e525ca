"""What a GPU does with one PPO iteration: first ratio and KL in bf16, decode speed, iteration time
and peak memory, beside the memory plan (scripts/bench_memory.py), for SmolLM2-135M and a ~1B
Llama configuration (random weights), with and without LoRA and --fsdp.

    python scripts/bench_gpu.py                                  # one GPU
    torchrun --standalone --nproc_per_node=8 scripts/bench_gpu.py --fsdp   # every model sharded over 8 GPUs
    python scripts/bench_gpu.py --device cpu --tiny              # the code path on a CPU (a smoke test)

It prints a markdown table (and writes it to --out as JSON): per model and mode, the first
minibatch's ratio (1 up to bf16 kernels whose reduction order depends on the batch's shape), the
rollout's KL to the reference (0 up to the same), decode tokens per second, the iteration's
seconds, the peak memory torch allocated on the GPU, and the plan's peak for the same shapes.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import bench_memory  # noqa: E402
import config  # noqa: E402
import lm  # noqa: E402
import ppo  # noqa: E402
from plumbing import dist, fsdp, lora, models  # noqa: E402

GB = 2 ** 30


def llama_1b():
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=1024,
                       tie_word_embeddings=False, pad_token_id=0)  # ~1.1B parameters, TinyLlama's shape


def tiny():
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                       tie_word_embeddings=False, pad_token_id=0)


def smollm2_config():
    """SmolLM2-135M's configuration, read from its GGUF file (requirements-models.txt); where that
    package or gguf is not installed (a GPU machine with its own image), the same shape written out
    (HuggingFaceTB/SmolLM2-135M's published config.json). The weights are random either way."""
    from transformers import AutoConfig, LlamaConfig
    try:
        import gguf  # noqa: F401  (transformers reads the file with it)
        folder, gguf_file = models.resolve_model("smollm2")
        return AutoConfig.from_pretrained(folder, gguf_file=gguf_file)
    except (ImportError, SystemExit):
        return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                           rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, pad_token_id=0)


def build(cfg, device, train: bool, head: bool, fresh_head: bool, lora_rank: int, shard: bool, seed: int):
    """One of the four models, random weights of `cfg`, prepared as train.py's Run.prepare does."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    torch.manual_seed(seed)
    if head:
        c = copy.deepcopy(cfg)
        c.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(c)
        if fresh_head:
            torch.nn.init.zeros_(model.score.weight)
    else:
        model = AutoModelForCausalLM.from_config(cfg)
    model = models.no_dropout(model).to(device).eval()
    if train and lora_rank:
        lora.add_adapters(model, lora_rank, 0.0, trainable_head=head)
    if device.type == "cuda" and (not train or lora_rank):
        models.frozen_to_bf16(model, train)
    return fsdp.shard(model, device, train) if shard else model


def one(name: str, cfg, device, lora_rank: int, shard: bool, shape: dict) -> dict:
    """One PPO iteration of the four models of `cfg` on random prompts."""
    policy = build(cfg, device, True, False, False, lora_rank, shard, 0)
    ref = lora.reference(policy) if lora_rank else build(cfg, device, False, False, False, 0, shard, 0)
    rm = build(cfg, device, False, True, False, 0, shard, 1)
    value = build(cfg, device, True, True, True, lora_rank, shard, 1)
    g = torch.Generator().manual_seed(2)
    n = shape["rollouts_per_gpu"] * dist.world()
    prompts = [torch.randint(3, cfg.vocab_size, (shape["prompt"],), generator=g).tolist() for _ in range(n)]

    class Tok:  # what the rollout needs of a tokenizer: random prompts, an EOS nobody samples early
        pad_token_id, eos_token_id = 0, 1

        @staticmethod
        def decode(ids):
            return ""
    pcfg = config.PPOConfig(ppo_iterations=1, rollout_batch=n, step_batch=n // 2, ppo_epochs=1, ppo_lr=1e-6)
    rows = []

    class Log:
        def iteration(self, row, batch, records, bar=None):
            rows.append(row)

        def sample_table(self, *args):
            pass
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    p_ids, p_mask = lm.left_pad(prompts[:shape["rollouts_per_gpu"]], 0, device)
    t0 = time.time()
    with lm.autocast(device):
        r_ids, _, _ = lm.sample(policy, p_ids, p_mask, shape["response"], 1.0, 1, 0,
                                torch.Generator(device=device if device.type == "cuda" else "cpu").manual_seed(3))
    decode_s = time.time() - t0
    t0 = time.time()
    ppo.train_ppo(policy, ref, rm, value, Tok(), prompts, [{}] * n, pcfg, config.seeds(0), shape["response"], 1.0,
                  micro_batch=shape["micro_batch"], log=Log(), show=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.time() - t0
    peak = torch.cuda.max_memory_allocated() / GB if device.type == "cuda" else float("nan")
    plan = bench_memory.memory_plan(cfg, dist.world(), shard, lora_rank, False, shape)["peak"] / GB
    return {"model": name, "mode": ("--fsdp " if shard else "") + (f"--lora-rank {lora_rank}" if lora_rank else ""),
            "first_ratio": rows[0]["first_ratio"], "kl": rows[0]["kl"],
            "decode_tokens_per_s": r_ids.numel() / decode_s, "iteration_s": seconds, "peak_gib": peak,
            "planned_gib": plan}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fsdp", action="store_true", help="shard every model (under torchrun)")
    p.add_argument("--device", default="", help="cuda (default when there is one) or cpu")
    p.add_argument("--tiny", action="store_true", help="a tiny random config and shapes: checks the code path")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--out", default="bench_gpu.json")
    args = p.parse_args(argv)
    device = dist.init()
    if args.device:
        device = torch.device(args.device)
    shape = ({"rollouts_per_gpu": 2, "micro_batch": 1, "prompt": 8, "response": 6} if args.tiny else
             {"rollouts_per_gpu": 16, "micro_batch": 4, "prompt": 128, "response": 128})
    configs = [("tiny Llama", tiny())] if args.tiny else [("SmolLM2-135M", smollm2_config()), ("Llama ~1B", llama_1b())]
    results = []
    for name, cfg in configs:
        for rank in (0, args.lora_rank):
            results.append(one(name, cfg, device, rank, args.fsdp, shape))
    if dist.is_main():
        table = ["| model | mode | first ratio | KL | decode tokens/s | iteration s | peak GiB | planned GiB |",
                 "|---|---|---|---|---|---|---|---|"]
        table += [f"| {r['model']} | {r['mode'] or 'plain'} | {r['first_ratio']:.6f} | {r['kl']:.2e} | "
                  f"{r['decode_tokens_per_s']:.0f} | {r['iteration_s']:.1f} | {r['peak_gib']:.1f} | "
                  f"{r['planned_gib']:.1f} |" for r in results]
        print("\n".join(table))
        Path(args.out).write_text(json.dumps(results, indent=1))
    dist.close()


if __name__ == "__main__":
    main()
