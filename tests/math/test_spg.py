"""RLP-SPG (spg.py): clustering, confidence, and synthetic preference pairs (Step 4)."""
import random
from collections import Counter

import pytest

import spg
import task


def normalize_cluster(outputs):
    return spg.cluster_by_key(outputs, task.normalize)


# ----------------------------------------------------------------------------- clustering and confidence

def test_cluster_by_key_with_normalize():
    outs = ["012", "12", " 12 ", "13", "1 2", "Abc", "abc", "013"]
    # "012", "12", " 12 " and "1 2" all normalise to "12"; "13" and "013" to "13"; "Abc" and "abc" to "abc".
    # Labels follow first appearance: 12 -> 0, 13 -> 1, abc -> 2.
    assert normalize_cluster(outs) == [0, 0, 0, 1, 0, 2, 2, 1]


def test_cluster_by_key_keeps_different_answers_apart():
    assert normalize_cluster(["12", "21", "1", "2"]) == [0, 1, 2, 3]


@pytest.mark.parametrize("labels,want", [
    ([0, 0, 1, 2], 2 / 4),
    ([3, 3, 3], 1.0),
    ([0, 1, 2, 3], 1 / 4),
    ([5, 1, 5, 1, 5], 3 / 5),
    ([7], 1.0),
])
def test_confidence_hand(labels, want):
    assert spg.confidence(labels) == pytest.approx(want)


# ----------------------------------------------------------------------------- preference_pair

def outs(n):
    return [f"o{i}" for i in range(n)]  # unique strings: the index of a returned output is recoverable


def test_below_gamma_is_none():
    # largest cluster 2 of 5 = 0.4 < 0.5
    assert spg.preference_pair(outs(5), [0, 0, 1, 2, 3], [0.0] * 5, 0.5, random.Random(0)) is None


def test_exactly_gamma_is_kept():
    # 2 of 4 = 0.5 >= 0.5 ("keep x only if confidence >= gamma")
    assert spg.preference_pair(outs(4), [0, 0, 1, 2], [0.0] * 4, 0.5, random.Random(0)) is not None


def test_one_cluster_is_none():
    assert spg.preference_pair(outs(4), [2, 2, 2, 2], [0.1, 0.5, 0.2, 0.3], 0.0, random.Random(0)) is None


def test_chosen_is_best_of_largest_cluster_rejected_outside():
    labels = [0, 1, 1, 2, 1, 0]
    scores = [9.0, 0.2, 0.7, 5.0, 0.1, -1.0]  # the best output overall (9.0) is NOT in the largest cluster
    seen_rejected = set()
    for seed in range(60):
        chosen, rejected = spg.preference_pair(outs(6), labels, scores, 0.5, random.Random(seed))
        assert chosen == "o2"
        assert labels[int(rejected[1:])] != 1
        seen_rejected.add(rejected)
    assert seen_rejected == {"o0", "o3", "o5"}  # every output of the other clusters can be drawn


def test_tie_break_highest_score_then_lowest_label():
    # clusters 0 and 1 both have 2 outputs; cluster 1 holds the higher best score (0.9 > 0.2);
    # cluster 2 holds the best score overall but is smaller.
    labels, scores = [0, 0, 1, 1, 2], [0.1, 0.2, 0.9, 0.3, 5.0]
    for seed in range(20):
        assert spg.preference_pair(outs(5), labels, scores, 0.0, random.Random(seed))[0] == "o2"
    assert spg.largest_cluster(labels, scores) == 1
    # equal best scores: the lowest label wins, wherever it appears first
    labels, scores = [1, 1, 0, 0, 2], [0.5, 0.1, 0.5, 0.2, 0.0]
    for seed in range(20):
        assert spg.preference_pair(outs(5), labels, scores, 0.0, random.Random(seed))[0] == "o2"
    assert spg.largest_cluster(labels, scores) == 0


def test_chosen_ties_within_cluster_go_to_first():
    labels, scores = [0, 1, 0, 0], [0.3, 9.0, 0.7, 0.7]
    assert spg.preference_pair(outs(4), labels, scores, 0.5, random.Random(0))[0] == "o2"


def test_same_seed_same_pair():
    labels = [0, 1, 2, 0, 3, 0, 4, 5]
    scores = [0.1 * i for i in range(8)]
    a = [spg.preference_pair(outs(8), labels, scores, 0.3, random.Random(s)) for s in range(10)]
    b = [spg.preference_pair(outs(8), labels, scores, 0.3, random.Random(s)) for s in range(10)]
    assert a == b
    assert len({p[1] for p in a}) > 1  # and the seed does matter for y_l


def brute_force_pair(labels, scores, gamma):
    """Reference: (chosen index, set of allowed rejected indices) or None, written from the paper's
    Step 4 and the documented tie rule, by enumeration rather than by Counter / min tricks."""
    n = len(labels)
    clusters = {}
    for i in range(n):
        clusters.setdefault(labels[i], []).append(i)
    biggest = 0
    for members in clusters.values():
        biggest = max(biggest, len(members))
    if biggest / n < gamma or len(clusters) == 1:
        return None
    candidates = [c for c in clusters if len(clusters[c]) == biggest]
    best_cluster = None
    for c in sorted(candidates):  # lowest label first, replaced only by a strictly higher best score
        top = max(scores[i] for i in clusters[c])
        if best_cluster is None or top > best_top:
            best_cluster, best_top = c, top
    chosen = None
    for i in clusters[best_cluster]:  # first index among the highest scores
        if chosen is None or scores[i] > scores[chosen]:
            chosen = i
    allowed = {i for i in range(n) if labels[i] != best_cluster}
    return chosen, allowed


