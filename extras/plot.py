"""Figures and reward-hacking examples of a run, drawn from the files the run already wrote.

    python scripts/plot.py RUN_DIR                        # (re)draw RUN_DIR/eval/*.png and eval/hacks.md
    python scripts/plot.py RUN_DIR --out figures/default  # the same files into another folder

`eval` calls `draw` at its end, and its results.md embeds the figures. Everything is read from
files every run writes, so a finished run, an old run or a run still in progress can be drawn,
and nothing here computes a number that a table reports:
  ppo_curves.png   every PPO stage's metrics.jsonl (a stage still running is read from its
                   .STAGE.partial folder): per iteration, the score of the rollouts under the
                   reward the stage optimises, their gold score (built-in task) and their KL to
                   the SFT reference, one panel each, every stage on the same axes
  win_rates.png    eval/results.json: each policy's win-rate against the reference, 95% CI
  rm_accuracy.png  eval/results.json (gold judge): each RM's pairwise accuracy on each policy's samples
  hacks.md         eval/outputs.jsonl (the Step-2 RM score and gold score of every answer): per
                   policy, the answers the Step-2 RM rates highest and the gold judge lowest
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from plumbing import data
from plumbing.metrics import markdown_table
# one colour per policy in every figure (matplotlib's default colours for any other name)
COLORS = {"SFT": "tab:gray", "Best-of-n": "tab:brown", "PPO": "tab:red", "PPO (gold reward)": "tab:green",
          "RLP-UML": "tab:blue", "RLP-SPG": "tab:purple",
          "Step-2 RM": "tab:red", "RLP-UML RM": "tab:blue", "RLP-SPG RM": "tab:purple"}  # an RM: its policy's
CURVES = [("score", "score under the reward it optimises (RM units)"),
          ("gold", "gold score (the true quality)"),
          ("kl", "KL to the SFT reference (nats per response)")]
HACKS_PER_POLICY = 5
DPI = 120


def read_jsonl(path) -> list[dict]:
    """The rows of a log; a last line still being written (a run in progress) is left out."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1:
                raise data.DataError(f"{path}:{i + 1}: malformed JSON") from None
    return rows


def ppo_logs(run_dir, stages) -> dict[str, list[dict]]:
    """label -> the per-iteration rows of each PPO stage (of `stages`, train.STAGES) that has
    logged any, in pipeline order; a stage missing from the run is left out, and one still running
    (no complete folder yet) is read from its .STAGE.partial folder and labelled "(running)"."""
    run_dir = Path(run_dir)
    logs = {}
    for stage, label in [(s.folder, s.policy) for s in stages if s.ppo]:
        for path, suffix in [(run_dir / stage / "metrics.jsonl", ""),
                             (run_dir / f".{stage}.partial" / "metrics.jsonl", " (running)")]:
            if path.is_file():
                rows = [r for r in read_jsonl(path) if "iteration" in r]
                if rows:
                    logs[label + suffix] = rows
                break
    return logs


def color(label: str):
    return COLORS.get(label.removesuffix(" (running)"))


def ppo_figure(logs: dict[str, list[dict]]):
    """One panel per quantity of CURVES that some stage logged (a stage without a key, e.g. no
    gold score with your own data, is simply not drawn in that panel), every stage in each."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    keys = [(k, title) for k, title in CURVES if any(k in r for rows in logs.values() for r in rows)]
    fig = Figure(figsize=(4.6 * len(keys), 3.8))
    axes = fig.subplots(1, len(keys), sharex=True, squeeze=False)[0]
    for ax, (key, title) in zip(axes, keys):
        for label, rows in logs.items():
            points = [(r["iteration"], r[key]) for r in rows if key in r]
            if points:
                ax.plot([x for x, _ in points], [y for _, y in points], label=label, color=color(label), lw=1.3)
        if key == "score" and any(label.startswith("PPO (gold reward)") for label in logs):
            title += "\nPPO (gold reward): the gold judge's normalised score"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("PPO iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("The rollouts of each PPO stage, per iteration", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the panels
    return fig


def bar_labels(ax, bars, values, fmt="{:.1f}", inside=False) -> None:
    """Each bar's value above it, or inside it at its foot (clear of error bars)."""
    for bar, v in zip(bars, values):
        ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, 0 if inside else bar.get_height()),
                    ha="center", va="bottom", fontsize=7, color="white" if inside else "black", xytext=(0, 3),
                    textcoords="offset points")


