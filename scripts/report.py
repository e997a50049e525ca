"""RESULTS.md and figures/ from the runs' records (results/runs/*.json.gz, written by
scripts/reproduce.py). Every number is computed here from those records; nothing is typed in.

    python scripts/reproduce.py --report-only     # the usual way in

How methods are compared: on the same seed (same data, SFT model, preferences, Step-2 RM and
reference answers), the difference of two methods is taken per seed, then summarised over seeds
(mean, 95% Student-t interval, how many seeds are higher, every seed's value), in three metrics:
win-rate against the reference (a tie counts half), exact accuracy and mean gold score.
"""
from __future__ import annotations

import gzip
import importlib.metadata
import json
import math
import os
import platform
import random
import statistics
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from extras.evaluate import policy_labels  # noqa: E402

LABEL = {s.folder: (s.policy or s.rm) for s in train.STAGES}
SFT, PPO, GOLD = LABEL["sft"], LABEL["ppo"], LABEL["ppo_gold"]
UML, SPG, FRESH = LABEL["rlp_ppo_uml"], LABEL["rlp_ppo_spg"], LABEL["rlp_ppo_fresh"]
STEP2_RM, UML_RM, SPG_RM = LABEL["reward"], LABEL["rlp_reward_uml"], LABEL["rlp_reward_spg"]
FRESH_RM, UML0_RM = LABEL["rlp_reward_fresh"], LABEL["rlp_reward_uml0"]
BEST_OF_N = "Best-of-n"
# (metric key in results.json, its name, scale to points, digits)
METRICS = [("win_rate", "win-rate (points)", 1.0, 1), ("accuracy", "exact accuracy (points)", 100.0, 1),
           ("gold_score", "mean gold score (×100)", 100.0, 1)]
PAIRED = [(PPO, SFT), (BEST_OF_N, SFT), (GOLD, PPO), (SPG, PPO), (UML, PPO), (FRESH, PPO), (SPG, UML)]
PACKAGES = ["torch", "transformers", "tokenizers", "safetensors", "numpy"]
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 19: 2.093, 29: 2.045}


# ----------------------------------------------------------------------------- statistics

def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of a 95% Student-t interval over seeds (nan for one value: no interval)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = T975.get(n - 1) or T975[max(k for k in T975 if k <= n - 1)]
    return mean, t * sd / math.sqrt(n)


def paired_differences(a: list[float], b: list[float]) -> dict:
    """Per-seed differences a_s - b_s of two methods run on the same seeds, their mean with a 95%
    Student-t interval over seeds, and in how many seeds a is higher. Pairing removes what the
    seeds share, so this is the comparison to trust, not two separate intervals."""
    diffs = [x - y for x, y in zip(a, b)]
    mean, ci = mean_ci(diffs)
    return {"diffs": diffs, "mean": mean, "ci": ci, "higher": sum(d > 0 for d in diffs), "n": len(diffs)}


def ratio_interval(num: list[float], den: list[float], draws: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """mean(num) / mean(den) over seeds, and a 95% percentile bootstrap interval (seeds resampled
    with replacement, the same seeds in numerator and denominator). A ratio of per-seed ratios
    would explode on seeds where the denominator is near 0; this does not. All three are nan when
    the yardstick itself is not clearly away from 0 (mean(den) = 0, or its sign flips in more than
    2.5% of the resamples): a share of a gain that may be nothing is not a number to report."""
    n = len(num)
    total = sum(den)
    if not total:
        return math.nan, math.nan, math.nan
    rng = random.Random(seed)
    boots, flips = [], 0
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        d = sum(den[i] for i in idx)
        if d * total <= 0:
            flips += 1
        else:
            boots.append(sum(num[i] for i in idx) / d)
    if flips > 0.025 * draws:
        return math.nan, math.nan, math.nan
    boots.sort()
    return sum(num) / total, boots[int(0.025 * len(boots))], boots[int(0.975 * len(boots)) - 1]


def fmt_number(x: float) -> str:
    """A setting as it appears in a run's name: 1.0 -> "1", 0.05 -> "0.05"."""
    return str(int(x)) if float(x).is_integer() else str(x)


def fmt(mean: float, ci: float, digits: int = 1, sign: str = "") -> str:
    """"mean ± ci"; the mean alone when there is no interval (one seed)."""
    if mean != mean:
        return "–"
    return f"{mean:{sign}.{digits}f}" + ("" if math.isnan(ci) else f" ± {ci:.{digits}f}")


def pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.0f}%"


# ----------------------------------------------------------------------------- reading records

def load(records: Path) -> dict[str, dict]:
    out = {}
    for path in sorted(Path(records).glob("*.json.gz")):
        rec = json.loads(gzip.decompress(path.read_bytes()))
        out[rec["name"]] = rec
    return out


def value(rec: dict, policy: str, key: str, scale: float = 1.0) -> float:
    """A policy's metric in a run (nan when the run has no such policy)."""
    row = rec["results"]["policies"].get(policy)
    return scale * row[key] if row else math.nan


def rm_acc(rec: dict, rm: str, source: str) -> float:
    row = rec["results"].get("rm_accuracy", {}).get(rm, {}).get(source)
    return 100 * row["accuracy"] if row else math.nan


def stage_rows(rec: dict, stage: str) -> list[dict]:
    return rec["metrics"].get(stage, [])


def last(rec: dict, stage: str, key: str):
    rows = [r for r in stage_rows(rec, stage) if key in r]
    return rows[-1][key] if rows else math.nan


def have(runs: list[dict], policy: str) -> bool:
    return bool(runs) and all(policy in r["results"]["policies"] for r in runs)


