"""Training throughput: HF transformers vs qwen3-trainer, same GPU, same run.

For each model shape it times (a) HF transformers (bf16 weights, fused AdamW, SDPA; eager and
torch.compile) and (b) qwen3-trainer's training step (``Trainer.train_step``; bf16 settings below),
each in its own subprocess so memory and compile caches don't leak between rows. It also measures
the bf16 matmul ceiling (8192^3) in the same call. Model FLOPs per token (FACTS.md):
6 * active non-embedding params + 12 * layers * heads * head_dim * seq + 6 * hidden * vocab.

    python benchmarks/train_throughput.py --models 1.7B,8B,30B-A3B-8L --out benchmarks/results/<date>-h200.json
    python benchmarks/train_throughput.py --models debugmodel --seq 256 --steps 3 --device cpu   # smoke

Rows: {"model", "impl", "tokens_per_s", "tflops", "mfu" (vs the measured ceiling),
"mfu_989" (vs the 989 TFLOP/s datasheet), "peak_mem_gib", "settings", "loss"}.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import subprocess
import sys
import time

IMPLS = {
    "hf-eager": {"compile": False},
    "hf-compile": {"compile": True},
    "qwen3-trainer-bf16": {"compile": False, "dtype": "bfloat16"},
    "qwen3-trainer-bf16-compile": {"compile": True, "dtype": "bfloat16"},
    "qwen3-trainer-bf16-compile-titanmoe": {"compile": True, "dtype": "bfloat16", "titan_moe": True},
    "qwen3-trainer-bf16-compile-sepclip": {"compile": True, "dtype": "bfloat16", "separate_clip": True},
    "qwen3-trainer-bf16-compile-nolbl": {"compile": True, "dtype": "bfloat16", "balance": "none"},
    "qwen3-trainer-mp-compile": {"compile": True, "dtype": "float32", "param_dtype": "bfloat16"},
    "qwen3-trainer-fp8-compile": {"compile": True, "dtype": "bfloat16", "float8": "tensorwise"},
    "qwen3-trainer-fp8-out-compile": {"compile": True, "dtype": "bfloat16", "float8": "tensorwise",
                                      "float8_keep_bf16": ["router.gate"]},  # the output projection in float8 too
    "qwen3-trainer-fp8-rowwise-compile": {"compile": True, "dtype": "bfloat16", "float8": "rowwise"},
}


def flops_per_token(flavor: str, seq: int) -> float:
    from qwen3_trainer.model.flavors import get_flavor
    from qwen3_trainer.platform.train.metrics import flops_per_token as f

    return f(get_flavor(flavor), seq)


def matmul_ceiling(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    n, t0 = 20, time.perf_counter()
    for _ in range(n):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * n / (time.perf_counter() - t0)


def _hf_model(flavor: str, device: str):
    import torch
    import transformers

    from qwen3_trainer.model.flavors import get_flavor
    from qwen3_trainer.model.hf_interop import hf_config_from_args

    cfg = hf_config_from_args(get_flavor(flavor))
    cls = transformers.Qwen3MoeConfig if cfg["model_type"] == "qwen3_moe" else transformers.Qwen3Config
    config = cls(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")})
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model


def run_hf(flavor: str, impl: str, seq: int, mb: int, steps: int, warmup: int, device: str) -> dict:
    import torch

    model = _hf_model(flavor, device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    fwd = torch.compile(model) if IMPLS[impl]["compile"] else model
    tokens = torch.randint(0, 151_000, (mb, seq), device=device)
    times, loss = [], None
    for i in range(warmup + steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fwd(input_ids=tokens, labels=tokens)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        loss = float(out.loss)
    return {"seconds": times, "loss": loss, "settings": f"HF transformers {__import__('transformers').__version__}, "
            f"bf16 weights, fused AdamW, sdpa, {'torch.compile' if IMPLS[impl]['compile'] else 'eager'}, mb={mb}"}


def build_ours(flavor: str, impl: str, seq: int, mb: int, steps: int, device: str, lr: float = 1e-5,
               warmup_steps: int = 0):
    """qwen3-trainer's Trainer with the knobs of ``impl`` (also used by profile_step.py, fp8_loss_check.py)."""
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    knobs = IMPLS[impl]
    cfg = TrainConfig.model_validate({
        "model": {"flavor": flavor},
        "training": {"steps": steps, "micro_batch_size": mb, "seq_len": seq, "device": device,
                     "dtype": knobs.get("dtype", "bfloat16"), "param_dtype": knobs.get("param_dtype", "bfloat16")},
        "optimizer": {"lr": lr},
        "lr": {"schedule": "constant", "warmup_steps": warmup_steps},
        "compile": knobs["compile"],
        "moe": {"balance": knobs.get("balance", "global_batch")},
        "float8": bool(knobs.get("float8")),
        "float8_recipe": knobs.get("float8") or "tensorwise",
        "float8_keep_bf16": knobs.get("float8_keep_bf16", ["output", "router.gate"]),
        "dump_dir": "/tmp/qwen3-bench",
    })
    trainer = Trainer(cfg)
    if knobs.get("titan_moe"):  # A/B: torchtitan's own MoE dispatch/combine and padded experts
        from qwen3_trainer.model import moe_routing

        moe_routing.uninstall(trainer.model_parts[0])
    if knobs.get("separate_clip"):  # A/B: torchtitan's clip_grad_norm_ pass before the fused step
        from torchtitan.distributed.utils import clip_grad_norm_

        params = [p for m in trainer.model_parts for p in m.parameters()]
        trainer._clip = lambda: clip_grad_norm_(params, trainer.cfg.training.max_norm, foreach=True)
    return trainer


