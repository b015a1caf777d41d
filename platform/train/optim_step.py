"""The optimizer step as one compiled graph: ``optimizer.implementation: compiled`` (CUDA).

Scope: how the trainer's AdamW / Adam step runs when it is compiled; the optimizers themselves are
torchtitan's (``build_optimizers`` with ``foreach``), their states and checkpoints unchanged. The step
divides every gradient by the clip factor and runs the foreach update in one ``torch.compile``d
function, so inductor fuses the clip and the whole update into a few kernels per parameter group.
On one H200 that step took 28.3 ms at 30B-A3B-8L and 8.9 ms at 1.7B against 33.9 / 10.9 ms for the
fused kernel with the clip folded in (``benchmarks/optimizer_step.py``, BENCHMARKS.md), after 41-69 s
of compilation per process. Inside the trainer's step it does not pay (H100, 2026-12-05/07: −1.7% at 1.7B
pure bf16, +0.5% under FSDP mixed, −3% at 30B-A3B-8L), so it is opt-in and ``fused`` stays the default.

The learning rate is handed to the graph as a device tensor (filled from the scheduler's float each
step, put back as the float after it: checkpoints and the LR scheduler see what they always see) and the
update is ``capturable``, so a schedule that changes the LR every step is one graph, not one per value.
That is why it needs CUDA: torch's foreach Adam takes a tensor LR only when capturable, and capturable
only on accelerators.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


def make_capturable(optimizers: list[Optimizer], device: torch.device) -> None:
    """Capturable updates (step counters on the device), before the first step creates the state."""
    if device.type != "cuda":
        raise ValueError(f"optimizer.implementation: compiled needs a CUDA device, not {device.type} "
                         "(use fused or foreach)")
    for opt in optimizers:
        if opt.state:
            raise RuntimeError("make_capturable() must run before the optimizer's first step")
        for group in opt.param_groups:
            group["capturable"] = True


def clipped_step(optimizers: list[Optimizer], grad_scale: torch.Tensor | None) -> None:
    """Divide every gradient by ``grad_scale`` (the quotient the fused kernel takes as ``grad_scale``:
    ``max(1, (norm + 1e-6) / max_norm)``; None: no clipping), then step each optimizer. Eager here;
    ``CompiledStep`` runs it compiled."""
    for opt in optimizers:
        if grad_scale is not None:
            grads = [p.grad for group in opt.param_groups for p in group["params"] if p.grad is not None]
            if grads:
                torch._foreach_div_(grads, grad_scale)
        opt.step()


class CompiledStep:
    """``clipped_step`` under ``torch.compile`` for an ``OptimizersContainer``: each group's LR as a device
    tensor for the call, the container's step pre-/post-hooks (the float8 converter's) run around it
    as ``OptimizersContainer.step`` runs them. ``lr_device`` None keeps float LRs (a graph per LR value:
    for tests of the graph on CPU with a constant LR)."""

    def __init__(self, container: Optimizer, backend: str = "inductor", lr_device: torch.device | None = None):
        self.container = container
        self.optimizers = list(container.optimizers)
        self._lrs = None if lr_device is None else [
            [torch.zeros((), dtype=torch.float32, device=lr_device) for _ in opt.param_groups] for opt in self.optimizers]
        self._fn = torch.compile(clipped_step, backend=backend)

    def __call__(self, grad_scale: torch.Tensor | None) -> None:
        for hook in self.container._optimizer_step_pre_hooks.values():
            hook(self.container, (), {})
        floats = [[g["lr"] for g in opt.param_groups] for opt in self.optimizers]
        if self._lrs is not None:
            for opt, tensors in zip(self.optimizers, self._lrs, strict=True):
                for group, t in zip(opt.param_groups, tensors, strict=True):
                    t.fill_(float(group["lr"]))
                    group["lr"] = t
        try:
            self._fn(self.optimizers, grad_scale)
        finally:
            for opt, lrs in zip(self.optimizers, floats, strict=True):
                for group, lr in zip(opt.param_groups, lrs, strict=True):
                    group["lr"] = lr
        for hook in self.container._optimizer_step_post_hooks.values():
            hook(self.container, (), {})