def series(runs: list[dict], policy: str, key: str, scale: float = 1.0) -> list[float]:
    return [value(r, policy, key, scale) for r in runs]


# ----------------------------------------------------------------------------- tables

def main_table(runs: list[dict]) -> str:
    names = [p for p in policy_labels(train.STAGES) if have(runs, p)]
    rows = ["| method | win-rate (%) | exact accuracy (%) | mean gold score | win-rate per seed |", "|---|---|---|---|---|"]
    for name in names:
        w, a, g = (series(runs, name, k, s) for k, _, s, _ in METRICS)
        rows.append(f"| {name} | {fmt(*mean_ci(w))} | {fmt(*mean_ci(a))} | {fmt(*mean_ci([x / 100 for x in g]), 3)} | "
                    f"{', '.join(f'{x:.1f}' for x in w)} |")
    return "\n".join(rows)


def paired_table(runs: list[dict], pairs=PAIRED) -> str:
    rows = ["| difference | metric | mean ± 95% interval | higher in | per seed |", "|---|---|---|---|---|"]
    for a, b in pairs:
        if not (have(runs, a) and have(runs, b)):
            continue
        for key, name, scale, digits in METRICS:
            d = paired_differences(series(runs, a, key, scale), series(runs, b, key, scale))
            rows.append(f"| {a} − {b} | {name} | {fmt(d['mean'], d['ci'], digits, '+')} | {d['higher']} of {d['n']} | "
                        f"{', '.join(f'{x:+.{digits}f}' for x in d['diffs'])} |")
    return "\n".join(rows)


def share_cell(ratio: tuple[float, float, float]) -> str:
    """A share with its interval, or "–" where ratio_interval found none."""
    point, lo, hi = ratio
    return "–" if math.isnan(point) else f"{pct(point)} [{pct(lo)}, {pct(hi)}]"


def fractions_table(runs: list[dict]) -> str:
    """Each re-learning's gain over PPO as a fraction of two yardsticks: the fresh-label control's
    gain (what re-learning on P with real labels gives) and PPO's gap to PPO on the gold reward."""
    rows = ["| method | metric | share of the fresh-label gain [95% bootstrap] | share of PPO's gap to the gold "
            "reward [95% bootstrap] |", "|---|---|---|---|"]
    for name in (SPG, UML, FRESH):
        if not have(runs, name):
            continue
        for key, metric, scale, _ in METRICS:
            gain = [x - y for x, y in zip(series(runs, name, key, scale), series(runs, PPO, key, scale))]
            fresh = [x - y for x, y in zip(series(runs, FRESH, key, scale), series(runs, PPO, key, scale))] \
                if have(runs, FRESH) else None
            gap = [x - y for x, y in zip(series(runs, GOLD, key, scale), series(runs, PPO, key, scale))]
            f = ratio_interval(gain, fresh) if fresh and name != FRESH else (math.nan,) * 3
            g = ratio_interval(gain, gap)
            rows.append(f"| {name} | {metric} | {share_cell(f)} | {share_cell(g)} |")
    return "\n".join(rows)


def distribution(runs: list[dict]) -> str:
    """How often PPO over-optimised, and each method's per-seed spread (median, range)."""
    n = len(runs)
    lines = []
    below = [r["name"] for r in runs if value(r, PPO, "win_rate") <= value(r, SFT, "win_rate")]
    worse = [r["name"] for r in runs if value(r, PPO, "accuracy") <= value(r, SFT, "accuracy")]
    lines.append(f"- PPO ended at or below SFT in win-rate on {len(below)} of {n} seeds"
                 + (f" ({', '.join(below)})" if below else "") + f", in exact accuracy on {len(worse)} of {n}"
                 + (f" ({', '.join(worse)})" if worse else "") + ".")
    for name in [p for p in policy_labels(train.STAGES) if have(runs, p)]:
        acc = series(runs, name, "accuracy", 100)
        lines.append(f"- {name}: exact accuracy median {statistics.median(acc):.1f}%, range {min(acc):.1f}–"
                     f"{max(acc):.1f}%.")
    return "\n".join(lines)


def rm_table(runs: list[dict], sources: list[str]) -> str:
    rms = [rm for rm in [STEP2_RM, UML_RM, UML0_RM, SPG_RM, FRESH_RM]
           if all(rm in r["results"].get("rm_accuracy", {}) for r in runs)]
    rows = ["| reward model | " + " | ".join(f"{s} samples" for s in sources) + " |", "|---|" + "---|" * len(sources)]
    for rm in rms:
        rows.append(f"| {rm} | " + " | ".join(fmt(*mean_ci([rm_acc(r, rm, s) for r in runs])) for s in sources) + " |")
    return "\n".join(rows)


def sweep_record(records: dict, seed: int, beta: float) -> dict | None:
    """A seed's run at KL coefficient beta: the main run at the default 0.02, else its sweep variant."""
    return records.get(f"seed{seed}" if beta == 0.02 else f"kl_{fmt_number(beta)}.seed{seed}")


