"""Stopping a running pipeline cancels its job: `qtrain pipeline run` gets SIGTERM while S1 trains ->
the local job ends Failed/JobCancelled with no process left, the stage is recorded cancelled, its
MLflow run KILLED, and nothing is registered (a re-run would train S1 again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def _job_state(home):
    states = list((home / "jobs").glob("*/state.json"))
    return json.loads(states[0].read_text()) if states else None


def test_sigterm_cancels_the_running_job(tmp_path, prefect_server):
    from mlflow.tracking import MlflowClient

    from qwen3_trainer.platform.jobs import local_state
    from qwen3_trainer.workflows.plan import PipelineParams, plan
    from qwen3_trainer.workflows.registry import Registry

    home, root, db = tmp_path / "home", tmp_path / "root", f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "QTRAIN_HOME": str(home), "PREFECT_API_URL": prefect_server, "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": db}
    proc = subprocess.Popen([sys.executable, "-m", "qwen3_trainer.cli.main", "pipeline", "run", "--stages", "S1",
                             "--root", str(root)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 240
    state = None
    while time.time() < deadline and proc.poll() is None:
        state = _job_state(home)
        if state and any(c["type"] == "Running" and c["status"] == "True" for c in state["status"]["conditions"]):
            break
        time.sleep(0.5)
    assert state is not None and proc.poll() is None, proc.stdout.read() if proc.poll() is not None else "no job"
    uid = state["uid"]
    assert local_state.job_pids(uid)  # the trainer is running
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out

    final = _job_state(home)["status"]
    true = [c for c in final["conditions"] if c["status"] == "True"]
    assert true[-1]["type"] == "Failed" and true[-1]["reason"] == "JobCancelled", final
    assert local_state.job_pids(uid) == [] and local_state.supervisor_pids(uid) == []

    params = PipelineParams(root=str(root), stages=["S1"])
    record = Registry(str(root)).latest()
    assert record.stages["S1"].status == "cancelled" and record.status in ("failed", "cancelled")
    assert Registry(str(root)).completed("S1", plan(params)["S1"].config_hash) is None
    run = MlflowClient(db).get_run(record.stages["S1"].mlflow_run_id)
    assert run.info.status == "KILLED"
