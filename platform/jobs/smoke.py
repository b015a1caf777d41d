"""A cluster smoke test to run as a job's entry before a long run: every rank joins the rendezvous,
checks an all_reduce result and times a 64 MiB all_reduce (NCCL on GPUs, gloo on CPU).

    torchrun ... -m qwen3_trainer.platform.jobs.smoke CONFIG     # CONFIG: optional {mib: 64, iters: 5}

A JobSpec with ``entrypoint: ["-m", "qwen3_trainer.platform.jobs.smoke"]`` runs it on the real node
pool; the master's log ends with ``step 1 | allreduce ok | world N | busbw X GB/s``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml


def main(config_path: str | None = None) -> int:
    cfg = (yaml.safe_load(Path(config_path).read_text()) or {}) if config_path else {}
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    check = torch.full((1,), float(rank + 1), device=device)
    dist.all_reduce(check)
    expected = world * (world + 1) / 2
    if check.item() != expected:
        print(f"rank {rank}: all_reduce gave {check.item()}, expected {expected}", flush=True)
        return 1
    payload = torch.ones(int(cfg.get("mib", 64)) * 2**20 // 4, device=device)
    iters = int(cfg.get("iters", 5))
    dist.all_reduce(payload)                          # warm-up
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(payload)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iters
    busbw = payload.numel() * 4 * 2 * (world - 1) / world / seconds / 1e9   # ring all_reduce bus bandwidth
    if rank == 0:
        print(f"step 1 | allreduce ok | world {world} | busbw {busbw:.2f} GB/s", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
