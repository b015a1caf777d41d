"""Shared helpers for trainer tests: a tiny corpus, configs, and launching `qtrain train`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]
BASELINES = ROOT / "tests" / "assets" / "losses"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_corpus(folder: Path) -> Path:
    from qwen3_trainer.platform.data.tiny_corpus import write_tiny_corpus

    if not folder.exists():
        write_tiny_corpus(str(folder), megabytes=0.3, shards=2, seed=0)
    return folder


def write_config(path: Path, corpus: Path, *, flavor="debugmodel", steps=5, mb=2, accum=2, seq=64,
                 parallelism=None, model_extra=None, **sections) -> Path:
    cfg = {
        "model": {"flavor": flavor, **(model_extra or {})},
        "training": {"steps": steps, "micro_batch_size": mb, "grad_accum": accum, "seq_len": seq,
                     "seed": 0, "max_norm": 1.0},
        "optimizer": {"lr": 3e-3, "weight_decay": 0.0},
        "lr": {"schedule": "wsd", "warmup_steps": 1, "decay_ratio": 0.4},
        "data": {"sources": [{"name": "tiny", "paths": [str(corpus)]}]},
        "parallelism": parallelism or {},
        "dump_dir": str(path.parent / "run"),
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_train(config: Path, nproc: int = 1, timeout: int = 600, env_extra: dict | None = None,
              check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    env.pop("MLFLOW_TRACKING_URI", None) if "MLFLOW_TRACKING_URI" not in (env_extra or {}) else None
    if nproc == 1:
        cmd = [sys.executable, "-m", "qwen3_trainer.cli.main", "train", str(config)]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
               "--standalone", "-m", "qwen3_trainer.cli.main", "train", str(config)]  # free port: no race
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"train failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def losses(config: Path) -> list[float]:
    dump = Path(yaml.safe_load(config.read_text())["dump_dir"])
    rows = [json.loads(line) for line in (dump / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def compare_baseline(name: str, curve: list[float], tol: float = 1e-4) -> None:
    """Compare a loss curve with tests/assets/losses/<name>.json (QWEN3_UPDATE_BASELINES=1 rewrites)."""
    path = BASELINES / f"{name}.json"
    if os.environ.get("QWEN3_UPDATE_BASELINES"):
        path.write_text(json.dumps({"losses": curve}, indent=1) + "\n")
    assert path.exists(), f"no committed baseline {path.name}: run with QWEN3_UPDATE_BASELINES=1 and commit it"
    ref = json.loads(path.read_text())["losses"]
    assert len(ref) == len(curve), (ref, curve)
    for i, (a, b) in enumerate(zip(ref, curve, strict=True)):
        assert abs(a - b) <= tol, f"{name} step {i + 1}: baseline {a} vs {b}"
