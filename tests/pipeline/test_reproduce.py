"""scripts/reproduce.py and scripts/report.py: the statistics by hand, the report on hand-made
records, and the whole script on the tiny preset (every kind of run, records, a resumed second
invocation that runs nothing, the report rebuilt from the records alone)."""
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import report  # noqa: E402  (scripts/report.py)
import reproduce  # noqa: E402


def test_mean_ci_by_hand():
    mean, ci = report.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and ci == pytest.approx(4.303 * 1.0 / math.sqrt(3))  # sd 1, t(2) = 4.303
    mean1, ci1 = report.mean_ci([5.0])  # one seed: no interval, and the table says so
    assert mean1 == 5.0 and math.isnan(ci1) and report.fmt(mean1, ci1) == "5.0"
    assert report.fmt(2.0, 0.25, sign="+") == "+2.0 ± 0.2"


def test_paired_differences_by_hand():
    d = report.paired_differences([50.0, 60.0, 55.0], [40.0, 58.0, 57.0])
    assert d["diffs"] == [10.0, 2.0, -2.0] and d["higher"] == 2 and d["n"] == 3
    # mean 10/3; sd = sqrt(((20/3)^2 + (4/3)^2 + (16/3)^2) / 2) = sqrt(112/3); t(2) = 4.303
    assert d["mean"] == pytest.approx(10 / 3)
    assert d["ci"] == pytest.approx(4.303 * math.sqrt(112 / 3) / math.sqrt(3))


def test_ratio_interval_by_hand():
    point, lo, hi = report.ratio_interval([1.0, 2.0, 3.0], [2.0, 4.0, 6.0])
    assert point == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)  # every resample
    point, lo, hi = report.ratio_interval([1.0, 3.0], [1.0, 1.0])
    assert point == pytest.approx(2.0) and lo == pytest.approx(1.0) and hi == pytest.approx(3.0)
    assert math.isnan(report.ratio_interval([1.0, 1.0], [1.0, -1.0])[0])  # no gain to share
    # a yardstick whose sign flips when seeds are resampled (two or three of the three seeds drawn as -3: 7 in 27 resamples): no share
    assert all(math.isnan(x) for x in report.ratio_interval([1.0, 1.0, 1.0], [2.0, 2.0, -3.0]))


def fake_record(name: str, seed: int, values: dict, rm: dict | None = None) -> dict:
    """A run's record holding only what the tables read: each policy's win-rate, accuracy and gold score."""
    return {"name": name, "seed": seed, "commands": [], "config": {}, "timings": [{"stage": "sft", "seconds": 60}],
            "metrics": {},
            "results": {"policies": {p: {"win_rate": w, "accuracy": a, "gold_score": g} for p, (w, a, g) in values.items()},
                        "rm_accuracy": rm or {}}}


def test_three_metric_paired_rows_by_hand():
    """The paired table's rows, for each metric, equal the per-seed differences computed by hand:
    win-rate as is, exact accuracy and gold score in points (x 100)."""
    runs = [fake_record("seed0", 0, {report.SFT: (50.0, 0.70, 0.80), report.PPO: (55.0, 0.80, 0.85)}),
            fake_record("seed1", 1, {report.SFT: (52.0, 0.72, 0.81), report.PPO: (51.0, 0.75, 0.82)})]
    table = report.paired_table(runs, [(report.PPO, report.SFT)])
    rows = [line for line in table.splitlines() if line.startswith(f"| {report.PPO} − {report.SFT}")]
    assert len(rows) == 3
    for row, diffs in zip(rows, [[5.0, -1.0], [10.0, 3.0], [5.0, 1.0]]):
        d = report.paired_differences(diffs, [0.0, 0.0])
        cells = [c.strip() for c in row.split("|")]
        assert cells[3] == report.fmt(d["mean"], d["ci"], 1, "+")
        assert cells[5] == ", ".join(f"{x:+.1f}" for x in diffs)
    assert "| 2 of 2 |" in rows[1] and "| 1 of 2 |" in rows[0]


