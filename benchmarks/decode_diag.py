"""Diagnostics for the decode engine on one GPU (issue 19): where a 0.6B decode step's kernels go in
launch order, whether the compiled top-p sampling graph builds at bucket 256, and how the decode
attention kernel's configs compare with the copy bandwidth at the windows a rollout reaches.

    python3 benchmarks/decode_diag.py --out $OUT/decode-diag.json
"""

# ruff: noqa: B023  (every lambda here runs inside its loop iteration)
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from decode_throughput import _row, copy_bandwidth, prompts_of, seeded_model, time_ours  # noqa: E402


def _timed(fn, n: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        fn()
    e.record()
    e.synchronize()
    return s.elapsed_time(e) / n * 1e3  # us


def sampling_check(report: dict) -> None:
    from qwen3_trainer.model import sampling

    out = report.setdefault("sampling", [])
    for b in (32, 256):
        logits = torch.randn(b, 151936, device="cuda") * 3
        kw = dict(top_k=0, vocab=151669, temperature=torch.tensor([0.8], device="cuda"),
                  top_p=torch.tensor([0.95], device="cuda"), seed=torch.tensor([5], device="cuda"),
                  step=torch.tensor([3], device="cuda"), rows=torch.arange(b, device="cuda"))  # fmt: skip
        for mode in ("top_p", "sample", "top_k"):
            k = {**kw, "top_k": 20 if mode == "top_k" else 0}
            eager = sampling.choose(logits, mode=mode, **k)
            row = {
                "batch": b,
                "mode": mode,
                "eager_us": round(_timed(lambda: sampling.choose(logits, mode=mode, **k)), 1),
            }
            try:
                t = time.time()
                fn = torch.compile(
                    lambda x: sampling.choose(x, mode=mode, **k), fullgraph=True, dynamic=False
                )
                got = fn(logits)
                row.update(compile_s=round(time.time() - t, 1), same_ids=bool(torch.equal(got, eager)),
                           compiled_us=round(_timed(lambda: fn(logits)), 1))  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - the point is to see it
                row["compile_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            out.append(row)
            print(row, flush=True)


def kernel_order(report: dict, flavor: str, batch: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    from qwen3_trainer.model.decode_engine import DecodeEngine
    from qwen3_trainer.model.generation import SamplingParams
    from qwen3_trainer.model.tokenizer import load_tokenizer

    model = seeded_model(flavor, torch.device("cuda"), torch.bfloat16)
    tok = load_tokenizer()
    prompts = prompts_of(batch, 128)
    engine = DecodeEngine(model)
    params = SamplingParams(max_new_tokens=48, temperature=0.0)
    engine.generate(prompts, params, tok)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        engine.generate(prompts, params, tok)
        torch.cuda.synchronize()
    ev = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                key=lambda e: e.time_range.start)  # fmt: skip
    names = [e.name for e in ev]
    idx = [i for i, n in enumerate(names) if n == "_partial"]
    # one layer in the middle of a late step, with the gap after each kernel
    i0 = idx[len(idx) - 14] - 8
    rows = []
    for e, nxt in zip(ev[i0 : i0 + 40], ev[i0 + 1 : i0 + 41], strict=True):
        rows.append({"kernel": e.name[:90], "us": round(e.time_range.elapsed_us(), 2),
                     "gap_us": round(nxt.time_range.start - e.time_range.end, 2)})  # fmt: skip
    steps = engine.stats["steps"]
    busy = sum(e.time_range.elapsed_us() for e in ev)
    span = ev[-1].time_range.end - ev[0].time_range.start
    report.setdefault("kernel_order", {})[f"{flavor} b{batch}"] = {
        "window": rows,
        "kernels": len(ev),
        "busy_us": round(busy),
        "span_us": round(span),
        "steps": steps,
    }
    for r in rows:
        print(r, flush=True)
    print(f"{flavor} b{batch}: {len(ev)} kernels, busy {busy:.0f} us of span {span:.0f} us", flush=True)
    del engine, model
    torch.cuda.empty_cache()


def attention_sweep(report: dict) -> None:
    from qwen3_trainer.model import decode_attention as da

    report["copy_tb_s"] = round(copy_bandwidth(torch.device("cuda")) / 1e12, 2)
    out = report.setdefault("attention", [])
    for b, rep, window, length in (
        (256, 2, 192, 256),
        (256, 2, 1024, 2048),
        (32, 2, 192, 256),
        (64, 4, 1024, 2048),
    ):
        q = torch.randn(b, 8, rep, 128, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, 8, length, 128, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        bias = torch.zeros(b, length, device="cuda", dtype=torch.bfloat16)
        nbytes = 2 * b * 8 * window * 128 * 2
        ref = da.sdpa(q, k, v, bias, window, 0.088).float()
        timings = []
        for cfg in da.CONFIGS + [(256, 8, 1, 1, 1), (128, 8, 1, 1, 1), (128, 4, 4, 1, 1), (32, 4, 4, 1, 1)]:
            if (cfg[3] > 1 and window // cfg[3] < cfg[0]) or (b * 8) % cfg[4]:
                continue
            try:
                if (da._launch(q, k, v, bias, window, 0.088, cfg).float() - ref).abs().max() > 2e-2:
                    continue
                timings.append((_timed(lambda c=cfg: da._launch(q, k, v, bias, window, 0.088, c)), cfg))
            except Exception:  # noqa: BLE001
                continue
        timings.sort()
        row = {"batch": b, "n_rep": rep, "window": window, "best_us": round(timings[0][0], 1),
               "best": timings[0][1], "tb_s": round(nbytes / timings[0][0] / 1e6, 2),
               "top5": [(round(t, 1), c) for t, c in timings[:5]],
               "sdpa_us": round(_timed(lambda: da.sdpa(q, k, v, bias, window, 0.088)), 1)}  # fmt: skip
        out.append(row)
        print(row, flush=True)


# DecodeEngine settings A/B'd by ``--parts options`` (``--options`` picks): inductor options of the step
# functions, and the fp8 KV cache with and without them
ENGINE_OPTIONS = {
    "default": {},
    "combo_kernels": {"inductor_options": {"combo_kernels": True}},  # horizontal fusion of independent kernels
    # the GEMMs at M = 32..256 rows: inductor's Triton templates tuned against cuBLAS (no split-K reduce
    # kernel when a template wins; its epilogue may fuse the next pointwise op)
    "max_autotune_gemm": {"inductor_options": {"max_autotune_gemm": True, "max_autotune_gemm_backends": "ATEN,TRITON"}},
    "coordinate_descent": {"inductor_options": {"coordinate_descent_tuning": True}},  # block sizes of small kernels
    "fp8_kv": {"kv_dtype": "float8_e4m3fn"},
    "fp8_kv_combo_kernels": {"kv_dtype": "float8_e4m3fn", "inductor_options": {"combo_kernels": True}},
}


def engine_options(report: dict, names: list[str]) -> None:
    """Ours at 0.6B b32 / b256 (128 + 128 tokens, greedy) under each of ``names`` (``ENGINE_OPTIONS``),
    in one process: the same prompts, the same attention-kernel tuning cache."""
    from qwen3_trainer.model.decode_engine import DecodeEngine

    model = seeded_model("0.6B", torch.device("cuda"), torch.bfloat16)
    out = report.setdefault("engine_options", [])
    for batch in (32, 256):
        prompts = prompts_of(batch, 128)
        for name, kwargs in ((n, ENGINE_OPTIONS[n]) for n in names):
            try:
                engine = DecodeEngine(model, **kwargs)
                t = time.time()
                pre, tot = time_ours(model, prompts, 128, 2, engine)
                row = {**_row("0.6B", name, batch, 128, 128, pre, tot, model), "wall_s": round(time.time() - t, 1),
                       "eager_shapes": engine.stats.get("eager_shapes"), "graphs": engine.stats.get("graphs")}  # fmt: skip
                engine.release()
            except Exception as exc:  # noqa: BLE001
                row = {"impl": name, "batch": batch, "error": f"{type(exc).__name__}: {exc}"[:300]}
            out.append(row)
            print(row, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="sampling,order,attention")
    ap.add_argument("--options", default="default,combo_kernels",
                    help=f"engine option sets for --parts options, of {','.join(ENGINE_OPTIONS)}")
    args = ap.parse_args()
    parts = args.parts.split(",")
    names = args.options.split(",")
    if unknown := [n for n in names if n not in ENGINE_OPTIONS]:
        ap.error(f"unknown --options {unknown}: choose from {', '.join(ENGINE_OPTIONS)}")
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    steps = [("sampling", sampling_check), ("attention", attention_sweep),
             ("options", lambda r: engine_options(r, names)),
             ("order", lambda r: (kernel_order(r, "0.6B", 32), kernel_order(r, "0.6B", 256)))]  # fmt: skip
    for name, fn in steps:
        if name in parts:
            try:
                fn(report)
            except Exception as exc:  # noqa: BLE001
                report[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:500]
                print(report[f"{name}_error"], flush=True)
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
