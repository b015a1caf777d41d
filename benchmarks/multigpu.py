"""Multi-GPU runs of one host (issue 10): loss parity across layouts, and scaling.

Both run the real ``qtrain train`` under torchrun (NCCL on GPU, gloo on CPU) on the procedural
English corpus (``platform.data.tiny_corpus``), so data order, packing and loss are those of a
pretraining stage.

parity   Each layout of N GPUs trains ``--steps`` steps on the same global batch (2N rows) as the
         one-GPU run (fp32 master weights, bf16 compute): fsdpN, tp2 x fsdp(N/2), pp2 x fsdp(N/2),
         and for MoE flavors epN (experts sharded over the FSDP ranks). A second one-GPU run of the
         same config gives the run-to-run noise floor (non-deterministic kernels). A layout passes
         when every step's loss is within max(``--tol``, 2 x that noise) of the one-GPU run's,
         relative: bf16 rounds at 2^-8 = 0.4% per element and 1% was the bar set before the first
         run; the MoE's own noise (1.03% on an H200) then set its bar. The one-GPU references may
         come from an earlier call (``--only single``, then ``--only multi --reference FILE``).

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
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import yaml


def corpus(workdir: Path) -> Path:
    from qwen3_trainer.platform.data.tiny_corpus import write_tiny_corpus

    folder = workdir / "corpus"
    if not folder.exists():
        write_tiny_corpus(str(folder), megabytes=4, shards=4, seed=0)
    return folder


class Layout(NamedTuple):
    processes: int
    mb: int  # micro-batch per rank
    accum: int  # micro-batches per step (pipeline micro-batches under pp)
    parallelism: dict
    model: dict  # model overrides
    ac: bool = False  # full activation checkpointing (the one-GPU rows of 4+ GPUs hold 2N rows)


def layouts(flavor: str, gpus: int) -> dict[str, Layout]:
    """Every layout of ``gpus`` GPUs, and the one-GPU references; each step is 2 * gpus rows."""
    from qwen3_trainer.model.flavors import get_flavor

    args = get_flavor(flavor)
    untied = {"tie_embeddings": False}
    big = gpus > 2  # a one-GPU micro-batch of gpus rows: recompute activations to fit
    out = {"single": Layout(1, gpus, 2, {}, {}, big), "single-repeat": Layout(1, gpus, 2, {}, {}, big)}
    if args.enable_weight_tying:  # pipeline stages need untied embeddings: their own one-GPU reference
        out["single-untied"] = Layout(1, gpus, 2, {}, untied, big)
    out[f"fsdp{gpus}"] = Layout(gpus, 1, 2, {"dp_shard": gpus}, {})
    if args.moe_enabled:
        out[f"ep{gpus}"] = Layout(gpus, 1, 2, {"dp_shard": gpus, "ep": gpus}, {})
    if gpus % 2 == 0:
        half = gpus // 2
        tag = f"xfsdp{half}" if half > 1 else ""
        out[f"tp2{tag}"] = Layout(gpus, 2, 2, {"tp": 2, "dp_shard": half}, {})
        out[f"pp2{tag}"] = Layout(gpus, 2, 2, {"pp": 2, "dp_shard": half}, untied if args.enable_weight_tying else {})
    return out


def reference_of(layout: Layout) -> str:
    return "single-untied" if layout.model.get("tie_embeddings") is False else "single"


def precision_of(layout: Layout, device: str, fp32: bool = False) -> str:
    if device != "cuda" or fp32:
        return "fp32"
    fsdp = layout.parallelism.get("dp_shard", 1) > 1
    return "fp32 master, bf16 compute (FSDP mixed precision)" if fsdp else "fp32 master, bf16 compute (autocast)"


def write_init(path: Path, flavor: str, model: dict, device: str) -> str:
    """One seeded full init of ``flavor`` with a layout's model overrides, saved as a DCP checkpoint that every
    parity run of that variant loads (``init.path``), so all layouts start from the same weights: the trainer
    inits a model of more than 2e9 parameters rank by rank, which gives each layout other weights."""
    if not (path / ".metadata").exists():
        code = ("import json, sys\n"
                "from qwen3_trainer.model.build import build_model\n"
                "from qwen3_trainer.model.dcp_io import save_model_dcp\n"
                "from qwen3_trainer.model.flavors import get_flavor\n"
                "a, m = get_flavor(sys.argv[1]), json.loads(sys.argv[2])\n"
                "if m.get('tie_embeddings') is not None: a.enable_weight_tying = m['tie_embeddings']\n"
                "if m.get('n_layers') is not None: a.n_layers = m['n_layers']\n"
                "save_model_dcp(build_model(a, device=sys.argv[3], seed=0), sys.argv[4])\n")
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"} if device == "cuda" else dict(os.environ)
        subprocess.run([sys.executable, "-c", code, flavor, json.dumps(model), device, str(path)], env=env,
                       check=True)
    return str(path)


def write_config(path: Path, data: Path, flavor: str, *, steps: int, seq: int, mb: int, accum: int,
                 parallelism: dict, model: dict, device: str, bench: bool = False, ac: bool = False,
                 init: str | None = None, fp32: bool = False) -> Path:
    training = {"steps": steps, "micro_batch_size": mb, "grad_accum": accum, "seq_len": seq, "seed": 0,
                "device": device}
    if bench:  # the BENCHMARKS.md settings: pure bf16 weights and optimizer, compiled blocks
        training.update(dtype="bfloat16", param_dtype="bfloat16")
    elif device == "cuda":  # parity: fp32 master weights, bf16 compute (--fp32: fp32 compute)
        training.update(dtype="float32", param_dtype="float32" if fp32 else "bfloat16")
    cfg = {
        "model": {"flavor": flavor, **model},
        "training": training,
        "optimizer": {"lr": 3e-4 if device == "cuda" else 3e-3, "weight_decay": 0.0},
        "lr": {"schedule": "constant" if bench else "wsd", "warmup_steps": 0 if bench else 3},
        "data": {"sources": [{"name": "tiny", "paths": [str(data)]}]},
        "parallelism": parallelism,
        "activation_checkpointing": "full" if ac else "none",
        "compile": bench,
        "checkpoint": {"dir": None},
        "dump_dir": str(path.parent / "run"),
        **({"init": {"path": init, "format": "dcp"}} if init else {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(path.parent / "run", ignore_errors=True)  # a rerun must not append to old metrics
    path.write_text(yaml.safe_dump(cfg))
    return path


class Run(NamedTuple):
    proc: subprocess.Popen
    cfg: Path
    deadline: float


def launch(cfg: Path, nproc: int, devices: list[int] | None, timeout: int) -> Run:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    env.pop("MLFLOW_TRACKING_URI", None)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, devices))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone",
           "-m", "qwen3_trainer.cli.main", "train", str(cfg)]
    with open(cfg.parent / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Run(proc, cfg, time.time() + timeout)


def wait(runs: dict[str, Run]) -> dict[str, str | None]:
    """Wait for every run; name -> None on success, else why not (with the log's last lines)."""
    errors: dict[str, str | None] = {}
    for name, run in runs.items():
        try:
            rc = run.proc.wait(max(1.0, run.deadline - time.time()))
        except subprocess.TimeoutExpired:
            run.proc.terminate()  # torchrun passes SIGTERM on to its ranks (their own sessions)
            try:
                run.proc.wait(60)
            except subprocess.TimeoutExpired:
                run.proc.kill()
                run.proc.wait()
            rc = "timeout"
        tail = (run.cfg.parent / "train.log").read_text().splitlines()[-15:]
        if rc == 0 and not metrics(run.cfg):
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


def max_rel(got: list[float], ref: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(got, ref, strict=True))


def _references(files: list[str], settings: dict) -> dict[tuple[str, str], dict]:
    """Rows of earlier parity calls, refused unless measured with the same steps, seq, batch, precision."""
    rows = {}
    for f in files:
        doc = json.loads(Path(f).read_text())
        differ = {k: (doc.get(k), v) for k, v in settings.items() if doc.get(k) != v}
        if differ:
            raise SystemExit(f"--reference {f}: measured with other settings (theirs, ours): {differ}")
        rows.update({(r["model"], r["layout"]): r for r in doc["rows"]})
    return rows


def cmd_parity(a) -> dict:
    work, device = Path(a.workdir), a.device
    data = corpus(work)
    settings = {"steps": a.steps, "seq": a.seq, "global_rows": 2 * a.gpus,
                "precision": "fp32 master weights, bf16 compute" if device == "cuda" and not a.fp32 else "fp32",
                "init": "one seeded DCP init per model variant, loaded by every run (write_init)"}
    earlier = _references(a.reference, settings)
    results = []
    for flavor in a.models.split(","):
        table = layouts(flavor, a.gpus)
        ones = [n for n, lay in table.items() if lay.processes == 1]
        if a.only == "single":  # the references alone (a one-GPU machine); the layouts later with --reference
            table = {n: table[n] for n in ones}
        if a.layouts:  # a subset (with the references it needs)
            keep = set(a.layouts.split(","))
            keep |= {reference_of(table[k]) for k in keep if k in table}
            table = {n: lay for n, lay in table.items() if n in keep}
            ones = [n for n in ones if n in table]
        if a.only == "multi":
            missing = [n for n in ones if not earlier.get((flavor, n), {}).get("losses")]
            if missing:
                raise SystemExit(f"--only multi: no {flavor} {', '.join(missing)} curves in --reference files")
            table, ones = {n: lay for n, lay in table.items() if lay.processes > 1}, []
        inits = {reference_of(lay): write_init(work / flavor / f"init-{reference_of(lay)}", flavor, lay.model, device)
                 for lay in table.values()}
        cfgs = {name: write_config(work / flavor / name / "cfg.yaml", data, flavor, steps=a.steps, seq=a.seq,
                                   mb=lay.mb, accum=lay.accum, parallelism=lay.parallelism, model=lay.model,
                                   device=device, ac=lay.ac, init=inits[reference_of(lay)], fp32=a.fp32)
                for name, lay in table.items()}
        errors: dict[str, str | None] = {}
        seconds: dict[str, float] = {}
        slots = max(1, min(a.gpus, _visible_gpus())) if device == "cuda" else a.gpus
        for i in range(0, len(ones), slots):  # one-GPU runs side by side, one per GPU
            batch, t0 = ones[i:i + slots], time.time()
            errors.update(wait({n: launch(cfgs[n], 1, [j] if device == "cuda" else None, a.timeout)
                                for j, n in enumerate(batch)}))
            seconds.update({n: round(time.time() - t0, 1) for n in batch})
        for name in (n for n in table if n not in ones):
            t0 = time.time()
            errors.update(wait({name: launch(cfgs[name], table[name].processes, None, a.timeout)}))
            seconds[name] = round(time.time() - t0, 1)
        curves = {n: [r["loss"] for r in metrics(cfgs[n])] for n in table}
        for (model_name, layout), row in earlier.items():  # references measured in an earlier call
            if model_name == flavor and layout not in table:
                curves[layout] = row["losses"]
        # run-to-run noise of one GPU (non-deterministic kernels): no layout can be judged finer than it
        noise = (max_rel(curves["single-repeat"], curves["single"])
                 if curves.get("single") and len(curves.get("single-repeat", [])) == len(curves["single"]) else None)
        tol = max(a.tol, 2 * noise) if noise is not None else a.tol
        for name, lay in table.items():
            ref_name = reference_of(lay)
            ref, got = curves.get(ref_name, []), curves[name]
            row = {"model": flavor, "layout": name, "reference": ref_name, "processes": lay.processes,
                   "parallelism": lay.parallelism, "precision": precision_of(lay, device, a.fp32), "losses": got,
                   "wall_s": seconds[name], "error": errors[name]}
            if name not in (ref_name, "single-repeat"):
                if got and ref and len(got) == len(ref):
                    diff = max_rel(got, ref)
                    row.update(max_rel_diff=diff, noise_floor_rel=noise, tol_rel=tol,
                               max_abs_diff=max(abs(x - y) for x, y in zip(got, ref, strict=True)),
                               passed=diff <= tol and got[-1] < got[0])
                else:
                    row.update(passed=False, why=f"{len(got)} losses against {len(ref)} of {ref_name}")
            elif name == "single-repeat" and noise is not None:
                row.update(max_rel_diff=noise)
            results.append(row)
            print(json.dumps({k: row.get(k) for k in ("model", "layout", "max_rel_diff", "tol_rel", "passed",
                                                      "wall_s", "error")}), flush=True)
    return {"kind": "parity", **settings, "tol_rel": a.tol, "reference_files": a.reference,
            "rule": "passed: every step's loss within max(tol_rel, 2 x the one-GPU run-to-run noise) of the "
                    "one-GPU run, relative, and the loss falls", "rows": results}


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
        err = wait({"run": launch(cfg, n, list(range(n)) if device == "cuda" else None, a.timeout)})["run"]
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
    par.add_argument("--layouts", default="", help="only these layouts (and their references), e.g. single,tp2")
    par.add_argument("--fp32", action="store_true", help="fp32 compute (separates layout bugs from bf16 numerics)")
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
