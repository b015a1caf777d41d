"""Decode throughput of ``model.generation.generate`` (the decode engine) against transformers'
``generate`` (dynamic and static cache), seeded random weights, prompts of random ids, no stop ids:
decode tokens/s (generated tokens after the first / time after the prefill) and MBU (bytes a step
must read — the weights once, the KV cache of the mean context — times steps/s, over the HBM peak).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/decode_throughput.py          # debugmodel, CPU, one row
    python benchmarks/decode_throughput.py --suite h200 \\
        --out benchmarks/results/2026-12-03-h200-decode.json                     # issue 19's matrix, H200
    python benchmarks/decode_throughput.py --suite smoke --out $OUT/smoke.json   # GPU checks, one row
    python benchmarks/decode_throughput.py --suite fp8-agreement --flavor 0.6B --device cuda --dtype bfloat16 \\
        --new-tokens 64 --out $OUT/fp8-kv-agreement.json                         # fp8 vs bf16 KV, 32 rows

``--suite h200`` also checks greedy parity of 0.6B (ours vs HF, fp32 and bf16) and writes a kernel
profile of one decode step for every row that misses its goal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import torch

from qwen3_trainer.model import build_model, decode_attention
from qwen3_trainer.model.decode_engine import DecodeEngine, engine_for
from qwen3_trainer.model.generation import SamplingParams, generate

RESULTS = Path(__file__).parent / "results"
HBM_PEAK = 4.8e12  # H200 datasheet bytes/s (the roofline); the measured copy rate is recorded too
GOALS = {("0.6B", 32): 20_000, ("0.6B", 256): 100_000, ("8B", 1): 180, ("8B", 64): 10_000}
H200_ROWS = [("0.6B", 1), ("0.6B", 32), ("0.6B", 256), ("8B", 1), ("8B", 64)]


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def seeded_model(flavor: str, dev: torch.device, dtype: torch.dtype):
    model = build_model(flavor, device=dev, seed=0, dtype=dtype).eval().requires_grad_(False)
    engine_for(model)  # packs q/k/v and gate/up in place (CUDA) before anything else holds the weights
    return model


def prompts_of(batch: int, prompt_len: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 151_643, (batch, prompt_len), generator=g).tolist()


def step_bytes(model, batch: int, context: float, kv_elem: int | None = None) -> float:
    """Bytes one decode step must read: every weight once (the input embedding only as rows, unless
    tied to the output layer) and the KV cache of ``context`` tokens per row (``kv_elem`` bytes an
    element: the weights' unless the cache is fp8)."""
    args = model.model_args
    elem = next(model.parameters()).element_size()
    weights = sum(p.numel() for p in model.parameters())
    if not args.enable_weight_tying:
        weights -= model.tok_embeddings.weight.numel()
    kv = args.n_layers * 2 * args.n_kv_heads * args.head_dim * (kv_elem or elem)
    return weights * elem + batch * context * kv


def _row(flavor, impl, batch, prompt_len, new, prefill_s, total_s, model, kv_elem: int | None = None) -> dict:
    decode_s = total_s - prefill_s
    tps = batch * (new - 1) / decode_s
    mbu = step_bytes(model, batch, prompt_len + new / 2, kv_elem) * (tps / batch) / HBM_PEAK
    return {"flavor": flavor, "impl": impl, "batch": batch, "prompt_len": prompt_len, "new_tokens": new,
            "decode_tokens_per_s": round(tps, 1), "mbu": round(mbu, 3),
            "prefill_seconds": round(prefill_s, 4), "total_seconds": round(total_s, 4)}  # fmt: skip


def time_ours(model, prompts, new: int, repeats: int, engine=None) -> tuple[float, float]:
    dev = model.tok_embeddings.weight.device
    params = SamplingParams(max_new_tokens=new, stop_ids=())
    if engine is not None:
        from qwen3_trainer.model.tokenizer import load_tokenizer

        tok = load_tokenizer()

        def generate(model, prompts, params, max_new_tokens=None):  # noqa: F811 - same call, this engine
            p = params if max_new_tokens is None else SamplingParams(**{**params.__dict__, "max_new_tokens": 1})
            return engine.generate(prompts, p, tok)
    else:
        from qwen3_trainer.model.generation import generate
    generate(model, prompts, params=params)  # warm-up: compiles and captures every graph of the run
    prefill_s = total_s = float("inf")
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        generate(model, prompts, params=params, max_new_tokens=1)
        _sync(dev)
        t1 = time.perf_counter()
        out = generate(model, prompts, params=params)
        _sync(dev)
        t2 = time.perf_counter()
        assert sum(out.lengths) == len(prompts) * new
        prefill_s, total_s = min(prefill_s, t1 - t0), min(total_s, t2 - t1)
    return prefill_s, total_s


def hf_twin(model):
    """transformers' Qwen3 holding the very same weight tensors (no copy)."""
    import transformers

    from qwen3_trainer.model.hf_interop import hf_config_from_args
    from qwen3_trainer.model.titan import Qwen3StateDictAdapter

    p = next(model.parameters())
    cfg = transformers.Qwen3Config(**hf_config_from_args(model.model_args, p.dtype))
    with torch.device(p.device):
        hf = transformers.Qwen3ForCausalLM._from_config(cfg, dtype=p.dtype)
    state = {k: v for k, v in model.state_dict().items() if "rope_cache" not in k}
    hf_state = Qwen3StateDictAdapter(model.model_args, None).to_hf(state)
    missing, unexpected = hf.load_state_dict(hf_state, strict=False, assign=True)
    assert not unexpected and all("lm_head" in k for k in missing), (missing, unexpected)
    if model.model_args.enable_weight_tying:
        hf.tie_weights()
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = 0
    return hf.eval()


def hf_generate(hf, prompts, new: int, cache: str):
    ids = torch.tensor(prompts, device=hf.device)
    kw = {"cache_implementation": "static", "disable_compile": True} if cache == "static" else {}
    return hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                       min_new_tokens=new, do_sample=False, **kw)  # fmt: skip


