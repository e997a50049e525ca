"""Data parallelism with torch.distributed, in one place.

    python train.py                                   one process (nothing here does anything)
    torchrun --nproc_per_node=N train.py              N processes on one machine
    torchrun --nnodes=M --node_rank=K --rdzv-endpoint=HOST:PORT --nproc_per_node=N train.py

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `init` joins the process group (NCCL on GPUs,
gloo on CPU). Every function below is also correct with a single process, where it is a no-op
or the identity, so the training code has no `if distributed:` branches.

How the stages use it (docs/ppo_checklist.md 13, 17):
  * every rank starts from the same weights (`broadcast_parameters`) and applies the same
    update, because gradients are summed across ranks in one explicit all-reduce
    (`sum_gradients`) after each rank has back-propagated its share of the global loss;
  * training data: every epoch is one permutation of the data set shared by all ranks (same
    seed), and each global batch of B items is cut into W disjoint per-rank shards of B / W
    (`shard`), as torch's DistributedSampler does. The global batch at step s is therefore the
    same for any number of processes, and so is the training, up to float summation order;
  * sampling (Step 1 pairs, rollouts, the set P, evaluation): each rank samples for its shard
    of the instructions with its own seed (`rank_seed`); the results are gathered in the
    original order (`gather`) and rank 0 writes them;
  * every statistic that is logged or feeds the algorithm (whitening, RM normalisation, the
    KL controller's measured KL) is computed from all-reduced sums (`all_sum`).

With --fsdp the models are also sharded over the ranks (plumbing/fsdp.py); the data parallelism above
stays as it is, except that FSDP reduce-scatters the sharded parameters' gradients itself
(`sum_gradients` and `broadcast_parameters` skip DTensors).
"""
from __future__ import annotations

import datetime
import os
import random

import torch
import torch.distributed as td
from torch.distributed.tensor import DTensor


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init() -> torch.device:
    """Join the process group when launched by torchrun; return this process's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if launched_by_torchrun() and not td.is_initialized():
        # First imported after init_process_group, torch.distributed.fsdp (which transformers'
        # modeling code imports) keeps references to the default group that destroy_process_group
        # cannot drop; gloo's threads then outlive `close` and, now and then, abort a finished
        # run at interpreter exit ("terminate called without an active exception", seen in CI).
        # Imported first, it keeps none.
        import torch.distributed.fsdp as _  # noqa: F401  (as _: a bare import would make `torch` local here)
        # rank 0 alone writes checkpoints and models while the others wait at a barrier: allow
        # it an hour (the default, 10 minutes for NCCL, is short for a large model's optimizer state)
        timeout = datetime.timedelta(minutes=60)
        if device.type == "cuda":
            td.init_process_group(backend="nccl", device_id=device, timeout=timeout)
        else:
            td.init_process_group(backend="gloo", timeout=timeout)
        if device.type == "cpu":  # N processes on one CPU: share the cores instead of oversubscribing them
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world()))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return device


def close() -> None:
    if td.is_initialized():
        td.destroy_process_group()


def rank() -> int:
    return td.get_rank() if td.is_initialized() else 0


def world() -> int:
    return td.get_world_size() if td.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world() > 1:
        td.barrier()


def rank_seed(seed: int) -> int:
    """A different sampling seed on each rank; rank 0 keeps `seed`, so a one-process run
    samples exactly what it did before data parallelism existed."""
    return seed + 1_000_003 * rank()


def per_rank(global_size: int, what: str) -> int:
    """The per-rank share of a global batch size, or a clear error when it does not divide."""
    if global_size % world():
        raise SystemExit(f"error: {what} = {global_size} is global (summed over processes) and must be "
                         f"divisible by the number of processes ({world()})")
    return global_size // world()


def micro_size(per_rank_size: int, micro_batch: int, what: str) -> int:
    """Items per forward pass on one rank (gradient accumulation over per_rank_size / micro);
    micro_batch = 0 means the whole per-rank batch in one pass."""
    if micro_batch <= 0 or micro_batch >= per_rank_size:
        return per_rank_size
    if per_rank_size % micro_batch:
        raise SystemExit(f"error: the per-process batch of {what} ({per_rank_size} = global / {world()} "
                         f"processes) must be divisible by --micro-batch {micro_batch}")
    return micro_batch


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


class Batches:
    """Global batches of indices into a data set of n items: the indices are drawn in the order
    of a permutation shared by every rank (same seed), a fresh one whenever fewer than
    batch_size remain (the leftover goes first). Each rank then works on `shard(batch)`."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n <= 0:
            raise SystemExit("error: a training set is empty (no examples to draw batches from); check the "
                             "data sizes (--n-*, --rm-val-fraction)")
        self.n, self.batch_size, self.rng, self.order = n, batch_size, random.Random(seed), []

    def next(self) -> list[int]:
        while len(self.order) < self.batch_size:
            fresh = list(range(self.n))
            self.rng.shuffle(fresh)
            self.order += fresh
        batch, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        return batch

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate(), "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.order = list(state["order"])


def shard(items: list) -> list:
    """This rank's disjoint share: items rank, rank + W, rank + 2W, ..."""
    return items[rank()::world()]


def unshard(parts: list[list]) -> list:
    """Inverse of `shard` given every rank's share (parts[r] = shard of rank r)."""
    out = []
    for i in range(max((len(p) for p in parts), default=0)):
        out += [p[i] for p in parts if i < len(p)]
    return out


