"""--fsdp: every model sharded over the processes with torch's FSDP2 (`fully_shard`), beside the
plain data parallelism of dist.py.

    torchrun --nproc_per_node=8 train.py --fsdp

Each decoder layer is one FSDP unit, then the root (embeddings, final norm, LM or score head) is
one more, on a 1-D mesh of all ranks: every rank keeps 1/N of every parameter, gradient and
Adam state, and a unit's full weights exist only while its forward or backward runs (all-gathered
just before, freed just after). The frozen models (reference, RM) are sharded too.

What changes for the rest of the code, and where it is handled:
  * gradients: FSDP reduce-scatters them in the backward pass (summed: the divide factor is 1,
    because each rank back-propagates its share of the global loss, dist.sum_gradients' contract).
    dist.sum_gradients therefore skips sharded parameters (DTensors): no second all-reduce.
    Gradient clipping works on DTensors (torch.nn.utils.clip_grad_norm_ computes the global norm).
  * every forward is a collective (the all-gathers), so every rank must run the same number of
    forwards: lm.sample keeps decoding until every rank's rows have ended (`all_done`, installed
    on the model as `all_ranks_done`), and scoring loops pad their shard to rank 0's length
    (`lockstep_padding`).
  * decoding is one forward per new token: lm.sample runs inside `gathered` (installed as
    `gathered_for_decoding`), which gathers every unit once and keeps it whole until the last
    token, instead of gathering and freeing the whole model at every step.
  * a function that calls a model's backbone and head separately (lm.last_token_hidden,
    token_values, ...) runs as one forward of the root unit (lm.as_one_forward calls the
    model's `run_as_root_forward`), so the root's parameters are gathered for it.
  * loading: only rank 0 reads a checkpoint (runs.Run.load_device); the other ranks build the
    model on the meta device, and `shard` fills every rank's shards from rank 0's weights.
  * saving: `full_state_dict` gathers the full weights on rank 0 (on the CPU), which writes the
    usual Hugging Face folder; PPO's resumable checkpoints are sharded (plumbing/checkpoint.py).
  * precision: on a GPU, bf16 compute with float32 master weights and float32 gradient reduction
    (MixedPrecisionPolicy); on the CPU (gloo), float32 throughout. The score head of a reward or
    value model is a unit of its own that always computes in float32 (lm.score_head). FSDP2's CPU
    offload needs an accelerator and is not used.
"""
from __future__ import annotations

import contextlib
import functools
import math
import types

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from plumbing import dist, models

ROOT_METHOD = "run_as_root_forward"  # installed on every sharded model; lm.as_one_forward calls it
DONE_METHOD = "all_ranks_done"  # installed on every sharded model; lm.sample asks it when to stop
DECODE_METHOD = "gathered_for_decoding"  # installed on every sharded model; lm.sample decodes inside it