def time_hf(hf, prompts, new: int, cache: str, repeats: int) -> tuple[float, float]:
    dev = hf.device
    hf_generate(hf, prompts, 2, cache)
    prefill_s = total_s = float("inf")
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        hf_generate(hf, prompts, 1, cache)
        _sync(dev)
        t1 = time.perf_counter()
        hf_generate(hf, prompts, new, cache)
        _sync(dev)
        t2 = time.perf_counter()
        prefill_s, total_s = min(prefill_s, t1 - t0), min(total_s, t2 - t1)
    return prefill_s, total_s


def greedy_parity(model, hf, prompts, new: int) -> dict:
    """Token-for-token agreement of greedy continuations, pairwise among ours, HF and the eager
    reference (in bf16, HF vs eager is the rounding-noise baseline for the other two pairs)."""
    from qwen3_trainer.model.generation_eager import generate_eager

    params = SamplingParams(max_new_tokens=new, stop_ids=())
    ours = generate(model, prompts, params=params).tokens
    ref = hf_generate(hf, prompts, new, "dynamic")[:, len(prompts[0]):].tolist()
    eager = generate_eager(model, prompts, params=params).tokens

    def agree(a, b):
        prefix = [next((j for j, (x, y) in enumerate(zip(r, s, strict=True)) if x != y), new)
                  for r, s in zip(a, b, strict=True)]  # fmt: skip
        return {"rows_equal": sum(p == new for p in prefix), "rows": len(a),
                "mean_common_prefix": round(sum(prefix) / len(a), 1)}  # fmt: skip

    return {"ours_vs_hf": agree(ours, ref), "ours_vs_eager": agree(ours, eager), "hf_vs_eager": agree(ref, eager)}


def fp8_kv_agreement(model, prompts, new: int) -> dict:
    """Greedy tokens with the fp8 KV cache against the model-dtype cache (not a parity claim: how far
    the rounding moves greedy answers): rows identical, and the mean first step where rows part."""
    from qwen3_trainer.model.tokenizer import load_tokenizer

    tok, params = load_tokenizer(), SamplingParams(max_new_tokens=new, stop_ids=())
    full = DecodeEngine(model).generate(prompts, params, tok).tokens
    fp8 = DecodeEngine(model, kv_dtype="float8_e4m3fn").generate(prompts, params, tok).tokens
    parts = [next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), new) for a, b in zip(full, fp8, strict=True)]
    return {"rows": len(prompts), "identical_rows": sum(p == new for p in parts), "mean_first_difference": sum(parts) / len(parts),
            "new_tokens": new}  # fmt: skip


