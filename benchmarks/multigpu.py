"""Multi-GPU runs of one host (issue 10): loss parity across layouts, and scaling.

Both run the real ``qtrain train`` under torchrun (NCCL on GPU, gloo on CPU) on the procedural
English corpus (``platform.data.tiny_corpus``), so data order, packing and loss are those of a
pretraining stage.

parity   Each layout of N GPUs trains ``--steps`` steps on the same global batch (2N rows) as the
         one-GPU run (fp32 master weights, bf16 compute): fsdpN, tp2 x fsdp(N/2), pp2 x fsdp(N/2),
         and for MoE flavors epN (experts sharded over the FSDP ranks). A second one-GPU run of the
         same config gives the run-to-run noise floor (non-deterministic kernels). A layout passes
         when every step's loss is within ``--tol`` (relative) of the one-GPU run's: bf16 rounds
         at 2^-8 = 0.4% per element, and 1% is the bar set before the first run.

    python benchmarks/multigpu.py parity --models 1.7B,30B-A3B-8L --gpus 2 --out parity.json
    python benchmarks/multigpu.py parity --models debugmodel --gpus 2 --seq 64 --device cpu --out /tmp/p.json

scaling  Tokens/s and TFLOP/s per GPU of one layout at 1..N GPUs, the same per-GPU batch (weak
         scaling), pure bf16 + torch.compile as in BENCHMARKS.md; the median step after warm-up.

    python benchmarks/multigpu.py scaling --model 8B --gpus 1,2 --out scaling.json
    python benchmarks/multigpu.py scaling --model 30B-A3B --n-layers 24 --layout ep --gpus 2 --out moe.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml


def corpus(workdir: Path) -> Path:
    from qwen3_trainer.platform.data.tiny_corpus import write_tiny_corpus

    folder = workdir / "corpus"
    if not folder.exists():
        write_tiny_corpus(str(folder), megabytes=4, shards=4, seed=0)
    return folder


def layouts(flavor: str, gpus: int) -> dict[str, tuple[int, int, int, dict, dict]]:
    """name -> (processes, micro-batch, grad accum, parallelism, model overrides); 2*gpus rows a step."""
    from qwen3_trainer.model.flavors import get_flavor

    args = get_flavor(flavor)
    untied = {"tie_embeddings": False}
    out = {"single": (1, gpus, 2, {}, {}), "single-repeat": (1, gpus, 2, {}, {})}
    if args.enable_weight_tying:  # pipeline stages need untied embeddings: their own one-GPU reference
        out["single-untied"] = (1, gpus, 2, {}, untied)
    out[f"fsdp{gpus}"] = (gpus, 1, 2, {"dp_shard": gpus}, {})
    if args.moe_enabled:
        out[f"ep{gpus}"] = (gpus, 1, 2, {"dp_shard": gpus, "ep": gpus}, {})
    if gpus % 2 == 0:
        half = gpus // 2
        tag = f"x fsdp{half}" if half > 1 else ""
        out[f"tp2{tag}".replace(" ", "")] = (gpus, 2, 2, {"tp": 2, "dp_shard": half}, {})
        out[f"pp2{tag}".replace(" ", "")] = (gpus, 2, 2, {"pp": 2, "dp_shard": half},
                                             {} if not args.enable_weight_tying else untied)
    return out


def write_config(path: Path, data: Path, flavor: str, *, steps: int, seq: int, mb: int, accum: int,
                 parallelism: dict, model: dict, device: str, bench: bool = False) -> Path:
    training = {"steps": steps, "micro_batch_size": mb, "grad_accum": accum, "seq_len": seq, "seed": 0,
                "device": device}
    if bench:  # the BENCHMARKS.md settings: pure bf16 weights and optimizer, compiled blocks
        training.update(dtype="bfloat16", param_dtype="bfloat16")
    elif device == "cuda":  # parity: fp32 master weights, bf16 compute
        training.update(dtype="float32", param_dtype="bfloat16")
    cfg = {
        "model": {"flavor": flavor, **model},
        "training": training,
        "optimizer": {"lr": 3e-4 if device == "cuda" else 3e-3, "weight_decay": 0.0},
        "lr": {"schedule": "constant" if bench else "wsd", "warmup_steps": 0 if bench else 3},
        "data": {"sources": [{"name": "tiny", "paths": [str(data)]}]},
        "parallelism": parallelism,
        "compile": bench,
        "checkpoint": {"dir": None},
        "dump_dir": str(path.parent / "run"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch(cfg: Path, nproc: int, devices: list[int] | None, timeout: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    env.pop("MLFLOW_TRACKING_URI", None)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone",
           "-m", "qwen3_trainer.cli.main", "train", str(cfg)]
    log = open(cfg.parent / "train.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.deadline = time.time() + timeout  # type: ignore[attr-defined]
    return proc


def wait(procs: dict[str, tuple[subprocess.Popen, Path]]) -> dict[str, str | None]:
    """Wait for every process; name -> None on success, else the log's last lines."""
    errors: dict[str, str | None] = {}
    for name, (proc, cfg) in procs.items():
        try:
            rc = proc.wait(max(1.0, proc.deadline - time.time()))  # type: ignore[attr-defined]
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = "timeout"
        tail = (cfg.parent / "train.log").read_text().splitlines()[-15:]
        if rc == 0 and not metrics(cfg):
            rc = "0 but no loss in metrics.jsonl"
        errors[name] = None if rc == 0 else f"rc={rc}: " + " | ".join(t[-300:] for t in tail)
    return errors