def test_noise_table_compares_the_same_seeds(tmp_path):
    pol = {report.SFT: (50.0, 0.7, 0.8), report.PPO: (55.0, 0.8, 0.9), report.GOLD: (60.0, 0.9, 0.95)}
    records = {"seed0": fake_record("seed0", 0, pol), "noise.seed0": fake_record("noise.seed0", 0, {
        report.SFT: (50.0, 0.7, 0.8), report.PPO: (49.0, 0.6, 0.7), report.GOLD: (60.0, 0.9, 0.95)})}
    table = report.noise_table(records, [0])
    assert f"| {report.PPO} − {report.SFT} | +10.0 (1/1) | -10.0 (0/1) | one seed → one seed | +10.0 → -10.0 |" in table
    # PPO on the gold reward has the same gold score in both (0.95): the re-run repeated it; PPO's moved
    assert "Unchanged by the perturbation" in table and f"{report.GOLD} on seed0." in table
    assert f"{report.PPO} on" not in table


def test_noise_table_says_how_far_one_seed_moves():
    # three seeds; SPG - PPO is +4, +6, +5 originally (above 0) and +4, -6, +5 in the re-run (interval
    # includes 0); each policy's own change per seed: PPO 0, 10, 2 points -> median 2, max 10; SPG 0, 2, 2
    acc = {0: (0.70, 0.74, 0.70, 0.74), 1: (0.60, 0.66, 0.70, 0.64), 2: (0.80, 0.85, 0.82, 0.87)}
    records = {}
    for s, (ppo, spg, ppo2, spg2) in acc.items():
        records[f"seed{s}"] = fake_record(f"seed{s}", s, {report.PPO: (50.0, ppo, 0.5), report.SPG: (50.0, spg, 0.5)})
        records[f"noise.seed{s}"] = fake_record(f"noise.seed{s}", s, {report.PPO: (50.0, ppo2, 0.5 + s / 10),
                                                                       report.SPG: (50.0, spg2, 0.6)})
    table = report.noise_table(records, [0, 1, 2])
    row = next(line for line in table.splitlines() if line.startswith(f"| {report.SPG} − {report.PPO}"))
    d1 = report.paired_differences([74.0, 66.0, 85.0], [70.0, 60.0, 80.0])
    d2 = report.paired_differences([74.0, 64.0, 87.0], [70.0, 70.0, 82.0])
    assert d1["diffs"] == pytest.approx([4.0, 6.0, 5.0]) and d2["diffs"] == pytest.approx([4.0, -6.0, 5.0])
    assert f"| {report.verdict(d1)} → {report.verdict(d2)} |" in row and report.verdict(d1) == "above 0"
    assert report.verdict(d2) == "includes 0" and "+6.0 → -6.0" in row
    assert f"{report.PPO} 2.0 (max 10.0)" in table and f"{report.SPG} 2.0 (max 2.0)" in table
    # PPO's gold score is unchanged on seed 0 only; SPG's on none
    assert f"{report.PPO} on seed0." in table and f"{report.SPG} on" not in table
    # the findings say the same in one line
    found = report.findings([records[f"seed{s}"] for s in range(3)], {}, list(records.values()))
    line = next(x for x in found.splitlines() if x.startswith("- Float-level noise (3 seeds"))
    assert (f"went from {report.fmt(d1['mean'], d1['ci'], 1, '+')} (above 0; higher in 3 of 3) to "
            f"{report.fmt(d2['mean'], d2['ci'], 1, '+')} (includes 0; higher in 2 of 3)") in line
    assert "PPO moved by 2.0 points (median; max 10.0)" in line and f"its {report.SPG} by 2.0 (max 2.0)" in line


