"""Figures and reward-hacking examples of a run (extras/plot.py), from the files it wrote:

    python scripts/plot.py RUN_DIR                        # (re)draw RUN_DIR/eval/*.png and eval/hacks.md
    python scripts/plot.py RUN_DIR --out figures/default  # the same files into another folder

A finished run, an old one or one still running can be drawn; drawing never changes a number.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository's modules

import train  # noqa: E402
from extras import plot  # noqa: E402
from plumbing import data  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder (train.py --out)")
    p.add_argument("--out", default=None, help="folder for the files (default: RUN_DIR/eval)")
    args = p.parse_args(argv)
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise SystemExit(f"error: {run_dir}: no such run folder")
    names = plot.draw(run_dir, train.STAGES, out_dir=args.out)
    if not names:
        raise SystemExit(f"error: nothing to draw in {run_dir}: no PPO stage has logged an iteration and there is "
                         f"no eval/results.json")
    print(f"wrote {', '.join(names)} in {Path(args.out) if args.out else run_dir / 'eval'}")


if __name__ == "__main__":
    try:
        main()
    except data.DataError as e:
        raise SystemExit(f"error: {e}") from None