def metrics(cfg: Path) -> list[dict]:
    path = cfg.parent / "run" / "metrics.jsonl"
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def cmd_parity(a) -> dict:
    work, device = Path(a.workdir), a.device
    data = corpus(work)
    results = []
    for flavor in a.models.split(","):
        table = layouts(flavor, a.gpus)
        cfgs = {name: write_config(work / flavor / name / "cfg.yaml", data, flavor, steps=a.steps, seq=a.seq,
                                   mb=mb, accum=acc, parallelism=par, model=model, device=device)
                for name, (_, mb, acc, par, model) in table.items()}
        ones = [n for n, row in table.items() if row[0] == 1]
        earlier = {(r["model"], r["layout"]): r for f in a.reference for r in json.loads(Path(f).read_text())["rows"]}
        if a.only == "single":  # the references alone (a one-GPU machine); the layouts later with --reference
            table = {n: table[n] for n in ones}
        elif a.only == "multi":
            missing = [n for n in ones if not earlier.get((flavor, n), {}).get("losses")]
            if missing:
                raise SystemExit(f"--only multi: no {flavor} {', '.join(missing)} curves in --reference files")
            table, ones = {n: row for n, row in table.items() if row[0] > 1}, []
        errors: dict[str, str | None] = {}
        seconds: dict[str, float] = {}
        slots = max(1, min(a.gpus, _visible_gpus())) if device == "cuda" else a.gpus
        for i in range(0, len(ones), slots):  # one-GPU runs side by side, one per GPU
            batch, t0 = ones[i:i + slots], time.time()
            procs = {n: (launch(cfgs[n], 1, [j] if device == "cuda" else None, a.timeout), cfgs[n])
                     for j, n in enumerate(batch)}
            errors.update(wait(procs))
            seconds.update({n: round(time.time() - t0, 1) for n in batch})
        for name in (n for n in table if n not in ones):
            t0 = time.time()
            errors.update(wait({name: (launch(cfgs[name], table[name][0], None, a.timeout), cfgs[name])}))
            seconds[name] = round(time.time() - t0, 1)
        curves = {n: [r["loss"] for r in metrics(cfgs[n])] for n in table}
        for (model_name, layout), row in earlier.items():  # references measured in an earlier call
            if model_name == flavor and layout not in table:
                curves[layout] = row["losses"]
        for name in table:
            ref_name = "single-untied" if table[name][4] else "single"  # overrides = untied embeddings
            ref, got = curves.get(ref_name, []), curves[name]
            row = {"model": flavor, "layout": name, "reference": ref_name, "processes": table[name][0],
                   "parallelism": table[name][3], "losses": got, "wall_s": seconds[name],
                   "error": errors[name]}
            if got and ref and len(got) == len(ref) and name != ref_name:
                rel = [abs(x - y) / abs(y) for x, y in zip(got, ref, strict=True)]
                row.update(max_rel_diff=max(rel), max_abs_diff=max(abs(x - y) for x, y in zip(got, ref, strict=True)),
                           passed=max(rel) <= a.tol and got[-1] < got[0])
            results.append(row)
            print(json.dumps({k: row.get(k) for k in ("model", "layout", "max_rel_diff", "passed", "wall_s",
                                                      "error")}), flush=True)
    return {"kind": "parity", "steps": a.steps, "seq": a.seq, "global_rows": 2 * a.gpus, "tol_rel": a.tol,
            "precision": "fp32 master weights, bf16 compute" if device == "cuda" else "fp32", "rows": results}


