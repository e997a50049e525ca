"""reproduce.py: its statistics by hand, and the whole script on a tiny config (every run,
RESULTS.md with every table, both figures), then a re-run that skips every finished run."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

import reproduce

ROOT = Path(__file__).resolve().parent.parent


def test_mean_ci_student_t_by_hand():
    mean, ci = reproduce.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert reproduce.mean_ci([5.0]) == (5.0, 0.0)
    _, ci2 = reproduce.mean_ci([1.0, 3.0])  # df = 1: t = 12.706, sd = sqrt(2)
    assert ci2 == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))


def test_tiny_reproduction_writes_every_table(tmp_path):
    cmd = [sys.executable, str(ROOT / "reproduce.py"), "--tiny", "--seeds", "0", "1", "--runs", str(tmp_path / "runs"),
           "--results", str(tmp_path / "RESULTS.md"), "--figures", str(tmp_path / "figures")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ["Main table", "off-distribution", "Table 4", "Table 5", "Sensitivity", "Figures"]:
        assert heading in text, heading
    for row in ["| RLP-SPG |", "| Step-2 RM |", "| InfoMax: I(v; z) only |", "| RLAIF (the policy judges) |",
                "| gamma 0.7 |", "| 4 |", "| lambda 1 |"]:
        assert row in text, row
    assert (tmp_path / "figures" / "overoptimisation.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "rm_accuracy.png").stat().st_size > 1000
    for name in ["seed1"] + list(reproduce.VARIANTS):
        assert (tmp_path / "runs" / name / "eval" / "DONE").is_file(), name
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert again.returncode == 0 and again.stdout.count("complete, skipped") == 2 + len(reproduce.VARIANTS)