def sweep(records: dict, seeds: list[int], kl_coefs: list[float]) -> tuple[str, dict]:
    """The pressure sweep: per KL coefficient, each method minus PPO (exact accuracy and win-rate)
    over the seeds that have it, and the share of PPO's gap to the gold reward each recovers."""
    coefs = sorted(set(kl_coefs) | {0.02})
    rows = ["| KL coef β | seeds | PPO − SFT (acc.) | Step-2 RM acc. on PPO samples | method | − PPO, exact accuracy | "
            "− PPO, win-rate | share of PPO's gap to gold recovered [95%] |", "|---|---|---|---|---|---|---|---|"]
    points = {}
    for beta in coefs:
        runs = [sweep_record(records, s, beta) for s in seeds]
        runs = [r for r in runs if r is not None and have([r], SPG)]
        if len(runs) < 2:
            continue
        ppo_sft = paired_differences(series(runs, PPO, "accuracy", 100), series(runs, SFT, "accuracy", 100))
        acc_rm = mean_ci([rm_acc(r, STEP2_RM, PPO) for r in runs])
        for name in (GOLD, SPG, FRESH):
            if not have(runs, name):
                continue
            da = paired_differences(series(runs, name, "accuracy", 100), series(runs, PPO, "accuracy", 100))
            dw = paired_differences(series(runs, name, "win_rate"), series(runs, PPO, "win_rate"))
            gap = [x - y for x, y in zip(series(runs, GOLD, "accuracy", 100), series(runs, PPO, "accuracy", 100))]
            share = ratio_interval(da["diffs"], gap) if name != GOLD else (1.0, math.nan, math.nan)
            points.setdefault(name, []).append((beta, da["mean"], da["ci"]))
            rows.append(f"| {beta} | {len(runs)} | {fmt(ppo_sft['mean'], ppo_sft['ci'], 1, '+')} | {fmt(*acc_rm)} | "
                        f"{name} | {fmt(da['mean'], da['ci'], 1, '+')} ({da['higher']}/{da['n']}) | "
                        f"{fmt(dw['mean'], dw['ci'], 1, '+')} | "
                        + ("–" if name == GOLD else share_cell(share)) + " |")
    return "\n".join(rows), points


def pearson(x: list[float], y: list[float]) -> float:
    """The correlation coefficient of two lists (nan when either is constant)."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def cluster_bootstrap_r(points: list[tuple[int, float, float]], draws: int = 5000, seed: int = 0) -> tuple[float, float, float]:
    """Pearson r of (x, y) over points (seed, x, y), with a 95% percentile interval from resampling
    whole seeds: the runs of one seed at several KL coefficients share its SFT model and Step-2 RM,
    so they are not independent draws, and a seed is the unit that is."""
    r = pearson([p[1] for p in points], [p[2] for p in points])
    by_seed: dict[int, list] = {}
    for p in points:
        by_seed.setdefault(p[0], []).append(p)
    groups = list(by_seed.values())
    if len(groups) < 3:
        return r, math.nan, math.nan
    rng = random.Random(seed)
    boots = []
    for _ in range(draws):
        sample = [p for _ in groups for p in groups[rng.randrange(len(groups))]]
        b = pearson([p[1] for p in sample], [p[2] for p in sample])
        if b == b:
            boots.append(b)
    if not boots:
        return r, math.nan, math.nan
    boots.sort()
    return r, boots[int(0.025 * len(boots))], boots[int(0.975 * len(boots)) - 1]


def pressure_runs(records: dict, seeds: list[int], kl_coefs: list[float]) -> list[dict]:
    """Every run of the main table and of the sweep (one per seed and KL coefficient) with PPO, PPO
    on the gold reward and RLP-SPG: how far PPO fooled its RM (the Step-2 RM's accuracy on PPO's
    samples) and each method's gain over PPO in exact accuracy."""
    out = []
    for s in seeds:
        for beta in sorted(set(kl_coefs) | {0.02}):
            r = sweep_record(records, s, beta)
            if r is None or not have([r], SPG) or not have([r], GOLD) or math.isnan(rm_acc(r, STEP2_RM, PPO)):
                continue
            ppo = value(r, PPO, "accuracy", 100)
            out.append({"seed": s, "beta": beta, "rm_on_ppo": rm_acc(r, STEP2_RM, PPO),
                        **{name: value(r, name, "accuracy", 100) - ppo for name in (SPG, FRESH, GOLD)}})
    return out


def split_at_median(items: list[dict], name: str) -> tuple[float, list[tuple[str, list[dict]]], tuple]:
    """The runs split at the median of the Step-2 RM's accuracy on PPO's samples over all of them
    (below it: PPO fooled its RM more), each half keeping the runs that have `name`; and the
    correlation of name's gain with that accuracy."""
    cut = statistics.median(x["rm_on_ppo"] for x in items)
    items = [x for x in items if not math.isnan(x[name])]
    halves = [("fooled more (below the median)", [x for x in items if x["rm_on_ppo"] < cut]),
              ("fooled less (at or above it)", [x for x in items if x["rm_on_ppo"] >= cut])]
    return cut, halves, cluster_bootstrap_r([(x["seed"], x["rm_on_ppo"], x[name]) for x in items])


def r_cell(r: tuple[float, float, float]) -> str:
    return "–" if math.isnan(r[0]) else f"{r[0]:+.2f}" + ("" if math.isnan(r[1]) else f" [{r[1]:+.2f}, {r[2]:+.2f}]")