def test_the_report_names_the_machines_its_records_ran_on():
    # the header is read from the records (a report rebuilt elsewhere must not name its own machine)
    a, b = "Linux x86_64, 2 CPU cores X (AVX2)", "Linux x86_64, 2 CPU cores X (AVX512)"
    recs = [{"machine": a}, {"machine": b}, {"machine": a}, {}]
    assert report.machines(recs[:1] + recs[2:3]) == a
    assert report.machines(recs) == f"{a} (2 runs); {b} (1 run); a machine its record does not name (1 run)"
    assert "(" in report.hardware() and "CPU cores" in report.hardware()


def test_noise_reruns_relearn_everything_after_the_data():
    # Re-running only Steps 3-5 with another summation order can repeat PPO exactly (no sampled token
    # flips); a noise re-run therefore starts from the data alone and re-learns SFT and the Step-2 RM.
    import argparse
    args = argparse.Namespace(tiny=False, seeds=[0, 1, 2, 3, 4, 5], sweep=False, rounds=False, lambdas=False,
                              noise=True, ablations=False, kl_coefs=[], lambda_values=[], ablation_seeds=1)
    noise = [j for j in reproduce.jobs(args) if j.group == "noise"]
    assert [j.name for j in noise] == [f"noise.seed{s}" for s in range(5)]
    for job in noise:
        assert job.copy == ["data"] and job.after == ("main", f"seed{job.seed}")
        assert job.commands == [["--controls", "--micro-batch", str(reproduce.MICRO_BATCH)]]


def test_a_variant_starts_from_its_seeds_stages_or_remakes_only_the_data(tmp_path):
    # On a fresh machine only the main runs' records exist: a noise re-run (data copied) makes its data
    # again, which the seed draws exactly; a sweep point (SFT and RM copied) must refuse, writing nothing.
    runs = tmp_path / "runs"
    (runs / "seed3" / "data").mkdir(parents=True)
    (runs / "seed3" / "data" / "DONE").write_text("")
    (runs / "seed3" / "data" / "sft.jsonl").write_text("x")
    noise = reproduce.Job("noise.seed3", "noise", 3, [["--controls"]], copy=reproduce.NOISE_COPY)
    reproduce.start_from(noise, runs)
    assert (runs / "noise.seed3" / "data" / "sft.jsonl").read_text() == "x"
    alone = reproduce.Job("noise.seed4", "noise", 4, [["--controls"]], copy=reproduce.NOISE_COPY)
    reproduce.start_from(alone, runs)
    assert (runs / "noise.seed4").is_dir() and not any((runs / "noise.seed4").iterdir())
    sweep = reproduce.Job("kl_0.05.seed4", "sweep", 4, [["--kl-coef", "0.05"]], copy=reproduce.BEFORE_PPO)
    with pytest.raises(SystemExit, match="sft"):
        reproduce.start_from(sweep, runs)
    assert not (runs / "kl_0.05.seed4").exists() and not (runs / "kl_0.05.seed4.copying").exists()


