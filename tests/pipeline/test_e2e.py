"""The whole pipeline with a tiny config, run as a user runs it (a subprocess), plus the
CLI's handling of bad input."""
import json
import os
import subprocess
import sys

import pytest

from run_helpers import (BEFORE_PPO, ITERATIONS, KILLER, POLICIES, POLICY_DIRS, PPO_DIRS, RMS, ROOT, SCORER_DIRS,
                         STAGE_DIRS, TINY, check_complete, launcher)
from run_helpers import train_run as train

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train(out)
    return out


def test_every_stage_complete(run_dir):
    check_complete(run_dir)


def test_checkpoints_follow_hf_conventions(run_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    for path in POLICY_DIRS:
        model = AutoModelForCausalLM.from_pretrained(run_dir / path)
        tok = AutoTokenizer.from_pretrained(run_dir / path)
        ids = tok("Add 1 2 =", return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out.shape[1] > ids.shape[1]
        assert (run_dir / path / "model.safetensors").is_file()
    for path in SCORER_DIRS:
        rm = AutoModelForSequenceClassification.from_pretrained(run_dir / path, num_labels=1)
        assert rm.config.num_labels == 1
        tok = AutoTokenizer.from_pretrained(run_dir / path)
        with torch.no_grad():
            assert rm(**tok(["Add 1 2 =3"], return_tensors="pt")).logits.shape == (1, 1)
    assert (run_dir / "rlp_reward_uml" / "uml_heads.safetensors").is_file()
    assert json.loads((run_dir / "rlp_reward_uml" / "uml_heads.json").read_text())["latent"] > 0


def test_data_files_in_alpacafarm_format(run_dir):
    from plumbing import data
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
    assert list(results["policies"]) == POLICIES
    for row in results["policies"].values():
        assert 0 <= row["win_rate"] <= 100 and 0 <= row["gold_score"] <= 1
    assert list(results["rm_accuracy"]) == RMS
    for accs in results["rm_accuracy"].values():
        assert {"SFT", "PPO"} <= set(accs)
    table = (run_dir / "eval" / "results.md").read_text()
    for name in results["policies"]:
        assert f"| {name} |" in table
    ppo_rows = [json.loads(l) for l in (run_dir / "ppo" / "metrics.jsonl").read_text().splitlines()]
    for key in ["score", "kl", "entropy", "clip_frac", "approx_kl", "value_loss", "response_len", "gold"]:
        assert key in ppo_rows[0], key


def test_ppo_on_the_gold_reward(run_dir):
    """Stage ppo_gold: PPO's score is the gold judge's (normalised on the Step-1 SFT samples like an
    RM), and it trains the policy from SFT."""
    from safetensors.torch import load_file
    import task
    rows = [json.loads(l) for l in (run_dir / "ppo_gold" / "metrics.jsonl").read_text().splitlines()]
    norm = next(r for r in rows if "gold_mean" in r)
    prefs = [json.loads(l) for l in (run_dir / "prefs" / "prefs.jsonl").read_text().splitlines()]
    gold = [task.gold_score(r["instruction"], r["input"], r[k]) for r in prefs for k in ("output_1", "output_2")]
    mean = sum(gold) / len(gold)
    std = (sum((g - mean) ** 2 for g in gold) / len(gold)) ** 0.5
    assert norm["gold_mean"] == pytest.approx(mean, abs=1e-6) and norm["gold_std"] == pytest.approx(std, abs=1e-6)
    its = [r for r in rows if "iteration" in r]
    for r in its:  # the rollouts' score is their mean gold score, normalised
        assert r["score"] == pytest.approx((r["gold"] - mean) / std, rel=1e-4, abs=1e-4)  # logs keep 6 digits
    sft, pol = load_file(run_dir / "sft" / "model.safetensors"), load_file(run_dir / "ppo_gold" / "policy" / "model.safetensors")
    assert any(not torch_equal(sft[k], pol[k]) for k in sft)  # it trained
    ppo = load_file(run_dir / "ppo" / "policy" / "model.safetensors")
    assert any(not torch_equal(ppo[k], pol[k]) for k in ppo)  # on another reward than Step 3's


def torch_equal(a, b) -> bool:
    import torch
    return torch.equal(a, b)


def test_figures_sample_tables_and_hacks(run_dir):
    """eval draws the figures (results.md embeds them) and hacks.md; every PPO stage logs the
    sample table of the same first unlabelled prompts at every iteration."""
    from plumbing import data
    import ppo
    from matplotlib.image import imread
    for name in ["ppo_curves.png", "win_rates.png", "rm_accuracy.png"]:
        assert imread(run_dir / "eval" / name).shape[0] > 200, name
        assert f"]({name})" in (run_dir / "eval" / "results.md").read_text()
    hacks = (run_dir / "eval" / "hacks.md").read_text()
    assert all(f"## {name}" in hacks for name in POLICIES)
    outputs = [json.loads(l) for l in (run_dir / "eval" / "outputs.jsonl").read_text().splitlines()]
    assert set(outputs[0]["rm_score"]) == set(outputs[0]["gold_score"]) == {"reference", *POLICIES}
    unlabeled = data.read_records(run_dir / "data" / "unlabeled.jsonl", data.INSTRUCTION)
    norm = next(json.loads(l) for l in (run_dir / "ppo_gold" / "metrics.jsonl").read_text().splitlines()
                if "gold_mean" in l)
    for stage in PPO_DIRS:
        rows = [json.loads(l) for l in (run_dir / stage / "samples.jsonl").read_text().splitlines()]
        assert [(r["iteration"], r["prompt"]) for r in rows] == [(it, i) for it in range(ITERATIONS)
                                                                 for i in range(ppo.SAMPLE_PROMPTS)], stage
        for r in rows:
            assert (r["instruction"], r["input"]) == (unlabeled[r["prompt"]]["instruction"],
                                                      unlabeled[r["prompt"]]["input"])
            assert {"response", "score", "gold", "kl"} <= set(r)
            if stage == "ppo_gold":  # the sample table scores with the reward the stage optimises
                assert r["score"] == pytest.approx((r["gold"] - norm["gold_mean"]) / norm["gold_std"], abs=1e-4)


def test_all_skips_complete_stages(run_dir):
    before = (run_dir / "sft" / "model.safetensors").stat().st_mtime_ns
    (run_dir / "ppo" / "checkpoints" / "iter_000002").mkdir(parents=True)  # as a kill just after the rename leaves
    proc = train(run_dir)
    assert not (run_dir / "ppo" / "checkpoints").exists()
    assert proc.stdout.count("complete, skipped") == len(STAGE_DIRS)
    assert (run_dir / "sft" / "model.safetensors").stat().st_mtime_ns == before


def test_malformed_data_is_a_clear_error_and_writes_nothing(tmp_path):
    train(tmp_path, "--stage", "data", here=True)
    sft = tmp_path / "data" / "sft.jsonl"
    lines = sft.read_text().splitlines()
    lines[2] = '{"instruction": "Add", "input": "1 2"'  # line 3: broken JSON
    sft.write_text("\n".join(lines) + "\n")
    proc = train(tmp_path, "--stage", "sft", check=False, here=True)
    assert proc.returncode != 0
    assert f"{sft}:3: malformed JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "sft").exists()
    lines[2] = '{"instruction": "Add", "input": "1 2"}'  # line 3: no output
    sft.write_text("\n".join(lines) + "\n")
    proc = train(tmp_path, "--stage", "sft", check=False, here=True)
    assert f"{sft}:3: missing field 'output'" in proc.stderr
    assert not (tmp_path / "sft").exists()


def test_prompt_too_long_names_file_and_line(tmp_path):
    train(tmp_path, "--stage", "data", "--max-prompt-len", "8", here=True)
    proc = train(tmp_path, "--stage", "sft", "--max-prompt-len", "8", check=False, here=True)
    assert proc.returncode != 0
    assert "sft.jsonl:1: prompt is" in proc.stderr and "--max-prompt-len 8" in proc.stderr
    assert not (tmp_path / "sft").exists()


def test_help_documents_every_setting():
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    import dataclasses

    import config
    for cls in config.SECTIONS.values():  # every flag, under its stage's heading
        assert "\n" + cls.__doc__.split("\n")[0] + ":" in proc.stdout, cls.__doc__
        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in proc.stdout
    text = " ".join(proc.stdout.split())  # argparse wraps lines
    assert "(paper: 10)" in text and "AlpacaFarm: 0.0067" in text


def test_missing_earlier_stage_is_a_clear_error(tmp_path):
    proc = train(tmp_path, "--stage", "reward", check=False, here=True)
    assert proc.returncode != 0 and "--stage sft" in proc.stderr


def test_settings_are_saved_and_a_mismatch_is_an_error(tmp_path):
    train(tmp_path, "--stage", "data", here=True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["flip_rate"] == 0.25 and "out" not in saved and "stage" not in saved
    proc = train(tmp_path, "--stage", "data", "--flip-rate", "0.1", check=False, here=True)
    assert proc.returncode != 0 and "--flip-rate: 0.25 in the run, 0.1 now" in proc.stderr
    assert json.loads((tmp_path / "config.json").read_text())["flip_rate"] == 0.25  # untouched
    train(tmp_path, "--stage", "data", "--micro-batch", "8", "--checkpoint-every", "3", here=True)  # change nothing
    train(tmp_path, "--stage", "data", "--flip-rate", "0.1", "--force", here=True)
    assert json.loads((tmp_path / "config.json").read_text())["flip_rate"] == 0.1


# ----------------------------------------------------------------------------- torchrun

def torchrun(out, nproc, *args):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "train.py"), "--out", str(out), *TINY, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def run_dir2(tmp_path_factory):
    out = tmp_path_factory.mktemp("run2")
    return out, torchrun(out, 2)


def test_two_processes_run_every_stage(run_dir, run_dir2):
    from safetensors.torch import load_file
    tmp_path, proc = run_dir2
    check_complete(tmp_path)
    assert proc.stdout.count("[sft] done") == 1  # only rank 0 logs
    assert "processes=2" in proc.stdout
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results["policies"]) == POLICIES
    assert results["n_eval"] == 32 and len((tmp_path / "eval" / "outputs.jsonl").read_text().splitlines()) == 32
    from plumbing import data
    assert len(data.read_records(tmp_path / "rlp_samples" / "P.jsonl", data.SAMPLES)) == 64  # gathered, once
    # the same data and the same SFT training as one process (global batches do not depend on N)
    assert (tmp_path / "data" / "sft.jsonl").read_text() == (run_dir / "data" / "sft.jsonl").read_text()
    one, two = load_file(run_dir / "sft" / "model.safetensors"), load_file(tmp_path / "sft" / "model.safetensors")
    for k in one:
        assert (one[k] - two[k]).abs().max().item() < 1e-5, k


def test_global_batch_must_divide_by_processes(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), "--out", str(tmp_path), *TINY, "--rm-batch", "31"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode != 0
    assert "--rm-batch = 31 is global" in proc.stderr and "number of processes (2)" in proc.stderr


# ----------------------------------------------------------------------------- crash and resume

def killed_run(tmp_path, run_dir, mode, n, nproc=1, extra=()):
    """Copy the finished stages before PPO from a complete run, then run `--stage ppo` with a
    checkpoint every 2 iterations and SIGKILL it (every process) as `mode` says."""
    import shutil
    for name in BEFORE_PPO:
        shutil.copytree(run_dir / name, tmp_path / name)
    shutil.copy(run_dir / "config.json", tmp_path / "config.json")
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    args = ["--out", str(tmp_path), *TINY, "--stage", "ppo", "--checkpoint-every", "2", *extra]
    proc = subprocess.run([*launcher(nproc), str(script), mode, str(n), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == -9 if nproc == 1 else proc.returncode != 0, proc.stderr[-3000:]  # it was killed
    assert not (tmp_path / "ppo").exists()  # a killed stage never looks finished
    return args


def resume_and_compare(tmp_path, run_dir, args, nproc=1):
    from safetensors.torch import load_file
    proc = subprocess.run([*launcher(nproc), str(ROOT / "train.py"), *args[2:], "--out", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ppo" / "DONE").is_file() and not (tmp_path / "ppo" / "checkpoints").exists()
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "iteration" in r] == list(range(ITERATIONS))  # no row lost or repeated
    # the sample table too, and the same as the uninterrupted run's (its own generator, seeded per iteration)
    assert (tmp_path / "ppo" / "samples.jsonl").read_text() == (run_dir / "ppo" / "samples.jsonl").read_text()
    for part in ["policy", "value"]:  # the same weights as the uninterrupted run
        want, got = load_file(run_dir / "ppo" / part / "model.safetensors"), load_file(
            tmp_path / "ppo" / part / "model.safetensors")
        for k in want:
            assert torch_close(want[k], got[k]), (part, k)
    return proc


def torch_close(a, b):
    return (a - b).abs().max().item() < 1e-5


def test_killed_during_ppo_resumes_from_the_last_checkpoint(run_dir, tmp_path):
    from plumbing import checkpoint
    from test_plot import tb_scalars, tb_texts
    # killed in iteration 3: checkpoint 2 is the latest; with --tensorboard, which must follow the cut log
    args = killed_run(tmp_path, run_dir, "update", 3, extra=["--tensorboard"])
    assert checkpoint.latest(tmp_path / ".ppo.partial" / "checkpoints").name == "iter_000002"
    proc = resume_and_compare(tmp_path, run_dir, args)
    assert "resuming ppo" in proc.stdout and "iteration 2 of 6" in proc.stdout
    # TensorBoard shows each iteration once, with the values of the log (the killed attempt's purged)
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    for key in ["score", "kl", "gold"]:
        assert tb_scalars(tmp_path / "tb" / "ppo", key) == \
               [(r["iteration"], pytest.approx(r[key], rel=1e-6, abs=1e-9)) for r in rows if "iteration" in r], key
    assert [step for step, _ in tb_texts(tmp_path / "tb" / "ppo", "samples/text_summary")] == list(range(ITERATIONS))


def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(run_dir, tmp_path):
    from plumbing import checkpoint
    args = killed_run(tmp_path, run_dir, "save", 2)  # killed while writing the second checkpoint (iteration 4)
    ckpts = tmp_path / ".ppo.partial" / "checkpoints"
    assert (ckpts / ".iter_000004.tmp").is_dir() and not (ckpts / "iter_000004").exists()
    assert checkpoint.latest(ckpts).name == "iter_000002"
    proc = resume_and_compare(tmp_path, run_dir, args)
    assert "iteration 2 of 6" in proc.stdout


def test_a_second_run_in_the_same_folder_is_refused(tmp_path):
    import fcntl
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / ".lock", "a+") as f:  # as a running train.py holds it
        f.write("pid 12345\n")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = train(tmp_path, "--stage", "data", check=False)
    assert proc.returncode != 0 and "another run is using" in proc.stderr and "pid 12345" in proc.stderr
    assert not (tmp_path / "data").exists()
    train(tmp_path, "--stage", "data")  # the lock is gone with its holder


def test_two_process_run_killed_during_ppo_resumes_with_two(run_dir2, tmp_path):
    from plumbing import checkpoint
    run2, _ = run_dir2
    args = killed_run(tmp_path, run2, "update", 3, nproc=2)
    assert checkpoint.latest(tmp_path / ".ppo.partial" / "checkpoints").name == "iter_000002"
    one = subprocess.run([sys.executable, str(ROOT / "train.py"), *args[2:], "--out", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert one.returncode != 0 and "written by 2 process(es)" in one.stderr  # not silently mixed
    proc = resume_and_compare(tmp_path, run2, args, nproc=2)  # the same weights as the uninterrupted 2-process run
    assert "iteration 2 of 6" in proc.stdout


def test_ablations_controls_and_a_second_round(tmp_path):
    """One pipeline with a Table 4 ablation (--uml-loss infomax), Select-All (--spg-gamma 0), the
    controls and a second round. --controls adds the fresh-label RM (as many pairs as SPG made,
    from P, labelled by the annotator) and its PPO, and UML's RM with lambda 0; --rlp-rounds 2
    samples round 2's P from round 1's RLP policy. Run again, the command finds everything complete."""
    import config
    import rlp
    from plumbing import data, models
    args = ["--uml-loss", "infomax", "--spg-gamma", "0", "--controls", "--rlp-rounds", "2"]
    train(tmp_path, *args)
    assert json.loads((tmp_path / "rlp_reward_uml" / "uml_heads.json").read_text())["kind"] == "infomax"
    assert (tmp_path / "rlp_reward_uml0" / "DONE").is_file() and (tmp_path / "rlp_ppo_uml_r2" / "DONE").is_file()
    synthetic = data.read_records(tmp_path / "rlp_reward_spg" / "synthetic_prefs.jsonl", data.PREFERENCE)
    fresh = data.read_records(tmp_path / "rlp_reward_fresh" / "fresh_prefs.jsonl", data.PREFERENCE)
    assert len(fresh) == len(synthetic) > 0
    P = {(r["instruction"], r["input"]): r["outputs"] for r in data.read_records(tmp_path / "rlp_samples" / "P.jsonl",
                                                                                  data.SAMPLES)}
    assert all({r["output_1"], r["output_2"]} <= set(P[r["instruction"], r["input"]]) for r in fresh)
    # round 2's P is what round 1's RLP-SPG policy samples with round 2's seed
    cfg = config.make(preset="tiny", seed=0, spg_gamma=0.0)
    tok = models.load_tokenizer(tmp_path / "sft")
    recs = data.read_records(tmp_path / "data" / "unlabeled.jsonl", data.INSTRUCTION)
    prompts = models.encode_prompts(tok, recs, "compact", cfg.model.max_prompt_len)
    policy = models.load_policy(tmp_path / "rlp_ppo_spg" / "policy", "cpu")
    want = rlp.build_policy_samples(policy, tok, recs, prompts, cfg.rlp.rlp_n, 1.0, cfg.model.max_response_len,
                                    cfg.model.gen_batch, config.seeds(0).round(2).rlp_samples, show=False)
    got = data.read_records(tmp_path / "rlp_samples_spg_r2" / "P.jsonl", data.SAMPLES)
    assert [r["outputs"] for r in got] == [r["outputs"] for r in want]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {"PPO, fresh labels", "RLP-SPG, round 2"} <= set(results["policies"])
    assert {"Fresh-label RM", "RLP-SPG RM, round 2"} <= set(results["rm_accuracy"])
    again = train(tmp_path, *args)
    assert "redone" not in again.stdout and again.stdout.count("complete, skipped") == again.stdout.count("[")