def win_rate_figure(results: dict):
    """Each policy's win-rate (%) against the reference with its 95% CI, as results.json has them."""
    from matplotlib.figure import Figure
    names = list(results["policies"])
    rates = [results["policies"][n]["win_rate"] for n in names]
    cis = [results["policies"][n]["win_rate_ci"] for n in names]
    fig = Figure(figsize=(1.3 * len(names) + 2.5, 3.8))
    ax = fig.subplots()
    bars = ax.bar(names, rates, yerr=cis, capsize=4, color=[COLORS.get(n, "tab:olive") for n in names])
    bar_labels(ax, bars, rates, inside=True)
    ax.axhline(50, color="black", lw=0.8, ls="--")  # as good as the reference
    ax.set_ylabel("win-rate vs reference (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Win-rate against the reference, 95% CI ({results['n_eval']} instructions; judge: "
                 f"{results['judge']})", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def rm_accuracy_figure(results: dict):
    """Grouped bars: each RM's pairwise accuracy (%) on the gold-labelled pairs sampled from each
    policy (the off-distribution claim), as results.json has them."""
    from matplotlib.figure import Figure
    accuracy = results["rm_accuracy"]
    rms = list(accuracy)
    sources = list(next(iter(accuracy.values())))
    fig = Figure(figsize=(1.6 * len(sources) + 4, 3.8))
    ax = fig.subplots()
    width = 0.8 / len(rms)
    for k, rm in enumerate(rms):
        values = [100 * accuracy[rm][s]["accuracy"] for s in sources]
        bars = ax.bar([i + (k - (len(rms) - 1) / 2) * width for i in range(len(sources))], values, width, label=rm,
                      color=COLORS.get(rm))
        bar_labels(ax, bars, values, "{:.0f}")
    ax.axhline(50, color="black", lw=0.8, ls="--")  # chance
    ax.set_xticks(range(len(sources)), [f"{s} samples" for s in sources], fontsize=8)
    ax.set_ylabel("pairwise accuracy vs gold (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Reward-model accuracy on each policy's samples (dashed: chance)", fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- reward hacking

def rank_fractions(values: list[float]) -> list[float]:
    """Each value's rank among `values` scaled to [0, 1] (0 the lowest, 1 the highest); equal
    values share their mean rank."""
    n = len(values)
    order = sorted(range(n), key=values.__getitem__)
    ranks = [0.0] * n
    i = 0
    while i < n:
        j = i
        while j + 1 < n and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in order[i:j + 1]:
            ranks[k] = (i + j) / 2 / max(n - 1, 1)
        i = j + 1
    return ranks


def hack_indices(rm: list[float], gold: list[float], k: int = HACKS_PER_POLICY) -> list[int]:
    """The k answers the Step-2 RM rates highest and the gold judge lowest: largest (RM rank -
    gold rank), both ranks among the policy's own answers in [0, 1]; only answers the gold judge
    gives less than full marks; ties by position."""
    rm_rank, gold_rank = rank_fractions(rm), rank_fractions(gold)
    wrong = [i for i in range(len(rm)) if gold[i] < 1.0]
    return sorted(wrong, key=lambda i: (gold_rank[i] - rm_rank[i], i))[:k]


def hacks_markdown(rows: list[dict]) -> str:
    """eval/hacks.md from eval/outputs.jsonl rows (each with "rm_score" and "gold_score" per
    method): per policy, its HACKS_PER_POLICY answers the Step-2 RM most over-rates."""
    import task
    policies = [name for name in rows[0]["rm_score"] if name != "reference" and name in rows[0]["gold_score"]]
    out = ["# Reward hacking: answers the Step-2 RM rates highest and the gold judge lowest", "",
           f"Per policy, from its answers to the {len(rows)} evaluation instructions (`outputs.jsonl`): the "
           f"{HACKS_PER_POLICY} answers with the largest gap between their rank by Step-2 RM score and their rank "
           f"by gold score (percentiles among the policy's own answers: 100 = the highest), among the answers "
           f"the gold judge does not give full marks. RM scores are in RM units (mean 0, std 1 on SFT samples).",
           ""]
    for name in policies:
        rm = [r["rm_score"][name] for r in rows]
        gold = [r["gold_score"][name] for r in rows]
        rm_rank, gold_rank = rank_fractions(rm), rank_fractions(gold)
        out += [f"## {name}", "", f"Mean Step-2 RM score {sum(rm) / len(rm):.2f}, mean gold score "
                                  f"{sum(gold) / len(gold):.3f}, {sum(g == 1.0 for g in gold)} of {len(gold)} "
                                  f"answers right.", ""]
        table = []
        for i in hack_indices(rm, gold):
            rec = rows[i]
            try:
                right = task.solve(rec["instruction"], rec["input"])
            except ValueError:  # not one of the built-in task's instructions
                right = ""
            table.append({"instruction": rec["instruction"], "input": rec["input"],
                          "answer": json.dumps(rec[name], ensure_ascii=False),  # quoted: spaces, empty, newlines
                          "right answer": right,
                          "Step-2 RM score (percentile)": f"{rm[i]:.2f} ({100 * rm_rank[i]:.0f})",
                          "gold score (percentile)": f"{gold[i]:.3f} ({100 * gold_rank[i]:.0f})"})
        out += [markdown_table(table) if table else "(every answer is right)", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- writing

def save(fig, path: Path) -> None:
    """A PNG, written under a temporary name and renamed (no half-written figure)."""
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)


def draw(run_dir, stages, eval_dir=None, out_dir=None) -> list[str]:
    """Draw what the run's files allow into out_dir (default eval_dir, default RUN_DIR/eval):
    the PPO curves from the stages' logs, the win-rate and RM-accuracy figures from
    eval_dir/results.json, hacks.md from eval_dir/outputs.jsonl. Returns the names written."""
    run_dir = Path(run_dir)
    eval_dir = Path(eval_dir) if eval_dir is not None else run_dir / "eval"
    out_dir = Path(out_dir) if out_dir is not None else eval_dir
    figures = []
    logs = ppo_logs(run_dir, stages)
    if logs:
        figures.append(("ppo_curves.png", ppo_figure(logs)))
    results_path = eval_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else None
    if results and results.get("policies"):
        figures.append(("win_rates.png", win_rate_figure(results)))
    if results and results.get("rm_accuracy"):
        figures.append(("rm_accuracy.png", rm_accuracy_figure(results)))
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, fig in figures:
        save(fig, out_dir / name)
    names = [name for name, _ in figures]
    outputs = eval_dir / "outputs.jsonl"
    rows = read_jsonl(outputs) if outputs.is_file() else []
    if rows and "rm_score" in rows[0] and "gold_score" in rows[0]:  # an eval with the gold judge and a Step-2 RM
        data.atomic_write_text(out_dir / "hacks.md", hacks_markdown(rows))
        names.append("hacks.md")
    return names


def embed(names: list[str]) -> str:
    """The markdown results.md appends: the figures (beside it in eval/) and a link to hacks.md."""
    text = "".join(f"\n![{name[:-4]}]({name})\n" for name in names if name.endswith(".png"))
    if "hacks.md" in names:
        text += "\nReward-hacking examples (answers the Step-2 RM rates highest and the gold judge lowest): " \
                "[hacks.md](hacks.md)\n"
    return text