def profile_step(model, prompts, new: int, top: int = 14) -> list[dict]:
    """GPU kernel time per decode step by kernel name: a run of ``new`` tokens minus a prefill-only
    run (where a step's time goes; the graphs' kernels are recorded individually)."""
    from torch.profiler import ProfilerActivity, profile

    def kernels(n: int) -> dict[str, tuple[float, int]]:
        params = SamplingParams(max_new_tokens=n, stop_ids=())
        generate(model, prompts, params=params)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            generate(model, prompts, params=params)
            torch.cuda.synchronize()
        return {e.key: (e.device_time_total, e.count) for e in prof.key_averages() if e.device_time_total > 0}

    full, prefill = kernels(new), kernels(1)
    steps = new - 1
    per = {k: ((t - prefill.get(k, (0, 0))[0]) / steps, (c - prefill.get(k, (0, 0))[1]) / steps)
           for k, (t, c) in full.items()}  # fmt: skip
    rows = sorted(per.items(), key=lambda kv: -kv[1][0])
    return [{"kernel": "all kernels", "us_per_step": round(sum(v[0] for v in per.values()), 1),
             "calls_per_step": round(sum(v[1] for v in per.values()), 1)}] + [
        {"kernel": k[:90], "us_per_step": round(t, 1), "calls_per_step": round(c, 1)} for k, (t, c) in rows[:top]
    ]  # fmt: skip


