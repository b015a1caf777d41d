"""AdamW whose update of each large parameter is one compiled elementwise kernel.

Scope: the optimizer step of ``optimizer.implementation: compiled``. Same math, hyper-parameters and
state (``step``, ``exp_avg``, ``exp_avg_sq``, so checkpoints move freely between the two) as
``torch.optim.AdamW(fused=True)``; only how the update runs differs:

* torch's fused AdamW is a multi-tensor CUDA kernel; on the H200 it moves its 14 bytes per bf16
  parameter (read p, g, m, v; write p, m, v) at ~2.6 TB/s, about half the HBM bandwidth, and it is
  30% of a 30B-A3B-8L step and 12% of an 8B step (BENCHMARKS.md, profiles).
* here every parameter of at least ``BIG`` elements gets one inductor-generated elementwise kernel
  (``torch.compile``, dynamic shapes: one kernel for all sizes); the many small ones (norm weights)
  stay in one ``torch._fused_adamw_`` launch.

Gradient clipping folded into the step (``grad_scale``, as ``Trainer._clip_in_fused_step`` sets it)
works as in the fused optimizer. ``amsgrad``, ``maximize``, ``found_inf`` and closures fall back to
the parent's step. Under FSDP/TP the update runs on each rank's local shards (it is elementwise).
"""

from __future__ import annotations

import torch

BIG = 1 << 20  # elements: below this a kernel launch costs more than the parameter's update


def _update(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: torch.Tensor,
            lr: torch.Tensor, grad_scale: torch.Tensor, beta1: float, beta2: float, eps: float,
            weight_decay: float) -> None:
    """One AdamW update in fp32 registers, written back in the tensors' own dtypes (as the fused kernel)."""
    gf = g.float() / grad_scale
    pf = p.float() * (1 - lr * weight_decay)
    mf = m.float() * beta1 + gf * (1 - beta1)
    vf = v.float() * beta2 + gf * gf * (1 - beta2)
    bias1 = 1 - beta1**step
    bias2_sqrt = (1 - beta2**step).sqrt()
    pf = pf - (lr / bias1) * mf / (vf.sqrt() / bias2_sqrt + eps)
    p.copy_(pf)
    m.copy_(mf)
    v.copy_(vf)


_compiled: dict[str, object] = {}


def _kernel():
    if "update" not in _compiled:
        _compiled["update"] = torch.compile(_update, dynamic=True, fullgraph=True)
    return _compiled["update"]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if hasattr(t, "_local_tensor") else t


class CompiledAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW`` (fused state layout) with a compiled per-parameter update; see the module."""

    def __init__(self, params, **kwargs):
        kwargs.update(fused=True, foreach=False)
        super().__init__(params, **kwargs)
        self._scalars: dict[tuple, torch.Tensor] = {}

    def _scalar(self, name: str, value: float, device: torch.device) -> torch.Tensor:
        t = self._scalars.get((name, device))
        if t is None:
            t = self._scalars[(name, device)] = torch.empty((), dtype=torch.float32, device=device)
        return t.fill_(value)

    @torch.no_grad()
    def step(self, closure=None):
        special = any(g["amsgrad"] or g["maximize"] or g["differentiable"] for g in self.param_groups)
        if closure is not None or special or getattr(self, "found_inf", None) is not None:
            return super().step(closure)
        grad_scale = getattr(self, "grad_scale", None)
        for group in self.param_groups:
            params, grads, ms, vs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("CompiledAdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(_local(p))
                grads.append(_local(p.grad))
                ms.append(_local(state["exp_avg"]))
                vs.append(_local(state["exp_avg_sq"]))
                steps.append(state["step"])
            if not params:
                continue
            torch._foreach_add_(steps, 1.0)
            beta1, beta2 = group["betas"]
            lr = float(group["lr"])
            scalars: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
            big = [i for i, p in enumerate(params) if p.numel() >= BIG and p.is_contiguous()
                   and grads[i].is_contiguous() and ms[i].is_contiguous() and vs[i].is_contiguous()]
            small = sorted(set(range(len(params))) - set(big))
            if small:
                torch._fused_adamw_([params[i] for i in small], [grads[i] for i in small], [ms[i] for i in small],
                                    [vs[i] for i in small], [], [steps[i] for i in small], lr=lr, beta1=beta1,
                                    beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                                    amsgrad=False, maximize=False,
                                    grad_scale=None if grad_scale is None else grad_scale.to(params[small[0]].device),
                                    found_inf=None)
            for i in big:
                dev = params[i].device
                if dev not in scalars:  # once per group and device: no per-parameter host work
                    scale = grad_scale.to(dev) if grad_scale is not None else self._scalar("one", 1.0, dev)
                    scalars[dev] = (self._scalar("lr", lr, dev), scale)
                _kernel()(params[i].view(-1), grads[i].view(-1), ms[i].view(-1), vs[i].view(-1), steps[i],
                          *scalars[dev], beta1, beta2, group["eps"], group["weight_decay"])
        return None


def adopt(opt: torch.optim.Optimizer) -> CompiledAdamW:
    """Turn a built ``torch.optim.AdamW`` (torchtitan's builders make them, hooks included) into a
    ``CompiledAdamW`` in place; it must not have stepped yet."""
    if type(opt) is not torch.optim.AdamW or opt.state:
        raise TypeError(f"the compiled step needs a fresh torch.optim.AdamW, got {type(opt).__name__}")
    opt.__class__ = CompiledAdamW
    opt._scalars = {}
    for group in [opt.defaults, *opt.param_groups]:
        group.update(fused=True, foreach=False)
    opt._patch_step_function()  # step hooks (torchtitan's) wrap the new class's step too
    return opt
