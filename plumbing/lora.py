"""LoRA (Hu et al. 2021), hand-written: low-rank adapters on the attention and MLP projections,
the backbone frozen (--lora-rank r).

    y = W x + b + (alpha / r) * B (A x)        A: [r, in] random, B: [out, r] zero at the start

Every nn.Linear inside the decoder layers (for Llama: q/k/v/o_proj, gate/up/down_proj) gets an
adapter; embeddings, the final norm and the LM head stay as they are. Only A and B (and, for a
reward or value model, the new score head) require gradients, so only they get gradients and
Adam's state. Because B starts at zero, an adapted model computes exactly what its base did.

  * The PPO reference is the policy with its adapters switched off (`AdaptersOff`): the frozen
    backbone is the SFT model, so no second copy of it is kept in memory.
  * Saved models are plain merged Hugging Face folders (W + (alpha / r) B A, `merged_state_dict`)
    that `from_pretrained` loads without this file; the adapters are also saved on their own
    (`adapter_state_dict`, written beside the model as lora_adapters.safetensors / .json).

State-dict keys keep transformers' names for the base weights (`...q_proj.weight`), and add
`...q_proj.lora_A` / `...q_proj.lora_B`, so a base checkpoint loads into an adapted model and a
merged one is the base's layout.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F

from plumbing import models

ADAPTER_FILE = "lora_adapters"  # .safetensors (tensors) and .json (rank, alpha, modules), beside a saved model


class LoRALinear(torch.nn.Module):
    """An nn.Linear (its own weight and bias, frozen) plus a low-rank update (alpha / r) B A."""

    def __init__(self, base: torch.nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameter objects: no copy, the same state-dict names
        self.bias = base.bias
        w = base.weight
        self.lora_A = torch.nn.Parameter(torch.empty(rank, self.in_features, dtype=w.dtype, device=w.device))
        self.lora_B = torch.nn.Parameter(torch.zeros(self.out_features, rank, dtype=w.dtype, device=w.device))
        torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's init, as the LoRA paper's code
        self.scaling = alpha / rank
        self.adapters_on = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if not self.adapters_on:
            return out
        return out + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.lora_A.shape[0]}, scaling={self.scaling}"


def add_adapters(model, rank: int, alpha: float, trainable_head: bool = False):
    """Freeze every parameter of `model`, then replace each nn.Linear inside its decoder layers by
    a LoRALinear (rank, alpha; alpha 0 = rank). trainable_head: the score head of a reward or value
    model trains too (it is new). Returns the model; its settings are in model.lora_settings."""
    if rank <= 0:
        raise ValueError("LoRA rank must be positive")
    alpha = alpha or float(rank)
    model.requires_grad_(False)
    names = []
    for prefix, layer in models.decoder_layers(model, named=True):
        for name, child in list(layer.named_modules()):
            if isinstance(child, torch.nn.Linear):
                parent = layer.get_submodule(name.rpartition(".")[0]) if "." in name else layer
                setattr(parent, name.rpartition(".")[2], LoRALinear(child, rank, alpha))
                names.append(f"{prefix}.{name}")
    if not names:
        raise SystemExit(f"error: --lora-rank: no nn.Linear found in the decoder layers of {type(model).__name__}")
    if trainable_head:
        model.score.requires_grad_(True)
    model.lora_settings = {"rank": rank, "alpha": alpha, "modules": names}
    return model


def adapter_modules(model) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def has_adapters(model) -> bool:
    return getattr(model, "lora_settings", None) is not None


@contextlib.contextmanager
def adapters_disabled(model):
    """The base model's forward inside the block: every adapter switched off."""
    mods = adapter_modules(model)
    before = [m.adapters_on for m in mods]
    for m in mods:
        m.adapters_on = False
    try:
        yield model
    finally:
        for m, on in zip(mods, before):
            m.adapters_on = on


class AdaptersOff(torch.nn.Module):
    """The PPO reference with LoRA: the policy with its adapters switched off (= the SFT model,
    since the frozen backbone is the SFT model). Calls go to the policy, or to the policy's
    submodule of the same name (`ref.model(...)` runs the policy's backbone), inside
    `adapters_disabled`. It owns no parameters, so ref.requires_grad_(False) or ref.eval() leave
    the policy alone, and nothing is copied."""

    def __init__(self, target, root=None):
        super().__init__()
        object.__setattr__(self, "_target", target)  # not registered as a submodule, on purpose
        object.__setattr__(self, "_root", target if root is None else root)

    def forward(self, *args, **kwargs):
        with adapters_disabled(self._root):
            return self._target(*args, **kwargs)

    def __getattr__(self, name):
        attr = getattr(object.__getattribute__(self, "_target"), name)
        if isinstance(attr, torch.nn.Module):  # a submodule: its calls too run without adapters
            return AdaptersOff(attr, object.__getattribute__(self, "_root"))
        return attr


def reference(policy):
    """The PPO reference for a LoRA policy: no second backbone, the policy with adapters off."""
    return AdaptersOff(policy)


# ----------------------------------------------------------------------------- saving

def _adapter_prefixes(state: dict) -> list[str]:
    return [k[:-len(".lora_A")] for k in state if k.endswith(".lora_A")]


@torch.no_grad()
def merged_state_dict(state: dict, settings: dict) -> dict:
    """A plain transformers state dict: W + (alpha / r) B A for every adapted weight, no lora_*
    keys, every merged weight a CPU tensor. `state` is the adapted model's (full, unsharded) state
    dict; the tensors in it are not modified. The weights are merged one at a time, each on the
    CPU and stored before the next: a GPU never holds a second copy of the model (a full copy of
    a 7B model's adapted weights would not fit beside the four models)."""
    scaling = settings["alpha"] / settings["rank"]
    out = {k: v for k, v in state.items() if not k.endswith((".lora_A", ".lora_B"))}
    for prefix in _adapter_prefixes(state):
        a, b = state[prefix + ".lora_A"].detach().cpu(), state[prefix + ".lora_B"].detach().cpu()
        w = state[prefix + ".weight"].detach().cpu()
        out[prefix + ".weight"] = (w.float() + scaling * (b.float() @ a.float())).to(w.dtype)
    return out


def adapter_state_dict(state: dict, trainable_names: set[str]) -> dict:
    """What LoRA trained, on its own: every lora_A / lora_B and the other trainable tensors
    (the score head of a reward or value model)."""
    return {k: v.contiguous() for k, v in state.items() if k.endswith((".lora_A", ".lora_B")) or k in trainable_names}


def trainable_names(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def save_adapters(adapters: dict, settings: dict, path) -> None:
    """The adapters on their own (lora_adapters.safetensors, and .json with rank, alpha and the
    adapted modules), beside the merged model they were merged into."""
    import json
    from pathlib import Path
    from safetensors.torch import save_file
    save_file(adapters, str(Path(path) / f"{ADAPTER_FILE}.safetensors"))
    info = {**settings, "tensors": sorted(adapters)}
    (Path(path) / f"{ADAPTER_FILE}.json").write_text(json.dumps(info, indent=1) + "\n")
