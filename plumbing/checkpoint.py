"""Resumable checkpoints for the long loops (PPO, Steps 3 and 5), safe against SIGKILL at any moment.

    DIR/iter_000020/state.pt   weights, optimizer, schedule, KL controller, the data order, the
                               iteration, the size of metrics.jsonl (all the same on every rank), and
                               each rank's own RNG states (gathered: only rank 0 writes)
    DIR/iter_000020/COMPLETE   written last

    DIR/iter_000020/shards/    under --fsdp: the weights and optimizer state, sharded
                               (torch.distributed.checkpoint: each rank writes its own shard, so a
                               7B state never has to fit in one process); state.pt holds the rest

A checkpoint is built in a hidden `.iter_000020.tmp` folder and renamed into place only after
every file (and the COMPLETE marker) is on disk, so a process killed while writing one leaves
the previous checkpoint as the latest usable one. The last `keep` checkpoints are kept.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from plumbing import data, dist

COMPLETE = "COMPLETE"
SHARDS = "shards"
NAME = re.compile(r"^iter_(\d{6})$")


def _save(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def save(directory, iteration: int, shared: dict, own: dict, keep: int = 2, sharded: dict | None = None) -> Path:
    """Write checkpoint `iteration` and delete all but the newest `keep`. Every rank calls this:
    `own` (this rank's RNG states) is gathered, and rank 0 writes everything, except `sharded`
    (--fsdp: state dicts of DTensors), which every rank writes its own shard of."""
    directory = Path(directory)
    final = directory / f"iter_{iteration:06d}"
    tmp = directory / f".iter_{iteration:06d}.tmp"
    ranks = dist.gather_all(own)  # a collective: before any rank-0-only work
    if dist.is_main():
        data.remove(tmp)
        tmp.mkdir(parents=True)
    if sharded is not None:
        import torch.distributed.checkpoint as dcp
        dist.barrier()  # rank 0 has made the folder
        dcp.save(sharded, checkpoint_id=str(tmp / SHARDS))  # a collective; returns when every shard is written
    if dist.is_main():
        _save({**shared, "ranks": ranks, "world_size": dist.world()}, tmp / "state.pt")
        (tmp / COMPLETE).write_text(f"iteration {iteration}\n")
        data.remove(final)
        os.replace(tmp, final)
        for old in [p for p in directory.iterdir() if p.name.endswith(".tmp")] + complete(directory)[:-keep]:
            data.remove(old)  # stale temporary folders of killed writes, and old checkpoints
    dist.barrier()
    return final


def complete(directory) -> list[Path]:
    """Finished checkpoints, oldest first (a folder without COMPLETE is ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if NAME.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def latest(directory) -> Path | None:
    found = complete(directory)
    return found[-1] if found else None


def load(path) -> tuple[dict, dict]:
    """(shared, this rank's own) of a checkpoint written by as many processes as are running now.
    Loaded on the CPU: load_state_dict copies into the models, and the optimizer moves its state
    to its parameters' device, so no second copy of the weights stays on the GPU."""
    path = Path(path)
    shared = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    if shared["world_size"] != dist.world():
        raise SystemExit(f"error: the checkpoint {path} was written by {shared['world_size']} process(es); "
                         f"resume it with as many (torchrun --nproc_per_node={shared['world_size']}), or "
                         f"restart that stage alone with --stage STAGE --force")
    return shared, shared.pop("ranks")[dist.rank()]


class TrainState:
    """What a PPO checkpoint holds of the models: the policy's and value model's weights and the
    optimizer's state. Plain state dicts go into state.pt (`plain`); under --fsdp they are sharded
    DTensors, written with torch.distributed.checkpoint by every rank (`sharded`; frozen
    parameters, such as a LoRA backbone, are left out: they are reloaded from their folder)."""

    def __init__(self, policy, value, optimizer):
        from plumbing import fsdp
        self.policy, self.value, self.optimizer = policy, value, optimizer
        self.is_sharded = fsdp.is_sharded(policy)

    def _dcp_state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        both = torch.nn.ModuleDict({"policy": self.policy, "value": self.value})
        weights, optim = get_state_dict(both, self.optimizer, options=StateDictOptions(ignore_frozen_params=True))
        return {"models": weights, "optimizer": optim}

    def plain(self) -> dict:
        if self.is_sharded:
            return {}
        return {"policy": self.policy.state_dict(), "value": self.value.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def sharded(self) -> dict | None:
        return self._dcp_state() if self.is_sharded else None

    def load(self, shared: dict, path) -> None:
        if not self.is_sharded:
            self.policy.load_state_dict(shared["policy"])
            self.value.load_state_dict(shared["value"])
            self.optimizer.load_state_dict(shared["optimizer"])
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
        state = self._dcp_state()  # the layout to read into (each rank's shards)
        dcp.load(state, checkpoint_id=str(Path(path) / SHARDS))
        both = torch.nn.ModuleDict({"policy": self.policy, "value": self.value})
        set_state_dict(both, self.optimizer, model_state_dict=state["models"], optim_state_dict=state["optimizer"],
                       options=StateDictOptions(ignore_frozen_params=True, strict=False))  # frozen: not in it


class PPOCheckpoints:
    """A PPO stage's resumable checkpoints in `directory`: every `every` iterations (0 = never) the
    weights, the optimizer and everything else the loop carries (ppo.Loop), the data order, every
    rank's RNG states, and the size of the stage's logs, so a re-run continues exactly where the
    last checkpoint left off and cuts the logs back to it."""

    def __init__(self, directory, every: int, keep: int, iterations: int, logs: list, desc: str = "ppo"):
        self.directory, self.every, self.keep, self.iterations = Path(directory), every, keep, iterations
        self.logs, self.desc = logs, desc  # [metrics.jsonl, samples.jsonl] (plumbing.metrics.Metrics)

    def resume(self, policy, value, loop) -> int:
        """Load the newest complete checkpoint (rank 0 picks it, every rank loads it); returns the
        iteration to start from. Without one, the logs start over (a killed attempt's rows go)."""
        found = dist.broadcast_object(latest(self.directory) if dist.is_main() else None)
        if found is None:
            for log in self.logs:
                log.truncate(0)
            return 0
        shared, own = load(found)
        TrainState(policy, value, loop.optimizer).load(shared, found)
        loop.scheduler.load_state_dict(shared["scheduler"])
        loop.kl.value = shared["kl_coef"]
        loop.batches.load_state_dict(shared["batches"])
        loop.minibatch_rng.setstate(shared["shuffle_rng"])
        loop.generator.set_state(own["generator"])
        torch.set_rng_state(own["torch_rng"])
        for log, key in zip(self.logs, ["metrics_bytes", "samples_bytes"]):
            log.truncate(shared.get(key, 0))  # rows logged after the checkpoint are redone
        if dist.is_main():  # also with --quiet: a resumed run says so
            print(f"  resuming {self.desc} from {found} (iteration {shared['iteration']} of {self.iterations})",
                  flush=True)
        return shared["iteration"]

    def save_if_due(self, next_iteration: int, policy, value, loop) -> None:
        if not self.every or next_iteration % self.every or next_iteration >= self.iterations:
            return
        state = TrainState(policy, value, loop.optimizer)  # weights and optimizer: sharded under --fsdp
        shared = {"iteration": next_iteration, **state.plain(), "scheduler": loop.scheduler.state_dict(),
                  "kl_coef": loop.kl.value, "batches": loop.batches.state_dict(),
                  "shuffle_rng": loop.minibatch_rng.getstate(),
                  **{key: log.size() for log, key in zip(self.logs, ["metrics_bytes", "samples_bytes"])}}
        own = {"generator": loop.generator.get_state(), "torch_rng": torch.get_rng_state()}
        save(self.directory, next_iteration, shared, own, self.keep, sharded=state.sharded())
