"""Data parallelism on CPU with gloo: one SFT step and one RM step give the same gradient with 1
and 2 processes (and with gradient accumulation), and a 2-process PPO iteration leaves both
ranks with identical weights. tests/helpers/dist_worker.py does the work; here we launch it."""
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from plumbing import dist

ROOT = Path(__file__).resolve().parents[2]
WORKER = str(ROOT / "tests" / "helpers" / "dist_worker.py")


def launch(out: Path, nproc: int, micro: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    if nproc == 1:
        cmd = [sys.executable, WORKER, str(out), str(micro)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", WORKER,
               str(out), str(micro)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("dist")
    return {"1": launch(base / "one", 1), "1 micro": launch(base / "one_micro", 1, micro=2),
            "2": launch(base / "two", 2), "2 micro": launch(base / "two_micro", 2, micro=2)}


@pytest.mark.parametrize("name", ["sft_grad.pt", "rm_grad.pt", "uml_grad.pt"])
@pytest.mark.parametrize("variant", ["1 micro", "2", "2 micro"])
def test_gradient_equals_one_process_gradient(runs, name, variant):
    want = torch.load(runs["1"] / name)
    got = torch.load(runs[variant] / name)
    assert want["grad"].abs().max() > 1e-4  # a real gradient, not zeros
    torch.testing.assert_close(got["grad"], want["grad"], atol=1e-6, rtol=1e-4)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)


@pytest.mark.parametrize("variant", ["2", "2 micro"])
def test_ranks_hold_identical_weights_after_ppo(runs, variant):
    every = torch.load(runs[variant] / "ppo_params.pt")
    assert len(every) == 2
    assert torch.equal(every[0], every[1])
    start = torch.load(runs[variant] / "ppo_start.pt")
    assert not torch.equal(every[0], start)  # it trained


# ----------------------------------------------------------------------------- helpers, one process

def test_shard_and_unshard_are_inverse():
    items = list(range(11))
    for world in (1, 2, 3, 4, 16):
        parts = [items[r::world] for r in range(world)]
        assert sorted(sum(parts, [])) == items  # disjoint and complete
        assert dist.unshard(parts) == items


def test_global_batches_cover_the_data_once_per_epoch():
    b = dist.Batches(10, 4, seed=0)
    seen = b.next() + b.next()  # 8 of the first permutation
    rest = b.next()  # the last 2 of it, then 2 of a fresh one
    assert len(set(seen + rest[:2])) == 10
    state = b.state_dict()
    ahead = [b.next() for _ in range(3)]
    b.load_state_dict(state)
    assert [b.next() for _ in range(3)] == ahead


def test_batches_match_a_plain_loop():
    n, bs, seed = 7, 3, 5
    rng, order, want = random.Random(seed), [], []
    for _ in range(6):
        if len(order) < bs:
            fresh = list(range(n))
            rng.shuffle(fresh)
            order += fresh
        want.append(order[:bs])
        order = order[bs:]
    b = dist.Batches(n, bs, seed)
    assert [b.next() for _ in range(6)] == want


def test_empty_data_set_is_an_error_not_a_hang():
    with pytest.raises(SystemExit, match="empty"):
        dist.Batches(0, 4, seed=0)


def test_batch_size_errors_are_clear():
    assert dist.per_rank(64, "--x") == 64 and dist.micro_size(64, 0, "--x") == 64
    assert dist.micro_size(64, 16, "--x") == 16 and dist.micro_size(8, 16, "--x") == 8
    with pytest.raises(SystemExit, match="--micro-batch 5"):
        dist.micro_size(64, 5, "--sft-batch")
    assert dist.chunks(list(range(5)), 2) == [[0, 1], [2, 3], [4]]


def test_single_process_collectives_are_identities():
    assert dist.world() == 1 and dist.rank() == 0 and dist.is_main()
    assert dist.all_sum([1.5, 2.0]).tolist() == [1.5, 2.0]
    assert dist.gather([3, 1, 2]) == [3, 1, 2]
    assert dist.rank_seed(7) == 7


EXIT_SCRIPT = """
import os, sys
sys.path.insert(0, {root!r})
from plumbing import dist
dist.init()
from plumbing import models  # transformers' modeling code imported after the group exists: the risky order
dist.barrier()
dist.close()
names = []
for t in os.listdir("/proc/self/task"):
    try:
        names.append(open(f"/proc/self/task/{{t}}/comm").read().strip())
    except OSError:  # the thread ended meanwhile
        pass
open(os.path.join({out!r}, "threads_" + os.environ["RANK"]), "w").write("\\n".join(names))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from Linux's /proc")
def test_close_ends_the_gloo_threads(tmp_path):
    """dist.close must really end the process group: gloo threads that outlive it are torn down
    with the interpreter and, now and then, abort a finished run ("terminate called without an
    active exception", seen in CI). torch.distributed.fsdp, which transformers imports, keeps
    references to the group when it is first imported after init_process_group."""
    script = tmp_path / "exit_worker.py"
    script.write_text(EXIT_SCRIPT.format(root=str(ROOT), out=str(tmp_path)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in ("0", "1"):
        left = (tmp_path / f"threads_{rank}").read_text().split("\n")
        assert not [n for n in left if "gloo" in n], f"rank {rank}: {left}"