def per_run_table(items: list[dict]) -> str:
    """The runs split at the median of the Step-2 RM's accuracy on PPO's samples: where PPO fooled
    its RM more and where less, each method's gain over PPO; and the correlation of that gain with
    the RM's accuracy, over all the runs (interval: seeds resampled)."""
    if len(items) < 4:
        return ""
    cut = statistics.median(x["rm_on_ppo"] for x in items)
    rows = [f"| runs, by the Step-2 RM's accuracy on PPO's samples (median {cut:.1f}%) | runs | its accuracy there | "
            "method | − PPO, exact accuracy: mean ± 95% (higher in) | median | correlation of the gain with that "
            "accuracy, all runs [95%, seeds resampled] |", "|---|---|---|---|---|---|---|"]
    for name in (GOLD, SPG, FRESH):
        if sum(not math.isnan(x[name]) for x in items) < 4:
            continue
        _, halves, r = split_at_median(items, name)
        for label, half in halves:
            if not half:
                continue
            gains = [x[name] for x in half]
            m, c = mean_ci(gains)
            rows.append(f"| {label} | {len(gains)} | {statistics.fmean(x['rm_on_ppo'] for x in half):.1f} | {name} | "
                        f"{fmt(m, c, 1, '+')} ({sum(g > 0 for g in gains)}/{len(gains)}) | {statistics.median(gains):+.1f} | "
                        f"{r_cell(r)} |")
    return "\n".join(rows)


def rounds_table(runs: list[dict]) -> str:
    """Iterated RLP-SPG: each round's policy minus PPO, and each round's RM on the samples it was
    re-learned on (round 1: PPO's; round r: round r - 1's RLP-SPG policy's)."""
    rows = ["| round | policy − PPO, win-rate | − PPO, exact accuracy | − PPO, gold score (×100) | RM accuracy on the "
            "samples it learned from | Step-2 RM on them |", "|---|---|---|---|---|---|"]
    source = PPO
    for r in (1, 2, 3):
        policy = SPG if r == 1 else f"{SPG}, round {r}"
        rm = SPG_RM if r == 1 else f"{SPG_RM}, round {r}"
        if not have(runs, policy):
            break
        cells = [paired_differences(series(runs, policy, k, s), series(runs, PPO, k, s)) for k, _, s, _ in METRICS]
        rows.append(f"| {r} | " + " | ".join(f"{fmt(d['mean'], d['ci'], 1, '+')} ({d['higher']}/{d['n']})"
                                              for d in cells)
                    + f" | {fmt(*mean_ci([rm_acc(x, rm, source) for x in runs]))} | "
                      f"{fmt(*mean_ci([rm_acc(x, STEP2_RM, source) for x in runs]))} |")
        source = policy
    return "\n".join(rows)


def uml_rows(rec: dict, stage: str) -> dict:
    """What UML's logs say of one RM: the ratio of lambda * L_M's backbone gradient to the
    Bradley-Terry one (median and largest over steps >= 50), their mean cosine, and the share of
    hidden-state variance within an instruction before and after."""
    steps = [r for r in stage_rows(rec, stage) if "bt_grad_norm" in r and r.get("step", 0) >= 50]
    ratios = [r["extra_grad_norm"] / r["bt_grad_norm"] for r in steps if r["bt_grad_norm"] > 0]
    return {"ratio_median": statistics.median(ratios) if ratios else math.nan,
            "ratio_max": max(ratios) if ratios else math.nan,
            "cosine": statistics.fmean(r["grad_cosine"] for r in steps) if steps else math.nan,
            "before": last(rec, stage, "hidden_within_share_before"),
            "after": last(rec, stage, "hidden_within_share_after")}


def uml_table(records: dict, seeds: list[int]) -> str:
    rows = ["| UML weight λ | seeds | RM accuracy on PPO samples (%) | on SFT samples (%) | within-instruction share of "
            "hidden-state variance, before → after | backbone gradient λ·L_M / Bradley–Terry (median; max) | their "
            "cosine |", "|---|---|---|---|---|---|---|"]
    cases = [(0.0, [(records.get(f"seed{s}"), "rlp_reward_uml0", UML0_RM) for s in seeds]),
             (0.1, [(records.get(f"lambda_0.1.seed{s}"), "rlp_reward_uml", UML_RM) for s in seeds]),
             (0.5, [(records.get(f"seed{s}"), "rlp_reward_uml", UML_RM) for s in seeds]),
             (1.0, [(records.get(f"lambda_1.seed{s}"), "rlp_reward_uml", UML_RM) for s in seeds])]
    for lam, items in cases:
        items = [(r, st, rm) for r, st, rm in items if r is not None and rm in r["results"].get("rm_accuracy", {})]
        if not items:
            continue
        logs = [uml_rows(r, st) for r, st, _ in items]
        ok = [x for x in logs if x["after"] == x["after"]]
        rows.append(f"| {lam} | {len(items)} | {fmt(*mean_ci([rm_acc(r, rm, PPO) for r, _, rm in items]))} | "
                    f"{fmt(*mean_ci([rm_acc(r, rm, SFT) for r, _, rm in items]))} | "
                    + (f"{statistics.fmean(x['before'] for x in ok):.3f} → {statistics.fmean(x['after'] for x in ok):.3f} "
                       f"({len(ok)} seeds)" if ok else "– (not logged)") + " | "
                    + (f"{statistics.median([x['ratio_median'] for x in logs if x['ratio_median'] == x['ratio_median']]):.2f}; "
                       f"{max(x['ratio_max'] for x in logs if x['ratio_max'] == x['ratio_max']):.1f}"
                       if any(x["ratio_median"] == x["ratio_median"] for x in logs) else "–") + " | "
                    + (f"{statistics.fmean(x['cosine'] for x in logs if x['cosine'] == x['cosine']):+.2f}"
                       if any(x["cosine"] == x["cosine"] for x in logs) else "–") + " |")
    spg = [(records.get(f"seed{s}")) for s in seeds]
    spg = [r for r in spg if r is not None and SPG_RM in r["results"].get("rm_accuracy", {})]
    if spg:
        rows.append(f"| (RLP-SPG RM) | {len(spg)} | {fmt(*mean_ci([rm_acc(r, SPG_RM, PPO) for r in spg]))} | "
                    f"{fmt(*mean_ci([rm_acc(r, SPG_RM, SFT) for r in spg]))} | – | – | – |")
    return "\n".join(rows)