def test_tiny_reproduction_runs_every_kind_of_run(tmp_path):
    runs, results = tmp_path / "runs", tmp_path / "RESULTS.md"
    cmd = [sys.executable, str(ROOT / "scripts" / "reproduce.py"), "--tiny", "--seeds", "0", "1", "--sweep",
           "--kl-coefs", "0.05", "--rounds", "--runs", str(runs),
           "--results", str(results), "--figures", str(tmp_path / "figures")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = results.read_text()
    for heading in ["Main table", "Paired differences in three metrics", "off-distribution", "over-optimisation "
                    "pressure", "Iterated RLP-SPG", "RLP-UML's mechanism", "How the settings were chosen",
                    "Package versions"]:
        assert heading in text, heading
    for row in [f"| {report.FRESH} |", f"| {report.SPG} − {report.PPO} | exact accuracy (points) |",
                f"| {report.FRESH_RM} |", f"| {report.UML0_RM} |", "| 0.05 | 2 |", "| 0.0 | 2 |", "| 3 |"]:
        assert row in text, row
    assert report.read_versions_table(text) == report.package_versions()
    records = report.load(runs / "records")
    assert set(records) == {"seed0", "seed1", "kl_0.05.seed0", "kl_0.05.seed1"}
    rounds = [c for c in records["seed0"]["commands"] if "--rlp-rounds" in c]
    assert rounds and "RLP-SPG, round 3" in records["seed0"]["results"]["policies"]  # the rounds joined the main run
    assert all("samples" not in row for rows in records["seed0"]["metrics"]["ppo"] for row in [rows])
    # a record says which stages its run started from (copies of its seed's main run)
    assert records["kl_0.05.seed0"]["copied"] == reproduce.BEFORE_PPO and records["seed0"]["copied"] == []
    assert records["seed0"]["machine"] == report.hardware()  # the machine that made it, for the report's header
    uml0 = records["seed0"]["metrics"]["rlp_reward_uml0"]  # UML's code with lambda 0: its logs are in the record
    assert any("extra_grad_norm" in r for r in uml0) and any("hidden_within_share_after" in r for r in uml0)
    # the paired row is computed from the records
    main = [records["seed0"], records["seed1"]]
    d = report.paired_differences(report.series(main, report.PPO, "win_rate"), report.series(main, report.SFT,
                                                                                             "win_rate"))
    assert f"| {report.PPO} − {report.SFT} | win-rate (points) | {report.fmt(d['mean'], d['ci'], 1, '+')} |" in text
    assert (tmp_path / "figures" / "pressure_sweep.png").stat().st_size > 1000
    import re
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)  # every figure the report shows, each a file drawn here
    assert "figures/main_table.png" in images and "figures/rm_accuracy.png" in images and len(set(images)) == len(images)
    assert all((results.parent / image).stat().st_size > 1000 for image in images)
    # a second invocation finds every record complete and runs nothing; the report rebuilds from records alone
    again = subprocess.run(cmd + ["--workers", "1"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert again.returncode == 0 and "min\n" not in again.stdout.split("all runs complete")[0]
    # --collect records runs finished outside the script (by hand, another queue) and runs nothing
    before = (runs / "records" / "kl_0.05.seed1.json.gz").read_bytes()
    (runs / "records" / "kl_0.05.seed1.json.gz").unlink()
    collected = subprocess.run(cmd + ["--collect", "--results", str(tmp_path / "collected.md")], capture_output=True,
                               text=True, cwd=ROOT, timeout=600)
    assert collected.returncode == 0, collected.stderr[-2000:]
    assert "recorded kl_0.05.seed1" in collected.stdout
    assert (runs / "records" / "kl_0.05.seed1.json.gz").read_bytes() == before
    import shutil
    shutil.rmtree(runs / "seed0")
    only = subprocess.run(cmd + ["--report-only", "--results", str(tmp_path / "again.md")], capture_output=True,
                          text=True, cwd=ROOT, timeout=600)
    assert only.returncode == 0, only.stderr[-2000:]
    body = lambda t: t.split("## Findings")[1].split("## Wall time")[0]  # noqa: E731 (the header names the command)
    assert body((tmp_path / "again.md").read_text()) == body(text)


def requirement_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_version_table_round_trip():
    versions = {name: f"1.{i}.0" for i, name in enumerate(report.PACKAGES)}
    text = "# R\n\n## Package versions\n\nsome words\n\n" + report.versions_table(versions) + "\n\n## Next\n| a | b |\n"
    assert report.read_versions_table(text) == versions


def test_pins_cover_the_packages_that_decide_the_numbers():
    pins = requirement_pins()
    assert set(report.PACKAGES) <= set(pins), set(report.PACKAGES) - set(pins)


def test_results_name_the_pinned_versions():
    """RESULTS.md says which versions made its numbers; they must be the ones requirements.txt
    installs, or a fresh install cannot reproduce them."""
    named = report.read_versions_table((ROOT / "RESULTS.md").read_text())
    pins = requirement_pins()
    assert named, "RESULTS.md has no package-versions table"
    assert named == {name: pins[name] for name in report.PACKAGES}


def test_record_round_trip(tmp_path):
    """A record is gzip-compressed JSON that load() reads back by its run's name."""
    rec = fake_record("seed3", 3, {report.SFT: (50.0, 0.7, 0.8)})
    (tmp_path / "seed3.json.gz").write_bytes(gzip.compress(json.dumps(rec).encode()))
    assert report.load(tmp_path) == {"seed3": rec}


def test_the_report_names_the_runs_not_made_yet():
    text = report.not_run(["main.seed3", "main.seed4", "rounds.seed0", "kl_0.1.seed0"])
    assert "main on seeds 3, 4; rounds on seed 0; kl_0.1 on seed 0." in text
    assert report.not_run([]) == ""


def test_label_accuracy_line_by_hand():
    recs = []
    for spg, fresh in [(0.9, 0.7), (0.8, 0.85)]:
        rec = fake_record("x", 0, {})
        rec["metrics"] = {"rlp_reward_spg": [{"step": 1}, {"label_accuracy_gold": spg}],
                          "rlp_reward_fresh": [{"label_accuracy_gold": fresh}]}
        recs.append(rec)
    recs.append(fake_record("no_controls", 1, {}))  # without the fresh-label stage: left out
    line = report.label_accuracy(recs)
    assert "the 2 runs with both" in line and "80.0–90.0% right" in line and "70.0–85.0%" in line
    assert "more accurate in 1 of 2" in line
    assert report.label_accuracy([fake_record("none", 0, {})]) == ""


def test_pearson_and_seed_bootstrap_by_hand():
    """r by hand (x = 1, 2, 3, y = 1, 3, 2: r = 0.5); points on a rising line give r = 1 in every
    resample; fewer than three seeds give no interval; a constant list gives nan."""
    assert report.pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)
    assert math.isnan(report.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    line = [(s, float(x), 2.0 * x + 1) for s in range(4) for x in (s, s + 0.5)]
    r, lo, hi = report.cluster_bootstrap_r(line)
    assert r == pytest.approx(1.0) and lo == pytest.approx(1.0) and hi == pytest.approx(1.0)
    assert math.isnan(report.cluster_bootstrap_r(line[:4])[1])  # seeds 0 and 1 only


def test_per_run_rows_split_at_the_median_by_hand():
    """Four runs (two seeds x beta 0.02 and 0.1): the Step-2 RM's accuracy on PPO's samples is 60,
    70, 80, 90 (median 75); RLP-SPG's gains over PPO are +8, +6, +1, -1 points, so the half below
    the median gains +7.0 (2/2) and the other +0.0 (1/2)."""
    records = {}
    for name, seed, rm, spg in [("seed0", 0, 60.0, 0.88), ("kl_0.1.seed0", 0, 80.0, 0.81),
                                ("seed1", 1, 70.0, 0.86), ("kl_0.1.seed1", 1, 90.0, 0.79)]:
        records[name] = fake_record(name, seed, {report.SFT: (50.0, 0.7, 0.8), report.PPO: (55.0, 0.80, 0.85),
                                                 report.SPG: (57.0, spg, 0.9), report.GOLD: (60.0, 0.9, 0.95)},
                                    rm={report.STEP2_RM: {report.PPO: {"accuracy": rm / 100}}})
    items = report.pressure_runs(records, [0, 1], [0.1])
    assert sorted(x["rm_on_ppo"] for x in items) == pytest.approx([60.0, 70.0, 80.0, 90.0])
    table = report.per_run_table(items)
    rows = [line for line in table.splitlines() if f"| {report.SPG} |" in line]
    assert len(rows) == 2
    assert "| 2 | 65.0 |" in rows[0] and report.fmt(*report.mean_ci([8.0, 6.0]), 1, "+") + " (2/2)" in rows[0]
    assert "| 2 | 85.0 |" in rows[1] and report.fmt(*report.mean_ci([1.0, -1.0]), 1, "+") + " (1/2)" in rows[1]
    r = report.pearson([60.0, 70.0, 80.0, 90.0], [8.0, 6.0, 1.0, -1.0])
    assert f"{r:+.2f}" in rows[0]
    assert "(median 75.0%)" in table
