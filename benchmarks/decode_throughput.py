"""Decode throughput of ``model.generation.generate`` (KV cache, batch 32 by default): prefill seconds
and decode tokens/s (generated tokens / decode seconds, prefill excluded), random weights, no stop ids.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/decode_throughput.py                       # debugmodel, CPU
    .venv/bin/python benchmarks/decode_throughput.py --flavor 0.6B --device cuda --dtype bfloat16 \\
        --out benchmarks/results/decode_throughput_0.6B_h200.json                           # on the H200
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
from pathlib import Path

import torch

from qwen3_trainer.model import build_model
from qwen3_trainer.model.generation import SamplingParams, generate

RESULTS = Path(__file__).parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(
    flavor: str, device: str, dtype: str, batch: int, prompt_len: int, new_tokens: int, repeats: int
) -> dict:
    dev = torch.device(device)
    model = build_model(flavor, device=dev, seed=0, dtype=getattr(torch, dtype)).eval()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, 151_643, (batch, prompt_len), generator=g).tolist()
    params = SamplingParams(max_new_tokens=new_tokens, stop_ids=())
    generate(model, prompts, params=params, max_new_tokens=4)  # warm-up
    prefill_s, total_s = float("inf"), float("inf")
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        generate(model, prompts, params=params, max_new_tokens=1)
        _sync(dev)
        t1 = time.perf_counter()
        out = generate(model, prompts, params=params)
        _sync(dev)
        t2 = time.perf_counter()
        prefill_s, total_s = min(prefill_s, t1 - t0), min(total_s, t2 - t1)
    generated = sum(out.lengths)
    decode_s = total_s - prefill_s
    return {
        "flavor": flavor, "device": str(dev), "dtype": dtype, "batch": batch, "prompt_len": prompt_len,
        "new_tokens": new_tokens, "prefill_seconds": round(prefill_s, 4), "total_seconds": round(total_s, 4),
        "decode_tokens_per_s": round((generated - batch) / decode_s, 1),
        "end_to_end_tokens_per_s": round(generated / total_s, 1),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flavor", default="debugmodel")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--out", type=Path, default=None, help="default: results/decode_throughput_<flavor>_<device>.json"
    )
    a = ap.parse_args()
    result = run(a.flavor, a.device, a.dtype, a.batch, a.prompt_len, a.new_tokens, a.repeats)
    machine = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "torch_threads": torch.get_num_threads()}  # fmt: skip
    if torch.device(a.device).type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(torch.device(a.device))
    report = {
        "benchmark": "decode_throughput",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine,
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "result": result,
    }
    out = a.out or RESULTS / f"decode_throughput_{a.flavor}_{torch.device(a.device).type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