def noise_pairs(records: dict, seeds: list[int]) -> list[tuple[dict, dict]]:
    """(original, re-run) records of the seeds that have both."""
    return [(records[f"seed{s}"], records[f"noise.seed{s}"]) for s in seeds
            if f"seed{s}" in records and f"noise.seed{s}" in records]


def own_change(pairs: list[tuple[dict, dict]], name: str) -> list[float]:
    """How far a policy's own exact accuracy moved between each original and its re-run (points)."""
    return [abs(value(q, name, "accuracy", 100) - value(r, name, "accuracy", 100)) for r, q in pairs
            if have([r, q], name)]


def noise_table(records: dict, seeds: list[int]) -> str:
    """Five seeds run twice from the same data, the second time with --micro-batch (the same
    training, another float summation order): per seed and paired over seeds, in exact accuracy."""
    pairs = noise_pairs(records, seeds)
    if not pairs:
        return ""
    rows = ["| difference (exact accuracy, points) | original: mean ± 95% (higher in) | re-run: mean ± 95% (higher in) "
            "| interval: original → re-run | per seed: original → re-run |", "|---|---|---|---|---|"]
    for a, b in [(PPO, SFT), (GOLD, PPO), (SPG, PPO), (UML, PPO), (FRESH, PPO)]:
        orig = [r for r, _ in pairs]
        again = [r for _, r in pairs]
        if not (have(orig, a) and have(orig, b) and have(again, a) and have(again, b)):
            continue
        d1 = paired_differences(series(orig, a, "accuracy", 100), series(orig, b, "accuracy", 100))
        d2 = paired_differences(series(again, a, "accuracy", 100), series(again, b, "accuracy", 100))
        rows.append(f"| {a} − {b} | {fmt(d1['mean'], d1['ci'], 1, '+')} ({d1['higher']}/{d1['n']}) | "
                    f"{fmt(d2['mean'], d2['ci'], 1, '+')} ({d2['higher']}/{d2['n']}) | {verdict(d1)} → {verdict(d2)} | "
                    + ", ".join(f"{x:+.1f} → {y:+.1f}" for x, y in zip(d1["diffs"], d2["diffs"])) + " |")
    moved = []  # how far one seed's own number moves under the perturbation: the noise a single run carries
    for name in (SFT, PPO, GOLD, SPG, UML, FRESH):
        change = own_change(pairs, name)
        if change:
            moved.append(f"{name} {statistics.median(change):.1f} (max {max(change):.1f})")
    rows.append("\nHow far each policy's own exact accuracy moved between the original and the re-run, median over "
                "seeds (max), in points: " + "; ".join(moved) + ".")
    same = []
    for name in (PPO, GOLD, SPG, UML, FRESH):
        seeds_same = [r["name"] for r, q in pairs if have([r, q], name)
                      and abs(value(r, name, "gold_score") - value(q, name, "gold_score")) < 1e-4]
        if seeds_same:
            same.append(f"{name} on {', '.join(seeds_same)}")
    if same:  # a perturbation that flips no sampled token leaves a run as it was: those seeds test nothing
        rows.append("\nUnchanged by the perturbation (mean gold score within 0.0001 of the original: no sampled "
                    "token flipped, so the re-run repeats the run and tests nothing): " + "; ".join(same) + ".")
    return "\n".join(rows)


def verdict(d: dict) -> str:
    if math.isnan(d["ci"]):
        return "one seed"
    return "above 0" if d["mean"] - d["ci"] > 0 else "below 0" if d["mean"] + d["ci"] < 0 else "includes 0"


def label_accuracy(records: list[dict]) -> str:
    """How often the labels each re-learned RM was trained on agree with the gold judge: SPG's
    synthetic pairs and the fresh-label control's annotator labels, over every run that has both."""
    def known(value) -> bool:  # (None: a tiny run with no pair to check)
        return isinstance(value, float) and not math.isnan(value)
    pairs = [(last(r, "rlp_reward_spg", "label_accuracy_gold"), last(r, "rlp_reward_fresh", "label_accuracy_gold"))
             for r in records]
    both = [(100 * s, 100 * f) for s, f in pairs if known(s) and known(f)]
    if not both:
        return ""
    spg, fresh = [s for s, _ in both], [f for _, f in both]
    return (f"- The labels the re-learned RMs learn from, against the gold judge (over the {len(both)} runs with "
            f"both): SPG's synthetic pairs are {min(spg):.1f}–{max(spg):.1f}% right, the fresh annotator labels "
            f"{min(fresh):.1f}–{max(fresh):.1f}% (the annotator flips 25% of labels by design); SPG's are the more "
            f"accurate in {sum(a > b for a, b in zip(spg, fresh))} of {len(both)}.")


