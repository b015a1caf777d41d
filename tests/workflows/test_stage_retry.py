"""A failed stage job is retried by Prefect and resumes from its last complete checkpoint.

S1 (tiny: 8 steps, a checkpoint every 4) runs as a real local job. Once step-000004 is COMPLETE the
trainer is SIGKILLed; the job's ExitCode policy restarts the gang (cluster.yaml runPolicy.backoffLimit 1), which is killed
too, so the job ends Failed. Prefect's task retry resubmits it, and the trainer resumes from
step-000004: the MLflow run carries ``resumed_from``, the stage ends at step 8, registered once.
"""

from __future__ import annotations

import glob
import json
import signal
import threading
import time

import pytest

pytestmark = pytest.mark.slow


def _kill_twice(home, root, stop: threading.Event, log: list[str]) -> None:
    from qwen3_trainer.platform.jobs import local_state

    def state():
        files = list((home / "jobs").glob("*/state.json"))
        return json.loads(files[0].read_text()) if files else None

    def kill(uid):
        for pid in local_state.job_pids(uid):
            try:
                import os

                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    while not stop.is_set() and not glob.glob(f"{root}/stages/S1-*/ckpt/step-000004/COMPLETE"):
        time.sleep(0.2)
    uid = state()["uid"]
    kill(uid)
    log.append("killed attempt 0")
    while not stop.is_set():  # the gang restart: wait for its trainer, then kill it as well
        s = state()
        if s and s["uid"] == uid and s["status"]["restarts"] >= 1 and local_state.job_pids(uid):
            time.sleep(2)
            kill(uid)
            log.append("killed attempt 1")
            return
        time.sleep(0.2)


def test_failed_job_retries_from_last_checkpoint(tmp_path, prefect_server, qtrain_home, monkeypatch):
    from mlflow.tracking import MlflowClient

    from qwen3_trainer.workflows.flows import qwen3_pipeline
    from qwen3_trainer.workflows.plan import PipelineParams, plan
    from qwen3_trainer.workflows.registry import Registry

    root, db = tmp_path / "root", f"sqlite:///{tmp_path}/mlflow.db"
    cluster = tmp_path / "cluster.yaml"  # the cluster contract's run policy: one gang restart, then Failed
    cluster.write_text("runPolicy: {backoffLimit: 1}\n")
    monkeypatch.setenv("QTRAIN_CLUSTER_CONFIG", str(cluster))
    params = PipelineParams(root=str(root), stages=["S1"], mlflow_uri=db, register_models=False)
    stop, log = threading.Event(), []
    killer = threading.Thread(target=_kill_twice, args=(qtrain_home, root, stop, log), daemon=True)
    killer.start()
    try:
        checkpoints = qwen3_pipeline(params, pipeline_id="tiny-retry")
    finally:
        stop.set()
        killer.join(timeout=10)
    assert log == ["killed attempt 0", "killed attempt 1"]
    assert checkpoints["S1"].endswith("/ckpt/step-000008")
    stage = Registry(str(root)).load_pipeline("tiny-retry").stages["S1"]
    assert stage.status == "completed" and stage.attempts == 2  # one Prefect retry
    assert Registry(str(root)).completed("S1", plan(params)["S1"].config_hash) is not None
    run = MlflowClient(db).get_run(stage.mlflow_run_id)
    assert run.data.tags["resumed_from"].endswith("/ckpt/step-000004")
    assert run.info.status == "FINISHED"
    steps = [m.step for m in MlflowClient(db).get_metric_history(stage.mlflow_run_id, "loss")]
    assert max(steps) == 8 and {5, 6, 7, 8} <= set(steps)
