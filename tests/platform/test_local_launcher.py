"""Local launcher: the operator's environment per replica, $(VAR) expansion, and real multi-process
jobs (gloo all_reduce under torchrun) that succeed, restart per restartPolicy/backoffLimit, and leave
no process behind when cancelled."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from qwen3_trainer.platform.jobs import local_state as ls
from qwen3_trainer.platform.jobs.local_launcher import LocalLauncher
from qwen3_trainer.platform.jobs.local_supervisor import expand, plan, replica_env
from qwen3_trainer.platform.jobs.render import render
from qwen3_trainer.platform.jobs.spec import JobSpec
from qwen3_trainer.platform.jobs.status import LauncherError


def _job(**over) -> dict:
    spec = JobSpec.model_validate({"name": "j", "image": "r/i:1", "train": {"a": 1}, **over})
    return render(spec).job


def test_replica_env_is_the_operators():
    """Operator v1.9 envvar.go: WORLD_SIZE = replicas x nprocPerNode, RANK = PET_NODE_RANK = node index."""
    job = _job(nodes=3, gpus_per_node=8)
    assert replica_env(job, "Master", 0, 29500) == {
        "PYTHONUNBUFFERED": "1", "MASTER_ADDR": "127.0.0.1", "PET_MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500", "PET_MASTER_PORT": "29500", "WORLD_SIZE": "24", "RANK": "0",
        "PET_NPROC_PER_NODE": "8", "PET_NODE_RANK": "0", "PET_NNODES": "3"}
    worker1 = replica_env(job, "Worker", 1, 29500)
    assert (worker1["RANK"], worker1["PET_NODE_RANK"], worker1["WORLD_SIZE"]) == ("2", "2", "24")


def test_replica_env_elastic():
    job = _job(nodes=2, nproc_per_node=2, elastic={"min_nodes": 1, "max_nodes": 3, "max_restarts": 2})
    assert replica_env(job, "Worker", 1, 29400) == {
        "PYTHONUNBUFFERED": "1", "PET_RDZV_ENDPOINT": "127.0.0.1:29400", "PET_RDZV_BACKEND": "c10d",
        "PET_NNODES": "1:3", "PET_MAX_RESTARTS": "2", "PET_RDZV_ID": "j"}


def test_expand_follows_kubernetes():
    env = {"A": "1", "B": "x"}
    assert expand("--n=$(A) $(B)$(A)", env) == "--n=1 x1"
    assert expand("$(MISSING) stays", env) == "$(MISSING) stays"
    assert expand("$$(A) is escaped, $$ is $", env) == "$(A) is escaped, $ is $"


def test_plan_runs_the_rendered_container(tmp_path):
    job = _job(nodes=2, gpus_per_node=2, env=[{"name": "HF_TOKEN", "secret": {"name": "hf", "key": "token"}},
                                              {"name": "WANDB_API_KEY", "secret": {"name": "w", "key": "k"}},
                                              {"name": "LEVEL", "value": "rank-$(PET_NODE_RANK)"}])
    logged = []
    reps = plan(job, tmp_path, "uid1", 4242, gpus=["0", "1", "2", "3"],
                base_env={"HF_TOKEN": "hf_local", "PATH": "/bin", "LOCAL_RANK": "7", "PET_NNODES": "9"},
                log=logged.append)
    assert [(r.pod, r.replica_type, r.node_rank, r.restart_policy) for r in reps] == [
        ("j-master-0", "Master", 0, "ExitCode"), ("j-worker-0", "Worker", 1, "ExitCode")]
    w = reps[1]
    assert w.argv == [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=2",
                      "--node-rank=1", "--master-addr=127.0.0.1", "--master-port=4242",
                      "-m", "qwen3_trainer.cli.main", "train", str(tmp_path / "volumes/train-config/config.yaml")]
    assert w.env["CUDA_VISIBLE_DEVICES"] == "2,3" and reps[0].env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert w.env["HF_TOKEN"] == "hf_local" and "WANDB_API_KEY" not in w.env
    assert "LOCAL_RANK" not in w.env and w.env["PET_NNODES"] == "2"       # the caller's rendezvous is dropped
    assert w.env["QTRAIN_LOCAL_JOB"] == "uid1" and w.env["QTRAIN_LOCAL_REPLICA"] == "j-worker-0"
    assert w.env["PATH"] == "/bin"
    assert any("WANDB_API_KEY" in m and "not set locally" in m for m in logged)


def test_gpu_job_needs_gpus(qtrain_home, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    spec = JobSpec.model_validate({"name": "g", "image": "r/i:1", "train": {}, "nodes": 2, "gpus_per_node": 8})
    with pytest.raises(LauncherError, match="g needs 2 x 8 GPUs, this machine has 0"):
        LocalLauncher().submit(spec)
    assert not (qtrain_home / "jobs" / "g").exists()


def test_unknown_job(qtrain_home):
    with pytest.raises(LauncherError, match="no local job named nope") as info:
        LocalLauncher().status("nope")
    assert info.value.status == 404


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _wait_for_line(launcher, name, text, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(text in line for line in launcher.logs(name)):
            return
        assert not launcher.status(name).finished, launcher.status(name).message
        time.sleep(0.3)
    raise AssertionError(f"{text!r} never appeared in the master log")


@pytest.mark.slow
def test_killed_replica_restarts_per_exitcode_policy(qtrain_home, allreduce_spec, tmp_path):
    """SIGKILL the Master's torchrun mid-job: exit 137 is retryable under ExitCode, the gang restarts
    on a fresh port and the job completes; no process of it survives."""
    launcher = LocalLauncher()
    spec = JobSpec.model_validate(allreduce_spec("kill", train={"hold_seconds": 120}))
    launcher.submit(spec)
    _wait_for_line(launcher, "kill", "holding")
    master = launcher.status("kill").replicas[0]
    assert master.name == "kill-master-0" and master.phase == "Running"
    os.kill(master.pid, signal.SIGKILL)
    final = launcher.wait("kill", timeout=180)
    assert final.state == "Succeeded", final.message
    assert final.restarts == 1
    restarting = next(c for c in final.conditions if c.type == "Restarting")
    assert restarting.message == "PyTorchJob kill is restarting because kill-master-0 exited with code 137."
    assert json.loads((tmp_path / "out-kill" / "result.json").read_text()) == {"world_size": 2, "sum": 3.0}
    log = "\n".join(launcher.logs("kill"))
    assert "attempt 0 of kill-master-0" in log and "attempt 1 of kill-master-0" in log
    assert not _alive(master.pid)
    assert ls.job_pids(ls.read_state(qtrain_home / "jobs" / "kill").uid) == []


@pytest.mark.slow
def test_trainer_errors_fail_or_exhaust_backoff(qtrain_home, allreduce_spec):
    """Exit code 3 (a trainer error): ExitCode fails at once; OnFailure retries up to backoffLimit."""
    launcher = LocalLauncher()
    one_node = {"nodes": 1, "train": {"exit_code": 3}}
    launcher.submit(JobSpec.model_validate(allreduce_spec("exitcode", **one_node)))
    launcher.submit(JobSpec.model_validate(allreduce_spec(
        "onfailure", restart_policy="OnFailure", run_policy={"backoff_limit": 1}, **one_node)))
    final = launcher.wait("exitcode", timeout=120)
    assert (final.state, final.restarts, final.conditions[-1].reason) == ("Failed", 0, "PyTorchJobFailed")
    assert "exitcode-master-0 exited with code 1" in final.message     # torchrun reports its worker's failure
    final = launcher.wait("onfailure", timeout=180)
    assert (final.state, final.restarts, final.conditions[-1].reason) == ("Failed", 1, "BackoffLimitExceeded")


@pytest.mark.slow
def test_cancel_leaves_no_orphans(qtrain_home, allreduce_spec):
    launcher = LocalLauncher()
    spec = JobSpec.model_validate(allreduce_spec("cxl", train={"hold_seconds": 300}))
    launcher.submit(spec)
    _wait_for_line(launcher, "cxl", "holding")
    uid = ls.read_state(qtrain_home / "jobs" / "cxl").uid
    pids = ls.job_pids(uid)
    assert len(pids) >= 4          # 2 torchrun agents + their 2 workers (in sessions of their own)
    with pytest.raises(LauncherError, match="local job cxl already exists \\(Running\\)"):
        launcher.submit(spec)
    launcher.cancel("cxl")
    final = launcher.status("cxl")
    assert (final.state, final.conditions[-1].reason) == ("Failed", "JobCancelled")
    assert [p for p in pids if _alive(p)] == []
    assert ls.job_pids(uid) == [] and ls.supervisor_pids(uid) == []
    assert [j.name for j in launcher.list({"qwen3-trainer.io/run-id": "cxl"})] == ["cxl"]
    assert launcher.list({"qwen3-trainer.io/run-id": "other"}) == []


@pytest.mark.slow
def test_supervisor_identity_covers_its_start_and_its_loss(qtrain_home, allreduce_spec, monkeypatch):
    """Between fork and exec the supervisor still shows the submitter's environment (no marker): the
    identity recorded at submit keeps the job alive then; once that process is gone the job reads
    Failed/SupervisorLost (and the name can be taken again)."""
    launcher = LocalLauncher()
    launcher.submit(JobSpec.model_validate(allreduce_spec("boot", train={"hold_seconds": 300})))
    uid = ls.read_state(qtrain_home / "jobs" / "boot").uid
    pid = int((qtrain_home / "jobs" / "boot" / "supervisor.pid").read_text().split()[0])
    monkeypatch.setattr(ls, "supervisor_pids", lambda _uid: [])      # the marker is not visible yet
    assert not launcher.status("boot").finished
    _wait_for_line(launcher, "boot", "holding")
    os.kill(pid, signal.SIGKILL)
    final = launcher.wait("boot", timeout=30)
    assert (final.state, final.conditions[-1].reason) == ("Failed", "SupervisorLost")
    for p in ls.job_pids(uid):                                      # the replicas it left behind
        os.kill(p, signal.SIGKILL)


@pytest.mark.slow
def test_smoke_job_one_node_two_processes(qtrain_home):
    """The cluster smoke test (platform/jobs/smoke.py) as a local 1 node x 2 process job."""
    launcher = LocalLauncher()
    launcher.submit(JobSpec.model_validate({
        "name": "smoke", "image": "r/i:1", "nproc_per_node": 2, "train": {"mib": 1, "iters": 2},
        "entrypoint": ["-m", "qwen3_trainer.platform.jobs.smoke"]}))
    final = launcher.wait("smoke", timeout=180)
    assert final.state == "Succeeded", final.message
    assert [r.name for r in final.replicas] == ["smoke-master-0"]
    assert any("allreduce ok | world 2" in line for line in launcher.logs("smoke"))


@pytest.mark.slow
def test_elastic_job_runs_workers_over_c10d(qtrain_home):
    """Elastic: two Workers, no Master, torchrun's c10d rendezvous at PET_RDZV_ENDPOINT (nnodes 1:2)."""
    launcher = LocalLauncher()
    launcher.submit(JobSpec.model_validate({
        "name": "el", "image": "r/i:1", "nodes": 2, "elastic": {"min_nodes": 1, "max_nodes": 2},
        "train": {"mib": 1, "iters": 2}, "entrypoint": ["-m", "qwen3_trainer.platform.jobs.smoke"]}))
    final = launcher.wait("el", timeout=180)
    assert final.state == "Succeeded", final.message
    assert [r.name for r in final.replicas] == ["el-worker-0", "el-worker-1"]
    lines = [line for i in (0, 1) for line in launcher.logs("el", "worker", i)]
    assert any("allreduce ok | world 2" in line for line in lines)    # printed by whichever holds rank 0
    assert list(launcher.logs("el")) == list(launcher.logs("el", "worker", 0))   # "master" of elastic = worker-0


@pytest.mark.slow
def test_active_deadline_fails_the_job_and_stops_it(qtrain_home, allreduce_spec):
    launcher = LocalLauncher()
    launcher.submit(JobSpec.model_validate(allreduce_spec(
        "late", nodes=1, train={"hold_seconds": 300}, run_policy={"active_deadline_seconds": 3})))
    final = launcher.wait("late", timeout=120)
    assert (final.state, final.conditions[-1].reason) == ("Failed", "DeadlineExceeded")
    assert ls.job_pids(ls.read_state(qtrain_home / "jobs" / "late").uid) == []
