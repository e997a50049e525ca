"""Reward Learning on Policy (RLP, Lang et al., NAACL 2024): the whole pipeline.

    python train.py                          # every stage, built-in task, runs/default
    python train.py --preset tiny --out runs/tiny   # the same on tiny sizes: about a minute, a first look
    python train.py --stage ppo --force      # redo one stage
    python train.py --model smollm2 --sft-data S --pref-data P --unlabeled-data U --eval-data E
                                             # your own model and data (docs/own_data.md)
    torchrun --standalone --nproc_per_node=2 train.py   # data parallel: 2 processes (GPUs, or CPU with gloo)
    torchrun --nnodes=2 --nproc_per_node=2 --rdzv-backend=c10d --rdzv-endpoint=HOST0:29500 --rdzv-id=rlp1 train.py
                                             # the same on each of 2 machines (docs/scale.md)
    torchrun --standalone --nproc_per_node=8 train.py --fsdp --lora-rank 16
                                             # every model sharded (FSDP2), LoRA adapters (docs/scale.md)

Stages, in the order STAGES lists them (each writes DIR/<folder>/ with a DONE marker once all its
outputs are on disk; `all` skips a stage whose output is complete, `--force` redoes it;
re-running a killed command resumes from the last complete stage, or the last PPO checkpoint):
    data        the built-in task's splits, or your files, checked (AlpacaFarm format) -> data/*.jsonl
    sft         Step 0, supervised fine-tuning (sft.py)                  -> sft/
    prefs       Step 1, two SFT samples per instruction + annotator,
                or your preference file                                   -> prefs/prefs.jsonl
    reward      Step 2, Bradley-Terry reward model from SFT (reward.py)   -> reward/
    ppo         Step 3, PPO from SFT against the Step-2 RM (ppo.py)       -> ppo/policy, ppo/value
    ppo_gold    the same PPO on the gold judge's score: the ceiling a perfect RM
                would give (built-in task only; skipped with your own data) -> ppo_gold/policy
    rlp_reward  Step 4, policy samples P, then the RM re-learned (Eq. 1, rlp.py)
                                                                          -> rlp_samples/, rlp_reward_{uml,spg}/
    rlp_ppo     Step 5, PPO from SFT against each re-learned RM          -> rlp_ppo_{uml,spg}/
    rlp_rounds  with --rlp-rounds k > 1: Steps 4-5 again, P from the last round's policy
                                                                          -> rlp_{samples,reward,ppo}_{uml,spg}_r2, ...
    eval        win-rate and gold score of every policy, RM accuracy     -> eval/results.{json,md}
with --controls, also (built-in task) an RM re-learned on fresh annotator labels of P and its PPO
(rlp_reward_fresh/, rlp_ppo_fresh/), and UML's RM with lambda = 0 (rlp_reward_uml0/).
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import config
import ppo
import reward
import rlp
import sft
import task
from extras import evaluate
from plumbing import data, dist, fsdp, models, runs
from plumbing.sampling import generate_texts, make_generator


# ----------------------------------------------------------------------------- data and Step 1

def stage_data(run: runs.Run, dest: Path, metrics) -> None:
    """The four splits in our AlpacaFarm form: the built-in task's, or the user's files, each
    record checked (and every prompt's length, with the model's tokenizer) up front, so a bad
    record stops the run before hours of training, naming its file and line."""
    cfg = run.cfg
    if cfg.data.builtin:
        splits = task.make_splits(run.seeds.base, cfg.data.n_sft, cfg.data.n_pref, cfg.data.n_unlabeled,
                                  cfg.data.n_eval, cfg.data.sft_noise, tuple(cfg.data.tasks.split(",")))
    else:
        splits = {name: data.read_user_records(path, name) for name, path in cfg.data.files.items()}
        with models.loading("--model", cfg.model.model):
            tokenizer = models.base_tokenizer(cfg.model.model)
        for rows in splits.values():
            models.encode_prompts(tokenizer, rows, cfg.model.prompt_style, cfg.model.max_prompt_len)
    for name, rows in splits.items():
        run.write_records(dest / f"{name}.jsonl", rows, where=not cfg.data.builtin)
    if not cfg.data.builtin:
        run.write_json(dest / "sources.json", runs.data_sources(cfg))
    run.log("  " + ", ".join(f"{k}: {len(v)}" for k, v in splits.items()))


def stage_prefs(run: runs.Run, dest: Path, metrics) -> None:
    """Step 1: two SFT samples per preference instruction, labelled by the simulated annotator (the
    gold judge with AlpacaFarm's ~25% label flips); with your own data, your preference file."""
    cfg = run.cfg
    if not cfg.data.builtin:  # your preference file: its labels are Step 1's human labels
        recs = run.records("pref", data.PREFERENCE)
        rows = [r for r in recs if r["output_1"] != r["output_2"]]  # equal outputs carry no preference
        if not rows:
            raise SystemExit(f"error: {cfg.data.pref_data}: every pair has two identical outputs; nothing to learn "
                             f"from")
        run.write_records(dest / "prefs.jsonl", rows, where=True)
        stats = dict(pairs=len(rows), identical_dropped=len(recs) - len(rows), source=cfg.data.pref_data)
        metrics.log(**stats)
        run.log(f"  {stats}")
        return
    tokenizer = run.tokenizer()
    policy = run.policy(run.require("sft"))
    recs = run.records("pref")
    outputs = generate_texts(policy, tokenizer, run.prompts(tokenizer, recs), 2, cfg.prefs.pref_temperature,
                             cfg.model.max_response_len, cfg.model.gen_batch,
                             make_generator(run.device, run.seeds.prefs), desc="prefs", show=run.show)
    rng = random.Random(run.seeds.prefs)
    rows, agree, gold = [], 0, 0.0
    identical = sum(o1 == o2 for o1, o2 in outputs)
    for r, (o1, o2) in zip(recs, outputs):
        if o1 == o2:  # two equal outputs carry no preference (and give zero BT gradient): dropped
            continue
        pref = task.annotate(r["instruction"], r["input"], o1, o2, cfg.prefs.flip_rate, rng)
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


# ----------------------------------------------------------------------------- the stages

@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline: everything else (the run loop, evaluation, figures,
    scripts/reproduce.py, the tests) reads these instead of lists of its own."""
    folder: str                 # its output: DIR/<folder>/
    flag: str                   # the --stage value that runs it
    step: str                   # the paper's step
    run: Callable               # fn(run, dest folder, metrics log)
    policy: str = ""            # the evaluation label of the policy it trains ("": none)
    rm: str = ""                # the evaluation label of the reward model it trains ("": none)
    method: str = ""            # uml / spg: runs only when --method includes it
    builtin_only: bool = False  # needs the built-in task's gold judge: skipped with your own data
    eval_index: int = -1        # a policy's place in evaluation (its seeds): a new policy takes the next number
    ppo: bool = False           # a PPO stage: resumes from its checkpoints; its policy is in DIR/<folder>/policy
    control: bool = False       # a control of Step 4, run with --controls
    round: int = 1              # the round of Steps 4-5 it belongs to, run with --rlp-rounds >= round

    @property
    def policy_dir(self) -> str:
        return f"{self.folder}/policy" if self.ppo else self.folder


STAGES = [
    Stage("data", "data", "–", stage_data),
    Stage("sft", "sft", "0", sft.stage_sft, policy="SFT", eval_index=0),
    Stage("prefs", "prefs", "1", stage_prefs),
    Stage("reward", "reward", "2", reward.stage_reward, rm="Step-2 RM"),
    Stage("ppo", "ppo", "3", ppo.stage_ppo, policy="PPO", eval_index=1, ppo=True),
    Stage("ppo_gold", "ppo_gold", "3, gold reward", ppo.stage_ppo_gold, policy="PPO (gold reward)",
          builtin_only=True, eval_index=4, ppo=True),
    Stage("rlp_samples", "rlp_reward", "4", rlp.stage_samples()),
    Stage("rlp_reward_uml", "rlp_reward", "4, UML", rlp.stage_uml(), rm="RLP-UML RM", method="uml"),
    Stage("rlp_reward_spg", "rlp_reward", "4, SPG", rlp.stage_spg(), rm="RLP-SPG RM", method="spg"),
    # the controls (--controls): fresh annotator labels in place of SPG's, and UML's code with lambda = 0
    Stage("rlp_reward_fresh", "rlp_reward", "4, control", rlp.stage_fresh, rm="Fresh-label RM", method="spg",
          builtin_only=True, control=True),
    Stage("rlp_reward_uml0", "rlp_reward", "4, control", rlp.stage_uml(lam=0.0), rm="UML RM, lambda 0",
          method="uml", control=True),
    Stage("rlp_ppo_uml", "rlp_ppo", "5, UML", rlp.stage_ppo("uml"), policy="RLP-UML", method="uml", eval_index=2,
          ppo=True),
    Stage("rlp_ppo_spg", "rlp_ppo", "5, SPG", rlp.stage_ppo("spg"), policy="RLP-SPG", method="spg", eval_index=3,
          ppo=True),
    Stage("rlp_ppo_fresh", "rlp_ppo", "5, control", rlp.stage_ppo("fresh"), policy="PPO, fresh labels",
          method="spg", builtin_only=True, control=True, eval_index=5, ppo=True),
]
# rounds 2 .. config.MAX_ROUNDS of Steps 4-5 (--rlp-rounds): each method samples P from its own
# policy of the round before and re-learns from the same start
for r in range(2, config.MAX_ROUNDS + 1):
    for i, m in enumerate(["uml", "spg"]):
        STAGES += [
            Stage(rlp.folder("samples", m, r), "rlp_rounds", f"4, round {r}", rlp.stage_samples(m, r), method=m, round=r),
            Stage(rlp.folder("reward", m, r), "rlp_rounds", f"4, {m.upper()}, round {r}",
                  rlp.stage_uml(r) if m == "uml" else rlp.stage_spg(r), rm=f"RLP-{m.upper()} RM, round {r}",
                  method=m, round=r),
            Stage(rlp.folder("ppo", m, r), "rlp_rounds", f"5, {m.upper()}, round {r}", rlp.stage_ppo(m, r),
                  policy=f"RLP-{m.upper()}, round {r}", method=m, round=r, eval_index=6 + 2 * (r - 2) + i, ppo=True)]
STAGES.append(Stage("eval", "eval", "–", lambda run, dest, metrics: evaluate.stage_eval(run, dest, metrics, STAGES)))


def flags() -> list[str]:
    """The --stage values, in pipeline order."""
    return list(dict.fromkeys(s.flag for s in STAGES))


def plan(cfg: config.Config) -> list[Stage]:
    """The stages the settings ask for, in pipeline order. A single --stage other than data also
    gets the data stage (cheap and deterministic: its splits are made on demand)."""
    methods = ["uml", "spg"] if cfg.run.method == "both" else [cfg.run.method]
    chosen = [s for s in STAGES if (cfg.run.stage == "all" or s.flag == cfg.run.stage)
              and (not s.method or s.method in methods) and (cfg.data.builtin or not s.builtin_only)
              and (cfg.run.controls or not s.control) and s.round <= cfg.rlp.rlp_rounds]
    if cfg.run.stage not in ("all", "data"):
        chosen = [STAGES[0]] + chosen
    return chosen


def check_models(cfg: config.Config) -> list:
    """Every model the requested stages will load, found before the first one runs."""
    chosen = plan(cfg)
    scorers = any(s.rm or s.ppo or s.folder == "eval" for s in chosen)  # they build RMs or value models
    return runs.find_models(cfg, {s.folder for s in chosen}, scorers)


def main(argv=None) -> None:
    cfg = config.parse_args(argv, __doc__, flags())
    if cfg.run.stage not in flags() + ["all"]:
        raise SystemExit(f"error: --stage must be one of {', '.join(flags() + ['all'])}, got {cfg.run.stage!r}")
    fsdp.check_launch(cfg.scale.fsdp)
    device = dist.init()
    try:
        runs.run_stages(cfg, device, [(s.folder, s.run) for s in plan(cfg)], order=[s.folder for s in STAGES],
                        resumable={s.folder for s in STAGES if s.ppo}, hints={s.folder: s.flag for s in STAGES},
                        check_models=check_models, summaries={"eval"})
    finally:
        dist.close()


def cli(argv=None) -> None:
    """`python train.py`: main, with bad data reported as one clear line, not a traceback."""
    try:
        main(argv)
    except data.DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    cli()
