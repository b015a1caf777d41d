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
  comparison, and the expert-load imbalance (max/mean load), read back in one transfer.
* The statistics live in device tensors updated in place (zeroed by ``step_begin``), never in Python
  numbers or lists that change per micro-batch, and the DP all-reduce is a functional collective:
  so the hooks trace into a compiled MoE block (one ``fullgraph`` graph per block, any number of
  micro-batches, no recompile when the step's token count changes) as well as they run eagerly.

This module is pure torch: the trainer passes the data-parallel process group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
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
    counts: torch.Tensor  # [E] global expert counts so far this step (float64)
    prob_sum: torch.Tensor  # [E] global sum of router probs so far (detached, float64)
    tokens: torch.Tensor  # [1] global tokens seen so far this step (float64)
    micro_sum: torch.Tensor  # [1] sum over micro-batches of the per-micro-batch LBL (this rank)
    micro_n: torch.Tensor  # [1] micro-batches seen
    pending: torch.Tensor | None = None  # this micro-batch's local prob sums, with grad


def _zeros(device: torch.device, n: int = 1) -> torch.Tensor:
    # never 0-d: inductor (CPU, torch 2.13) dropped in-place updates of 0-d tensors the graph closes over
    return torch.zeros(n, dtype=torch.float64, device=device)


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
        self.dp_group = dp_group if dp_group is not None and dist.get_world_size(dp_group) > 1 else None
        self._open = False
        self._layers: list[_LayerStats] = []
        self._handles = []
        moes = [m for part in model_parts for m in part.modules()
                if hasattr(m, "router") and hasattr(m, "experts") and hasattr(m.router, "gate")]
        self.num_layers = len(moes)
        self.device = _device_of(moes[0]) if moes else torch.device("cpu")
        self._global_tokens = _zeros(self.device)  # a tensor: a new step's count is no new graph
        for moe in moes:
            self._attach(moe)
        # per-layer constants of step_stats, on the device once (a host list there would be a blocking copy)
        self._experts = torch.tensor([s.num_experts for s in self._layers], dtype=torch.float64, device=self.device)
        self._top_k = torch.tensor([s.top_k for s in self._layers], dtype=torch.float64,
                                   device=self.device).unsqueeze(1)

    @property
    def global_tokens(self) -> int | None:
        return int(self._global_tokens[0].item()) if self._open else None

    # -- hooks ---------------------------------------------------------------------------------
    def _attach(self, moe: nn.Module) -> None:
        dev, E, k = self.device, moe.experts.num_experts, moe.router.top_k
        stats = _LayerStats(num_experts=E, top_k=k, counts=_zeros(dev, E), prob_sum=_zeros(dev, E),
                            tokens=_zeros(dev), micro_sum=_zeros(dev), micro_n=_zeros(dev))
        self._layers.append(stats)

        def on_gate(_mod, _inp, logits):
            stats.pending = F.softmax(logits.float(), dim=-1).sum(dim=0)

        def on_router(_mod, _inp, out):
            # no host synchronisation here: everything stays on the device until step_end()
            if not torch.compiler.is_compiling() and _in_backward():
                return
            counts = out[2].detach().to(torch.float64)
            n_local = out[1].shape[0]
            probs = stats.pending.detach().to(torch.float64)
            # the conventional per-micro-batch form (this rank, this micro-batch), for comparison
            f_local = counts / (k * n_local)
            with torch.no_grad():
                stats.micro_sum.add_(E * (f_local * probs / n_local).sum())
                stats.micro_n.add_(1.0)
                if self.dp_group is not None:
                    packed = funcol.all_reduce(torch.cat([counts, probs]), "sum", self.dp_group)
                    counts, probs = packed[:E], packed[E:]
                stats.counts.add_(counts)
                stats.prob_sum.add_(probs)
                stats.tokens.add_(counts.sum() / k)  # every token takes k slots: exact, any shapes per rank

        def on_moe(_mod, _inp, output):
            if stats.pending is None:
                return output
            if not self._open:
                raise RuntimeError("GlobalBatchLoadBalancer.step_begin() was not called")
            f_run = (stats.counts / (k * stats.tokens)).to(stats.pending.dtype)
            scale = (self.coeff * E / self.num_layers) / self._global_tokens[0].to(stats.pending.dtype)
            aux = scale * (f_run * stats.pending).sum()
            stats.pending = None
            return _AttachAuxLoss.apply(output, aux.to(output.dtype))

        self._handles += [
            moe.router.gate.register_forward_hook(on_gate),
            moe.router.register_forward_hook(on_router),
            moe.register_forward_hook(on_moe),
        ]

    # -- step API ------------------------------------------------------------------------------
    def step_begin(self, global_tokens: float | torch.Tensor) -> None:
        # a fill kernel, or a device copy of a count summed on the device: no host sync
        if torch.is_tensor(global_tokens):
            self._global_tokens.copy_(global_tokens.reshape(1))
        else:
            self._global_tokens.fill_(float(global_tokens))
        self._open = True
        for s in self._layers:
            for t in (s.counts, s.prob_sum, s.tokens, s.micro_sum, s.micro_n):
                t.zero_()
            s.pending = None

    def step_end(self) -> dict[str, float]:
        """Exact global-batch LBL (times coeff), the per-micro-batch form, and load imbalance."""
        stats = self.step_stats()
        return {} if stats is None else self.stats_metrics(stats.tolist())

    def step_stats(self) -> torch.Tensor | None:
        """The step's statistics as one float64 device tensor (no host sync), taken before the next
        ``step_begin`` resets them; ``stats_metrics`` turns its values into ``step_end``'s numbers."""
        if not self._layers:
            return None
        counts = torch.stack([s.counts for s in self._layers])  # [L, E]
        tokens = torch.stack([s.tokens for s in self._layers])  # [L, 1]
        f = counts / (self._top_k * tokens)
        p = torch.stack([s.prob_sum for s in self._layers]) / tokens
        glob = self._experts * (f * p).sum(dim=1)
        micro = torch.cat([s.micro_sum / s.micro_n for s in self._layers])
        imbalance = counts.max(dim=1).values / counts.mean(dim=1)
        return torch.stack([tokens.min(), glob.mean(), micro.mean(), imbalance.max()])

    def stats_metrics(self, values: list[float]) -> dict[str, float]:
        seen, glob, micro, imbalance = values
        if seen == 0:  # a layer saw no tokens this step (no forward since step_begin)
            return {}
        return {
            "moe/lbl_global": self.coeff * glob,
            "moe/lbl_micro_batch": self.coeff * micro,
            "moe/load_imbalance": imbalance,
        }

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _device_of(moe: nn.Module) -> torch.device:
    w = moe.router.gate.weight
    return w.to_local().device if hasattr(w, "to_local") else w.device
