"""--fsdp (plumbing/fsdp.py) on 2 CPU processes with gloo: the same training as without sharding, a sampler
whose ranks end at different times, sharded PPO checkpoints that resume exactly, the whole
pipeline under torchrun (with LoRA), and a clear error without torchrun. tests/helpers/fsdp_worker.py
does the training; tests/helpers/run_helpers.py runs the pipeline."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from run_helpers import BEFORE_PPO, KILLER, POLICY_DIRS, ROOT, SCORER_DIRS, TINY, check_complete, launcher

WORKER = str(ROOT / "tests" / "helpers" / "fsdp_worker.py")


def launch(out: Path, nproc: int, mode: str, lora_rank: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([*launcher(nproc), WORKER, str(out), mode, str(lora_rank)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{mode} x{nproc} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("fsdp")
    return {"1": launch(base / "one", 1, "plain"), "2": launch(base / "two", 2, "plain"),
            "2 fsdp": launch(base / "two_fsdp", 2, "fsdp"), "2 hsdp": launch(base / "two_hsdp", 2, "hsdp"), "1 lora": launch(base / "one_lora", 1, "plain", 4),
            "2 fsdp lora": launch(base / "two_fsdp_lora", 2, "fsdp", 4)}


def load(run: Path, name: str) -> dict:
    return torch.load(run / name, weights_only=False)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("mode", ["2 fsdp", "2 hsdp"])
def test_fsdp_trains_exactly_as_plain_data_parallelism(runs, mode):
    """Two SFT steps, two RM steps, one more after a forward without a backward (which leaves a
    training model's root gathered under FSDP) and one PPO iteration: sharded (FSDP, or HSDP: a
    2-D mesh replicating whole shard groups) and plain 2-process training agree (they sum the
    same two per-rank gradients; 0 difference seen)."""
    for name, parts in [("sft.pt", ["state"]), ("rm.pt", ["state"]), ("rm_after_probe.pt", ["state"]),
                        ("ppo.pt", ["policy", "value"])]:
        for part in parts:
            assert max_diff(load(runs[mode], name)[part], load(runs["2"], name)[part]) < 1e-6, (name, part)
    plain, sharded = load(runs["2"], "ppo.pt")["row"], load(runs[mode], "ppo.pt")["row"]
    for key in ["score", "kl", "policy_loss", "value_loss", "approx_kl", "entropy"]:
        assert sharded[key] == pytest.approx(plain[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("one, two", [("1", "2 fsdp"), ("1 lora", "2 fsdp lora")])
def test_fsdp_gradients_match_one_process(runs, one, two):
    """The same global batch gives the same gradient sharded over 2 processes as in one, up to
    float32 summation order: each gradient element is a sum of per-token products taken in
    another order (2 shards of 8 instead of 16 rows, other matrix blockings), and two such sums
    differ by at most about (number of terms) x 2^-24 of the sum of the terms' magnitudes. An
    embedding element's gradient gathers ~10^4 terms here (every token of the batch, through
    attention over every position and the hidden units), about 6e-4 of their magnitudes, so the
    tolerance is 1e-3 of the largest gradient element (seen on an AVX2 CPU: 1.6e-5 for the RM,
    2e-7 for SFT). A wrong shard, a missing or doubled rank or a wrong loss scale is off by the
    gradient itself.
    Weights after AdamW are not compared with one process: Adam's first step moves every element by
    about lr x sign(gradient), so a near-zero gradient whose sign differs in the last bit (it does, on
    some CPUs) moves its weight by up to 2 lr either way. The trained weights are compared where the
    arithmetic is the same, with plain 2-process data parallelism (the test above)."""
    for name in ["sft.pt", "rm.pt"]:
        want, got = load(runs[one], name)["grad"], load(runs[two], name)["grad"]
        assert want.keys() == got.keys() and want, name
        scale = max(g.abs().max().item() for g in want.values())
        assert scale > 1e-3, name  # a real gradient, not zeros
        assert max_diff(got, want) <= 1e-3 * scale, name
    from safetensors.torch import load_file
    start = load_file(runs[one] / "tiny" / "model.safetensors")
    for name in ["sft.pt", "rm.pt"]:  # they trained: the weights, or with LoRA the adapters, moved
        state = load(runs[two], name)["state"]
        moved = [k for k in state if (k in start and not torch.equal(state[k], start[k])) or
                 (k.endswith("lora_B") and state[k].abs().max() > 0)]
        assert moved, name


def test_fsdp_scoring_matches_one_process(runs):
    """Accuracy and scores over 5 items (shards of 3 and 2: the shorter one is padded so both
    ranks make as many forwards), from the RM as initialised, the same weights in both runs: the
    scores differ only by float summation order (the tolerance), and since no pair's margin is
    that small, the accuracy is the same number."""
    a, b = load(runs["1"], "rm.pt"), load(runs["2 fsdp"], "rm.pt")
    assert a["accuracy"]["pairs"] == b["accuracy"]["pairs"] == 5
    assert a["margins"].abs().min() > 1e-4  # far above float noise: the same pairs are right in both runs
    assert b["accuracy"]["accuracy"] == a["accuracy"]["accuracy"]
    assert len(b["scores"]) == 5
    torch.testing.assert_close(b["scores"], a["scores"], atol=1e-5, rtol=1e-5)


def test_scores_are_float32_under_the_bf16_policy(runs):
    """FSDP's bf16 policy with bf16 autocast (a GPU's setting, here on 2 CPU processes): the score
    head is a float32 unit, so the scores are exactly the float32 head applied to the backbone's
    bf16-computed hidden state (to float32 rounding, 1e-4); the bf16 backbone itself moves the
    scores by about 1% of their size from a float32 model's (bound: 5% of the largest)."""
    b = load(runs["2 fsdp"], "bf16.pt")
    assert b["score_dtype"] == torch.float32 and b["layer_dtype"] == torch.float32  # masters stay float32
    torch.testing.assert_close(b["scores"], b["hidden_head"], atol=1e-4, rtol=1e-5)
    assert b["fp32"].abs().max() > 8  # big enough for bf16 rounding (steps of 1/16 from 8) to show
    assert (b["scores"] - b["fp32"]).abs().max() <= 0.05 * b["fp32"].abs().max()
    assert b["values"].dtype == torch.float32


