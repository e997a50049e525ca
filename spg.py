"""Step 4, RLP-SPG: synthetic preference generation from the policy sample set P by
self-consistency.

For each instruction x with n policy samples:
  1. cluster the n outputs into groups of equivalent answers (--spg-cluster): equal normalised
     answers (`cluster_by_key`, the built-in task: the checkable-answer version of the paper's
     rule), bidirectional entailment by an NLI model (`cluster_by_entailment`, the paper, after
     Kuhn et al. 2023), or cosine similarity of sentence embeddings (`cluster_by_embedding`);
     the last two compare the answers alone or, as Kuhn et al.'s code, each with the question in
     front (--spg-condition-on-question);
  2. confidence(x) = |largest group| / n; keep x only if confidence >= gamma;
  3. y_w = the output of the largest group with the highest Step-2 RM score,
     y_l = an output drawn at random from the other groups (none: skip x).
The pairs D_hat join the human pairs D in Eq. 1 with lambda = 0.
"""
from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    import torch


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
               clusters: list[list[int]]) -> tuple[list[dict], dict]:
    """D_hat in AlpacaFarm's preference format (preference = 1: output_1 is chosen), and
    counts: how many instructions pass gamma, how many give a pair. clusters[i]: the cluster
    labels of samples[i]'s outputs (cluster_by_key, cluster_by_entailment, cluster_by_embedding)."""
    rng = random.Random(seed)
    pairs, passed = [], 0
    for rec, sc, labels in zip(samples, scores, clusters):
        passed += confidence(labels) >= gamma
        pair = preference_pair(rec["outputs"], labels, sc, gamma, rng)
        if pair is not None:
            pairs.append({"instruction": rec["instruction"], "input": rec["input"], "output_1": pair[0],
                          "output_2": pair[1], "preference": 1, "_where": rec.get("_where", "P")})
    stats = {"instructions": len(samples), "passed_gamma": passed, "pairs": len(pairs),
             "passed_fraction": passed / max(1, len(samples))}
    return pairs, stats


def random_pair(outputs: Sequence[str], generator: random.Random) -> tuple[int, int] | None:
    """Two samples with different texts, drawn at random (None when all n are the same text)."""
    i = generator.randrange(len(outputs))
    others = [j for j in range(len(outputs)) if outputs[j] != outputs[i]]
    if not others:
        return None
    return i, generator.choice(others)


# ----------------------------------------------------------------------------- open-ended answers

def question_of(record: dict) -> str:
    """The question an answer responds to: the instruction, and the input after a blank line
    when there is one (what the prompt shows, without its template)."""
    return f"{record['instruction']}\n\n{record['input']}" if record.get("input") else record["instruction"]


def conditioned(outputs: Sequence[str], question: str | None) -> list[str]:
    """The texts the NLI or embedding model compares: the answers alone, or with the question in
    front as Kuhn et al.'s code does (f"{question} {answer}", --spg-condition-on-question)."""
    return list(outputs) if question is None else [f"{question} {o}" for o in outputs]


def cluster_by_entailment(outputs: Sequence[str], entails: Callable[[list[tuple[str, str]]], list[bool]],
                          question: str | None = None) -> list[int]:
    """Step 4, SPG, as in the paper: bidirectional-entailment clustering (Kuhn et al. 2023,
    semantic uncertainty). `entails(pairs)` says for each (premise, hypothesis) whether the
    premise entails the hypothesis. With `question`, each text the model reads is the question
    followed by the answer (Kuhn et al.'s condition_on_question); without it, the answer alone.

    Rule: walk the outputs in order; an output joins the FIRST existing cluster whose
    representative (its first member) it bidirectionally entails (a entails b and b entails a);
    otherwise it starts a new cluster. Why: entailment is not transitive, so comparing with every
    member, or linking connected components, would chain unrelated answers (A<->B, B<->C puts C
    with A although A and C disagree); comparing only with the representative cannot chain, and
    costs at most n * clusters NLI pairs per direction.

    How this differs from Kuhn et al.'s code (get_semantic_ids, strict_entailment): the
    representatives are the same (an output no earlier representative matches), but their loop
    lets every representative claim all later matching outputs, overwriting earlier claims, so
    an output matching several representatives ends in the LAST one's cluster; here it stays in
    the FIRST one's. Labels differ only for an output that matches two representatives (which
    then do not match each other). And identical texts are merged up front: an output whose text
    equals an earlier output's joins that output's cluster without an NLI call (ours: cheap, and
    an NLI model need not say that identical texts entail each other); their code asks the model.
    One `entails` call per new text, holding both directions for every representative.
    Labels are numbered in order of first appearance, like cluster_by_key."""
    labels: list[int] = []
    reps: list[str] = []  # reps[c] = first member of cluster c, as the model reads it
    seen: dict[str, int] = {}  # answer text -> its cluster
    for out, text in zip(outputs, conditioned(outputs, question)):
        if out not in seen:
            verdicts = entails([(text, r) for r in reps] + [(r, text) for r in reps]) if reps else []
            forward, backward = verdicts[:len(reps)], verdicts[len(reps):]
            both = [c for c in range(len(reps)) if forward[c] and backward[c]]
            if both:
                seen[out] = both[0]
            else:
                seen[out] = len(reps)
                reps.append(text)
        labels.append(seen[out])
    return labels


def cluster_by_embedding(outputs: Sequence[str], embed: Callable[[list[str]], torch.Tensor],
                         threshold: float, question: str | None = None) -> list[int]:
    """Step 4, SPG, a cheaper stand-in for entailment (ours): `embed(texts)` -> [N, D] sentence
    embeddings, normalised here, so similarity is cosine. With `question`, each embedded text is
    the question followed by the answer (as cluster_by_entailment); without it, the answer alone.

    Rule: walk the outputs in order; an output joins the existing cluster whose representative
    (its first member) has the HIGHEST cosine with it, if that cosine >= threshold (ties: the
    lower label); otherwise it starts a new cluster. Why: the same greedy-representative rule as
    cluster_by_entailment, and for the same reason: similarity is not transitive, so linking
    every pair above the threshold would chain a slow drift of paraphrases into one cluster;
    taking the best representative rather than the first above the threshold makes the answer
    not depend on cluster order when two are close. Identical texts are embedded once (one
    `embed` call, over the distinct texts) and join the earlier copy's cluster.
    Labels are numbered in order of first appearance, like cluster_by_key."""
    import torch  # here, not at the top: the rest of spg.py is pure Python

    distinct = list(dict.fromkeys(outputs))
    if not distinct:
        return []
    # float64 so that a cosine equal to the threshold on paper compares as equal
    vecs = torch.nn.functional.normalize(torch.as_tensor(embed(conditioned(distinct, question))).double(), dim=-1)
    reps: list[int] = []  # rows of vecs, one per cluster
    seen: dict[str, int] = {}
    for row, text in enumerate(distinct):
        if reps:
            cos = vecs[reps] @ vecs[row]
            best = int(torch.argmax(cos))  # the first maximum: the lower label on ties
            if cos[best] >= threshold:
                seen[text] = best
                continue
        seen[text] = len(reps)
        reps.append(row)
    return [seen[o] for o in outputs]
