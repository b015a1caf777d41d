"""GPU check of model/moe_routing.py: parity with torchtitan's MoE path, and one MoE layer's time.

1. ``debugmodel_moe`` in bf16 on CUDA (grouped-GEMM experts): logits and every gradient of the
   gather dispatch/combine + unpadded experts against torchtitan's own forward (padded experts).
2. One MoE layer of the 30B-A3B shape (dim 2048, 128 experts, top-8, expert dim 768) on
   ``--tokens`` tokens: forward+backward time for torchtitan's path, ours eager, ours compiled.

    python benchmarks/moe_routing_check.py --out /tmp/moe_routing.json
"""

from __future__ import annotations

import argparse
import json

import torch


def parity() -> dict:
    from qwen3_trainer.model import moe_routing
    from qwen3_trainer.model.build import build_model

    model = build_model("debugmodel_moe", device="cuda", seed=0, dtype=torch.bfloat16)
    tokens = torch.randint(0, 151_000, (4, 256), device="cuda")

    def run():
        model.zero_grad(set_to_none=True)
        logits = model(tokens)
        logits.float().square().mean().backward()
        return logits.float(), {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}

    ours, ours_g = run()
    moe_routing.uninstall(model)
    ref, ref_g = run()
    rel = {n: float((ours_g[n] - g).norm() / g.norm().clamp(min=1e-30)) for n, g in ref_g.items()}
    return {"logits_max_abs": float((ours - ref).abs().max()), "logits_ref_max": float(ref.abs().max()),
            "grad_rel_err_max": max(rel.values()), "grad_rel_err_worst": max(rel, key=rel.get), "n_grads": len(rel)}


def layer_time(tokens: int, iters: int) -> dict:
    from qwen3_trainer.model import moe_routing
    from qwen3_trainer.model.flavors import get_flavor
    from qwen3_trainer.model.titan import MoE

    args = get_flavor("30B-A3B-8L")
    with torch.device("cuda"):
        moe = MoE(args.moe_args, dim=args.dim, hidden_dim=args.moe_inter_dim)
    with torch.no_grad():
        moe.init_weights(0.02, torch.device("cuda"))
    moe = moe.to(torch.bfloat16)
    x = torch.randn(1, tokens, args.dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def bench() -> float:
        for _ in range(3):
            moe(x).sum().backward()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            moe(x).sum().backward()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / iters

    out = {"torchtitan_ms": bench()}
    moe_routing.install(moe)
    out["ours_eager_ms"] = bench()
    moe_routing.compile_routing()
    out["ours_compiled_ms"] = bench()
    return {k: round(v, 3) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out")
    a = p.parse_args()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "parity": parity(), "layer_fwd_bwd": {"tokens": a.tokens, **layer_time(a.tokens, a.iters)}}
    print(json.dumps(result, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
