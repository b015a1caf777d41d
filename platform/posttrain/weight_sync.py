"""The policy's weights into the rollout engine's model: parameter by parameter, in place, in the
engine's dtype.

``copy_weights(src, dst, dtype)`` walks the trainer's (FSDP / TP / EP sharded) model one parameter at a
time: the local shard is cast to the engine's dtype first and then gathered (``DTensor.full_tensor``,
collective: every rank of the mesh calls it, in the same order), and the full tensor is copied into
the engine's existing parameter (``copy_``: the decode engine's packed q/k/v and gate/up views of one
buffer stay valid, as do its CUDA graphs' pointers). At no point is a whole state dict — let alone
an fp32 one — held: the peak on top of the engine's own weights is one parameter in the engine dtype.
A rank that does not decode (a tensor-parallel peer) passes ``dst=None``: it takes part in the
gathers and keeps nothing.

``release(model)`` / ``restore(model)`` free and re-allocate the engine model's parameter storages
(the same storage objects, so every view of them — the packed ones too — follows): an engine's
weights can go back to training between rollout rounds.
"""

from __future__ import annotations

import torch
from torch import nn

# wrappers that insert a level into parameter names (activation checkpointing, torch.compile)
_WRAPPERS = ("_checkpoint_wrapped_module.", "_orig_mod.")
_NOT_WEIGHTS = ("tokens_per_expert",)  # MoE counters: statistics, not weights


def clean_name(name: str) -> str:
    for w in _WRAPPERS:
        name = name.replace(w, "")
    return name


def _full(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    t = t.detach()
    if isinstance(t, DTensor):
        return t.to(dtype).full_tensor()  # the shard is cast before the gather: no fp32 full copy
    return t


def _weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters (tied ones once) and persistent buffers, under names without wrapper levels."""
    out = [(clean_name(k), v) for k, v in model.named_parameters()]
    for mod_name, mod in model.named_modules():
        for k, v in mod.named_buffers(recurse=False):
            if v is not None and k not in mod._non_persistent_buffers_set and not k.endswith(_NOT_WEIGHTS):
                out.append((clean_name(f"{mod_name}.{k}" if mod_name else k), v))
    return out


@torch.no_grad()
def copy_weights(src: nn.Module, dst: nn.Module | None, dtype: torch.dtype) -> int:
    """``src``'s parameters and persistent buffers (MoE expert biases) into ``dst``'s, in place; returns
    the bytes written into ``dst``. Collective when ``src`` is sharded; ``dst=None``: gather only."""
    targets = dict(_weights(dst)) if dst is not None else {}
    sources = _weights(src)
    if dst is not None and {k for k, _ in sources} != set(targets):
        extra = sorted({k for k, _ in sources} ^ set(targets))[0]
        raise KeyError(f"weight sync: {extra!r} is in only one of the policy and the engine's model")
    written = 0
    for key, value in sources:
        full = _full(value, dtype if value.is_floating_point() and isinstance(value, nn.Parameter) else value.dtype)
        if dst is None:
            continue
        target = targets[key]
        if tuple(full.shape) != tuple(target.shape):
            raise ValueError(f"weight sync: {key!r} is {tuple(full.shape)} in the policy, "
                             f"{tuple(target.shape)} in the engine")
        target.copy_(full)
        written += target.numel() * target.element_size()
    return written


def _storages(model: nn.Module) -> list[torch.UntypedStorage]:
    seen, out = set(), []
    for p in model.parameters():
        s = p.untyped_storage()
        if s._cdata not in seen:
            seen.add(s._cdata)
            out.append(s)
    return out


class WeightStore:
    """Frees and re-allocates a model's parameter storages in place (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self.storages = [(s, s.nbytes()) for s in _storages(model)]
        self.freed = False

    def release(self) -> None:
        for s, _ in self.storages:
            s.resize_(0)
        self.freed = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def restore(self) -> None:
        if self.freed:
            for s, n in self.storages:
                s.resize_(n)
            self.freed = False
