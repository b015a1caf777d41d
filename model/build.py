"""Build a torchtitan Qwen3 model from a flavor name or ``Qwen3ModelArgs`` (one device, no sharding).

Parallelism is applied later by the trainer's parallelize step; this module only constructs and
initialises. ``build_model`` under the meta device allocates nothing; ``materialize`` then gives a
meta model real (uninitialised) storage and recomputes its non-persistent buffers.
"""

from __future__ import annotations

import copy

import torch

from qwen3_trainer.model import moe_routing
from qwen3_trainer.model.flavors import get_flavor
from qwen3_trainer.model.titan import Qwen3Model, Qwen3ModelArgs


def args_for_device(args: Qwen3ModelArgs, device: torch.device) -> Qwen3ModelArgs:
    """A copy of ``args`` fit for ``device``: torchtitan's grouped-mm expert path is a CUDA bf16
    kernel, so on CPU the experts run torchtitan's fp32 for-loop path instead."""
    args = copy.deepcopy(args)
    if args.moe_enabled and device.type != "cuda":
        args.moe_args.use_grouped_mm = False
    return args


def build_model(
    flavor: str | Qwen3ModelArgs,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    seed: int | None = None,
    init: bool = True,
    compute_device: torch.device | str | None = None,
) -> Qwen3Model:
    """Construct a Qwen3 model; ``init`` runs torchtitan's ``init_weights`` (skipped on meta).

    ``compute_device`` is where the model will run (defaults to ``device``; give it when building
    on meta for a later ``materialize``).
    """
    args = get_flavor(flavor) if isinstance(flavor, str) else flavor
    device = torch.device(device) if device is not None else torch.get_default_device()
    compute = torch.device(compute_device) if compute_device is not None else device
    if compute.type == "meta":
        compute = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with torch.device(device):
        model = Qwen3Model(args_for_device(args, compute))
    if args.moe_enabled:
        moe_routing.install(model)
    if init and device.type != "meta":
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            model.init_weights(buffer_device=device)
    if dtype is not None:
        model.to(dtype=dtype)
    return model


def init_buffers(model: Qwen3Model, device: torch.device | str) -> None:
    """Recompute the buffers that checkpoints don't hold (RoPE cache, MoE token counters)."""
    device = torch.device(device)
    with torch.device(device):
        model.rope_cache = model._precompute_rope_cache()
    for layer in model.layers.values():
        moe = getattr(layer, "moe", None)
        if moe is not None:
            moe.tokens_per_expert = torch.zeros(moe.experts.num_experts, device=device)
            if moe.expert_bias is not None:
                moe.expert_bias = torch.zeros(moe.experts.num_experts, device=device)


def retie(model: Qwen3Model) -> None:
    """Restore the embedding/output weight sharing that ``to_empty`` from meta breaks (it creates a
    new Parameter per module when the device changes)."""
    emb, out = getattr(model, "tok_embeddings", None), getattr(model, "output", None)
    if model.model_args.enable_weight_tying and emb is not None and out is not None:
        if out.weight is not emb.weight:
            out.weight = emb.weight


def materialize(model: Qwen3Model, device: torch.device | str) -> Qwen3Model:
    """Give a meta-device model real, uninitialised storage on ``device`` (weights loaded after)."""
    model = model.to_empty(device=device)
    init_buffers(model, device)
    retie(model)
    return model
