"""The built-in task and its gold judge."""
import difflib
import random

import pytest

import task


def test_solve_hand_cases():
    assert task.solve("Add", "12 7") == "19"
    assert task.solve("Reverse", "bdfa") == "afdb"
    assert task.solve("Sort", "3 9 1 4") == "1349"
    assert task.solve("Descend", "3 9 1 4") == "9431"
    assert task.solve("Order", "dbca") == "abcd"
    with pytest.raises(ValueError, match="Multiply"):
        task.solve("Multiply", "2 3")


def test_normalize():
    assert task.normalize(" 0 19 ") == "19"
    assert task.normalize("AfDb") == "afdb"
    assert task.normalize("0") == "0"


def test_sorted_answers_keep_their_zeros():
    # the sorted digits of "3 0 7 2" start with 0; dropping it is a wrong answer, not the same one
    assert task.gold_score("Sort", "3 0 7 2", "0237") == 1.0
    assert task.gold_score("Sort", "3 0 7 2", " 0 2 3 7") == 1.0
    assert task.gold_score("Sort", "3 0 7 2", "237") < 0.5
    assert task.gold_score("Descend", "3 0 0 2", "3200") == 1.0
    assert task.gold_preference("Sort", "3 0 7 2", "237", "0237") == 2  # not "the shorter one"
    assert task.normalize("0019", "Add") == "19" and task.normalize("0019", "Sort") == "0019"


@pytest.mark.parametrize("seed", range(3))
def test_every_right_answer_scores_one(seed):
    """solve() is a fixed point of normalize for every task, so the gold judge counts every right
    answer as right (the slow way: all of a split's problems)."""
    for rows in task.make_splits(seed, 500, 0, 0, 0, tasks=task.ALL_TASKS).values():
        for r in rows:
            truth = task.solve(r["instruction"], r["input"])
            assert task.normalize(truth, r["instruction"]) == truth
            assert task.gold_score(r["instruction"], r["input"], truth) == 1.0


def test_gold_score_correctness_first_then_similarity():
    assert task.gold_score("Add", "12 7", "19") == 1.0
    assert task.gold_score("Add", "12 7", " 019") == 1.0
    # wrong: half the difflib ratio; "18" vs "19" share 1 of 2 chars each -> ratio 0.5
    assert task.gold_score("Add", "12 7", "18") == pytest.approx(0.25)
    assert task.gold_score("Add", "12 7", "") == 0.0
    # any correct answer beats any wrong one
    rng = random.Random(0)
    for _ in range(200):
        wrong = "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 4)))
        if task.normalize(wrong) != "19":
            assert task.gold_score("Add", "12 7", wrong) <= 0.5 < task.gold_score("Add", "12 7", "19")


def test_gold_preference_tie_breaks():
    assert task.gold_preference("Add", "12 7", "19", "18") == 1
    assert task.gold_preference("Add", "12 7", "18", "19") == 2
    # equal score: the shorter output wins
    assert task.gold_preference("Add", "12 7", "019", "19") == 2
    # exact tie: a deterministic coin, the same on every call
    a = task.gold_preference("Sort", "1 2 3 4", "5555", "6666")
    assert a in (1, 2) and all(task.gold_preference("Sort", "1 2 3 4", "5555", "6666") == a for _ in range(5))


def test_annotator_flip_rate():
    rng = random.Random(0)
    n, flips = 4000, 0
    for _ in range(n):
        flips += task.annotate("Add", "12 7", "19", "18", 0.25, rng) != 1
    assert abs(flips / n - 0.25) < 0.03
    assert all(task.annotate("Add", "12 7", "19", "18", 0.0, rng) == 1 for _ in range(50))


def test_splits_deterministic_disjoint_and_noisy():
    a = task.make_splits(3, 2000, 300, 300, 100, sft_noise=0.3)
    b = task.make_splits(3, 2000, 300, 300, 100, sft_noise=0.3)
    assert a == b
    keys = [{(r["instruction"], r["input"]) for r in rows} for rows in a.values()]
    assert sum(map(len, keys)) == len(set().union(*keys)) == 2700
    lazy = sum(r["output"] != task.solve(r["instruction"], r["input"]) for r in a["sft"])
    assert abs(lazy / 2000 - 0.3) < 0.04
    for r in a["sft"]:
        assert r["output"] in (task.solve(r["instruction"], r["input"]), task.lazy_answer(r["instruction"], r["input"]))
    assert "output" not in a["eval"][0]


def test_lazy_answers_are_wrong_but_get_partial_credit():
    for instruction, input in [("Add", "12 7"), ("Reverse", "abcd"), ("Sort", "3 1 2 9")]:
        lazy = task.lazy_answer(instruction, input)
        s = task.gold_score(instruction, input, lazy)
        truth = task.solve(instruction, input)
        assert s == pytest.approx(0.5 * difflib.SequenceMatcher(None, task.normalize(lazy), truth).ratio())
        assert 0 < s < 1


def test_win_value():
    assert task.win_value(1.0, 0.5) == 1.0 and task.win_value(0.5, 0.5) == 0.5 and task.win_value(0.2, 0.5) == 0.0


@pytest.mark.parametrize("tasks", [("Sort",), ("Sort", "Reverse"), task.ALL_TASKS])
def test_splits_hold_only_the_asked_tasks_and_solve_them(tasks):
    splits = task.make_splits(5, 300, 100, 100, 50, sft_noise=0.0, tasks=tasks)
    seen = {r["instruction"] for rows in splits.values() for r in rows}
    assert seen == set(tasks)
    for r in splits["sft"]:  # clean demonstrations are the gold answers, checked the slow way
        chars = r["input"].split() if " " in r["input"] else list(r["input"])
        want = {"Sort": lambda: "".join(sorted(chars)), "Descend": lambda: "".join(sorted(chars, reverse=True)),
                "Order": lambda: "".join(sorted(chars)), "Reverse": lambda: r["input"][::-1],
                "Add": lambda: str(sum(map(int, chars)))}[r["instruction"]]()
        assert r["output"] == want and task.gold_score(r["instruction"], r["input"], r["output"]) == 1.0