def test_ppo_reference_and_first_ratio(runs):
    for name in ["2 fsdp", "2 fsdp lora", "1 lora"]:
        row = load(runs[name], "ppo.pt")["row"]
        assert row["kl"] == 0.0 and row["first_ratio"] == pytest.approx(1.0, abs=1e-6), name


def test_sampler_runs_every_rank_to_the_same_step(runs):
    """Rank 0's row ends at the first step, rank 1's runs to the limit: with every forward a
    collective, rank 0 must keep decoding (or both would hang); each rank's result equals an
    unsharded model's."""
    for rank, width in [(0, 1), (1, 6)]:
        s = load(runs["2 fsdp"], f"sampler_{rank}.pt")
        for got, want in zip(s["got"], s["want"]):
            assert got.shape == (1, width) and torch.allclose(got, want, atol=1e-5)
        assert s["local_numel"] < 0.6 * s["numel"]  # each rank holds about half of every parameter


def test_only_rank_0_reads_the_weights(runs):
    """Under --fsdp rank 1 builds every model on the meta device (no weights: runs.Run.load_device)
    and fsdp.shard fills its shards from rank 0's: the training and sampling tests above then hold
    only if every tensor arrived. The buffers a state dict leaves out (the rotary frequencies) are
    rank 0's too, on the CPU, not left empty."""
    devices = {rank: load(runs["2 fsdp"], f"sampler_{rank}.pt")["load_device"] for rank in (0, 1)}
    assert devices == {0: "cpu", 1: "meta"}
    for rank in (0, 1):
        s = load(runs["2 fsdp"], f"sampler_{rank}.pt")
        assert s["buffers"].keys() == s["plain_buffers"].keys() and s["buffers"]
        for name, b in s["buffers"].items():
            assert b.device.type == "cpu" and torch.equal(b, s["plain_buffers"][name]), name


def test_sampling_gathers_the_model_once(runs):
    """A decode of up to 6 tokens makes one all-gather per FSDP unit (each decoder layer and the
    root), moving the model's size once, not once per token (gathered_for_decoding)."""
    for rank in (0, 1):
        s = load(runs["2 fsdp"], f"sampler_{rank}.pt")
        assert s["units"] == 3 and len(s["gathers"]) == s["units"]  # 2 layers and the root
        assert s["model_bytes"] <= sum(s["gathers"]) <= 1.05 * s["model_bytes"]  # the full model once (+ padding)


# ----------------------------------------------------------------------------- the pipeline