def copy_bandwidth(dev) -> float:
    x = torch.empty(2 * 1024**3 // 2, dtype=torch.bfloat16, device=dev).normal_()
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    _sync(dev)
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    _sync(dev)
    return 2 * x.numel() * x.element_size() * 10 / (time.perf_counter() - t)


def suite_h200(args, report: dict, write) -> dict:
    dev, bf16 = torch.device("cuda"), torch.bfloat16
    res = report.setdefault("rows", [])
    for key in ("parity", "profiles", "warmup_and_compile_seconds", "engine"):
        report.setdefault(key, {})
    for flavor in ("0.6B", "8B"):
        model = seeded_model(flavor, dev, bf16)
        hf = hf_twin(model)
        for fl, batch in H200_ROWS:
            if fl != flavor:
                continue
            prompts = prompts_of(batch, args.prompt_len)
            t0 = time.perf_counter()
            pre, tot = time_ours(model, prompts, args.new_tokens, args.repeats)
            report["warmup_and_compile_seconds"][f"{flavor} b{batch}"] = round(
                time.perf_counter() - t0 - args.repeats * (pre + tot), 1)
            ours = _row(flavor, "qwen3-trainer", batch, args.prompt_len, args.new_tokens, pre, tot, model)
            report["engine"][f"{flavor} b{batch}"] = dict(engine_for(model).stats)
            hf_rows = []
            for cache in ("dynamic", "static"):
                pre, tot = time_hf(hf, prompts, args.new_tokens, cache, args.hf_repeats)
                hf_rows.append(_row(flavor, f"hf-{cache}", batch, args.prompt_len, args.new_tokens, pre, tot, model))
            res += [ours, *hf_rows]
            if flavor == "0.6B":  # diagnostic: the same engine with SDPA (cuDNN) attention
                pre, tot = time_ours(model, prompts, args.new_tokens, 1, DecodeEngine(model, attention="sdpa"))
                res.append(_row(flavor, "qwen3-trainer-sdpa-attention", batch, args.prompt_len, args.new_tokens,
                                pre, tot, model))  # fmt: skip
            if batch > 1:  # opt-in: the KV cache in fp8 (half the bytes the attention streams)
                fp8 = DecodeEngine(model, kv_dtype="float8_e4m3fn")
                pre, tot = time_ours(model, prompts, args.new_tokens, args.repeats, fp8)
                res.append(_row(flavor, "qwen3-trainer-fp8-kv", batch, args.prompt_len, args.new_tokens, pre, tot,
                                model, kv_elem=1))  # fmt: skip
                fp8.release()
            print(json.dumps(res[-5:]), flush=True)
            goal = GOALS.get((flavor, batch))
            best_hf = max(r["decode_tokens_per_s"] for r in hf_rows)
            if (goal and ours["decode_tokens_per_s"] < goal) or ours["decode_tokens_per_s"] < 2 * best_hf:
                report["profiles"][f"{flavor} b{batch}"] = profile_step(model, prompts, 16)
            report["attention_configs"] = decode_attention.tuned()
            write()
        if flavor == "0.6B":
            prompts = prompts_of(32, args.prompt_len, seed=1)
            report["parity"]["0.6B_bf16"] = greedy_parity(model, hf, prompts, 64)
            report["parity"]["0.6B_bf16_fp8_kv"] = fp8_kv_agreement(model, prompts, 64)
            write()
            del hf, model
            fp32 = seeded_model("0.6B", dev, torch.float32)
            report["parity"]["0.6B_fp32"] = greedy_parity(fp32, hf_twin(fp32), prompts, 64)
            del fp32
        else:
            del hf, model
        torch.cuda.empty_cache()
        write()
    return report


def suite_smoke(args, report: dict, write) -> dict:
    """GPU checks before the full run: the engine against the eager reference on tiny models (fp32,
    dense + MoE, greedy/sampling/budget/stops), a cache-length probe, one timed row, a profile."""
    from qwen3_trainer.model.generation_eager import generate_eager
    from qwen3_trainer.model.tokenizer import load_tokenizer

    dev, tok, out = torch.device("cuda"), load_tokenizer(), {}
    for flavor in ("debugmodel", "debugmodel_moe"):
        for dtype in (torch.float32, torch.bfloat16):
            model = build_model(flavor, device=dev, seed=0, dtype=dtype).eval()
            with torch.no_grad():
                for p in model.parameters():  # peaked outputs (see tests/model/test_generation.py)
                    p.normal_(0, 1 / p.shape[-1] ** 0.5) if p.ndim > 1 else p.normal_(1, 0.1)
            prompts = [tok.encode("Hello there, how are you?"), tok.encode("2+2="), tok.encode("Say hi")] * 2
            params = SamplingParams(max_new_tokens=64, stop_ids=())
            a, b = generate(model, prompts, tok, params), generate_eager(model, prompts, tok, params)
            stop = a.tokens[1][5]
            s1 = generate(model, prompts, tok, max_new_tokens=40, stop_ids=(stop,))
            s2 = generate_eager(model, prompts, tok, max_new_tokens=40, stop_ids=(stop,))
            bud = dict(max_new_tokens=60, thinking_budget=4)
            think = [p + tok.encode("<think>\n") for p in prompts]
            t1, t2 = generate(model, think, tok, **bud), generate_eager(model, think, tok, **bud)
            smp = generate(model, prompts, tok, max_new_tokens=32, temperature=0.8, top_k=20, top_p=0.9, seed=1)
            smp2 = generate(model, prompts, tok, max_new_tokens=32, temperature=0.8, top_k=20, top_p=0.9, seed=1)
            out[f"{flavor}_{str(dtype)[6:]}"] = {
                "greedy_equal_rows": sum(x == y for x, y in zip(a.tokens, b.tokens, strict=True)),
                "max_logprob_diff": max(abs(x - y) for r, q in zip(a.logprobs, b.logprobs, strict=True)
                                        for x, y in zip(r, q, strict=True)),
                "stops_equal": s1.tokens == s2.tokens, "budget_equal": t1.tokens == t2.tokens,
                "forced_equal": t1.forced == t2.forced, "sampling_reproducible": smp.tokens == smp2.tokens,
                "engine": dict(engine_for(model).stats), "graphs": len(engine_for(model).graphs),
            }  # fmt: skip
            print(flavor, dtype, out[f"{flavor}_{str(dtype)[6:]}"], flush=True)
    model = seeded_model("0.6B", dev, torch.bfloat16)
    prompts = prompts_of(32, 128)
    pre, tot = time_ours(model, prompts, 128, 2)
    out["0.6B_b32_cache256"] = _row("0.6B", "qwen3-trainer", 32, 128, 128, pre, tot, model)
    generate(model, prompts, max_new_tokens=900, stop_ids=())  # grows the cache to 2048 columns
    pre, tot = time_ours(model, prompts, 128, 2)
    out["0.6B_b32_cache2048"] = _row("0.6B", "qwen3-trainer", 32, 128, 128, pre, tot, model)
    out["profile_0.6B_b32"] = profile_step(model, prompts, 16)
    out["engine"] = dict(engine_for(model).stats)
    report.update(out)
    return report


def suite_one(args, report: dict, write) -> dict:
    dev = torch.device(args.device)
    model = seeded_model(args.flavor, dev, getattr(torch, args.dtype))
    prompts = prompts_of(args.batch, args.prompt_len)
    fp8 = args.kv_dtype == "float8_e4m3fn"
    engine = DecodeEngine(model, kv_dtype=args.kv_dtype) if fp8 else None
    pre, tot = time_ours(model, prompts, args.new_tokens, args.repeats, engine)
    impl = "qwen3-trainer-fp8-kv" if fp8 else "qwen3-trainer"
    report["rows"] = [_row(args.flavor, impl, args.batch, args.prompt_len, args.new_tokens, pre, tot, model,
                           kv_elem=1 if fp8 else None)]
    return report


def suite_fp8_agreement(args, report: dict, write) -> dict:
    """The fp8 KV cache's greedy tokens against the model-dtype cache alone (``fp8_kv_agreement``):
    ``--batch`` rows of the seed-1 prompts that ``--suite h200``'s parity check uses."""
    model = seeded_model(args.flavor, torch.device(args.device), getattr(torch, args.dtype))
    prompts = prompts_of(args.batch, args.prompt_len, seed=1)
    report["parity"] = {f"{args.flavor}_{args.dtype}_fp8_kv": fp8_kv_agreement(model, prompts, args.new_tokens)}
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="one", choices=["one", "h200", "smoke", "fp8-agreement"])
    ap.add_argument("--flavor", default="debugmodel")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-repeats", type=int, default=1)
    ap.add_argument("--kv-dtype", default="auto", choices=["auto", "float8_e4m3fn"], help="--suite one: the KV cache")
    ap.add_argument("--out", type=Path, default=None, help="default: results/decode_throughput_<flavor>_<device>.json")
    a = ap.parse_args()
    import transformers

    t0 = time.perf_counter()
    machine = {"processor": platform.processor() or platform.machine()}
    cuda = a.suite in ("h200", "smoke") or a.device.startswith("cuda")
    if cuda:
        machine.update(gpu=torch.cuda.get_device_name(), hbm_peak_bytes_per_s=HBM_PEAK,
                       measured_copy_bytes_per_s=round(copy_bandwidth(torch.device("cuda")) / 1e10) * 1e10)
    report = {
        "benchmark": "decode_throughput", "suite": a.suite,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": machine,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "settings": {"dtype": "bfloat16" if a.suite == "h200" else a.dtype, "weights": "build_model seed 0",
                     "prompts": f"random ids, {a.prompt_len} tokens each", "new_tokens": a.new_tokens,
                     "sampling": "greedy, no stop ids", "repeats": f"best of {a.repeats} (HF {a.hf_repeats})",
                     "hf_static": "cache_implementation=static, disable_compile=True",
                     "mbu": "(weights + KV of prompt_len + new_tokens/2 per row) x steps/s / 4.8 TB/s"},
    }  # fmt: skip
    out = a.out or RESULTS / f"decode_throughput_{a.flavor}_{torch.device(a.device).type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def write():
        report["wall_seconds"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(report, indent=2) + "\n")

    suites = {"one": suite_one, "h200": suite_h200, "smoke": suite_smoke, "fp8-agreement": suite_fp8_agreement}
    suites[a.suite](a, report, write)
    write()
    print(json.dumps(report.get("rows", []), indent=1))


if __name__ == "__main__":
    main()