def findings(runs: list[dict], sweep_points: dict, records: list[dict] = (), per_run: list[dict] = ()) -> str:
    lines = []
    n = len(runs)
    on_ppo, on_sft = [rm_acc(r, STEP2_RM, PPO) for r in runs], [rm_acc(r, STEP2_RM, SFT) for r in runs]
    step2 = paired_differences(on_ppo, on_sft)
    lines.append(f"- The premise: the Step-2 RM is {statistics.fmean(on_sft):.1f}% accurate on SFT's samples and "
                 f"{statistics.fmean(on_ppo):.1f}% on PPO's (paired difference {fmt(step2['mean'], step2['ci'], 1, '+')}"
                 f" points, lower in {n - step2['higher']} of {n} seeds).")
    for a, b in PAIRED:
        if not (have(runs, a) and have(runs, b)):
            continue
        da = paired_differences(series(runs, a, "accuracy", 100), series(runs, b, "accuracy", 100))
        dw = paired_differences(series(runs, a, "win_rate"), series(runs, b, "win_rate"))
        lines.append(f"- {a} − {b}: {fmt(da['mean'], da['ci'], 1, '+')} exact accuracy ({verdict(da)}; higher in "
                     f"{da['higher']} of {n}), {fmt(dw['mean'], dw['ci'], 1, '+')} win-rate ({verdict(dw)}).")
    for name, pts in sweep_points.items():
        lines.append(f"- {name} − PPO in exact accuracy against the KL coefficient: "
                     + ", ".join(f"β {b}: {fmt(m, c, 1, '+')}" for b, m, c in pts) + ".")
    if len(per_run) >= 4:
        cut, split, r = split_at_median(per_run, SPG)
        halves = [[x[SPG] for x in half] for _, half in split]
        (m1, c1), (m2, c2) = mean_ci(halves[0]), mean_ci(halves[1])
        lines.append(f"- Per run ({len(per_run)} runs: every seed and KL coefficient): where PPO fooled the Step-2 RM more "
                     f"(its accuracy on PPO's samples below the median, {cut:.1f}%), {SPG} − PPO is {fmt(m1, c1, 1, '+')} "
                     f"exact accuracy (higher in {sum(g > 0 for g in halves[0])} of {len(halves[0])}); where it fooled it "
                     f"less, {fmt(m2, c2, 1, '+')} (higher in {sum(g > 0 for g in halves[1])} of {len(halves[1])}). "
                     f"Correlation of the gain with that accuracy: {r_cell(r)}.")
    pairs = noise_pairs({r["name"]: r for r in records}, [r["seed"] for r in runs][:5])
    if pairs and have([r for pair in pairs for r in pair], SPG):
        d = [paired_differences(series(side, SPG, "accuracy", 100), series(side, PPO, "accuracy", 100))
             for side in ([r for r, _ in pairs], [q for _, q in pairs])]
        ppo, spg = own_change(pairs, PPO), own_change(pairs, SPG)
        lines.append(f"- Float-level noise ({len(pairs)} seeds re-run from the data with another summation order): "
                     f"{SPG} − PPO went from {fmt(d[0]['mean'], d[0]['ci'], 1, '+')} ({verdict(d[0])}; higher in "
                     f"{d[0]['higher']} of {len(pairs)}) to {fmt(d[1]['mean'], d[1]['ci'], 1, '+')} ({verdict(d[1])}; "
                     f"higher in {d[1]['higher']} of {len(pairs)}) exact accuracy; one seed's PPO moved by "
                     f"{statistics.median(ppo):.1f} points (median; max {max(ppo):.1f}), its {SPG} by "
                     f"{statistics.median(spg):.1f} (max {max(spg):.1f}).")
    labels = label_accuracy(list(records))
    if labels:
        lines.append(labels)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures

def figures(runs: list[dict], sweep_points: dict, out_dir: Path, per_run: list[dict] = ()) -> dict[str, str]:
    """Draws the report's figures into out_dir; returns {what: file name} for those drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {}
    if sweep_points:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for i, (name, pts) in enumerate(sweep_points.items()):
            xs = [b * (1 + 0.04 * (i - 1)) for b, _, _ in pts]  # nudged apart so the intervals show
            ax.errorbar(xs, [m for _, m, _ in pts], yerr=[0 if c != c else c for _, _, c in pts], marker="o", capsize=3,
                        label=name)
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("KL coefficient β (lower: more pressure to over-optimise)")
        ax.set_ylabel("exact accuracy − PPO's (points)")
        ax.set_title("Gain over PPO against over-optimisation pressure\n(mean over seeds, 95% interval)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / "pressure_sweep.png", dpi=120)
        plt.close(fig)
        names["sweep"] = "pressure_sweep.png"
    if len(per_run) >= 4:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for name, marker in ((SPG, "o"), (FRESH, "s")):
            pts = [(x["rm_on_ppo"], x[name], x["beta"]) for x in per_run if x[name] == x[name]]
            sc = ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=[math.log10(p[2]) for p in pts], cmap="viridis",
                            marker=marker, s=28, alpha=0.8, label=name)
        fig.colorbar(sc, ax=ax, label="log10 KL coefficient β")
        ax.axhline(0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("Step-2 RM accuracy on PPO's samples (%; lower: PPO fooled it more)")
        ax.set_ylabel("exact accuracy − PPO's (points)")
        ax.set_title("Gain over PPO, every run (seed × β)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / "per_run_gain.png", dpi=120)
        plt.close(fig)
        names["per_run"] = "per_run_gain.png"
    labels = [p for p in policy_labels(train.STAGES) if have(runs, p)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, (key, title, scale) in zip(axes, [("accuracy", "exact accuracy (%)", 100), ("win_rate", "win-rate (%)", 1)]):
        for i, name in enumerate(labels):
            vals = series(runs, name, key, scale)
            ax.scatter([i + random.Random(j).uniform(-0.15, 0.15) for j in range(len(vals))], vals, s=14, alpha=0.7)
            ax.plot([i - 0.3, i + 0.3], [statistics.median(vals)] * 2, color="black", lw=1.5)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{title}: every seed, median")
    fig.tight_layout()
    fig.savefig(out_dir / "main_table.png", dpi=120)
    plt.close(fig)
    names["main"] = "main_table.png"
    rms = [rm for rm in [STEP2_RM, UML_RM, UML0_RM, SPG_RM, FRESH_RM]
           if all(rm in r["results"].get("rm_accuracy", {}) for r in runs)]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(1, len(rms))
    for k, rm in enumerate(rms):
        means = [statistics.fmean(rm_acc(r, rm, s) for r in runs) for s in (SFT, PPO)]
        ax.bar([i + k * width for i in range(2)], means, width, label=rm)
    ax.axhline(50, color="grey", lw=0.8, ls="--")
    ax.set_xticks([i + width * (len(rms) - 1) / 2 for i in range(2)], [f"{s} samples" for s in (SFT, PPO)])
    ax.set_ylabel("pairwise accuracy vs gold (%)")
    ax.set_title(f"RM accuracy on SFT's and PPO's samples, {len(runs)} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / "rm_accuracy.png", dpi=120)
    plt.close(fig)
    names["rm_accuracy"] = "rm_accuracy.png"
    return names


# ----------------------------------------------------------------------------- the report

def package_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name).split("+")[0] for name in PACKAGES}


def versions_table(versions: dict[str, str]) -> str:
    return "| package | version |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in versions.items())


def read_versions_table(text: str) -> dict[str, str]:
    """The package table of a RESULTS.md (versions_table's format), for the check against requirements.txt."""
    out = {}
    for line in text.split("## Package versions", 1)[-1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] in PACKAGES:
            out[cells[0]] = cells[1]
    return out


def hardware() -> str:
    """This machine in one line: the CPU's model and the vector kernels torch picked on it (AVX2,
    AVX512, ...), which decide float summation orders, so two records with different lines may differ
    in their last digits."""
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:  # not Linux
        pass
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores{' ' + model if model else ''} "
            f"({torch.backends.cpu.get_cpu_capability()}), {gpu}; Python {platform.python_version()}")


