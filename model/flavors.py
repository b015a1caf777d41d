"""The Qwen3 flavor registry: every model size as one ``Qwen3ModelArgs`` entry.

Built on torchtitan's ``qwen3_args`` (torchtitan/models/qwen3/__init__.py) and corrected where it
differs from the official HF config.json files (Qwen/Qwen3-*/config.json), which are the source of
every number here: rope_theta 1e6 for all sizes (torchtitan says 5e6 for 235B-A22B),
max_position_embeddings 40,960, rms_norm_eps 1e-6, embedding rows 151,936, ``norm_topk_prob``.
``debugmodel`` / ``debugmodel_moe`` are tiny twins with the real vocabulary so that the real
tokenizer, chat template and data pipeline run on them in CI.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from qwen3_trainer.model.titan import MoEArgs, Qwen3ModelArgs

VOCAB_ROWS = 151_936  # embedding rows of every Qwen3 checkpoint (151,669 tokens, padded)
MAX_POSITIONS = 40_960  # config.json max_position_embeddings (32K native + room for YaRN x4 at inference)


def _moe(num_experts: int, top_k: int) -> MoEArgs:
    # Qwen3-MoE: softmax router, renormalised top-k (norm_topk_prob), no shared expert.
    # load_balance_coeff=None: balancing is chosen by the trainer (global-batch LBL by default).
    return MoEArgs(
        num_experts=num_experts,
        num_shared_experts=0,
        top_k=top_k,
        score_func="softmax",
        route_norm=True,
        route_scale=1.0,
        score_before_experts=False,
        load_balance_coeff=None,
    )


def _dense(dim, n_layers, n_heads, n_kv_heads, hidden_dim, tied) -> Qwen3ModelArgs:
    return Qwen3ModelArgs(
        vocab_size=VOCAB_ROWS, max_seq_len=MAX_POSITIONS, head_dim=128, dim=dim,
        n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, hidden_dim=hidden_dim,
        qk_norm=True, norm_eps=1e-6, rope_theta=1_000_000, enable_weight_tying=tied,
    )


def _sparse(dim, n_layers, n_heads, n_kv_heads, moe_inter_dim, experts, top_k) -> Qwen3ModelArgs:
    return Qwen3ModelArgs(
        vocab_size=VOCAB_ROWS, max_seq_len=MAX_POSITIONS, head_dim=128, dim=dim,
        n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, hidden_dim=moe_inter_dim,
        qk_norm=True, norm_eps=1e-6, rope_theta=1_000_000, enable_weight_tying=False,
        moe_enabled=True, moe_inter_dim=moe_inter_dim, moe_args=_moe(experts, top_k),
    )


FLAVORS: dict[str, Qwen3ModelArgs] = {
    # tiny twins (CI): real vocabulary, 2 layers; head_dim 16 keeps attention cheap on CPU
    "debugmodel": Qwen3ModelArgs(
        vocab_size=VOCAB_ROWS, max_seq_len=4096, head_dim=16, dim=64, n_layers=2, n_heads=4,
        n_kv_heads=2, hidden_dim=192, qk_norm=True, norm_eps=1e-6, rope_theta=1_000_000,
        enable_weight_tying=True,
    ),
    "debugmodel_moe": Qwen3ModelArgs(
        vocab_size=VOCAB_ROWS, max_seq_len=4096, head_dim=16, dim=64, n_layers=2, n_heads=4,
        n_kv_heads=2, hidden_dim=32, qk_norm=True, norm_eps=1e-6, rope_theta=1_000_000,
        enable_weight_tying=False, moe_enabled=True, moe_inter_dim=32, moe_args=_moe(8, 2),
    ),
    #                   dim  layers heads kv  ffn    tied  (Qwen/Qwen3-*/config.json)
    "0.6B": _dense(1024, 28, 16, 8, 3072, True),
    "1.7B": _dense(2048, 28, 16, 8, 6144, True),
    "4B": _dense(2560, 36, 32, 8, 9728, True),
    "8B": _dense(4096, 36, 32, 8, 12288, False),
    "14B": _dense(5120, 40, 40, 8, 17408, False),
    "32B": _dense(5120, 64, 64, 8, 25600, False),
    #                       dim  layers heads kv moe_ffn experts top_k
    "30B-A3B": _sparse(2048, 48, 32, 4, 768, 128, 8),
    "235B-A22B": _sparse(4096, 94, 64, 4, 1536, 128, 8),
    # the 30B-A3B shape cut to 8 layers: one H200 holds it (throughput benchmarks)
    "30B-A3B-8L": _sparse(2048, 8, 32, 4, 768, 128, 8),
}


class UnknownFlavorError(ValueError):
    """A flavor name that is not in the registry."""


def get_flavor(name: str) -> Qwen3ModelArgs:
    """A private copy of a flavor's args (callers may edit seq len, rope theta, ...)."""
    if name not in FLAVORS:
        raise UnknownFlavorError(f"unknown flavor {name!r}; known: {', '.join(FLAVORS)}")
    return copy.deepcopy(FLAVORS[name])


@dataclass(frozen=True)
class ParamCount:
    total: int
    active: int  # per token: top_k of num_experts experts counted
    embedding: int  # input embedding rows x dim (the output layer counts once when tied)


def count_params(args: Qwen3ModelArgs) -> ParamCount:
    """Exact parameter counts, computed on the meta device (no weights are allocated)."""
    import torch

    from qwen3_trainer.model.build import build_model

    with torch.device("meta"):
        model = build_model(args)
    total = sum(p.numel() for p in model.parameters())  # parameters() dedups tied weights
    inactive = 0
    if args.moe_enabled:
        per_layer = sum(
            p.numel() for p in model.layers["0"].moe.experts.parameters()  # type: ignore[index]
        )
        frac = 1 - args.moe_args.top_k / args.moe_args.num_experts
        inactive = int(round(per_layer * frac)) * args.n_layers
    return ParamCount(total=total, active=total - inactive, embedding=args.vocab_size * args.dim)
