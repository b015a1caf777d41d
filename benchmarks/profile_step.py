"""Where a training step's GPU time goes: torch.profiler over qwen3-trainer's steps in ``Trainer.fit``'s order.

For each model shape it builds the trainer exactly as ``train_throughput.py`` does (same impl
names), runs warm-up steps, then profiles ``--steps`` steps (``launch_step`` of a step before
``step_metrics`` of the one before it) and writes, per row,

* ``<out>/<model>-<impl>.txt``: the top kernels by self CUDA time (``key_averages`` table);
* one JSON summary for all rows: step wall time, GPU busy time (sum of kernel time; the rest of
  the step is the GPU waiting on the host), and GPU time by category (dense GEMM, attention,
  grouped GEMM, fused/compiled elementwise, loss, optimizer, gather/scatter/sort, copies, other).

    python benchmarks/profile_step.py --models 1.7B,8B,30B-A3B-8L --out /tmp/prof
    python benchmarks/profile_step.py --models debugmodel --seq 128 --device cpu --out /tmp/prof  # smoke

Chrome traces are kept only with ``--trace`` (they are large for the MoE shape); on a GPU the summary
also lists where the GPU sits idle between kernels (``idle_gaps``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# first matching pattern wins; kernel names are lower-cased
CATEGORIES = [
    ("attention", r"flash|fmha|cudnn|sdpa|attention|mha"),
    ("grouped_gemm", r"grouped|groupproblemshape|groupgemm|ptr_array"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("loss", r"cross_entropy|log_softmax|nll"),
    ("dense_gemm", r"gemm|cutlass|sm90_xmma|nvjet|matmul|wgmma|cublas"),
    ("gather_scatter_sort", r"index|scatter|gather|sort|radix|embedding|cumsum|histc|bincount|topk"),
    ("compiled_fused", r"^triton_|triton"),
    ("copy", r"copy|memcpy|memset|cat|fill"),
    ("elementwise_eager", r"elementwise|vectorized|reduce|unrolled"),
]


def category(name: str) -> str:
    low = name.lower()
    for cat, pat in CATEGORIES:
        if re.search(pat, low):
            return cat
    return "other"


def idle_gaps(trace_file: str, top: int = 12, min_us: float = 50.0) -> dict:
    """Where the GPU waits: gaps between consecutive kernels (of ``min_us`` or more) in a chrome trace,
    each with the kernels around it, how long after the previous kernel ended the next one was
    launched on the host (``launch_lag_us`` > 0: the host was late, the step is host-bound there),
    and the innermost and outermost host ops that launched it; plus idle time summed per outermost op."""
    with open(trace_file) as f:
        ev = json.load(f)["traceEvents"]
    kernels = sorted((e for e in ev if e.get("cat") == "kernel"), key=lambda e: e["ts"])
    launches = {e["args"].get("correlation"): e for e in ev if e.get("cat") == "cuda_runtime"}
    ops: dict = {}
    for e in ev:
        if e.get("cat") == "cpu_op":
            ops.setdefault(e["tid"], []).append(e)

    def enclosing(rt):
        around = [o for o in ops.get(rt["tid"], []) if o["ts"] <= rt["ts"] <= o["ts"] + o["dur"]]
        if not around:
            return "?", "?"
        return min(around, key=lambda o: o["dur"])["name"], max(around, key=lambda o: o["dur"])["name"]

    gaps, per_op, small = [], {}, 0.0
    for prev, nxt in zip(kernels, kernels[1:], strict=False):
        end = prev["ts"] + prev["dur"]
        gap = nxt["ts"] - end
        if gap < min_us:
            small += max(gap, 0.0)
            continue
        rt = launches.get(nxt["args"].get("correlation"))
        inner, outer = enclosing(rt) if rt else ("?", "?")
        per_op[outer[:80]] = per_op.get(outer[:80], 0.0) + gap
        gaps.append({"gap_us": round(gap, 1), "launch_lag_us": round(rt["ts"] - end, 1) if rt else None,
                     "prev": prev["name"][:70], "next": nxt["name"][:70], "op": inner[:80], "outer_op": outer[:80]})
    gaps.sort(key=lambda g: -g["gap_us"])
    return {"idle_us_in_gaps": round(sum(g["gap_us"] for g in gaps), 1), "n_gaps": len(gaps),
            "idle_us_in_smaller_gaps": round(small, 1), "kernels": len(kernels),
            "span_us": round(kernels[-1]["ts"] + kernels[-1]["dur"] - kernels[0]["ts"], 1) if kernels else 0.0,
            "idle_us_by_outer_op": dict(sorted(((k, round(v, 1)) for k, v in per_op.items()), key=lambda kv: -kv[1])[:12]),
            "largest": gaps[:top]}


def child(args) -> None:
    from torch.profiler import ProfilerActivity, profile
    from train_peers import fit_order
    from train_throughput import batch_for, build_ours

    trainer = build_ours(args.flavor, args.impl, args.seq, args.mb, args.warmup + args.steps, args.device)
    batch = batch_for(args.mb, args.seq)
    for _ in range(args.warmup):
        trainer.train_step([batch])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=activities, record_shapes=False) as prof:
        step, flush = fit_order(trainer)  # Trainer.fit's order: queue a step, then read the previous one's
        for _ in range(args.steps):
            step(batch)
        flush()
    wall = (time.perf_counter() - t0) / args.steps
    # kernels only: record_function ranges (e.g. "Optimizer.step#AdamW.step") also carry device time
    # and would count their kernels twice
    events = [e for e in prof.key_averages() if e.device_type.name == ("CUDA" if args.device == "cuda" else "CPU")
              and not getattr(e, "is_user_annotation", False) and "#" not in e.key]
    attr = "self_device_time_total" if args.device == "cuda" else "self_cpu_time_total"
    by_cat: dict[str, float] = {}
    top = []
    for e in events:
        us = getattr(e, attr) / args.steps
        by_cat[category(e.key)] = by_cat.get(category(e.key), 0.0) + us
        top.append((us, e.count // args.steps, category(e.key), e.key[:140]))
    top.sort(reverse=True)
    busy_ms = sum(by_cat.values()) / 1e3
    os.makedirs(args.out, exist_ok=True)
    name = f"{args.flavor}-{args.impl}"
    with open(os.path.join(args.out, f"{name}.txt"), "w") as f:
        f.write(f"# {name} mb={args.mb} seq={args.seq}: step {wall * 1e3:.1f} ms, GPU busy {busy_ms:.1f} ms\n")
        f.write(f"{'ms/step':>9} {'calls':>6}  {'category':22s} kernel\n")
        for us, n, cat, key in top[:40]:
            f.write(f"{us / 1e3:9.2f} {n:6d}  {cat:22s} {key}\n")
    gaps = None
    if args.trace or args.device == "cuda":
        trace = os.path.join(args.out if args.trace else tempfile.mkdtemp(), f"{name}.json")
        prof.export_chrome_trace(trace)
        gaps = idle_gaps(trace) if args.device == "cuda" else None
        if not args.trace:
            shutil.rmtree(os.path.dirname(trace))
    summary = {"gaps": gaps, "model": args.flavor, "impl": args.impl, "mb": args.mb, "seq": args.seq,
               "step_ms": round(wall * 1e3, 2), "gpu_busy_ms": round(busy_ms, 2),
               "gpu_idle_frac": round(max(0.0, 1 - busy_ms / (wall * 1e3)), 4),
               "by_category_ms": {k: round(v / 1e3, 2) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])}}
    print("RESULT " + json.dumps(summary), flush=True)


def main() -> None:
    from train_throughput import row_args, run_child

    p = row_args(__doc__.splitlines()[0], impls="qwen3-trainer-bf16-compile", steps=2, timeout=300)
    p.add_argument("--out", required=True)
    p.add_argument("--trace", action="store_true")
    args = p.parse_args()
    if args.child:
        args.mb = int(args.mb)
        child(args)
        return
    os.makedirs(args.out, exist_ok=True)
    mbs = ({kv.split(":")[0]: int(kv.split(":")[1]) for kv in args.mb.split(",")} if ":" in args.mb else {})
    rows = []
    for flavor in args.models.split(","):
        mb = mbs.get(flavor, int(args.mb) if ":" not in args.mb else 1)
        for impl in args.impls.split(","):
            cmd = [sys.executable, __file__, "--child", "--flavor", flavor, "--impl", impl, "--seq", str(args.seq),
                   "--mb", str(mb), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--device", args.device, "--out", args.out] + (["--trace"] if args.trace else [])
            result, text = run_child(cmd, args.timeout)
            if result is None:
                rows.append({"model": flavor, "impl": impl, "error": text[-1500:]})
                print(f"{flavor} {impl} FAILED\n{text[-1500:]}", flush=True)
                continue
            rows.append(result)
            print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(args.out, "profile_summary.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