@pytest.mark.parametrize("seed", range(5))
def test_preference_pair_matches_brute_force(seed):
    rng = random.Random(seed)
    checked = skipped = 0
    for _ in range(300):
        n = rng.randint(1, 10)
        labels = [rng.randint(0, rng.randint(0, 4)) for _ in range(n)]
        scores = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(n)]  # plenty of exact ties
        gamma = rng.choice([0.0, 0.3, 0.5, 0.7])
        want = brute_force_pair(labels, scores, gamma)
        got = spg.preference_pair(outs(n), labels, scores, gamma, random.Random(rng.random()))
        if want is None:
            assert got is None, (labels, scores, gamma)
            skipped += 1
            continue
        assert got is not None, (labels, scores, gamma)
        assert int(got[0][1:]) == want[0], (labels, scores, gamma)
        assert int(got[1][1:]) in want[1], (labels, scores, gamma)
        checked += 1
    assert checked > 50 and skipped > 20  # both branches exercised


# ----------------------------------------------------------------------------- synthesize

def test_synthesize_hand():
    samples = [
        # A: clusters {12: 0,1,3}, {7: 2}; confidence 3/4 -> pair; best of the 12s is "012" (0.9)
        {"instruction": "Add", "input": "5 7", "outputs": ["12", "012", "7", "12 "], "_where": "p.jsonl:1"},
        # B: four different answers, confidence 1/4 < 0.5 -> dropped
        {"instruction": "Add", "input": "1 1", "outputs": ["1", "2", "3", "4"]},
        # C: one cluster, confidence 1 passes gamma but there is no y_l -> no pair
        {"instruction": "Add", "input": "2 3", "outputs": ["5", "5", "05", " 5"]},
        # D: two clusters of 2 (confidence 0.5 passes); tie -> the cluster holding the best score, "b"
        {"instruction": "Reverse", "input": "ab", "outputs": ["a", "b", "a", "b"]},
    ]
    scores = [[0.1, 0.9, 5.0, 0.3], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.2, 0.1, 0.0]]
    pairs, stats = spg.synthesize(samples, scores, gamma=0.5, seed=0, clusters=[normalize_cluster(s["outputs"]) for s in samples])
    assert stats["instructions"] == 4
    assert stats["passed_gamma"] == 3
    assert stats["pairs"] == 2
    assert stats["passed_fraction"] == pytest.approx(0.75)
    assert [(p["instruction"], p["input"], p["output_1"], p["output_2"], p["preference"]) for p in pairs] == [
        ("Add", "5 7", "012", "7", 1),
        ("Reverse", "ab", "b", "a", 1),
    ]
    assert pairs[0]["_where"] == "p.jsonl:1"
    # the same seed gives the same set
    again, _ = spg.synthesize(samples, scores, gamma=0.5, seed=0, clusters=[normalize_cluster(s["outputs"]) for s in samples])
    assert again == pairs


def test_synthesize_select_all_gamma_zero():
    """Select-All ablation (gamma = 0): every instruction with at least two clusters gives a pair."""
    samples = [{"instruction": "Add", "input": str(i), "outputs": o}
               for i, o in enumerate([["1", "2", "3"], ["4", "4", "4"], ["5", "6", "6"]])]
    pairs, stats = spg.synthesize(samples, [[0.0] * 3] * 3, gamma=0.0, seed=1,
                                  clusters=[normalize_cluster(s["outputs"]) for s in samples])
    assert stats["passed_gamma"] == 3 and stats["pairs"] == 2
    assert Counter(p["input"] for p in pairs) == Counter(["0", "2"])
    assert pairs[1]["output_1"] == "6" and pairs[1]["output_2"] == "5"


# ----------------------------------------------------------------------------- Table 5 baselines


# ----------------------------------------------------------------------------- the fresh-label control

def test_fresh_labels_are_the_annotators_on_policy_samples():
    """rlp.fresh_preferences: as many pairs as asked, two different samples of one instruction of
    P each, labelled as Step 1's annotator labels: the gold preference with no flips, its opposite
    with every label flipped; an instruction whose samples are one text gives no pair."""
    import rlp
    samples = [{"instruction": "Sort", "input": f"{k} 1 2", "outputs": [f"12{k}", f"1{k}2", "x"]} for k in range(3, 9)]
    samples.append({"instruction": "Sort", "input": "3 2 1", "outputs": ["123"] * 3})
    for flip, agree in [(0.0, True), (1.0, False)]:
        pairs, stats = rlp.fresh_preferences(samples, 5, flip, seed=0)
        assert len(pairs) == stats["pairs"] == 5
        for p in pairs:
            rec = next(s for s in samples if s["input"] == p["input"])
            assert p["output_1"] != p["output_2"] and {p["output_1"], p["output_2"]} <= set(rec["outputs"])
            gold = task.gold_preference(p["instruction"], p["input"], p["output_1"], p["output_2"])
            assert (p["preference"] == gold) == agree
    pairs, stats = rlp.fresh_preferences(samples, 50, 0.25, seed=1)  # more than P can give
    assert stats["pairs"] == 6 and all(p["input"] != "3 2 1" for p in pairs)
    flips = [rlp.fresh_preferences(samples, 6, 0.5, seed=s)[0] for s in range(40)]
    flipped = sum(p["preference"] != task.gold_preference(p["instruction"], p["input"], p["output_1"],
                                                          p["output_2"]) for ps in flips for p in ps)
    assert 0.35 < flipped / 240 < 0.65  # about half the labels flipped at rate 0.5
