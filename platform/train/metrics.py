"""Throughput accounting: model FLOPs per token, MFU, device memory.

FLOPs per token (FACTS.md; the PaLM convention, counting the tied output layer once more):
6 * active non-embedding params + 12 * layers * heads * head_dim * seq + 6 * hidden * vocab.
"""

from __future__ import annotations

import torch

from qwen3_trainer.model.flavors import count_params

# dense bf16 peak per device (no sparsity), for MFU
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "B200": 2250e12}


def flops_per_token(args, seq_len: int) -> float:
    n = count_params(args)
    non_embedding = n.active - n.embedding - (0 if args.enable_weight_tying else args.vocab_size * args.dim)
    attention = 12 * args.n_layers * args.n_heads * args.head_dim * seq_len
    return 6 * non_embedding + attention + 6 * args.dim * args.vocab_size


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def memory_gib(device: torch.device) -> dict[str, float]:
    if device.type == "cuda":
        return {"mem/peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                "mem/reserved_gib": torch.cuda.memory_reserved(device) / 2**30}
    import resource

    return {"mem/peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
