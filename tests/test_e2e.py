"""The whole pipeline with a tiny config, run as a user runs it (a subprocess), plus the
CLI's handling of bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--n-sft", "200", "--n-pref", "64", "--n-unlabeled", "64", "--n-eval", "32", "--sft-steps", "30",
        "--ppo-iterations", "2", "--rollout-batch", "32", "--step-batch", "16", "--rlp-n", "4", "--best-of-n", "4",
        "--model-hidden", "32", "--model-layers", "2", "--model-heads", "2", "--rm-epochs", "1", "--quiet"]


def train(out, *args, check=True):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--out", str(out), *TINY, *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(out)
    return out


STAGE_DIRS = ["data", "sft", "prefs", "reward", "ppo", "rlp_samples", "rlp_reward_uml", "rlp_reward_spg",
              "rlp_ppo_uml", "rlp_ppo_spg", "eval"]


def test_every_stage_complete(run_dir):
    for name in STAGE_DIRS:
        assert (run_dir / name / "DONE").is_file(), name
    assert not list(run_dir.glob(".*.partial"))
    for name in STAGE_DIRS[1:]:
        rows = [json.loads(line) for line in (run_dir / name / "metrics.jsonl").read_text().splitlines()]
        assert rows and "stage_seconds" in rows[-1], name


def test_checkpoints_follow_hf_conventions(run_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    for path in ["sft", "ppo/policy", "rlp_ppo_uml/policy", "rlp_ppo_spg/policy"]:
        model = AutoModelForCausalLM.from_pretrained(run_dir / path)
        tok = AutoTokenizer.from_pretrained(run_dir / path)
        ids = tok("Add 1 2 =", return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out.shape[1] > ids.shape[1]
        assert (run_dir / path / "model.safetensors").is_file()
    for path in ["reward", "ppo/value", "rlp_reward_uml", "rlp_reward_spg"]:
        rm = AutoModelForSequenceClassification.from_pretrained(run_dir / path, num_labels=1)
        assert rm.config.num_labels == 1
        tok = AutoTokenizer.from_pretrained(run_dir / path)
        with torch.no_grad():
            assert rm(**tok(["Add 1 2 =3"], return_tensors="pt")).logits.shape == (1, 1)
    assert (run_dir / "rlp_reward_uml" / "uml_heads.safetensors").is_file()
    assert json.loads((run_dir / "rlp_reward_uml" / "uml_heads.json").read_text())["latent"] > 0


def test_data_files_in_alpacafarm_format(run_dir):
    import data
    assert data.read_records(run_dir / "data" / "sft.jsonl", data.DEMO)
    prefs = data.read_records(run_dir / "prefs" / "prefs.jsonl", data.PREFERENCE)
    assert 0 < len(prefs) <= 64 and all(r["output_1"] != r["output_2"] for r in prefs)  # identical pairs dropped
    samples = data.read_records(run_dir / "rlp_samples" / "P.jsonl", data.SAMPLES)
    assert len(samples) == 64 and all(len(s["outputs"]) == 4 for s in samples)
    synthetic = run_dir / "rlp_reward_spg" / "synthetic_prefs.jsonl"
    assert synthetic.is_file()
    for rec in (data.read_records(synthetic, data.PREFERENCE) if synthetic.read_text().strip() else []):
        assert rec["output_1"] != rec["output_2"] and rec["preference"] == 1
    spg_stats = [json.loads(l) for l in (run_dir / "rlp_reward_spg" / "metrics.jsonl").read_text().splitlines()]
    assert any("passed_gamma" in r and "label_accuracy_gold" in r for r in spg_stats)


def test_results(run_dir):
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert list(results["policies"]) == ["SFT", "Best-of-n", "PPO", "RLP-UML", "RLP-SPG"]
    for row in results["policies"].values():
        assert 0 <= row["win_rate"] <= 100 and 0 <= row["gold_score"] <= 1
    assert set(results["rm_accuracy"]) == {"Step-2 RM", "RLP-UML RM", "RLP-SPG RM"}
    for accs in results["rm_accuracy"].values():
        assert {"SFT", "PPO"} <= set(accs)
    table = (run_dir / "eval" / "results.md").read_text()
    for name in results["policies"]:
        assert f"| {name} |" in table
    ppo_rows = [json.loads(l) for l in (run_dir / "ppo" / "metrics.jsonl").read_text().splitlines()]
    for key in ["score", "kl", "entropy", "clip_frac", "approx_kl", "value_loss", "response_len", "gold"]:
        assert key in ppo_rows[0], key


def test_all_skips_complete_stages(run_dir):
    before = (run_dir / "sft" / "model.safetensors").stat().st_mtime_ns
    proc = train(run_dir)
    assert proc.stdout.count("complete, skipped") == len(STAGE_DIRS)
    assert (run_dir / "sft" / "model.safetensors").stat().st_mtime_ns == before


def test_malformed_data_is_a_clear_error_and_writes_nothing(tmp_path):
    train(tmp_path, "--stage", "data")
    sft = tmp_path / "data" / "sft.jsonl"
    lines = sft.read_text().splitlines()
    lines[2] = '{"instruction": "Add", "input": "1 2"'  # line 3: broken JSON
    sft.write_text("\n".join(lines) + "\n")
    proc = train(tmp_path, "--stage", "sft", check=False)
    assert proc.returncode != 0
    assert f"{sft}:3: malformed JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "sft").exists()
    lines[2] = '{"instruction": "Add", "input": "1 2"}'  # line 3: no output
    sft.write_text("\n".join(lines) + "\n")
    proc = train(tmp_path, "--stage", "sft", check=False)
    assert f"{sft}:3: missing field 'output'" in proc.stderr
    assert not (tmp_path / "sft").exists()


def test_prompt_too_long_names_file_and_line(tmp_path):
    train(tmp_path, "--stage", "data", "--max-prompt-len", "8")
    proc = train(tmp_path, "--stage", "sft", "--max-prompt-len", "8", check=False)
    assert proc.returncode != 0
    assert "sft.jsonl:1: prompt is" in proc.stderr and "--max-prompt-len 8" in proc.stderr
    assert not (tmp_path / "sft").exists()


def test_help_documents_every_setting():
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import train
    import dataclasses
    for f in dataclasses.fields(train.Config):
        assert "--" + f.name.replace("_", "-") in proc.stdout
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert "(paper: 10)" in text and "AlpacaFarm: 0.0067" in text


def test_missing_earlier_stage_is_a_clear_error(tmp_path):
    proc = train(tmp_path, "--stage", "reward", check=False)
    assert proc.returncode != 0 and "--stage sft" in proc.stderr