def test_fsdp_without_torchrun_is_one_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--out", str(tmp_path), "--fsdp"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "--fsdp" in proc.stderr
    assert "torchrun" in proc.stderr and not (tmp_path / "config.json").exists()


FSDP_LORA = ["--fsdp", "--lora-rank", "4"]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp_run")
    proc = subprocess.run([*launcher(2), str(ROOT / "train.py"), "--out", str(out), *TINY, *FSDP_LORA],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


def test_fsdp_lora_pipeline_writes_plain_hf_folders(fsdp_run):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    check_complete(fsdp_run)
    assert json.loads((fsdp_run / "config.json").read_text())["fsdp"] is True
    for path in POLICY_DIRS:
        model = AutoModelForCausalLM.from_pretrained(fsdp_run / path)
        assert not any("lora" in n for n, _ in model.named_parameters())
        assert (fsdp_run / path / "lora_adapters.safetensors").is_file()
    for path in SCORER_DIRS:
        AutoModelForSequenceClassification.from_pretrained(fsdp_run / path, num_labels=1)
        assert (fsdp_run / path / "lora_adapters.json").is_file()
    from safetensors.torch import load_file
    assert "lm_head.weight" not in load_file(fsdp_run / "sft" / "model.safetensors")  # the tied head, once


def test_fsdp_run_killed_during_ppo_resumes_from_its_sharded_checkpoint(fsdp_run, tmp_path):
    """As tests/pipeline/test_e2e.py does without FSDP: SIGKILL in PPO iteration 3, re-run, and the
    result has the weights of the uninterrupted run; the checkpoint is sharded (DCP)."""
    import shutil

    from plumbing import checkpoint
    from safetensors.torch import load_file
    for name in BEFORE_PPO:
        shutil.copytree(fsdp_run / name, tmp_path / name)
    shutil.copy(fsdp_run / "config.json", tmp_path / "config.json")
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(root=str(ROOT)))
    args = [*TINY, *FSDP_LORA, "--stage", "ppo", "--checkpoint-every", "2", "--out", str(tmp_path)]
    proc = subprocess.run([*launcher(2), str(script), "update", "3", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode != 0 and not (tmp_path / "ppo").exists()
    found = checkpoint.latest(tmp_path / ".ppo.partial" / "checkpoints")
    assert found.name == "iter_000002"
    shards = found / checkpoint.SHARDS
    assert (shards / ".metadata").is_file() and len(list(shards.glob("*.distcp"))) == 2  # one file per process
    assert "policy" not in torch.load(found / "state.pt", weights_only=True)  # the weights are in the shards
    proc = subprocess.run([*launcher(2), str(ROOT / "train.py"), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "iteration 2 of 6" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if "iteration" in r] == list(range(6))
    for part in ["policy", "value"]:
        want = load_file(fsdp_run / "ppo" / part / "model.safetensors")
        got = load_file(tmp_path / "ppo" / part / "model.safetensors")
        assert max((want[k] - got[k]).abs().max().item() for k in want) < 1e-6, part


def test_a_model_built_on_meta_is_the_saved_one_without_weights(tmp_path):
    """What a rank other than 0 builds under --fsdp (models.on_meta): the parameters, buffers, tied
    head and settings of the loaded model, with no memory behind them. A difference would make
    the ranks' shards differ in size (a collective mismatch) or lose a setting (a scorer's
    normalisation)."""
    from plumbing import models
    tok = models.build_char_tokenizer()
    models.save_pretrained(models.new_tiny_llama(tok, 32, 2, 2, 48, seed=0), tok, tmp_path)
    cpu, meta = torch.device("cpu"), torch.device("meta")
    for load in (models.load_policy, models.load_scorer,
                 lambda path, device: models.load_scorer(path, device, fresh_head=True)):
        real, empty = load(tmp_path, cpu), load(tmp_path, meta)
        shapes = lambda m: {n: (tuple(t.shape), t.dtype) for n, t in m.state_dict().items()}  # noqa: E731
        assert shapes(real) == shapes(empty)
        assert [n for n, _ in real.named_buffers()] == [n for n, _ in empty.named_buffers()]
        assert all(t.device.type == "meta" for t in list(empty.parameters()) + list(empty.buffers()))
        assert real.config.to_dict() == empty.config.to_dict()
        assert not empty.training and not any(m.p for m in empty.modules() if isinstance(m, torch.nn.Dropout))
    policy = models.load_policy(tmp_path, meta)
    assert policy.lm_head.weight is policy.model.embed_tokens.weight  # tied, as saved
