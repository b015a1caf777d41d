"""Qwen3's global-batch load-balancing loss for MoE routers (Qwen3 report §2; Qiu et al. 2025).

For every MoE layer l with N_E experts and top-k routing,

    LBL_l = N_E * sum_i f_{l,i} * P_{l,i}

where f_{l,i} is the fraction of routed (token, slot) pairs that chose expert i and P_{l,i} the mean
router probability of expert i. The report's "global-batch" form computes f and P over the whole
step — every micro-batch of gradient accumulation and every data-parallel rank — instead of per
micro-batch, which lets experts specialise per domain. The loss is the mean over layers times
``coeff`` (0.001 in the HF configs).

How it is computed without a second forward pass:

* Hooks on each router read the gate logits (P, with gradient) and the expert counts (f).
  Counts are all-reduced over the data-parallel group every micro-batch and accumulated over the
  step, so after the last micro-batch f is exactly the global-batch frequency.
* The gradient is attached to the MoE layer's output with a pass-through autograd function (as
  Megatron's MoEAuxLossAutoScaler does), so it flows under FSDP, activation checkpointing and
  pipeline parallelism without touching the objective's loss. Micro-batch m contributes
  ``coeff * N_E * sum_i f_i^{<=m} * sum_t p_{t,i} / T_global`` where f^{<=m} uses the counts of
  micro-batches 1..m of this step across all ranks: exact for the last micro-batch and whenever
  there is no gradient accumulation; earlier micro-batches use the step's running frequencies.
* ``step_end()`` returns the exact global-batch value (logged), the per-micro-batch form for
  comparison, and the expert-load imbalance (max/mean load).

This module is pure torch: the trainer passes the data-parallel process group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _AttachAuxLoss(torch.autograd.Function):
    """Identity on ``x``; in backward, also backpropagates ``aux`` with gradient 1."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        ctx.aux_dtype, ctx.aux_device = aux.dtype, aux.device
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, torch.ones((), dtype=ctx.aux_dtype, device=ctx.aux_device)


def _in_backward() -> bool:
    # activation-checkpoint recomputation re-runs forward hooks inside backward: count once
    return torch._C._current_graph_task_id() != -1


@dataclass
class _LayerStats:
    num_experts: int
    top_k: int
    counts: torch.Tensor | None = None  # [E] global counts so far this step (float64)
    prob_sum: torch.Tensor | None = None  # [E] global sum of router probs so far (detached)
    tokens: int = 0  # global tokens seen so far this step
    pending: torch.Tensor | None = None  # this micro-batch's local prob sums, with grad
    micro_values: list[torch.Tensor] = field(default_factory=list)


class GlobalBatchLoadBalancer:
    """Adds the global-batch LBL gradient to every MoE layer of ``model_parts``.

    Call ``step_begin(global_tokens)`` before the first micro-batch of a step (``global_tokens`` is
    the number of tokens in the whole step across all DP ranks) and ``step_end()`` after the last.
    """

    def __init__(
        self,
        model_parts: list[nn.Module],
        coeff: float = 1e-3,
        dp_group: dist.ProcessGroup | None = None,
    ):
        if coeff <= 0:
            raise ValueError(f"load-balancing coeff must be > 0, got {coeff}")
        self.coeff = coeff
        self.dp_group = dp_group
        self.global_tokens: int | None = None
        self._layers: list[_LayerStats] = []
        self._handles = []
        for part in model_parts:
            for module in part.modules():
                if hasattr(module, "router") and hasattr(module, "experts") and hasattr(module.router, "gate"):
                    self._attach(module)
        self.num_layers = len(self._layers)

    # -- hooks ---------------------------------------------------------------------------------
    def _attach(self, moe: nn.Module) -> None:
        stats = _LayerStats(num_experts=moe.experts.num_experts, top_k=moe.router.top_k)
        self._layers.append(stats)

        def on_gate(_mod, _inp, logits):
            stats.pending = F.softmax(logits.float(), dim=-1).sum(dim=0)

        def on_router(_mod, _inp, out):
            # no host synchronisation here: everything stays on the device until step_end()
            if _in_backward():
                return
            counts = out[2].detach().to(torch.float64)
            n_local = out[1].shape[0]
            probs = stats.pending.detach().to(torch.float64)
            # the conventional per-micro-batch form (this rank, this micro-batch), for comparison
            f_local = counts / (stats.top_k * n_local)
            stats.micro_values.append(stats.num_experts * (f_local * probs / n_local).sum())
            n = n_local
            if self.dp_group is not None and dist.get_world_size(self.dp_group) > 1:
                packed = torch.cat([counts, probs])
                dist.all_reduce(packed, group=self.dp_group)
                counts, probs = packed[: stats.num_experts], packed[stats.num_experts :]
                n = n_local * dist.get_world_size(self.dp_group)  # every rank runs the same micro-batch shape
            stats.counts = counts if stats.counts is None else stats.counts + counts
            stats.prob_sum = probs if stats.prob_sum is None else stats.prob_sum + probs
            stats.tokens += n

        def on_moe(_mod, _inp, output):
            if stats.pending is None or stats.counts is None:
                return output
            if self.global_tokens is None:
                raise RuntimeError("GlobalBatchLoadBalancer.step_begin() was not called")
            f_run = (stats.counts / (stats.top_k * stats.tokens)).to(stats.pending.dtype)
            scale = self.coeff * stats.num_experts / (self.global_tokens * self.num_layers)
            aux = scale * (f_run * stats.pending).sum()
            stats.pending = None
            return _AttachAuxLoss.apply(output, aux.to(output.dtype))

        self._handles += [
            moe.router.gate.register_forward_hook(on_gate),
            moe.router.register_forward_hook(on_router),
            moe.register_forward_hook(on_moe),
        ]

    # -- step API ------------------------------------------------------------------------------
    def step_begin(self, global_tokens: int) -> None:
        self.global_tokens = int(global_tokens)
        for s in self._layers:
            s.counts = s.prob_sum = s.pending = None
            s.tokens = 0
            s.micro_values = []

    def step_end(self) -> dict[str, float]:
        """Exact global-batch LBL (times coeff), the per-micro-batch form, and load imbalance."""
        if not self._layers or self._layers[0].counts is None:
            return {}
        glob, micro, imbalance = [], [], []
        for s in self._layers:
            f = s.counts / (s.top_k * s.tokens)
            p = s.prob_sum / s.tokens
            glob.append(float(s.num_experts * (f * p).sum()))
            micro.append(float(torch.stack(s.micro_values).mean()))
            imbalance.append(float(s.counts.max() / s.counts.mean()))
        n = len(self._layers)
        return {
            "moe/lbl_global": self.coeff * sum(glob) / n,
            "moe/lbl_micro_batch": self.coeff * sum(micro) / n,
            "moe/load_imbalance": max(imbalance),
        }

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
