"""Issue 10's job flow on CPU, with the same script the GPU host runs (benchmarks/gpu_job_resume.py):
a pretraining stage as a local-launcher PyTorchJob (1 master x 2 processes), checkpoints on S3 (moto),
one MLflow child run under a parent; one rank is SIGKILLed after the first checkpoint, the launcher
restarts the replica (OnFailure), the trainer resumes from that checkpoint and finishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_killed_rank_resumes_from_s3_checkpoint(tmp_path, s3_bucket, mlflow_server):
    out = tmp_path / "resume.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "QTRAIN_HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": mlflow_server}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_job_resume.py"), "--device", "cpu", "--gpus", "2",
           "--model", "debugmodel", "--seq", "128", "--steps", "8", "--interval", "4", "--kill-after", "6",
           "--bucket", s3_bucket, "--workdir", str(tmp_path / "work"), "--timeout", "400", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["job"]["state"] == "Succeeded" and r["job"]["restarts"] == 1, r["job"]
    restarting = next(c for c in r["job"]["conditions"] if c["type"] == "Restarting")
    assert "exited with code 1" in restarting["message"]  # torchrun reports the killed rank
    assert r["killed"]["ranks"] == 2 and r["killed"]["after_step"] >= 6
    assert r["resumed_from"].endswith("/step-000004")
    first, second = r["attempt_steps"]
    assert first == list(range(1, len(first) + 1)) and len(first) >= 6  # the kill may land a step later
    assert second == [5, 6, 7, 8]
    twice = r["steps_run_twice"]
    assert [t["step"] for t in twice] == list(range(5, min(first[-1], 8) + 1))
    for t in twice:  # the same data and (fp32, CPU) the same loss after the resume
        assert t["checksum_equal"] and abs(t["loss_before"] - t["loss_after"]) <= 1e-6, t
    m = r["mlflow"]
    assert m["run_status"] == "FINISHED" and m["parent"] and m["loss_steps"] == list(range(1, 9))
    assert m["checkpoint_final"].endswith("/step-000008")
    assert r["checkpoints_left"][-2:] == ["step-000004", "step-000008"] and r["hf_export"]