@functools.lru_cache(maxsize=None)
def _mesh(device_type: str, shard_size: int = 0):
    """The processes a model is sharded over: all of them (a 1-D mesh, FSDP), or with shard_size
    K, groups of K processes that each hold a whole sharded copy, replicated across the groups
    (a 2-D mesh, HSDP: on several nodes, K = the GPUs of a node keeps every layer's all-gather
    inside the node, and only the gradient all-reduce crosses the interconnect)."""
    from torch.distributed.device_mesh import init_device_mesh
    if not shard_size or shard_size >= dist.world():
        return init_device_mesh(device_type, (dist.world(),))
    if dist.world() % shard_size:
        raise SystemExit(f"error: --fsdp-shard-size {shard_size} must divide the number of processes ({dist.world()})")
    return init_device_mesh(device_type, (dist.world() // shard_size, shard_size), mesh_dim_names=("replicate", "shard"))


def check_launch(on: bool) -> None:
    if on and not dist.launched_by_torchrun():
        raise SystemExit("error: --fsdp shards the models over the processes of a torchrun launch; run "
                         "torchrun --nproc_per_node=N train.py --fsdp (N processes, e.g. one per GPU)")


def shard(model, device: torch.device, train: bool = False, shard_size: int = 0, bf16: bool | None = None):
    """Shard `model` in place (one FSDP unit per decoder layer, one for a score head, then the
    root) on `device`; returns it. Rank 0 holds the weights (on any device); the other ranks hold
    the same architecture, on the meta device (runs.Run.load_device) or with any weights. FSDP2's
    flow: every rank moves the model to the meta device and shards it there (no memory), then
    allocates its shards on `device` and receives them from rank 0's full weights, one tensor at a
    time (so no rank but 0 ever holds a full copy). train: the root keeps its weights from the
    forward to the backward (FSDP2's default for a root: one gather fewer per step); a model that
    only runs forwards gives them back after each one. shard_size: see `_mesh`. bf16: bf16
    compute (default: on a GPU)."""
    full = model.state_dict() if dist.is_main() else {}  # references: rank 0's weights stay alive until loaded
    # buffers a state dict leaves out (rotary frequencies, embedding scales): computed when the model is
    # built, so the meta device has no values for them; rank 0's, on every rank
    kept = dist.broadcast_object({name: b.cpu() for name, b in model.named_buffers() if name not in full}
                                 if dist.is_main() else None)
    model.to("meta")
    if hasattr(model, "tie_weights"):  # moving a model makes new parameters, one per module: tie the LM head again
        model.tie_weights()
    mesh = _mesh(device.type, shard_size)
    bf16 = device.type == "cuda" if bf16 is None else bf16
    if bf16:  # bf16 compute, float32 master weights and gradient reduction
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()  # gloo on the CPU: float32 throughout
    for layer in models.decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    if isinstance(getattr(model, "score", None), torch.nn.Module):  # a reward or value model's head: float32 always
        fully_shard(model.score, mesh=mesh, mp_policy=MixedPrecisionPolicy(param_dtype=torch.float32,
                                                                            reduce_dtype=torch.float32))
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=not train)
    model._root_reshards = not train  # what `gathered` restores
    model.to_empty(device=device)  # this rank's shards, allocated (not yet filled)
    for name, b in kept.items():
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner), attr, b.to(device))
    load_full_state_dict(model, full)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # a sum over ranks: each rank's loss is its share of the global loss
            m.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    setattr(model, ROOT_METHOD, types.MethodType(lambda self, fn: fn(), model))
    register_fsdp_forward_method(model, ROOT_METHOD)
    setattr(model, DONE_METHOD, all_done)
    setattr(model, DECODE_METHOD, lambda: gathered(model))
    return model


def is_sharded(model) -> bool:
    """True for a model `shard` has wrapped (also seen through lora.AdaptersOff)."""
    return getattr(model, ROOT_METHOD, None) is not None


@contextlib.contextmanager
def gathered(model):
    """The full weights of every unit, gathered at the first forward inside the block and kept
    until it ends (then each unit gives them back): one all-gather per unit for a whole decode,
    where each decoding step would otherwise gather and free the whole model again. The memory
    is the model's unsharded size, for the length of the block."""
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in units:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in units:  # as shard() set them: the root as it was, every other unit gives its weights back
            m.set_reshard_after_forward(model._root_reshards if m is model else True, recurse=False)
            m.reshard()


def all_done(done: torch.Tensor) -> bool:
    """Whether sampling may stop on a sharded model: every rank's rows have ended (a collective)."""
    return dist.all_sum(float(done.all())).item() == dist.world()


def lockstep_padding(model, n_items: int) -> list[int]:
    """Indices to append to this rank's `dist.shard` of n_items under FSDP so that it is as long
    as rank 0's (the longest): every rank then makes as many forward calls. They repeat item 0;
    the caller drops their results. Empty without FSDP."""
    if not is_sharded(model) or n_items == 0:
        return []
    return [0] * (math.ceil(n_items / dist.world()) - len(range(dist.rank(), n_items, dist.world())))


def load_full_state_dict(model, full: dict) -> None:
    """Fill a sharded model's shards from the full weights `full` that rank 0 holds (the other
    ranks pass {}): each tensor is broadcast from rank 0, and each rank keeps its slice. A
    collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def full_state_dict(model) -> dict:
    """The full (unsharded) weights on rank 0, as CPU tensors; an empty dict on the other ranks.
    A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
