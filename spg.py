"""Step 4, RLP-SPG: synthetic preference generation from the policy sample set P by
self-consistency.

For each instruction x with n policy samples:
  1. cluster the n outputs into groups of equivalent answers (a pluggable function; the
     built-in task groups outputs whose normalised answers are equal, the checkable-answer
     version of the paper's bidirectional-entailment clustering);
  2. confidence(x) = |largest group| / n; keep x only if confidence >= gamma;
  3. y_w = the output of the largest group with the highest Step-2 RM score,
     y_l = an output drawn at random from the other groups (none: skip x).
The pairs D_hat join the human pairs D in Eq. 1 with lambda = 0.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import Callable, Sequence


def cluster_by_key(outputs: Sequence[str], key: Callable[[str], str]) -> list[int]:
    """Cluster labels: outputs with equal key(output) share a label; labels are numbered
    in order of first appearance (0, 1, ...)."""
    ids: dict[str, int] = {}
    return [ids.setdefault(key(o), len(ids)) for o in outputs]


def confidence(labels: Sequence[int]) -> float:
    """Step 4, SPG: size of the largest cluster / number of samples."""
    return max(Counter(labels).values()) / len(labels)


def largest_cluster(labels: Sequence[int], scores: Sequence[float]) -> int:
    """The largest cluster; a tie between equally large clusters goes to the one holding the
    highest-scoring output, then to the lowest label (our choice: deterministic, and it
    prefers the answer the RM likes best)."""
    counts = Counter(labels)
    top = max(counts.values())
    best = {c: max(s for l, s in zip(labels, scores) if l == c) for c in counts if counts[c] == top}
    return min(best, key=lambda c: (-best[c], c))


def preference_pair(outputs: Sequence[str], labels: Sequence[int], scores: Sequence[float], gamma: float,
                    generator: random.Random) -> tuple[str, str] | None:
    """Step 4, SPG: (chosen, rejected) for one instruction, or None when its confidence is
    below gamma or when every output is in one cluster (there is no y_l)."""
    if confidence(labels) < gamma or len(set(labels)) < 2:
        return None
    big = largest_cluster(labels, scores)
    inside = [i for i, l in enumerate(labels) if l == big]
    outside = [i for i, l in enumerate(labels) if l != big]
    chosen = max(inside, key=lambda i: (scores[i], -i))  # highest RM score, first on ties
    rejected = generator.choice(outside)
    return outputs[chosen], outputs[rejected]


def synthesize(samples: list[dict], scores: list[list[float]], gamma: float, seed: int,
               cluster: Callable[[Sequence[str]], list[int]]) -> tuple[list[dict], dict]:
    """D_hat in AlpacaFarm's preference format (preference = 1: output_1 is chosen), and
    counts: how many instructions pass gamma, how many give a pair."""
    rng = random.Random(seed)
    pairs, passed = [], 0
    for rec, sc in zip(samples, scores):
        labels = cluster(rec["outputs"])
        passed += confidence(labels) >= gamma
        pair = preference_pair(rec["outputs"], labels, sc, gamma, rng)
        if pair is not None:
            pairs.append({"instruction": rec["instruction"], "input": rec["input"], "output_1": pair[0],
                          "output_2": pair[1], "preference": 1, "_where": rec.get("_where", "P")})
    stats = {"instructions": len(samples), "passed_gamma": passed, "pairs": len(pairs),
             "passed_fraction": passed / max(1, len(samples))}
    return pairs, stats


# ----------------------------------------------------------------------------- Table 5 baselines

def random_pair(outputs: Sequence[str], generator: random.Random) -> tuple[int, int] | None:
    """Two samples with different texts, drawn at random (None when all n are the same text)."""
    i = generator.randrange(len(outputs))
    others = [j for j in range(len(outputs)) if outputs[j] != outputs[i]]
    if not others:
        return None
    return i, generator.choice(others)


def pairs_by_labeler(samples: list[dict], label_pairs: Callable[[list[dict], list[str], list[str]], list[int]],
                     seed: int) -> tuple[list[dict], dict]:
    """D_hat for the Table 5 baselines: two random samples per instruction (`random_pair`), labelled
    by `label_pairs(records, first, second)` -> 1 (first better), 2 (second better) or 0 (no
    preference: the pair is dropped). Reward: the Step-2 RM's higher score; RLAIF: the policy as
    a judge (judge.py). Every instruction is used: there is no confidence filter."""
    rng = random.Random(seed)
    chosen_rows, first, second = [], [], []
    for rec in samples:
        pair = random_pair(rec["outputs"], rng)
        if pair is not None:
            chosen_rows.append(rec)
            first.append(rec["outputs"][pair[0]])
            second.append(rec["outputs"][pair[1]])
    labels = label_pairs(chosen_rows, first, second) if chosen_rows else []
    pairs = []
    for rec, a, b, label in zip(chosen_rows, first, second, labels):
        if label in (1, 2):
            w, l = (a, b) if label == 1 else (b, a)
            pairs.append({"instruction": rec["instruction"], "input": rec["input"], "output_1": w, "output_2": l,
                          "preference": 1, "_where": rec.get("_where", "P")})
    stats = {"instructions": len(samples), "passed_gamma": len(samples), "pairs": len(pairs),
             "passed_fraction": 1.0, "labelled_pairs": len(chosen_rows), "no_preference": len(chosen_rows) - len(pairs)}
    return pairs, stats
