"""The paper's evidence, reproduced on the built-in task: one command writes RESULTS.md and figures/.

    python reproduce.py                  # everything (about 45 min on a 2-core CPU)
    python reproduce.py --tiny           # the same runs with a tiny config (a smoke test, ~1 min)

Runs, all under --runs (default runs/reproduce); a run whose eval is complete is skipped, so a
killed reproduction continues where it stopped (and train.py resumes inside a run):
  seed{S}       the whole pipeline with --seed S                     main table, off-distribution claim
  uml_{loss}    RLP-UML with --uml-loss mvi / infomax / contrastive  Table 4 (mib is seed0)
  spg_{labels}  RLP-SPG with Select-All (gamma 0), reward, rlaif     Table 5 (consistency is seed0)
  gamma_{g}, n_{n}, lambda_{l}                                       sensitivity (0.5 / 10 / 0.5 are seed0)
A variant starts as a copy of seed 0's finished stages that its settings do not change (every
stage before Step 4; for n, before the set P) and train.py runs the rest. Ablations and
sensitivity use seed 0 only (the time budget); the main table is over every --seeds.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
POLICIES = ["SFT", "Best-of-n", "PPO", "RLP-UML", "RLP-SPG"]
TINY = ["--n-sft", "200", "--n-pref", "64", "--n-unlabeled", "64", "--n-eval", "32", "--sft-steps", "30",
        "--ppo-iterations", "4", "--rollout-batch", "32", "--step-batch", "16", "--rlp-n", "4", "--best-of-n", "4",
        "--model-hidden", "32", "--model-layers", "2", "--model-heads", "2", "--rm-epochs", "1"]
BEFORE_STEP4 = ["data", "sft", "prefs", "reward", "ppo", "rlp_samples"]

# name: (seed-0 stages copied, train.py flags)
VARIANTS = {
    "uml_mvi": (BEFORE_STEP4, ["--method", "uml", "--uml-loss", "mvi"]),
    "uml_infomax": (BEFORE_STEP4, ["--method", "uml", "--uml-loss", "infomax"]),
    "uml_contrastive": (BEFORE_STEP4, ["--method", "uml", "--uml-loss", "contrastive"]),
    "spg_select_all": (BEFORE_STEP4, ["--method", "spg", "--spg-gamma", "0"]),
    "spg_reward": (BEFORE_STEP4, ["--method", "spg", "--synthetic-labels", "reward"]),
    "spg_rlaif": (BEFORE_STEP4, ["--method", "spg", "--synthetic-labels", "rlaif"]),
    "gamma_0.3": (BEFORE_STEP4, ["--method", "spg", "--spg-gamma", "0.3"]),
    "gamma_0.7": (BEFORE_STEP4, ["--method", "spg", "--spg-gamma", "0.7"]),
    "n_4": (BEFORE_STEP4[:-1], ["--rlp-n", "4"]),
    "lambda_0.1": (BEFORE_STEP4, ["--method", "uml", "--uml-lambda", "0.1"]),
    "lambda_1": (BEFORE_STEP4, ["--method", "uml", "--uml-lambda", "1"]),
}

# Student-t 97.5% quantiles for a 95% interval over a few seeds (df = seeds - 1)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% Student-t interval over seeds (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, T975.get(n - 1, 1.96) * sd / math.sqrt(n)


def run_seconds(out: Path) -> float:
    """A finished run's wall time: what reproduce.py measured (reproduce.json), else the sum of its
    stages (timings.jsonl, without process start-up)."""
    if (out / "reproduce.json").is_file():
        return read(out / "reproduce.json")["seconds"]
    return sum(r["seconds"] for r in metrics(out / "timings.jsonl")) if (out / "timings.jsonl").is_file() else 0.0


def train(out: Path, args: list[str], log) -> float:
    """Run train.py to completion (skipped when its eval is done); returns its wall time."""
    if (out / "eval" / "DONE").is_file():
        log(f"  {out.name}: complete, skipped")
        return run_seconds(out)
    t0 = time.time()
    cmd = [sys.executable, str(ROOT / "train.py"), "--out", str(out), "--quiet", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.is_dir():
        (out / "reproduce.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    seconds = time.time() - t0
    (out / "reproduce.json").write_text(json.dumps({"seconds": round(seconds, 1)}) + "\n")
    log(f"  {out.name}: {seconds:.0f} s")
    return seconds


def start_variant(base: Path, out: Path, stages: list[str]) -> None:
    """A new run folder holding copies of the base run's finished `stages` (not its config.json:
    the variant's own settings are saved when train.py starts)."""
    if out.exists():
        return
    tmp = out.with_name(out.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in stages:
        shutil.copytree(base / name, tmp / name)
    os.replace(tmp, out)


def read(path: Path):
    return json.loads(path.read_text())


def metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def stage_metric(run: Path, stage: str, key: str):
    rows = [r for r in metrics(run / stage / "metrics.jsonl") if key in r]
    return rows[-1][key] if rows else None


def fmt(mean: float, ci: float, digits: int = 1) -> str:
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


# ----------------------------------------------------------------------------- tables

def main_table(seed_runs: list[Path]) -> str:
    rows = ["| method | win-rate vs reference (%) | mean gold score | per seed (win-rate) |", "|---|---|---|---|"]
    for name in POLICIES:
        wins = [read(r / "eval" / "results.json")["policies"][name]["win_rate"] for r in seed_runs]
        gold = [read(r / "eval" / "results.json")["policies"][name]["gold_score"] for r in seed_runs]
        rows.append(f"| {name} | {fmt(*mean_ci(wins))} | {fmt(*mean_ci(gold), digits=3)} | "
                    f"{', '.join(f'{w:.1f}' for w in wins)} |")
    return "\n".join(rows)


def rm_table(seed_runs: list[Path]) -> str:
    first = read(seed_runs[0] / "eval" / "results.json")["rm_accuracy"]
    sources = list(next(iter(first.values())))
    rows = ["| reward model | " + " | ".join(f"{s} samples" for s in sources) + " |", "|---|" + "---|" * len(sources)]
    for rm in first:
        cells = []
        for s in sources:
            accs = [100 * read(r / "eval" / "results.json")["rm_accuracy"][rm][s]["accuracy"] for r in seed_runs]
            cells.append(fmt(*mean_ci(accs)))
        rows.append(f"| {rm} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def policy_row(run: Path, policy: str) -> str:
    r = read(run / "eval" / "results.json")["policies"][policy]
    return f"{r['win_rate']:.1f} ± {r['win_rate_ci']:.1f} | {r['gold_score']:.3f}"


def rm_acc(run: Path, rm: str, source: str) -> str:
    acc = read(run / "eval" / "results.json")["rm_accuracy"][rm][source]
    return f"{100 * acc['accuracy']:.1f} (n={acc['pairs']})"


def uml_table(runs: dict[str, Path], first: str = "representation loss") -> str:
    rows = [f"| {first} | RLP-UML win-rate (%) | gold score | UML RM accuracy on PPO samples (%) |",
            "|---|---|---|---|"]
    for label, run in runs.items():
        rows.append(f"| {label} | {policy_row(run, 'RLP-UML')} | {rm_acc(run, 'RLP-UML RM', 'PPO')} |")
    return "\n".join(rows)


def spg_table(runs: dict[str, Path], first: str = "synthetic labels") -> str:
    rows = [f"| {first} | pairs | label accuracy vs gold (%) | RLP-SPG win-rate (%) | gold score |",
            "|---|---|---|---|---|"]
    for label, run in runs.items():
        acc = stage_metric(run, "rlp_reward_spg", "label_accuracy_gold")
        pairs = stage_metric(run, "rlp_reward_spg", "pairs")
        none = stage_metric(run, "rlp_reward_spg", "no_preference")
        cell = f"{100 * acc:.1f}" if acc is not None else f"n/a: no pairs ({none} judged ties)" if none else "n/a"
        rows.append(f"| {label} | {pairs} | {cell} | "
                    f"{policy_row(run, 'RLP-SPG')} |")
    return "\n".join(rows)


def findings(seed_runs: list[Path]) -> str:
    """Plain statements computed from the numbers: the benchmark's premise, then the orderings."""
    res = [read(r / "eval" / "results.json") for r in seed_runs]
    n = len(res)
    lines = []
    for stage, label in [("ppo", "PPO (Step 3)"), ("rlp_ppo_uml", "RLP-UML (Step 5)"), ("rlp_ppo_spg", "RLP-SPG (Step 5)")]:
        curves = [[r for r in metrics(run / stage / "metrics.jsonl") if "iteration" in r] for run in seed_runs]
        k = max(1, min(5, min(len(c) for c in curves) // 4))
        avg = lambda key, part: sum(sum(r[key] for r in part(c)) / k for c in curves) / n  # noqa: E731
        head, tail = (lambda c: c[:k]), (lambda c: c[-k:])
        lines.append(f"- {label}: the RM score of the rollouts goes from {avg('score', head):.2f} to "
                     f"{avg('score', tail):.2f}, their gold score from {avg('gold', head):.3f} to "
                     f"{avg('gold', tail):.3f}, the KL to SFT from {avg('kl', head):.1f} to {avg('kl', tail):.1f} "
                     f"nats (first vs last {k} iterations, mean over seeds).")
    acc = lambda rm, src: sum(100 * r["rm_accuracy"][rm][src]["accuracy"] for r in res) / n  # noqa: E731
    lines.append(f"- The Step-2 RM is {acc('Step-2 RM', 'SFT'):.1f}% accurate on SFT samples and "
                 f"{acc('Step-2 RM', 'PPO'):.1f}% on PPO samples; on PPO samples the RLP-UML RM is "
                 f"{acc('RLP-UML RM', 'PPO'):.1f}% and the RLP-SPG RM {acc('RLP-SPG RM', 'PPO'):.1f}% (mean over seeds).")
    for a, b in [("RLP-UML", "PPO"), ("RLP-SPG", "PPO"), ("RLP-SPG", "RLP-UML"), ("PPO", "SFT"), ("RLP-UML", "SFT"),
                 ("RLP-SPG", "SFT"), ("Best-of-n", "SFT")]:
        diffs = [r["policies"][a]["win_rate"] - r["policies"][b]["win_rate"] for r in res]
        wins = sum(d > 0 for d in diffs)
        mean, ci = mean_ci(diffs)
        lines.append(f"- {a} vs {b}: higher win-rate in {wins} of {n} seeds; difference {mean:+.1f} ± {ci:.1f} points.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures

def figures(seed_runs: list[Path], out_dir: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for stage, label in [("ppo", "PPO (Step-2 RM)"), ("rlp_ppo_uml", "RLP-UML"), ("rlp_ppo_spg", "RLP-SPG")]:
        curves = [[r for r in metrics(run / stage / "metrics.jsonl") if "iteration" in r] for run in seed_runs]
        n = min(len(c) for c in curves)
        for ax, key in zip(axes, ["gold", "score"]):
            ys = [sum(c[i][key] for c in curves) / len(curves) for i in range(n)]
            ax.plot(range(n), ys, label=label)
    axes[0].set_title("gold score of the rollouts")
    axes[1].set_title("RM score of the rollouts (the RM each run optimises)")
    for ax in axes:
        ax.set_xlabel("PPO iteration")
        ax.legend()
    fig.suptitle(f"Over-optimisation: mean over {len(seed_runs)} seeds")
    fig.tight_layout()
    fig.savefig(out_dir / "overoptimisation.png", dpi=120)
    plt.close(fig)
    names.append("overoptimisation.png")

    res = [read(r / "eval" / "results.json")["rm_accuracy"] for r in seed_runs]
    rms, sources = list(res[0]), list(next(iter(res[0].values())))
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / len(rms)
    for k, rm in enumerate(rms):
        means = [sum(100 * r[rm][s]["accuracy"] for r in res) / len(res) for s in sources]
        ax.bar([i + k * width for i in range(len(sources))], means, width, label=rm)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xticks([i + width * (len(rms) - 1) / 2 for i in range(len(sources))], [f"{s} samples" for s in sources])
    ax.set_ylabel("pairwise accuracy vs gold (%)")
    ax.set_title(f"RM accuracy on each policy's samples, before (Step-2) and after re-learning; {len(res)} seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "rm_accuracy.png", dpi=120)
    plt.close(fig)
    names.append("rm_accuracy.png")
    return names


# ----------------------------------------------------------------------------- main

def hardware() -> str:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {gpu}; Python "
            f"{platform.python_version()}, torch {torch.__version__}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the main table (default 0 1 2)")
    p.add_argument("--runs", default="runs/reproduce", help="folder of the runs (default runs/reproduce)")
    p.add_argument("--results", default="RESULTS.md", help="report to write (default RESULTS.md)")
    p.add_argument("--figures", default="figures", help="folder of the PNG figures (default figures)")
    p.add_argument("--tiny", action="store_true", help="a tiny config: checks the script, not the paper")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    common = TINY if args.tiny else []
    t0 = time.time()
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    seconds = {}
    for s in args.seeds:
        seconds[f"seed{s}"] = train(runs / f"seed{s}", ["--seed", str(s), *common], log)
    base = runs / f"seed{args.seeds[0]}"
    for name, (stages, flags) in VARIANTS.items():
        start_variant(base, runs / name, stages)
        seconds[name] = train(runs / name, ["--seed", str(args.seeds[0]), *common, *flags], log)
    wall = time.time() - t0

    seed_runs = [runs / f"seed{s}" for s in args.seeds]
    v = lambda name: runs / name  # noqa: E731
    pics = figures(seed_runs, Path(args.figures))
    fig_rel = os.path.relpath(args.figures, Path(args.results).parent or ".")
    command = "python reproduce.py" + (" --tiny" if args.tiny else "") + \
        ("" if args.seeds == [0, 1, 2] else " --seeds " + " ".join(map(str, args.seeds)))
    report = f"""# Results on the built-in task

Produced by `{command}`: {sum(seconds.values()) / 60:.1f} min of wall time in all (the sum of the
runs' own wall times; this last invocation took {wall / 60:.1f} min) on: {hardware()}. {len(args.seeds)} seeds for the main table ({', '.join(map(str, args.seeds))}); the
ablations and the sensitivity use seed {args.seeds[0]}. Every number below is read from the runs in
`{runs}` (`eval/results.json`, `*/metrics.jsonl`).

## Findings, computed from the numbers below

{findings(seed_runs)}

## Main table (paper Table 2)

Win-rate against one fixed SFT reference output per evaluation instruction, judged by the gold
judge (tie = half), and mean gold score. ± = 95% Student-t interval over seeds.

{main_table(seed_runs)}

## Reward-model accuracy on policy samples (the off-distribution claim)

Pairwise accuracy (%) against the gold judge on pairs of two samples (T = 1) per evaluation
instruction from each policy; mean ± 95% interval over seeds.

{rm_table(seed_runs)}

## Representation loss for RLP-UML (paper Table 4), seed {args.seeds[0]}

± = 95% interval over evaluation instructions (one seed).

{uml_table({"MIB (the paper's L_M)": base, "MVI: I(z_1; z_2) only": v("uml_mvi"),
            "InfoMax: I(v; z) only": v("uml_infomax"), "contrastive (InfoNCE)": v("uml_contrastive")})}

## Synthetic preferences for RLP-SPG (paper Table 5), seed {args.seeds[0]}

{spg_table({"SPG (self-consistency, gamma 0.5)": base, "Select-All (gamma 0)": v("spg_select_all"),
            "Reward (Step-2 RM ranks two samples)": v("spg_reward"), "RLAIF (the policy judges)": v("spg_rlaif")})}

## Sensitivity, seed {args.seeds[0]}

SPG confidence threshold gamma:

{spg_table({"gamma 0": v("spg_select_all"), "gamma 0.3": v("gamma_0.3"), "gamma 0.5": base,
            "gamma 0.7": v("gamma_0.7")}, "gamma")}

Samples per instruction n (both methods):

| n | RLP-UML win-rate | gold | RLP-SPG win-rate | gold | SPG pairs |
|---|---|---|---|---|---|
| 4 | {policy_row(v("n_4"), "RLP-UML")} | {policy_row(v("n_4"), "RLP-SPG")} | {stage_metric(v("n_4"), "rlp_reward_spg", "pairs")} |
| 10 | {policy_row(base, "RLP-UML")} | {policy_row(base, "RLP-SPG")} | {stage_metric(base, "rlp_reward_spg", "pairs")} |

UML weight lambda:

{uml_table({"lambda 0.1": v("lambda_0.1"), "lambda 0.5": base, "lambda 1": v("lambda_1")}, "lambda")}

## Figures

![over-optimisation]({fig_rel}/{pics[0]})

![RM accuracy]({fig_rel}/{pics[1]})

## Wall time of each run

| run | seconds |
|---|---|
""" + "\n".join(f"| {k} | {s:.0f} |" for k, s in seconds.items()) + "\n"
    Path(args.results).write_text(report)
    log(f"wrote {args.results} and {args.figures}/ in {wall / 60:.1f} min")


if __name__ == "__main__":
    main()
