"""Extras: what the pipeline reports and compares against, not the method itself.

    evaluate.py    win-rates against reference answers, RM accuracy on every policy's samples
    judge.py       a language model as a pairwise judge (evaluation without gold; the RLAIF baseline)
    similarity.py  the NLI and sentence-embedding models behind SPG's clustering of open-ended answers
    ablations.py   the paper's Tables 4 and 5: other representation losses, other synthetic labels
    plot.py        a run's figures and reward-hacking examples
"""
