"""YaRN RoPE scaling for long context at inference (Qwen3: factor 4 over the 32,768 trained length).

Qwen3 checkpoints enable it in config.json with
``"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}``
(transformers 5 writes the same under ``rope_parameters``). ``YarnScaling`` reads and writes both.

YaRN (Peng et al. 2023, arXiv 2309.00071) blends, per rotary frequency, the original frequency (the
fast ones, more than ``beta_fast`` turns over the original window) with the frequency divided by
``factor`` (the slow ones, fewer than ``beta_slow`` turns), with a linear ramp in between, and scales
cos/sin by the attention factor ``0.1·ln(factor) + 1`` (which scales q·k by its square, the paper's
temperature). Here it is applied by replacing the torchtitan model's ``rope_cache`` buffer with
YaRN cos/sin, so the unchanged torchtitan forward and the cached generation both use it; the cache
covers ``factor × original`` positions. The scaling is remembered on ``model.model_args.rope_scaling``
(so ``hf_config_from_args`` writes it back) and the model's ``_precompute_rope_cache`` is rebound, so
buffer re-initialisation (``build.init_buffers``, ``init_weights``) keeps YaRN.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import torch

SUPPORTED_TYPES = ("yarn",)


@dataclass(frozen=True)
class YarnScaling:
    factor: float = 4.0  # context multiplier (Qwen3: 4 -> 131,072)
    original_max_position_embeddings: int = 32_768  # the trained window
    beta_fast: float = 32.0  # frequencies with more turns than this over the window are kept
    beta_slow: float = 1.0  # frequencies with fewer turns than this are fully interpolated
    attention_factor: float | None = None  # cos/sin scale; None = 0.1·ln(factor) + 1
    truncate: bool = True  # round the ramp bounds to whole dims (transformers' default)

    def __post_init__(self):
        if self.factor < 1:
            raise ValueError(f"rope_scaling.factor must be >= 1, got {self.factor}")
        if self.original_max_position_embeddings < 1:
            raise ValueError("rope_scaling.original_max_position_embeddings must be >= 1")

    @property
    def mscale(self) -> float:
        if self.attention_factor is not None:
            return self.attention_factor
        return 1.0 if self.factor <= 1 else 0.1 * math.log(self.factor) + 1.0

    @property
    def max_positions(self) -> int:
        return int(self.factor * self.original_max_position_embeddings)

    def to_hf(self) -> dict[str, Any]:
        """The ``rope_scaling`` entry of config.json (defaults left out, as Qwen writes it)."""
        out: dict[str, Any] = {
            "rope_type": "yarn",
            "factor": self.factor,
            "original_max_position_embeddings": self.original_max_position_embeddings,
        }
        for name, default in (("beta_fast", 32.0), ("beta_slow", 1.0), ("truncate", True)):
            if getattr(self, name) != default:
                out[name] = getattr(self, name)
        if self.attention_factor is not None:
            out["attention_factor"] = self.attention_factor
        return out

    @classmethod
    def from_hf(cls, cfg: dict[str, Any]) -> YarnScaling | None:
        """The scaling a config.json asks for (``rope_scaling`` or ``rope_parameters``); None = plain RoPE."""
        params = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
        kind = params.get("rope_type", params.get("type", "default"))
        if kind == "default":
            return None
        if kind not in SUPPORTED_TYPES:
            raise ValueError(f"config.json: rope type {kind!r} is not supported (supported: yarn)")
        if "factor" not in params:
            raise ValueError("config.json: rope_scaling of type yarn needs a 'factor'")
        original = params.get("original_max_position_embeddings") or cfg.get("max_position_embeddings")
        return cls(
            factor=float(params["factor"]),
            original_max_position_embeddings=int(original),
            beta_fast=float(params.get("beta_fast") or 32.0),
            beta_slow=float(params.get("beta_slow") or 1.0),
            attention_factor=params.get("attention_factor"),
            truncate=bool(params.get("truncate", True)),
        )


def yarn_inv_freq(head_dim: int, theta: float, s: YarnScaling) -> torch.Tensor:
    """Per-pair rotary frequencies [head_dim // 2] blended between original and interpolated."""
    base = theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    extrapolated, interpolated = 1.0 / base, 1.0 / (s.factor * base)

    def dim_for(turns: float) -> float:  # the dim whose wavelength fits `turns` times in the window
        return (
            head_dim
            * math.log(s.original_max_position_embeddings / (turns * 2 * math.pi))
            / (2 * math.log(theta))
        )

    low, high = dim_for(s.beta_fast), dim_for(s.beta_slow)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1 = keep the original frequency (fast dims), 0 = interpolate
    return interpolated * (1 - keep) + extrapolated * keep


def yarn_rope_cache(head_dim: int, max_seq_len: int, theta: float, s: YarnScaling) -> torch.Tensor:
    """torchtitan's rope_cache layout, [max_seq_len, 2·head_dim] = (cos | sin), YaRN-scaled."""
    inv_freq = yarn_inv_freq(head_dim, theta, s)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return torch.cat([angles.cos() * s.mscale, angles.sin() * s.mscale], dim=-1)


def apply_rope_scaling(model, scaling: YarnScaling | None):
    """Give ``model`` (a torchtitan Qwen3Model) YaRN RoPE, in place; ``None`` restores plain RoPE."""
    args = model.model_args
    args.rope_scaling = scaling
    if scaling is None:
        model.__dict__.pop("_precompute_rope_cache", None)
    else:
        length = max(args.max_seq_len, scaling.max_positions)

        def _precompute_rope_cache(self) -> torch.Tensor:
            return yarn_rope_cache(self.model_args.head_dim, length, self.model_args.rope_theta, scaling)

        model._precompute_rope_cache = types.MethodType(_precompute_rope_cache, model)
    device = model.rope_cache.device
    model.rope_cache = model._precompute_rope_cache().to(device)
    return model


def rope_scaling_of(model) -> YarnScaling | None:
    return getattr(model.model_args, "rope_scaling", None)
