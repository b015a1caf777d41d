"""Token dispatch and combine for torchtitan's MoE layer as gathers through the routing permutation.

Scope: the data movement around the experts in torchtitan 0.2.2's ``MoE.forward``, on each rank's
local tokens (the experts module and its FSDP / expert-parallel hooks are called exactly as before;
with tensor *and* expert parallelism torchtitan splits the routed slots over TP ranks, and the
trainer keeps torchtitan's forward there). Same math, fewer and cheaper passes over the
``tokens * top_k`` routed rows:

* torchtitan dispatches with ``x[order // k]`` (backward: an atomic ``index_add`` of T*k rows into T)
  and combines by scattering the expert outputs back into slot order, up-casting all of them to
  fp32 and a ``bmm`` with the router scores (backward: the same scatter reversed). Here both
  directions of both steps are gathers through ``order`` and its inverse permutation, with the
  fp32 weighting fused into the gather: no atomics, and once compiled (``compile_routing``) no fp32
  copy of the routed rows.
* Without expert parallelism torchtitan pads every expert's token group to a multiple of 8 rows
  (a triton index kernel, a gather into a padded buffer and a scatter back, per layer) before
  ``torch._grouped_mm``. bf16 grouped GEMM has no such alignment need (the padding exists for
  float8/mxfp8 grouped GEMMs; torchtitan PR 2255 drops it for bf16), so the experts run on the
  sorted rows directly. With EP, or a float8 alignment set, the experts keep torchtitan's padded path.

``install(model)`` binds both to every MoE layer of a built model (``build_model`` does it);
``compile_routing()`` swaps in ``torch.compile``d kernels (the trainer does it with ``compile``).
"""

from __future__ import annotations

import types

import torch
from torch import nn

from qwen3_trainer.model.titan import MoE


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Accumulation precision: fp32 for bf16/fp16/fp32 inputs, fp64 stays fp64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


class _Dispatch(torch.autograd.Function):
    """``x[order // k]``: row i of the output is token ``order[i] // k``; backward sums each
    token's k slots, found through the inverse permutation (a gather, not a scatter-add)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor, top_k: int) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.top_k = top_k
        return x[order // top_k]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (inverse,) = ctx.saved_tensors
        tokens = inverse.numel() // ctx.top_k
        g = _acc(grad[inverse].view(tokens, ctx.top_k, -1)).sum(dim=1).to(grad.dtype)
        return g, None, None, None


class _Combine(torch.autograd.Function):
    """``out[t] = sum_j scores[t, j] * routed[inverse[t * k + j]]`` accumulated in fp32."""

    @staticmethod
    def forward(ctx, routed: torch.Tensor, scores: torch.Tensor, order: torch.Tensor,
                inverse: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        tokens, top_k = scores.shape
        ctx.save_for_backward(routed, scores, order, inverse)
        slots = _acc(routed[inverse].view(tokens, top_k, -1))
        return (slots * _acc(scores).unsqueeze(-1)).sum(dim=1).to(out_dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        routed, scores, order, inverse = ctx.saved_tensors
        tokens, top_k = scores.shape
        g = _acc(grad)
        grad_routed = grad_scores = None
        if ctx.needs_input_grad[0]:
            weights = _acc(scores.reshape(-1)[order]).unsqueeze(-1)
            grad_routed = (g[order // top_k] * weights).to(routed.dtype)
        if ctx.needs_input_grad[1]:
            slots = _acc(routed[inverse].view(tokens, top_k, -1))
            grad_scores = (slots * g.unsqueeze(1)).sum(dim=-1).to(scores.dtype)
        return grad_routed, grad_scores, None, None, None


def _inverse(order: torch.Tensor) -> torch.Tensor:
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device, dtype=order.dtype)
    return inverse


def _dispatch(x: torch.Tensor, order: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    inverse = _inverse(order)
    return _Dispatch.apply(x, order, inverse, top_k), inverse


def _combine(routed: torch.Tensor, scores: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor,
             out_dtype: torch.dtype) -> torch.Tensor:
    return _Combine.apply(routed, scores, order, inverse, out_dtype)


_kernels = {"dispatch": _dispatch, "combine": _combine, "backend": None}


def compile_routing(backend: str = "inductor") -> None:
    """Use compiled dispatch/combine (fused gathers) from now on, process-wide; idempotent per backend.

    Shapes are left to automatic dynamic: the token count varies in rollouts and SFT batches, and a
    static compile would hit the recompile limit (an error under ``fullgraph``).
    """
    if _kernels["backend"] != backend:
        _kernels.update(dispatch=torch.compile(_dispatch, backend=backend, fullgraph=True),
                        combine=torch.compile(_combine, backend=backend, fullgraph=True), backend=backend)


def moe_forward(self: MoE, x: torch.Tensor) -> torch.Tensor:
    """torchtitan's ``MoE.forward`` (score after the experts, as Qwen3) with gather dispatch/combine."""
    bs, slen, dim = x.shape
    x = x.view(-1, dim)
    top_scores, selected, num_tokens_per_expert = self.router(x, self.expert_bias)
    with torch.no_grad():
        self.tokens_per_expert.add_(num_tokens_per_expert)
    _, order, num_tokens_per_expert = self.reorderer(top_scores, selected)
    if order.numel() != top_scores.numel():
        raise RuntimeError("moe_routing needs every routed slot on this rank (tensor + expert parallelism "
                           "splits them): call moe_routing.uninstall(model) for that layout")
    routed_input, inverse = _kernels["dispatch"](x, order, self.router.top_k)
    routed_output = self.experts(routed_input, num_tokens_per_expert)
    out = _kernels["combine"](routed_output, top_scores, order, inverse, x.dtype)
    if self.shared_experts is not None:
        out = self.shared_experts(x) + out
    return out.reshape(bs, slen, dim)


def _expert_parallel(weight: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(weight, DTensor) and "ep" in (weight.device_mesh.mesh_dim_names or ())


def grouped_experts_forward(self: nn.Module, x: torch.Tensor, num_tokens_per_expert: torch.Tensor) -> torch.Tensor:
    """``GroupedExperts.forward`` without the token-group padding when EP is off (bf16)."""
    from torchtitan.models.moe import moe as moe_module
    from torchtitan.models.moe import utils as moe_utils

    if (not self.use_grouped_mm or _expert_parallel(self.w1) or moe_utils.TOKEN_GROUP_ALIGN_SIZE_M > 8):
        return type(self).forward(self, x, num_tokens_per_expert)
    w1, w2, w3 = (w.to_local() if hasattr(w, "to_local") else w for w in (self.w1, self.w2, self.w3))
    return moe_module._run_experts_grouped_mm(w1, w2, w3, x, num_tokens_per_expert)


def install(model: nn.Module) -> int:
    """Bind the gather dispatch/combine (and unpadded experts) to every MoE layer; returns how many.

    Layers scoring before the experts (not Qwen3) keep torchtitan's forward.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, MoE) and not module.score_before_experts:
            module.forward = types.MethodType(moe_forward, module)
            module.experts.forward = types.MethodType(grouped_experts_forward, module.experts)
            n += 1
    return n


def uninstall(model: nn.Module) -> int:
    """Restore torchtitan's own ``MoE.forward`` / ``GroupedExperts.forward`` (A/B benchmarks)."""
    n = 0
    for module in model.modules():
        if isinstance(module, MoE) and "forward" in module.__dict__:
            del module.forward
            module.experts.__dict__.pop("forward", None)
            n += 1
    return n
