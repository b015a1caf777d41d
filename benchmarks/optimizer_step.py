"""AdamW step time on the GPU for the parameter sets of the peer rows: torch's fused AdamW (what the
trainer and torchtitan use, with the clip folded in as ``grad_scale``), foreach AdamW plus a separate
clip multiply, and a ``torch.compile``d foreach step with the clip multiply inside it.

Scope: a diagnostic for issue 21's optimizer lever (fused AdamW was 30% of the 30B-A3B-8L step and
ran at ~2 TB/s effective): the parameters have the real models' shapes (built on meta), random
gradients, bf16 params and states (the pure-bf16 rows) or fp32 params and states (the FSDP
mixed-precision rows' master weights); no model runs. Effective bandwidth counts what AdamW must
move: read param, grad, both moments; write param and both moments.

    python benchmarks/optimizer_step.py --models 1.7B,30B-A3B-8L --out $OUT/opt.json     # GPU
    python benchmarks/optimizer_step.py --models debugmodel_moe --device cpu --out /tmp/opt.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from qwen3_trainer.model import build_model


def _params(flavor: str, dtype: torch.dtype, device: torch.device, seed: int = 0) -> list[torch.nn.Parameter]:
    meta = build_model(flavor, device="meta", init=False)
    g = torch.Generator(device=device).manual_seed(seed)
    params = []
    for p in meta.parameters():
        t = torch.nn.Parameter(torch.randn(p.shape, generator=g, device=device, dtype=torch.float32).to(dtype) * 0.02)
        t.grad = torch.randn(p.shape, generator=g, device=device, dtype=torch.float32).to(dtype) * 1e-3
        params.append(t)
    return params


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device: torch.device, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / steps


def _variants(params, device):
    """(name, builder) per implementation; a builder makes the optimizer (its states) and returns the
    step function and its build seconds, so that one optimizer's states live at a time."""
    kw = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    clip = torch.tensor(0.5, device=device)  # the clip factor min(1, max_norm / norm) of a clipped step
    grads = [p.grad for p in params]

    def fused():
        opt = torch.optim.AdamW(params, fused=True, **kw)

        def step():
            opt.grad_scale = 1 / clip  # the trainer's fold: the kernel divides the grads by it
            opt.step()

        return step, 0.0

    def foreach():
        opt = torch.optim.AdamW(params, foreach=True, **kw)

        def step():
            torch._foreach_mul_(grads, clip)
            opt.step()

        return step, 0.0

    def compiled():
        cuda = device.type == "cuda"  # a tensor lr (no recompile when it changes) needs capturable
        opt = torch.optim.AdamW(params, foreach=True, capturable=cuda,
                                **{**kw, "lr": torch.tensor(kw["lr"], device=device) if cuda else kw["lr"]})  # fmt: skip

        @torch.compile(fullgraph=False)
        def step():
            torch._foreach_mul_(grads, clip)
            opt.step()

        t = time.perf_counter()
        step()
        _sync(device)
        return step, round(time.perf_counter() - t, 1)

    return ([("fused+grad_scale", fused)] if device.type == "cuda" else []) + [
        ("foreach+clip", foreach), ("compiled-foreach+clip", compiled)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="30B-A3B-8L,1.7B")
    ap.add_argument("--dtypes", default="bfloat16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dev = torch.device(args.device)
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "rows": [],
              "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"}  # fmt: skip
    for flavor in args.models.split(","):
        for dtype in (getattr(torch, d) for d in args.dtypes.split(",")):
            try:
                params = _params(flavor, dtype, dev)
            except torch.OutOfMemoryError:
                report["rows"].append({"model": flavor, "dtype": str(dtype)[6:], "error": "out of memory"})
                continue
            n = sum(p.numel() for p in params)
            moved = n * dtype.itemsize * 7  # read p, g, m, v; write p, m, v
            for name, build in _variants(params, dev):
                try:
                    fn, build_s = build()
                    s = _time(fn, dev, args.steps, args.warmup)
                    row = {"model": flavor, "dtype": str(dtype)[6:], "impl": name, "params": n,
                           "tensors": len(params), "ms": round(s * 1e3, 2), "tb_s": round(moved / s / 1e12, 3),
                           "compile_s": build_s}  # fmt: skip
                except Exception as exc:  # noqa: BLE001 - a diagnostic: record and go on
                    row = {"model": flavor, "dtype": str(dtype)[6:], "impl": name, "error": f"{type(exc).__name__}: {exc}"[:300]}
                fn = None  # the optimizer and its states go with the step function
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
            del params
            torch._dynamo.reset()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
