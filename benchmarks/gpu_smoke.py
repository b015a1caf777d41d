"""GPU smoke (torch 2.11 image): forward+backward in bf16 of 1.7B and debugmodel_moe built from our
flavors, then a few steps of the trainer (compile + bf16) on 1.7B. Prints one JSON line per check.

    python benchmarks/gpu_smoke.py
"""

from __future__ import annotations

import json
import time

import torch


def fwd_bwd(flavor: str, seq: int = 2048, batch: int = 2) -> dict:
    from qwen3_trainer.model import build_model

    torch.cuda.reset_peak_memory_stats()
    model = build_model(flavor, device="cuda", seed=0, dtype=torch.bfloat16)
    tokens = torch.randint(0, 151_000, (batch, seq + 1), device="cuda")
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    grads = sum(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    return {"check": f"fwd+bwd bf16 {flavor}", "loss": float(loss), "seconds": times[-1],
            "tokens_per_s": batch * seq / times[-1], "finite_grads": f"{grads}/{len(list(model.parameters()))}",
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30}


def trainer_steps(flavor: str = "1.7B", steps: int = 6) -> dict:
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    cfg = TrainConfig.model_validate({
        "model": {"flavor": flavor},
        "training": {"steps": steps, "micro_batch_size": 2, "seq_len": 4096, "device": "cuda",
                     "param_dtype": "bfloat16"},
        "optimizer": {"lr": 3e-4}, "lr": {"warmup_steps": 2}, "compile": True, "dump_dir": "/tmp/smoke"})
    trainer = Trainer(cfg)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 151_000, (2, 4097), generator=g)
    batch = {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}
    rows = [trainer.train_step([batch]) for _ in range(steps)]
    return {"check": f"trainer {flavor} compile + bf16 autocast (1 GPU)",
            "losses": [round(r["loss"], 4) for r in rows], "tokens_per_s": rows[-1]["tokens_per_s"],
            "mfu": rows[-1].get("mfu"), "peak_mem_gib": rows[-1].get("mem/peak_gib")}


if __name__ == "__main__":
    print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}))
    for fl in ("1.7B", "debugmodel_moe"):
        print(json.dumps(fwd_bwd(fl)), flush=True)
        torch.cuda.empty_cache()
    print(json.dumps(trainer_steps()), flush=True)
