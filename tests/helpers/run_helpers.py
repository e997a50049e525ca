"""Running the pipeline as a user does (train.py in a subprocess, one process or torchrun) with
the tiny preset, and checking what a finished run folder holds; shared by the pipeline and scale tests."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import config  # noqa: E402
import train  # noqa: E402
from extras.evaluate import policy_labels  # noqa: E402

TINY = ["--preset", "tiny", "--quiet"]
ITERATIONS = config.PRESETS["tiny"]["ppo_iterations"]
DEFAULT = train.plan(config.make(preset="tiny"))  # the stages `python train.py` runs (no controls, one round)
STAGE_DIRS = [s.folder for s in DEFAULT]
PPO_DIRS = [s.folder for s in DEFAULT if s.ppo]
BEFORE_PPO = STAGE_DIRS[:STAGE_DIRS.index(PPO_DIRS[0])]  # what a PPO stage reads
POLICIES = policy_labels(DEFAULT)  # every policy eval reports, in table order
GOLD_POLICY = next(s.policy for s in DEFAULT if s.builtin_only)
RMS = [s.rm for s in DEFAULT if s.rm]
POLICY_DIRS = [s.policy_dir for s in DEFAULT if s.policy]
SCORER_DIRS = [s.folder for s in DEFAULT if s.rm] + [f"{d}/value" for d in PPO_DIRS]


def train_run(out, *args, check=True, preset=TINY, here=False):
    """`python train.py --out OUT --preset tiny --quiet ARGS` in a subprocess, as a user runs it; or,
    with here=True, `train.cli` in this process, as train.py's `__main__` runs it (the quick
    error-path tests: a subprocess costs seconds of imports each)."""
    argv = ["--out", str(out), *preset, *args]
    if here:
        return train_here(argv, check)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def train_here(argv: list[str], check=True) -> subprocess.CompletedProcess:
    """train.cli(argv) in this process; its exit as a CompletedProcess (return code, stdout, stderr),
    a SystemExit's message printed as the command line prints it."""
    import contextlib
    import io

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            train.cli(argv)
        except SystemExit as e:
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    proc = subprocess.CompletedProcess(["train.py", *argv], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"train.cli failed ({code}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def check_complete(run_dir, stages=STAGE_DIRS):
    for name in stages:
        assert (run_dir / name / "DONE").is_file(), name
        assert not (run_dir / name / "checkpoints").exists(), name  # removed once the stage is complete
    assert not list(run_dir.glob(".*.partial")) and not list(run_dir.glob(".*.old"))
    for name in stages[1:]:
        rows = [json.loads(line) for line in (run_dir / name / "metrics.jsonl").read_text().splitlines()]
        assert rows and "stage_seconds" in rows[-1], name
    for name in [d for d in PPO_DIRS if d in stages]:  # one log row per iteration, in order, none twice
        rows = [json.loads(line) for line in (run_dir / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in rows if "iteration" in r] == list(range(ITERATIONS)), name


KILLER = """
import os, signal, sys
sys.path.insert(0, {root!r})
from plumbing import checkpoint
import ppo, train
mode, n = sys.argv[1], int(sys.argv[2])
calls = [0]
if mode == "update":  # SIGKILL in the middle of PPO iteration n (after its rollout)
    real = ppo.update
    def update(*a, **k):
        calls[0] += 1
        if calls[0] > n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    ppo.update = update
else:  # SIGKILL while writing checkpoint n: its state.pt is on disk, its COMPLETE marker is not
    real = checkpoint._save
    def save(obj, path):
        real(obj, path)
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
    checkpoint._save = save
train.main(sys.argv[3:])
"""


def launcher(nproc):
    return [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                f"--nproc_per_node={nproc}"]
