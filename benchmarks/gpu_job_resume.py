"""A pretraining stage as a local-launcher PyTorchJob on one multi-GPU host, killed and resumed (issue 10).

One Master replica x N GPUs (N processes, FSDP over all of them) trains ``--model`` on the procedural
English corpus read from S3, checkpoints to S3 (torch DCP, async) every ``--interval`` steps and logs
into one MLflow run (the child run a pipeline stage would pass, under a parent run). Once the step
``--kill-after`` has been logged past the first checkpoint, one rank (a training process, not
torchrun) is SIGKILLed. Under ``restart_policy: OnFailure`` the launcher restarts the replica; the
trainer resumes from the newest complete checkpoint and finishes. Recorded: the job's conditions and
restart count, the step it resumed from, both attempts' loss and data checksum for the steps run twice
(the same data must come back; the loss within bf16 noise), the MLflow run's history and status, and
the checkpoints left in S3.

Needs S3 and MLflow in the environment (AWS_ENDPOINT_URL_S3, MLFLOW_TRACKING_URI; on the device
machine benchmarks/gpu_services.sh starts moto and an MLflow server).

    python benchmarks/gpu_job_resume.py --gpus 2 --out resume.json
    python benchmarks/gpu_job_resume.py --gpus 2 --device cpu --model debugmodel --seq 128 --out /tmp/r.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import time
from pathlib import Path


def upload_corpus(bucket: str, workdir: Path) -> str:
    from qwen3_trainer.model import storage
    from qwen3_trainer.platform.data.tiny_corpus import write_tiny_corpus

    local = workdir / "corpus"
    paths = write_tiny_corpus(str(local), megabytes=4, shards=4, seed=0) if not local.exists() else \
        sorted(str(p) for p in local.glob("*.jsonl"))
    fs, _ = storage.filesystem(bucket)
    for p in paths:
        fs.put(p, f"{bucket.removeprefix('s3://')}/data/tiny/{Path(p).name}")
    return f"{bucket}/data/tiny"


def ranks_of(master_pid: int) -> list[int]:
    """The training processes: torchrun's children (read from /proc; no procps needed)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        except OSError:
            continue
        if int(fields[1]) == master_pid:
            kids.append(int(stat.parent.name))
    return sorted(kids)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--model", default="1.7B")
    p.add_argument("--n-layers", type=int, default=None, help="cut the flavor's depth (smaller checkpoints)")
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--interval", type=int, default=10)
    p.add_argument("--kill-after", type=int, default=14)
    p.add_argument("--bucket", default="s3://qwen3-trainer")
    p.add_argument("--timeout", type=int, default=480)
    p.add_argument("--workdir", default="/tmp/qwen3-resume", help="the corpus and the run's dump_dir")
    a = p.parse_args()

    from qwen3_trainer.model import storage
    from qwen3_trainer.platform.jobs.local_launcher import LocalLauncher
    from qwen3_trainer.platform.jobs.spec import JobSpec
    from qwen3_trainer.platform.tracking import MlflowStore

    name = f"qwen3-{a.model.lower().replace('.', 'p')}-resume"
    workdir = Path(a.workdir)
    data = upload_corpus(a.bucket, workdir)
    ckpt = f"{a.bucket}/ckpt/{name}-{int(time.time())}"
    store = MlflowStore(os.environ["MLFLOW_TRACKING_URI"])
    experiment = store.experiment_id("qwen3-trainer")
    parent = store.create_run(experiment, f"{name}-pipeline", {})
    child = store.create_run(experiment, f"{name}-s1", {"mlflow.parentRunId": parent})
    dump = workdir / "run"
    shutil.rmtree(dump, ignore_errors=True)  # metrics.jsonl appends: an earlier run's rows must go
    training = {"steps": a.steps, "micro_batch_size": 2, "grad_accum": 1, "seq_len": a.seq, "device": a.device}
    if a.device == "cuda":
        training.update(dtype="float32", param_dtype="bfloat16")
    spec = JobSpec.model_validate({
        "name": name, "image": "ghcr.io/qwen3-trainer/qwen3-trainer:0.1.0", "nodes": 1,
        "gpus_per_node": a.gpus if a.device == "cuda" else 0, "nproc_per_node": a.gpus,
        "restart_policy": "OnFailure", "run_policy": {"backoff_limit": 2, "active_deadline_seconds": a.timeout},
        "train": {
            "model": {"flavor": a.model, **({"n_layers": a.n_layers} if a.n_layers else {})},
            "parallelism": {"dp_shard": a.gpus},
            "training": training,
            "optimizer": {"lr": 3e-4 if a.device == "cuda" else 3e-3, "weight_decay": 0.0},
            "lr": {"schedule": "wsd", "warmup_steps": 3},
            "data": {"sources": [{"name": "tiny", "paths": [data]}], "seq_len": a.seq},
            "checkpoint": {"dir": ckpt, "interval": a.interval, "keep_last": 2, "async_save": True,
                           "export_hf": f"{ckpt}-hf"},
            "tracking": {"run_id": child, "parent_run_id": parent},
            "dump_dir": str(dump),
        },
    })
    launcher = LocalLauncher()
    t0 = time.time()
    launcher.submit(spec)
    metrics = dump / "metrics.jsonl"

    def rows() -> list[dict]:
        if not metrics.exists():
            return []
        return [r for r in map(json.loads, metrics.read_text().splitlines()) if "loss" in r]

    first = storage.join(ckpt, f"step-{a.interval:06d}", "COMPLETE")
    while not (storage.exists(first) and rows() and rows()[-1]["step"] >= a.kill_after):
        st = launcher.status(name)
        if st.finished or time.time() - t0 > a.timeout:
            raise SystemExit(f"job ended before the kill: {st.state} {st.message}\n"
                             + "\n".join(launcher.logs(name))[-3000:])
        time.sleep(0.2)
    st = launcher.status(name)
    victims = ranks_of(st.replicas[0].pid)
    killed_at = rows()[-1]["step"]
    os.kill(victims[-1], signal.SIGKILL)
    t_kill = time.time() - t0
    final = launcher.wait(name, timeout=a.timeout)
    log = launcher.logs(name)

    attempts: list[list[dict]] = [[]]
    for r in rows():  # a relaunch starts again after its checkpoint: a step number going back = new attempt
        if attempts[-1] and r["step"] <= attempts[-1][-1]["step"]:
            attempts.append([])
        attempts[-1].append(r)
    twice = []
    if len(attempts) > 1:
        before = {r["step"]: r for r in attempts[0]}
        for r in attempts[1]:
            if r["step"] in before:
                twice.append({"step": r["step"], "loss_before": before[r["step"]]["loss"], "loss_after": r["loss"],
                              "checksum_equal": before[r["step"]]["data/checksum"] == r["data/checksum"]})
    run = store.client.get_run(child)
    history = store.metric_history(child, "loss")
    result = {
        "date": datetime.date.today().isoformat(), "model": a.model, "gpus": a.gpus, "device": a.device,
        "seq": a.seq, "steps": a.steps, "checkpoint_interval": a.interval, "checkpoint_dir": ckpt,
        "job": {"state": final.state, "restarts": final.restarts, "message": final.message,
                "conditions": [{"type": c.type, "reason": c.reason, "message": c.message} for c in final.conditions]},
        "killed": {"rank_pid": victims[-1], "ranks": len(victims), "after_step": killed_at, "at_s": round(t_kill, 1)},
        "resumed_from": run.data.tags.get("resumed_from"),
        "attempt_steps": [[r["step"] for r in att] for att in attempts],
        "steps_run_twice": twice,
        "losses_final_attempt": [r["loss"] for r in attempts[-1]],
        "tokens_per_s_median": sorted(r["tokens_per_s"] for r in attempts[-1])[len(attempts[-1]) // 2],
        "mlflow": {"run_status": run.info.status, "loss_steps": sorted({s for s, _ in history}),
                   "loss_points": len(history), "parent": run.data.tags.get("mlflow.parentRunId") == parent,
                   "checkpoint_final": run.data.tags.get("checkpoint.final")},
        "checkpoints_left": storage.listdir(ckpt),
        "hf_export": storage.exists(storage.join(f"{ckpt}-hf", "config.json")),
        "wall_s": round(time.time() - t0, 1),
        "log_tail": [line for line in log if "resum" in line.lower() or "attempt" in line.lower()][-10:],
    }
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("job", "killed", "resumed_from", "attempt_steps", "mlflow",
                                             "checkpoints_left", "hf_export", "wall_s")}, indent=1))
    print("steps run twice:", json.dumps(twice))


if __name__ == "__main__":
    main()
