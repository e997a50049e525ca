"""scripts/reproduce.py: its statistics by hand, and the whole script on a tiny config (every run,
RESULTS.md with every table, both figures), then a re-run that skips every finished run."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import reproduce

ROOT = Path(__file__).resolve().parents[2]


def test_mean_ci_student_t_by_hand():
    mean, ci = reproduce.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    mean1, ci1 = reproduce.mean_ci([5.0])  # one seed: no interval, and the table says so
    assert mean1 == 5.0 and math.isnan(ci1) and reproduce.fmt(mean1, ci1) == "5.0"
    assert reproduce.fmt(2.0, 0.25, sign="+") == "+2.0 ± 0.2"
    _, ci2 = reproduce.mean_ci([1.0, 3.0])  # df = 1: t = 12.706, sd = sqrt(2)
    assert ci2 == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))


def test_tiny_reproduction_writes_every_table(tmp_path):
    tuning = tmp_path / "TUNING.md"
    tuning.write_text("Every setting tried: (a hand-written record)\n")
    cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--tiny", "--seeds", "0", "1", "--ablation-seeds", "1",
           "--sensitivity-seeds", "1", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "RESULTS.md"),
           "--figures", str(tmp_path / "figures"), "--tuning", str(tuning)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp_path / "RESULTS.md").read_text()
    for heading in ["Main table", "Paired differences", "off-distribution", "Table 4", "Table 5", "Sensitivity",
                    "Figures", "How the settings were chosen", "Package versions"]:
        assert heading in text, heading
    for row in ["| RLP-SPG |", "| PPO (gold reward) |", "| PPO − SFT |", "| RLP-UML − PPO |", "| RLP-SPG − PPO |",
                "| PPO (gold reward) − PPO |", "| Step-2 RM |", "| InfoMax: I(v; z) only |",
                "| RLAIF (the policy judges) |", "| gamma 0.7 |", "| 4 |", "| lambda 1 |",
                "Every setting tried: (a hand-written record)"]:
        assert row in text, row
    assert reproduce.read_versions_table(text) == reproduce.package_versions()
    # the paired row holds each seed's difference, computed from the runs
    runs = [tmp_path / "runs" / f"seed{s}" for s in (0, 1)]
    d = reproduce.paired_differences(reproduce.win_rates(runs, "PPO"), reproduce.win_rates(runs, "SFT"))
    assert f"| PPO − SFT | {d['mean']:+.1f} ± {d['ci']:.1f} | {d['higher']} of 2 seeds | " in text
    assert (tmp_path / "figures" / "overoptimisation.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "rm_accuracy.png").stat().st_size > 1000
    expected = ["seed1"] + [f"{name}.seed{s}" for name, (group, _, _) in reproduce.VARIANTS.items()
                            for s in (0,)]  # one seed each here: the suite's time budget
    for name in expected:
        assert (tmp_path / "runs" / name / "eval" / "DONE").is_file(), name
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert again.returncode == 0 and again.stdout.count("complete, skipped") == 1 + len(expected)


def test_paired_differences_by_hand():
    d = reproduce.paired_differences([50.0, 60.0, 55.0], [40.0, 58.0, 57.0])
    assert d["diffs"] == [10.0, 2.0, -2.0] and d["higher"] == 2 and d["n"] == 3
    # mean 10/3; sd = sqrt(((20/3)^2 + (4/3)^2 + (16/3)^2) / 2) = sqrt(112/3); t(2) = 4.303
    assert d["mean"] == pytest.approx(10 / 3)
    assert d["ci"] == pytest.approx(4.303 * math.sqrt(112 / 3) / math.sqrt(3))


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_version_table_round_trip():
    versions = {name: f"1.{i}.0" for i, name in enumerate(reproduce.PACKAGES)}
    text = "# R\n\n## Package versions\n\nsome words\n\n" + reproduce.versions_table(versions) + "\n\n## Next\n| a | b |\n"
    assert reproduce.read_versions_table(text) == versions


def test_pins_cover_the_packages_that_decide_the_numbers():
    pins = requirement_pins()
    assert set(reproduce.PACKAGES) <= set(pins), set(reproduce.PACKAGES) - set(pins)


def test_results_name_the_pinned_versions():
    """RESULTS.md says which versions made its numbers; they must be the ones requirements.txt
    installs, or a fresh install cannot reproduce them."""
    named = reproduce.read_versions_table((ROOT / "RESULTS.md").read_text())
    pins = requirement_pins()
    assert named, "RESULTS.md has no package-versions table"
    assert named == {name: pins[name] for name in reproduce.PACKAGES}
