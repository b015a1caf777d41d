"""Checkpoints on S3 (moto) with exact resume, and tracking in a real MLflow server.

6 steps straight vs. 3 steps, SIGKILL of one rank, relaunch, 3 more: identical losses and data
order. A checkpoint without its commit marker is never picked as latest. The final checkpoint
exports to HF safetensors that load back to the same logits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from train_helpers import make_corpus, run_train, write_config

from qwen3_trainer.model import storage

pytestmark = pytest.mark.services


def _rows(cfg: Path) -> dict[int, dict]:
    dump = Path(yaml.safe_load(cfg.read_text())["dump_dir"])
    out = {}
    for line in (dump / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" in row:
            out[row["step"]] = row  # a relaunch re-logs the steps after the checkpoint: keep the last
    return out


def _config(tmp: Path, corpus: Path, ckpt: str, **extra) -> Path:
    return write_config(tmp / "cfg.yaml", corpus, steps=6, mb=1, accum=2, parallelism={"dp_shard": 2},
                        checkpoint={"dir": ckpt, "interval": 3, "keep_last": 2, "async_save": True, **extra})


def test_kill_one_rank_and_resume_exactly(tmp_path, s3_bucket, mlflow_server):
    corpus = make_corpus(tmp_path / "corpus")
    straight = _config(tmp_path / "straight", corpus, f"{s3_bucket}/straight",
                       export_hf=f"{s3_bucket}/straight-hf")
    run_train(straight, nproc=2, env_extra={"MLFLOW_TRACKING_URI": mlflow_server})

    ckpt = f"{s3_bucket}/killed"
    killed = _config(tmp_path / "killed", corpus, ckpt)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone",
           "-m", "qwen3_trainer.cli.main", "train", str(killed)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    marker = storage.join(ckpt, "step-000003", "COMPLETE")
    deadline = time.time() + 300
    while not storage.exists(marker):
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint at step 3"
        time.sleep(0.05)
    ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert ranks, "no rank processes under torchrun"
    os.kill(int(ranks[-1]), signal.SIGKILL)
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode != 0, f"the job finished before the kill landed:\n{out[-2000:]}"
    steps_before = max(_rows(killed))
    assert steps_before < 6

    run_train(killed, nproc=2)  # relaunch: resumes from the newest complete checkpoint
    a, b = _rows(straight), _rows(killed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert b[step]["data/checksum"] == a[step]["data/checksum"], f"data order differs at step {step}"
        assert abs(b[step]["loss"] - a[step]["loss"]) <= 1e-6, (step, a[step]["loss"], b[step]["loss"])

    # each rank writes REMOTE_WRITE_THREADS files to the object store (parallel uploads, smaller objects)
    from qwen3_trainer.model.dcp_io import REMOTE_WRITE_THREADS

    shards = [n for n in storage.listdir(f"{s3_bucket}/straight/step-000006") if n.endswith(".distcp")]
    assert len(shards) == 2 * REMOTE_WRITE_THREADS, shards

    # retention kept the last two complete checkpoints, each with its marker
    names = storage.listdir(ckpt)
    assert names == ["step-000003", "step-000006"] or names[-2:] == ["step-000003", "step-000006"]

    # tracking: one MLflow run with every step's loss, params, and the checkpoint URI
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("qwen3-trainer")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=5)
    run = next(r for r in runs if r.data.tags.get("checkpoint.final", "").startswith(f"{s3_bucket}/straight"))
    history = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
    assert abs(history[-1].value - a[6]["loss"]) < 1e-6
    assert run.data.params["model.flavor"] == "debugmodel" and run.data.params["world_size"] == "2"
    assert run.info.status == "FINISHED"

    # HF export of the final checkpoint: same logits as the DCP checkpoint
    from qwen3_trainer.model.dcp_io import load_model_dcp
    from qwen3_trainer.model.hf_interop import from_hf

    tokens = torch.randint(0, 151_000, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = load_model_dcp(f"{s3_bucket}/straight/step-000006")(tokens)
        got = from_hf(f"{s3_bucket}/straight-hf")(tokens)
    assert torch.equal(ref, got)


def test_incomplete_checkpoint_is_never_latest(tmp_path):
    from qwen3_trainer.platform.train.checkpoint import Checkpointer

    root = tmp_path / "ckpt"
    (root / "step-000003").mkdir(parents=True)
    (root / "step-000003" / "COMPLETE").write_text("ok\n")
    (root / "step-000006").mkdir()  # interrupted mid-save: shards, no metadata, no marker
    (root / "step-000006" / "__0_0.distcp").write_bytes(b"partial")
    assert Checkpointer(str(root)).latest() == str(root / "step-000003")
    (root / "step-000006" / ".metadata").write_bytes(b"x")  # even with DCP metadata but no marker
    assert Checkpointer(str(root)).latest() == str(root / "step-000003")
