"""The built-in task: instruction-following micro-tasks with checkable answers, and
its gold judge.

Instruction types, each generated deterministically from a seed (--tasks picks them; the
default is Sort and Reverse, TUNING.md says why):
  Sort      "3 9 1 4"   -> "1349"     (4..7 digits, ascending; zeros are digits like any other)
  Reverse   "bdfa"      -> "afdb"     (4..7 letters a..h)
  Add       "12 7"      -> "19"       (two numbers 0..99)
  Order     "dbca"      -> "abcd"     (4..7 letters, ascending)
  Descend   "3 9 1 4"   -> "9431"     (4..7 digits, descending)
  (Subtract "31 12" -> "19" is known to the judge, not generated)
Records use AlpacaFarm's format and splits (SFT demos, preference instructions,
unlabelled instructions, evaluation instructions), with no instruction in two splits.

The gold judge knows every answer. It scores an output (correctness first, then string
similarity to the right answer so that two wrong answers are rarely tied), and compares
two outputs. Step 1's simulated annotator is the gold judge with a label-flip rate
(25% by default, like AlpacaFarm's simulated annotators).
"""
from __future__ import annotations

import difflib
import hashlib
import random

TASKS = ("Add", "Reverse", "Sort")
ALL_TASKS = ("Add", "Reverse", "Sort", "Order", "Descend")
LETTERS = "abcdefgh"


def make_problem(rng: random.Random, tasks: tuple[str, ...] = TASKS) -> tuple[str, str]:
    kind = rng.choice(tasks)
    if kind == "Add":
        return kind, f"{rng.randint(0, 99)} {rng.randint(0, 99)}"
    if kind in ("Reverse", "Order"):
        return kind, "".join(rng.choice(LETTERS) for _ in range(rng.randint(4, 7)))
    return kind, " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(4, 7)))


def solve(instruction: str, input: str) -> str:
    """The right answer, already normalised (`normalize(answer, instruction) == answer`)."""
    if instruction == "Add":
        a, b = map(int, input.split())
        return str(a + b)
    if instruction == "Subtract":
        a, b = map(int, input.split())
        return str(a - b)
    if instruction == "Reverse":
        return input[::-1]
    if instruction == "Sort":
        return "".join(sorted(input.split()))
    if instruction == "Descend":
        return "".join(sorted(input.split(), reverse=True))
    if instruction == "Order":
        return "".join(sorted(input))
    raise ValueError(f"the built-in judge does not know the instruction {instruction!r}")


NUMERIC = ("Add", "Subtract")  # answers that are numbers: "019" is 19


def normalize(text: str, instruction: str | None = None) -> str:
    """Canonical form of an answer: no spaces, lower case, and for a number (Add, Subtract) no
    leading zeros. Digit strings of the other tasks keep their zeros: "0237" is the sorted answer
    to "Sort 3 0 7 2" and "237" is a wrong one (before this rule they were equal, so the gold
    judge never counted a sorted answer starting with 0 as correct). SPG's default clustering
    groups outputs with equal normalised answers."""
    t = "".join(text.split()).lower()
    if t.isdigit() and (instruction is None or instruction in NUMERIC):
        t = str(int(t))
    return t


def lazy_answer(instruction: str, input: str) -> str:
    """A low-effort wrong answer of the kind that slips into demonstration data: the input
    echoed back (Sort, Reverse, Order, Descend) or the first number (Add). It is easy to spot,
    so a small reward model can learn to prefer real answers over it."""
    if instruction == "Add":
        return input.split()[0]
    return "".join(input.split())


def make_splits(seed: int, n_sft: int, n_pref: int, n_unlabeled: int, n_eval: int,
                sft_noise: float = 0.0, tasks: tuple[str, ...] = TASKS) -> dict[str, list[dict]]:
    """AlpacaFarm-style splits; the same seed always gives the same records. A fraction
    `sft_noise` of the demonstrations carry a lazy (wrong) answer, as real instruction data
    carries low-quality responses: it gives SFT room that preference learning can recover."""
    rng = random.Random(seed)
    sizes = {"sft": n_sft, "pref": n_pref, "unlabeled": n_unlabeled, "eval": n_eval}
    seen, splits = set(), {}
    for name, n in sizes.items():
        rows = []
        while len(rows) < n:
            instruction, input = make_problem(rng, tasks)
            if (instruction, input) in seen:
                continue
            seen.add((instruction, input))
            row = {"instruction": instruction, "input": input}
            if name == "sft":
                lazy = rng.random() < sft_noise
                row["output"] = lazy_answer(instruction, input) if lazy else solve(instruction, input)
            rows.append(row)
        splits[name] = rows
    return splits


# ----------------------------------------------------------------------------- gold judge

def gold_score(instruction: str, input: str, output: str) -> float:
    """1 for a correct answer; otherwise half the string similarity to the right answer."""
    truth, got = solve(instruction, input), normalize(output, instruction)
    if got == truth:
        return 1.0
    return 0.5 * difflib.SequenceMatcher(None, got, truth).ratio()


def gold(record: dict, output: str) -> float:
    """The gold judge's score of an output for a record of the built-in task (gold_score)."""
    return gold_score(record["instruction"], record["input"], output)


def _coin(*parts: str) -> int:
    """A deterministic fair coin (1 or 2) for exact ties, so labels don't depend on order of calls."""
    return 1 + hashlib.sha256("\x00".join(parts).encode()).digest()[0] % 2


def gold_preference(instruction: str, input: str, output_1: str, output_2: str) -> int:
    """1 or 2: higher gold score wins, then the shorter output, then a deterministic coin."""
    s1, s2 = gold_score(instruction, input, output_1), gold_score(instruction, input, output_2)
    if s1 != s2:
        return 1 if s1 > s2 else 2
    if len(output_1) != len(output_2):
        return 1 if len(output_1) < len(output_2) else 2
    return _coin(instruction, input, output_1, output_2)


def annotate(instruction: str, input: str, output_1: str, output_2: str, flip_rate: float,
             rng: random.Random) -> int:
    """Step 1's simulated annotator: the gold preference, flipped with probability `flip_rate`."""
    pref = gold_preference(instruction, input, output_1, output_2)
    return 3 - pref if rng.random() < flip_rate else pref


def win_value(score: float, reference_score: float) -> float:
    """1 for a win against the reference, 0.5 for a tie, 0 for a loss."""
    return 1.0 if score > reference_score else 0.5 if score == reference_score else 0.0
