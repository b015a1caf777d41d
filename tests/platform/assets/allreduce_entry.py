"""Stand-in trainer for the launcher tests: a real gloo all_reduce across every rank of the job.

Run as torchrun's entry with the job's config file as its one argument (as ``qtrain train CONFIG``
would be). The config (YAML) says where to write results, optionally to hold (so a test can kill a
replica mid-job) and which exit code to end with. Rank 0 prints a metrics-like line and writes
``result.json``; every rank writes ``rank<r>.json`` with the rendezvous variables it saw.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

cfg = yaml.safe_load(Path(sys.argv[1]).read_text())
out = Path(cfg["out_dir"])
out.mkdir(parents=True, exist_ok=True)
hold_seconds = cfg.get("hold_seconds", 0)
held = out / "held"
first_attempt = not held.exists()

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"step 1 | allreduce {value.item():.1f} | rank {rank}/{world}", flush=True)
seen = {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                                       "PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE", "QTRAIN_RUN_ID",
                                       "CUDA_VISIBLE_DEVICES")}
(out / f"rank{rank}.json").write_text(json.dumps({"config": sys.argv[1], "env": seen}))
if hold_seconds and first_attempt:
    dist.barrier()
    if rank == 0:
        held.touch()
        print("holding", flush=True)
    time.sleep(hold_seconds)
dist.barrier()
if rank == 0:
    (out / "result.json").write_text(json.dumps({"world_size": world, "sum": value.item()}))
    print(f"step 2 | done | world {world}", flush=True)
dist.destroy_process_group()
sys.exit(cfg.get("exit_code", 0))