def machines(records: list[dict]) -> str:
    """Where the runs ran, from their records (each names the machine that made it), with how many each."""
    counts = Counter(rec.get("machine", "a machine its record does not name") for rec in records).most_common()
    if len(counts) == 1:
        return counts[0][0]
    return "; ".join(f"{m} ({n} run{'s' if n != 1 else ''})" for m, n in counts)


def run_minutes(rec: dict) -> float:
    return sum(r["seconds"] for r in rec["timings"]) / 60


def not_run(lacking: list[str]) -> str:
    """A paragraph naming the runs of the full programme that have no record yet (empty if none)."""
    if not lacking:
        return ""
    groups: dict[str, list[str]] = {}
    for name in lacking:
        kind, _, seed = name.rpartition(".seed")  # main.seed3, rounds.seed0, kl_0.1.seed2, noise.seed4 ...
        groups.setdefault(kind, []).append(seed)
    parts = [f"{kind} on seed{'s' if len(v) > 1 else ''} {', '.join(v)}" for kind, v in groups.items()]
    return ("**Not run yet** (the full programme, `python scripts/reproduce.py --seeds 0 1 2 3 4 5 6 7 8 9 "
            "--sweep --rounds --lambdas --noise`, has no record of these): " + "; ".join(parts) + ". The "
            "tables below cover only what is recorded.\n\n")


