"""float8 vs bf16 training loss on real text: the same model, data order and seed, N steps each.

Real text available offline on any machine: the running Python's standard library (the language
reference topics in ``pydoc_data`` and the stdlib's own ``.py`` sources: English prose and code),
tokenized with the Qwen3 tokenizer and cut into ``seq``-token rows in a fixed order. Both runs
start from the same seeded initialisation (``training.seed``) and see the same rows.

    python benchmarks/fp8_loss_check.py --model 8B --steps 100 --out /tmp/fp8_loss.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import sysconfig
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def corpus_tokens(n_tokens: int) -> list[int]:
    from qwen3_trainer.model.tokenizer import load_tokenizer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / "pydoc_data" / "topics.py"] + sorted(p for p in stdlib.glob("*.py"))
    tok, ids = load_tokenizer(), []
    for f in files:
        ids += tok.encode(f.read_text(errors="replace"), allow_special=False) + [tok.endoftext]
        if len(ids) >= n_tokens:
            return ids[:n_tokens]
    raise SystemExit(f"only {len(ids)} tokens of text under {stdlib}, need {n_tokens}")


def child(a) -> None:
    import torch
    from train_throughput import build_ours

    ids = torch.tensor(corpus_tokens(a.steps * a.mb * (a.seq + 1)))
    rows = ids.view(a.steps, a.mb, a.seq + 1)
    trainer = build_ours(a.model, a.impl, a.seq, a.mb, a.steps, "cuda", lr=a.lr, warmup_steps=a.warmup)
    losses, times = [], []
    for step in range(a.steps):
        m = trainer.train_step([{"input_ids": rows[step, :, :-1].contiguous(), "labels": rows[step, :, 1:].contiguous()}])
        losses.append(m["loss"])
        times.append(m["step_seconds"])
    print("RESULT " + json.dumps({"losses": losses, "median_step_s": sorted(times)[len(times) // 2]}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="8B")
    p.add_argument("--impls", default="qwen3-trainer-bf16-compile,qwen3-trainer-fp8-compile")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--mb", type=int, default=1)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out")
    p.add_argument("--child", action="store_true")
    p.add_argument("--impl")
    a = p.parse_args()
    if a.child:
        child(a)
        return
    from train_throughput import run_child

    runs = {}
    for impl in a.impls.split(","):
        t0 = time.time()
        cmd = [sys.executable, __file__, "--child", "--impl", impl] + [
            f"--{k}={getattr(a, k)}" for k in ("model", "steps", "mb", "seq", "lr", "warmup")]
        result, text = run_child(cmd, 1800)
        if result is None:
            raise SystemExit(f"{impl} failed:\n{text[-3000:]}")
        runs[impl] = {**result, "wall_s": round(time.time() - t0, 1)}
        tail = runs[impl]["losses"][-10:]
        print(f"{impl}: final-10 mean loss {sum(tail) / len(tail):.4f}, median step {runs[impl]['median_step_s']:.3f}s",
              flush=True)
    names = list(runs)
    mean10 = {k: sum(v["losses"][-10:]) / len(v["losses"][-10:]) for k, v in runs.items()}
    result = {"model": a.model, "steps": a.steps, "mb": a.mb, "seq": a.seq, "lr": a.lr, "warmup": a.warmup,
              "data": "Python stdlib text (pydoc topics + *.py), Qwen3 tokenizer", "runs": runs,
              "final10_mean_loss": mean10,
              "rel_diff_final10": abs(mean10[names[-1]] - mean10[names[0]]) / mean10[names[0]]}
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