def batch_for(mb: int, seq: int, seed: int = 0) -> dict:
    import torch

    tokens = torch.randint(0, 151_000, (mb, seq + 1), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}


def run_ours(flavor: str, impl: str, seq: int, mb: int, steps: int, warmup: int, device: str) -> dict:
    knobs = IMPLS[impl]
    trainer = build_ours(flavor, impl, seq, mb, warmup + steps, device)
    batch = batch_for(mb, seq)
    times, loss = [], None
    for i in range(warmup + steps):
        m = trainer.train_step([batch])
        if i >= warmup:
            times.append(m["step_seconds"])
        loss = m["loss"]
    parts = ["qwen3-trainer Trainer.train_step, torchtitan 0.2.2 model",
             "pure bf16" if knobs.get("dtype") == "bfloat16" else "fp32 weights + bf16 autocast",
             "torch.compile per block" if knobs["compile"] else "eager"]
    if knobs.get("float8"):
        keep = trainer.cfg.float8_keep_bf16
        parts.append(f"float8 {knobs['float8']} linears{'' if 'output' in keep else ' incl. output'}")
    clip = ", separate clip pass" if knobs.get("separate_clip") else ""
    parts += ["cuDNN SDPA first", f"AdamW ({trainer.job_config.optimizer.implementation}{clip})"]
    if knobs.get("balance") == "none":
        parts.append("no load-balancing loss")
    settings = ", ".join([*parts, f"mb={mb}"])
    return {"seconds": times, "loss": loss, "settings": settings}


def child(args) -> None:
    import torch

    fn = run_hf if args.impl.startswith("hf") else run_ours
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = fn(args.flavor, args.impl, args.seq, args.mb, args.steps, args.warmup, args.device)
    out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    print("RESULT " + json.dumps(out), flush=True)


def run_child(cmd: list[str], timeout: int) -> tuple[dict | None, str]:
    """Run one row in its own process; returns its ``RESULT`` JSON (None if it failed) and its output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        text = f"TIMEOUT after {timeout}s {exc.stdout or ''}"
    line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
    return (json.loads(line[7:]) if line else None), text


def row_args(description: str, *, impls: str, steps: int, timeout: int) -> argparse.ArgumentParser:
    """The options shared by the per-row benchmarks (this file, profile_step.py)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models", default="1.7B,8B,30B-A3B-8L")
    p.add_argument("--impls", default=impls)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--mb", default="1.7B:2,8B:1,30B-A3B-8L:2", help="micro-batch per model, or one int")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--timeout", type=int, default=timeout)
    p.add_argument("--child", action="store_true")
    p.add_argument("--flavor")
    p.add_argument("--impl")
    return p


def main() -> None:
    p = row_args(__doc__.splitlines()[0], impls="hf-eager,hf-compile,qwen3-trainer-bf16-compile", steps=8,
                 timeout=420)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.child:
        args.mb = int(args.mb)
        child(args)
        return
    import torch

    ceiling = matmul_ceiling(args.device)
    gc.collect()
    mbs = ({kv.split(":")[0]: int(kv.split(":")[1]) for kv in args.mb.split(",")} if ":" in args.mb else {})
    rows = []
    for flavor in args.models.split(","):
        mb = mbs.get(flavor, int(args.mb) if ":" not in args.mb else 1)
        fpt = flops_per_token(flavor, args.seq)
        for impl in args.impls.split(","):
            cmd = [sys.executable, __file__, "--child", "--flavor", flavor, "--impl", impl, "--seq", str(args.seq),
                   "--mb", str(mb), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", args.device]
            t0 = time.time()
            r, text = run_child(cmd, args.timeout)
            if r is None:
                err = [x for x in text.splitlines() if "Error" in x or "error" in x][-3:]
                rows.append({"model": flavor, "impl": impl, "error": " | ".join(err)[-600:]})
                print(f"{flavor:12s} {impl:28s} FAILED {rows[-1]['error']}", flush=True)
                continue
            sec = sorted(r["seconds"])[len(r["seconds"]) // 2]  # median step
            tps = mb * args.seq / sec
            tflops = fpt * tps / 1e12
            rows.append({"model": flavor if flavor != "30B-A3B-8L" else "qwen3-30B-A3B-8L", "impl": impl,
                         "tokens_per_s": round(tps, 1), "tflops": round(tflops, 1),
                         "mfu": round(tflops * 1e12 / ceiling, 4) if ceiling else None,
                         "mfu_989": round(tflops / 989, 4), "peak_mem_gib": r["peak_mem_gib"] and round(r["peak_mem_gib"], 2),
                         "settings": f"{r['settings']}, seq={args.seq}", "loss": r["loss"],
                         "wall_s": round(time.time() - t0, 1)})
            print(f"{flavor:12s} {impl:28s} {tps:10.0f} tok/s {tflops:7.1f} TFLOP/s "
                  f"mem {rows[-1]['peak_mem_gib']} GiB ({rows[-1]['wall_s']} s)", flush=True)
    result = {"date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": __import__("transformers").__version__,
              "matmul_bf16_tflops": ceiling and round(ceiling / 1e12, 1), "rows": rows,
              "command": " ".join(["python", "benchmarks/train_throughput.py", *sys.argv[1:]])}
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