def write(records_dir: Path, names: list[str], args, command: str, results: Path, figures_dir: Path,
          lacking: list[str] = ()) -> None:
    """RESULTS.md and its figures from the records of `names`; `lacking`: the runs of the full programme
    with no complete record yet, listed so that a reader sees what the tables do not cover."""
    records = load(records_dir)
    missing = [n for n in names if n not in records]
    if missing:
        raise SystemExit(f"error: no record of {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} in "
                         f"{records_dir}: run them first (without --report-only)")
    seeds = [s for s in args.seeds if f"seed{s}" in records]  # (--collect: those recorded so far)
    runs = [records[f"seed{s}"] for s in seeds]
    first5 = seeds[:5]
    sweep_rows, points = sweep(records, first5, args.kl_coefs)
    per_run = pressure_runs(records, seeds, args.kl_coefs)
    pics = figures(runs, points, figures_dir, per_run)
    rel = os.path.relpath(figures_dir, results.parent or ".")
    sources = [s for s in [SFT, PPO, SPG, FRESH, GOLD] if all(s in r["results"]["policies"] for r in runs)]
    total = sum(run_minutes(r) for r in records.values() if r["name"] in names)
    tuning = (ROOT / "TUNING.md").read_text().strip() if (ROOT / "TUNING.md").is_file() else "(no tuning record)"
    sections = [f"""# Results on the built-in task

Produced by `{command}`, every number computed by scripts/report.py from the runs' records in
`{os.path.relpath(records_dir, ROOT) if ROOT in Path(records_dir).resolve().parents else records_dir}/` ({len(names)} runs; {total / 60:.1f} hours of stage time in all, two runs at a
time with one thread each) on: {machines([r for r in records.values() if r["name"] in names])}. The main table has {len(seeds)} seeds ({', '.join(map(str, seeds))});
the sweeps use seeds {', '.join(map(str, first5))}. Seeds 0–9 were never used to choose a setting
(TUNING.md, at the end). Exact numbers depend on the CPU kind and the pinned versions
(docs/reproducibility.md); the conclusions rest on the spread over seeds.

{not_run(lacking)}## Findings, computed from the numbers below

{findings(runs, points, list(records.values()), per_run)}

## Main table ({len(seeds)} seeds)

Win-rate against one fixed SFT reference answer per evaluation instruction (gold judge, a tie
counts half), exact accuracy and mean gold score; mean ± 95% Student-t interval over seeds. "PPO,
fresh labels" is the control: the RM re-learned on annotator labels of policy samples (as many
pairs as SPG synthesised) instead of SPG's synthetic ones.

{main_table(runs)}

![every seed]({rel}/{pics['main']})

{distribution(runs)}

## Paired differences in three metrics

Each method minus another on the same seed, then the mean and 95% Student-t interval of those
differences, how many seeds are higher, and every seed's difference.

{paired_table(runs)}

## How much of the possible gain each re-learning recovers

Each method's gain over PPO divided by a yardstick: the fresh-label control's gain over PPO, and
PPO on the gold reward's. Both are the ratio of the mean gains with a 95% bootstrap interval over
seeds; "–" where the yardstick itself is not clearly above 0 (its sign flips in more than 2.5% of
the resamples), since a share of a gain that may be nothing means nothing.

{fractions_table(runs)}

## Reward-model accuracy on policy samples (the off-distribution claim)

Pairwise accuracy (%) against the gold judge on pairs of two samples (T = 1) per evaluation
instruction, from each policy; mean ± 95% interval over seeds.

{rm_table(runs, sources)}

![RM accuracy]({rel}/{pics['rm_accuracy']})
"""]
    if points:
        sections.append(f"""## RLP against over-optimisation pressure

PPO with each KL coefficient β from the same SFT model and Step-2 RM (β = 0.02 is the default, the
main runs); RLP-SPG re-learns on that PPO's samples, the fresh-label control on the same samples,
and PPO on the gold reward gives the ceiling at that β. Differences are paired per seed (exact
accuracy, and in brackets how many seeds are higher). The last column: (method − PPO) / (PPO on
gold − PPO), the share of PPO's shortfall each recovers.

{sweep_rows}

![pressure sweep]({rel}/{pics['sweep']})
""")
    per_run_rows = per_run_table(per_run)
    if per_run_rows:
        sections.append(f"""## When it pays, run by run

The KL coefficient sets the pressure, but how far PPO actually fools its RM varies from seed to seed
at one β. Here every run of the main table and of the sweep (one per seed and β) is one point: the
Step-2 RM's accuracy on that PPO's samples (lower: PPO found more of the RM's mistakes) against
each method's gain over that PPO. The runs of one seed share its SFT model and Step-2 RM, so the
halves' intervals (over runs) are optimistic; the correlation's interval resamples whole seeds.
Each gain is a difference with that same PPO run, so where PPO did worse every method gains more
even if it did no better itself: PPO on the gold reward, which does not depend on that PPO run at
all, shows the size of this effect. The table says when RLP pays relative to PPO, not that RLP's
own policy is better there.

{per_run_rows}

![every run]({rel}/{pics['per_run']})
""")
    rounds = rounds_table([records[f"seed{s}"] for s in first5])
    if rounds.count("\n") > 1:
        sections.append(f"""## Iterated RLP-SPG

Round r samples P from round r − 1's RLP-SPG policy (round 1: from PPO's), re-learns the RM from
the SFT weights on D and that round's synthetic pairs (y_w still picked by the Step-2 RM's score),
and trains PPO from SFT on it. Paired over seeds {', '.join(map(str, first5))}.

{rounds}
""")
    sections.append(f"""## RLP-UML's mechanism

The UML RM at each weight λ of L_M (λ = 0 is the control: the same code and seeds, L_M off, so the
row shows what re-training alone does). Logged every 10 RM steps: the norm of λ·L_M's gradient on
the backbone over the Bradley–Terry term's, and their cosine; before and after re-learning, the
share of the last-token hidden state's variance that lies within an instruction (between its
samples; over 200 instructions of P). Two settings differ from Federici et al.'s reference code:
the SKL weight's warm-up (1e-3 → 1) is compressed into one RM run, so β reaches 1 only at the last
step, and the UML heads learn at 1e-3 (`--uml-lr`) against their 1e-4.

{uml_table(records, first5)}
""")
    noise = noise_table(records, first5)
    if noise:
        pairs = noise_pairs(records, first5)
        before, after = machines([r for r, _ in pairs]), machines([q for _, q in pairs])
        where = (f", and on another kind of CPU ({after}; the originals ran on {before}), whose vector kernels "
                 f"sum in yet another order" if before != after else "")
        sections.append(f"""## Float-level noise

The same seeds run again from the same data, every stage re-learned (SFT, the Step-2 RM, Steps 3
to 5), with `--micro-batch 16`{where}: the same settings and seeds, only float summation orders
differ. SFT's 800 steps grow that into a slightly different SFT model (its own row below says by how
much). Which conclusions survive is what this table is for.

{noise}
""")
    sections.append(f"""## How the settings were chosen

{tuning}

## Package versions

The numbers above were made with these versions (`requirements.txt` pins the same; a test checks
that they agree):

{versions_table(package_versions())}

## Wall time of each run

Stage time of each run (one thread, two runs at a time on the 2 cores):

| run | minutes |
|---|---|
""" + "\n".join(f"| {n} | {run_minutes(records[n]):.0f} |" for n in names) + "\n")
    notes = ROOT / "results" / "notes.md"  # what the records cannot say (pauses, machines), written by hand
    if notes.is_file():
        sections.append("## Notes on these runs\n\n" + notes.read_text().strip() + "\n")
    results.write_text("\n".join(sections))


if __name__ == "__main__":
    raise SystemExit("run it through scripts/reproduce.py --report-only")