def cmd_scaling(a) -> dict:
    work, device = Path(a.workdir), a.device
    data = corpus(work)
    rows = []
    model = {"n_layers": a.n_layers} if a.n_layers else {}
    for n in (int(g) for g in a.gpus.split(",")):
        par = {"dp_shard": n} if n > 1 else {}
        if a.layout == "ep" and n > 1:
            par["ep"] = n
        cfg = write_config(work / f"scaling-{a.model}-{a.layout}{n}" / "cfg.yaml", data, a.model,
                           steps=a.warmup + a.steps, seq=a.seq, mb=a.mb, accum=1, parallelism=par, model=model,
                           device=device, bench=True)
        err = wait({"run": (launch(cfg, n, list(range(n)) if device == "cuda" else None, a.timeout), cfg)})["run"]
        timed = metrics(cfg)[a.warmup:]
        row = {"model": a.model, "n_layers": a.n_layers, "layout": f"{a.layout}{n}" if n > 1 else "single",
               "gpus": n, "mb": a.mb, "seq": a.seq, "error": err, "steps_timed": len(timed)}
        if timed:
            tps = statistics.median(r["tokens_per_s"] for r in timed)
            row.update(tokens_per_s=round(tps, 1), tokens_per_s_per_gpu=round(tps / n, 1),
                       tflops_per_gpu=round(statistics.median(r["tflops_per_device"] for r in timed), 1),
                       mfu=round(statistics.median(r.get("mfu", 0.0) for r in timed), 4),
                       peak_mem_gib=round(max(r.get("mem/peak_gib", 0.0) for r in timed), 2),
                       loss_last=timed[-1]["loss"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["gpus"] == 1 and "tokens_per_s" in r), None)
    for r in rows:
        if base and "tokens_per_s" in r:
            r["weak_scaling_efficiency"] = round(r["tokens_per_s_per_gpu"] / base["tokens_per_s_per_gpu"], 4)
    return {"kind": "scaling", "settings": "qtrain train under torchrun, pure bf16, torch.compile per block, "
            "fused AdamW, tiny_corpus data", "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("parity", "scaling"):
        s = sub.add_parser(name)
        s.add_argument("--out", required=True)
        s.add_argument("--workdir", default="/tmp/qwen3-multigpu")
        s.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
        s.add_argument("--seq", type=int, default=4096)
        s.add_argument("--timeout", type=int, default=300)
    par = sub.choices["parity"]
    par.add_argument("--models", default="1.7B,30B-A3B-8L")
    par.add_argument("--gpus", type=int, default=2)
    par.add_argument("--steps", type=int, default=20)
    par.add_argument("--tol", type=float, default=0.01)
    par.add_argument("--only", default="all", choices=["all", "single", "multi"],
                     help="single: the one-GPU references only; multi: the N-GPU layouts, references from --reference")
    par.add_argument("--reference", action="append", default=[], help="an earlier parity JSON (repeatable)")
    sc = sub.choices["scaling"]
    sc.add_argument("--model", default="8B")
    sc.add_argument("--n-layers", type=int, default=None)
    sc.add_argument("--layout", default="fsdp", choices=["fsdp", "ep"])
    sc.add_argument("--gpus", default="1,2")
    sc.add_argument("--mb", type=int, default=1)
    sc.add_argument("--steps", type=int, default=10)
    sc.add_argument("--warmup", type=int, default=4)
    a = p.parse_args()
    result = cmd_parity(a) if a.cmd == "parity" else cmd_scaling(a)
    import torch

    result.update(date=datetime.date.today().isoformat(), torch=torch.__version__,
                  device=torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu",
                  gpus_visible=torch.cuda.device_count() if a.device == "cuda" else 0)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
