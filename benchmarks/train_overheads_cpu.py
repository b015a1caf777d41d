"""CPU-side overheads of the trainer: MLflow logging time on the training thread per step, and the
stall of async vs. sync DCP checkpoints, from one `qtrain train` run each (debugmodel, 1 process).

    python benchmarks/train_overheads_cpu.py --out benchmarks/results/train_overheads_cpu.json

Starts its own MLflow server (sqlite) on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cfg: dict, tmp: Path, name: str, env: dict) -> list[dict]:
    path = tmp / f"{name}.yaml"
    cfg = {**cfg, "dump_dir": str(tmp / name)}
    path.write_text(yaml.safe_dump(cfg))
    subprocess.run([sys.executable, "-m", "qwen3_trainer.cli.main", "train", str(path)], env=env, check=True,
                   capture_output=True)
    return [json.loads(x) for x in (tmp / name / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--out", default="benchmarks/results/train_overheads_cpu.json")
    args = p.parse_args()
    from qwen3_trainer.platform.data.tiny_corpus import write_tiny_corpus

    tmp = Path(tempfile.mkdtemp(prefix="qwen3-overheads-"))
    corpus = write_tiny_corpus(str(tmp / "corpus"), megabytes=0.3, shards=2)
    port = _port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "--backend-store-uri",
                               f"sqlite:///{tmp}/mlflow.db"], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(uri + "/health", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri}
    base = {"model": {"flavor": "debugmodel"},
            "training": {"steps": args.steps, "micro_batch_size": 2, "seq_len": 128},
            "data": {"sources": [{"name": "tiny", "paths": corpus}]}}
    try:
        rows = {}
        for mode in ("async", "sync"):
            cfg = {**base, "checkpoint": {"dir": str(tmp / f"ckpt-{mode}"), "interval": 5,
                                          "async_save": mode == "async"}}
            rows[mode] = _run(cfg, tmp, mode, env)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
    out = {"date": datetime.date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
           "python": platform.python_version(), "torch": __import__("torch").__version__, "steps": args.steps}
    for mode, r in rows.items():
        steps = [x for x in r if "step_seconds" in x]
        step_time = sum(x["step_seconds"] for x in steps)
        final = {k: v for x in r for k, v in x.items() if "/" in k and not k.startswith(("mem", "objective"))}
        out[mode] = {"mean_step_seconds": step_time / len(steps),
                     "checkpoint_stall_seconds_total": final.get("checkpoint/stall_seconds"),
                     "checkpoints": args.steps // 5 - 1,
                     "mlflow_log_seconds_on_training_thread": final.get("tracking/log_seconds"),
                     "mlflow_log_share_of_step_time": (final.get("tracking/log_seconds") or 0) / step_time}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