def gather(local: list) -> list:
    """Every rank's `shard` results, back in the original order, on every rank."""
    return unshard(gather_all(list(local)))


def gather_all(obj) -> list:
    """[rank 0's obj, rank 1's obj, ...] on every rank."""
    if world() == 1:
        return [obj]
    parts: list = [None] * world()
    td.all_gather_object(parts, obj)
    return parts


def broadcast_object(obj):
    """Rank 0's value of a picklable object, on every rank (e.g. a decision to skip a stage)."""
    if world() == 1:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if td.get_backend() == "nccl" else torch.device("cpu")


def all_sum(values) -> torch.Tensor:
    """Sum over ranks of a float or a list/tensor of floats, as a float64 CPU tensor
    (float64 so that sums of many per-token values lose nothing)."""
    t = torch.as_tensor(values, dtype=torch.float64).detach().cpu().clone()
    if world() > 1:
        buf = t.to(_comm_device())
        td.all_reduce(buf, op=td.ReduceOp.SUM)
        t = buf.cpu()
    return t


def sum_gradients(params, bucket_numel: int = 2 ** 26) -> None:
    """One explicit all-reduce: every parameter's .grad becomes the sum over ranks. Each rank has
    back-propagated loss_rank = (its share of the global loss), so the sum is the gradient of
    the global-batch loss. Gradients are flattened into buckets to make few, large calls."""
    if world() == 1:
        return
    # parameters sharded by --fsdp (DTensors) had their gradients reduce-scattered in the backward pass
    params = [p for p in params if p.requires_grad and not isinstance(p, DTensor)]
    for p in params:
        if p.grad is None:  # a parameter this rank's batch did not reach still takes part
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(params):
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= bucket_numel or i == len(params) - 1:
            flat = torch.cat([g.reshape(-1) for g in bucket])
            td.all_reduce(flat, op=td.ReduceOp.SUM)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


@torch.no_grad()
def trainable_parameters(*models) -> list:
    """The parameters an optimizer holds: those that train, of each model in turn. Under --fsdp,
    the sharded ones: a training model's root keeps its gathered weights from a forward to the
    next backward, so after a forward without a backward (a measurement before training) the
    model lists its gathered copies, which no optimizer or clipping may hold; they are given back
    first."""
    from torch.distributed.fsdp import FSDPModule
    params = []
    for m in models:
        if isinstance(m, FSDPModule):
            m.reshard()
        params += [p for p in m.parameters() if p.requires_grad]
    return params


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Rank 0's weights (and buffers) on every rank: the same starting point everywhere."""
    if world() == 1:
        return
    for t in list(module.parameters()) + list(module.buffers()):
        if not isinstance(t, DTensor):  # a model sharded by --fsdp was broadcast before it was sharded
            td.broadcast(t.data, src=0)


@torch.no_grad()
def gradient_split(first: list, total: list, names: tuple[str, str] = ("first", "second")) -> dict:
    """Two loss terms back-propagated one after the other into the same parameters: `first` holds
    copies of the gradients after the first term, `total` the gradients after both (this rank's,
    before the all-reduce). The norms of the two terms' gradients over every rank's sum, and their
    cosine: {name_grad_norm, ..., "grad_cosine"}. A parameter the first term did not reach has
    None in `first`."""
    a_parts, b_parts, sharded = [], [], []
    for g1, g in zip(first, total):
        if g is None:
            continue
        local = lambda t: t.to_local() if isinstance(t, DTensor) else t  # noqa: E731
        g_all = local(g).float()
        g_first = torch.zeros_like(g_all) if g1 is None else local(g1).float()
        a_parts.append(g_first.reshape(-1))
        b_parts.append((g_all - g_first).reshape(-1))
        sharded.append(isinstance(g, DTensor))
    if not a_parts:
        return {}
    # plain data parallelism: each rank holds its share of the gradient, so sum the vectors; under
    # FSDP each rank holds a slice of the already summed gradient, so sum the slices' products
    plain = [i for i, s in enumerate(sharded) if not s]
    if plain and world() > 1:
        both = torch.cat([torch.cat([a_parts[i] for i in plain]), torch.cat([b_parts[i] for i in plain])])
        td.all_reduce(both, op=td.ReduceOp.SUM)
        n = both.numel() // 2
        a_plain, b_plain = both[:n], both[n:]
    else:
        a_plain = torch.cat([a_parts[i] for i in plain]) if plain else torch.zeros(0)
        b_plain = torch.cat([b_parts[i] for i in plain]) if plain else torch.zeros(0)
    a_sh = torch.cat([a_parts[i] for i, s in enumerate(sharded) if s] or [torch.zeros(0)])
    b_sh = torch.cat([b_parts[i] for i, s in enumerate(sharded) if s] or [torch.zeros(0)])
    aa, bb, ab = all_sum([float(a_sh @ a_sh), float(b_sh @ b_sh), float(a_sh @ b_sh)]).tolist()
    aa, bb, ab = aa + float(a_plain @ a_plain), bb + float(b_plain @ b_plain), ab + float(a_plain @ b_plain)
    cos = ab / max((aa * bb) ** 0.5, 1e-30)
    return {f"{names[0]}_grad_norm": aa ** 0.5, f"{names[1]}_grad_norm": bb ** 0.5, "grad_cosine": cos}
