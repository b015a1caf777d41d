"""CPU compatibility for torchtitan 0.2.2 on the CPU torch wheel (torch 2.11-2.13).

Scope: the five small runtime patches that let torchtitan's qwen3 (dense and MoE) run, train and
shard on a CPU-only machine with gloo (CI, laptops). Every patch is applied from outside the
package and only changes behaviour that would otherwise raise on CPU; on a CUDA machine each one
is a no-op or is skipped, so the GPU path is untouched. ``apply()`` is idempotent and is called by
``qwen3_trainer.model`` before torchtitan's model modules are imported.

1. ``torchtitan.models.moe.kernels`` imports triton, which the CPU wheel lacks.
2. ``torch.histc`` has no CPU kernel for int64 expert ids (router, token reorderer).
3. EP's ``generate_permute_indices`` must take its CPU path for CPU tensors.
4. torchtitan's device helpers fall back to "cuda"; gloo has no PREMUL_SUM for FSDP.
5. DTensor has no sharding rule for the CPU flash-SDPA op used under tensor parallelism.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch

_APPLIED = False


def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _load_moe_kernels_without_triton() -> None:
    # Patch 1: kernels.py does `import triton` at import time only to define a CUDA kernel.
    # A *global* fake triton confuses torch._dynamo's feature detection, so the stand-in lives
    # in sys.modules only while that one module executes.
    name = "torchtitan.models.moe.kernels"
    if name in sys.modules or _has_triton():
        return
    spec = importlib.util.find_spec("torchtitan")
    assert spec is not None and spec.submodule_search_locations
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "moe" / "kernels.py"

    def _jit(fn=None, **_kw):
        return fn if fn is not None else (lambda f: f)

    language = types.ModuleType("triton.language")
    language.constexpr = object  # only used as an annotation at definition time
    triton = types.ModuleType("triton")
    triton.jit = _jit
    triton.language = language
    saved = {k: sys.modules.get(k) for k in ("triton", "triton.language")}
    sys.modules.update({"triton": triton, "triton.language": language})
    try:
        module = types.ModuleType(name)
        module.__file__ = str(path)
        sys.modules[name] = module
        exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


_torch_histc = torch.histc


def _histc(input, bins=100, min=0, max=0, *, out=None):  # noqa: A002 - torch's signature
    # Patch 2: integer histc is unimplemented on CPU; expert ids are integers in [0, bins), so a
    # scatter-add of ones gives the same counts. Integer dtype is kept (the router sums these
    # counts); the output shape is static (``bincount``'s is data-dependent and breaks compile).
    if (
        out is None
        and input.device.type == "cpu"
        and not input.is_floating_point()
        and min == 0
        and max == bins
    ):
        ids = input.reshape(-1)
        return torch.zeros(bins, dtype=input.dtype).scatter_add_(0, ids, torch.ones_like(ids))
    return _torch_histc(input, bins=bins, min=min, max=max, out=out)


def _patch_permute_indices() -> None:
    # Patch 3: the expert-parallel permutation defaults to a triton kernel; route CPU tensors
    # to torchtitan's own CPU implementation.
    import torchtitan.models.moe.kernels as kernels
    import torchtitan.models.moe.utils as moe_utils

    original = kernels.generate_permute_indices
    if getattr(original, "_qwen3_cpu_patch", False):
        return

    def generate_permute_indices(tokens_per_expert_group, *args, use_cpu=False, **kwargs):
        use_cpu = use_cpu or tokens_per_expert_group.device.type == "cpu"
        return original(tokens_per_expert_group, *args, use_cpu=use_cpu, **kwargs)

    generate_permute_indices._qwen3_cpu_patch = True
    kernels.generate_permute_indices = generate_permute_indices
    moe_utils.generate_permute_indices = generate_permute_indices


class _CPUDeviceModule:
    """Patch 4: the slice of ``torch.cuda``'s API torchtitan's helpers call, for CPU runs."""

    @staticmethod
    def device_count() -> int:
        return 1

    @staticmethod
    def set_device(_device) -> None:
        return None

    @staticmethod
    def synchronize(*_a, **_k) -> None:
        return None

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def is_available() -> bool:
        return True


def device_info() -> tuple[str, object]:
    """(device_type, device_module): CUDA when present, else CPU with a stand-in module (patch 4)."""
    if torch.cuda.is_available():
        return "cuda", torch.cuda
    return "cpu", _CPUDeviceModule()


def use_sum_reduction_on_gloo(model: torch.nn.Module) -> None:
    """Patch 4b: gloo lacks PREMUL_SUM, which FSDP2 uses to pre-divide gradients; use SUM.

    Our loss is already normalised by the global token count, so nothing is divided twice.
    """
    if torch.cuda.is_available():
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_force_sum_reduction_for_comms(True)


def _register_cpu_flash_sdpa_sharding() -> None:
    # Patch 5: under TP the attention inputs are DTensors sharded on heads; DTensor has rules for
    # the CUDA SDPA ops but none for the CPU flash op. Heads (dim 1) and batch (dim 0) are
    # independent, so Shard(1) or Shard(0) in gives the same out; all-Replicate always works.
    from torch.distributed.tensor._op_schema import RuntimeSchemaInfo
    from torch.distributed.tensor._ops.utils import (
        expand_to_full_mesh_op_strategy,
        register_op_strategy,
    )
    from torch.distributed.tensor.placement_types import Replicate, Shard

    aten = torch.ops.aten

    def _strategies(n_out: int, n_in: int):
        return [[p] * (n_out + n_in) for p in (Replicate(), Shard(1), Shard(0))]

    @register_op_strategy(
        aten._scaled_dot_product_flash_attention_for_cpu.default,
        schema_info=RuntimeSchemaInfo(3, static_kwargkey=["scale"]),
    )
    def _fwd(op_schema):
        mesh = op_schema.get_mesh_from_args()
        return expand_to_full_mesh_op_strategy(mesh, op_schema, _strategies(2, 3), input_index=2)

    @register_op_strategy(
        aten._scaled_dot_product_flash_attention_for_cpu_backward.default,
        schema_info=RuntimeSchemaInfo(6, static_kwargkey=["scale"]),
    )
    def _bwd(op_schema):
        mesh = op_schema.get_mesh_from_args(validate=False)
        return expand_to_full_mesh_op_strategy(mesh, op_schema, _strategies(3, 6), input_index=3)


def _point_torchtitan_at_cpu() -> None:
    # Patch 4a: torchtitan.tools.utils resolves device_type at import time and falls back to
    # "cuda"; every module that copied the name gets "cpu" and the stand-in device module.
    import importlib

    for name in ("torchtitan.tools.utils", "torchtitan.distributed.parallel_dims",
                 "torchtitan.distributed.utils", "torchtitan.components.metrics"):
        module = importlib.import_module(name)
        if hasattr(module, "device_type"):
            module.device_type = "cpu"
        if hasattr(module, "device_module"):
            module.device_module = _CPUDeviceModule()


def apply() -> None:
    """Apply every patch that the current machine needs (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    _APPLIED = True
    _load_moe_kernels_without_triton()
    if not torch.cuda.is_available():
        torch.histc = _histc
    _patch_permute_indices()
    if not torch.cuda.is_available():
        _point_torchtitan_at_cpu()
    try:
        _register_cpu_flash_sdpa_sharding()
    except (ImportError, AttributeError, TypeError) as exc:  # a torch without these internals
        import warnings

        warnings.warn(f"TP on CPU unavailable: cannot register SDPA sharding rule ({exc})", stacklevel=2)
