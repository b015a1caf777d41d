"""Issue 20, jobs: a JobSpec's training config is checked at render and submit (nothing is submitted
when it fails); a failed job says why (the failing replica's last error line) in ``job status`` and
``--wait``; a job name in use is refused unless ``--replace``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from qwen3_trainer.cli.job_cmd import app
from qwen3_trainer.platform.jobs import local_state as ls
from qwen3_trainer.platform.jobs.k8s_launcher import K8sLauncher
from qwen3_trainer.platform.jobs.local_launcher import LocalLauncher
from qwen3_trainer.platform.jobs.spec import JobSpec
from qwen3_trainer.platform.jobs.status import JobStatus, LauncherError, set_condition

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
TORCHRUN_TAIL = """\
[rank0]: Traceback (most recent call last):
[rank0]:   File "x.py", line 3, in <module>
[rank0]: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB
E1202 12:00:00 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1)
Traceback (most recent call last):
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
qwen3_trainer.cli.main FAILED
"""


def _spec_file(tmp_path: Path, **train_patch) -> Path:
    spec = yaml.safe_load((ROOT / "k8s/jobs/debugmodel-cpu.yaml").read_text())
    for section, values in train_patch.items():
        spec["train"][section] = {**spec["train"].get(section, {}), **values}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# -- 4. the embedded training config is validated at render and submit ---------------------------
@pytest.mark.parametrize(("patch", "needle", "hint"), [
    ({"parallelism": {"dp_shard": 4}}, "train: parallelism: dp_replicate(1) * dp_shard(4)", "1 node(s) x 2 process(es)"),
    ({"training": {"steps": 0}}, "train: training.steps: Input should be greater than 0", None),
    ({"training": {"stepz": 3}}, "train: training.stepz: unknown key", None),
    ({"data": {"seq_len": 512}}, "train: data.seq_len=512 differs from training.seq_len=256", None),
])
def test_render_and_submit_refuse_a_bad_training_config(tmp_path, qtrain_home, patch, needle, hint):
    path = _spec_file(tmp_path, **patch)
    for command in (["render", str(path)], ["submit", str(path)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert lines[0].startswith(f"error: {path}: ") and needle in lines[0], result.stderr
        assert len(lines) == 2 and (hint is None or hint in lines[1]), result.stderr
    assert not (qtrain_home / "jobs").exists()  # nothing was submitted


def test_a_training_config_file_is_checked_too(tmp_path):
    (tmp_path / "run.yaml").write_text("model: {flavor: debugmodel}\ntraining: {steps: -1}\n")
    spec = {"name": "j", "image": "r/i:1", "train": "run.yaml"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["render", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 2, result.output
    assert "training.steps: Input should be greater than 0" in result.stderr.splitlines()[0]
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({**spec, "train": "missing.yaml"}))
    result = runner.invoke(app, ["render", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 2 and "not found" in result.stderr.splitlines()[0], result.stderr


# -- 4. a failed job reports its failing replica's last error line -------------------------------
def test_last_error_line():
    assert ls.last_error_line(TORCHRUN_TAIL.splitlines()) == \
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    cli = ["[rank0] 2026 qwen3_trainer.train: step 1 loss 3.0", "error: data source 'web': no files match x",
           "hint: set QTRAIN_DEBUG=1 for the traceback", *TORCHRUN_TAIL.splitlines()[3:]]
    assert ls.last_error_line(cli) == "error: data source 'web': no files match x"
    assert ls.last_error_line(["step 1 loss 2.0", "UserWarning: x"]) is None


def test_local_job_status_and_wait_say_why_it_failed(tmp_path, qtrain_home):
    entry = tmp_path / "entry.py"
    entry.write_text("import sys\nprint('step 1 loss 2.0')\n"
                     "print('error: parallelism: dp_shard(2) != world size 1', file=sys.stderr)\nsys.exit(2)\n")
    spec = {"name": "fails", "image": "r/i:1", "entrypoint": [str(entry)], "train": {"x": 1},
            "restart_policy": "Never"}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["submit", str(tmp_path / "spec.yaml"), "--wait", "--timeout", "120"])
    assert result.exit_code == 1, result.output
    why = "(error: parallelism: dp_shard(2) != world size 1)"   # torchrun itself exits 1 for its worker's 2
    assert "fails-master-0 exited with code 1 " + why in result.stdout, result.stdout
    status = runner.invoke(app, ["status", "fails", "--json"])
    assert why in json.loads(status.stdout)["conditions"][-1]["message"]


def test_k8s_status_of_a_failed_job_names_the_error(kube_api, tmp_path):
    launcher = K8sLauncher(kubeconfig=kube_api.kubeconfig(tmp_path / "kc", namespace="t"))
    launcher.submit(JobSpec.model_validate({"name": "k1", "namespace": "t", "image": "r/i:1", "nodes": 2,
                                            "train": {"x": 1}}))
    kube_api.operator_start("t", "k1")
    kube_api.set_pod("t", "k1-master-0", "Succeeded", exit_code=0)
    kube_api.set_pod("t", "k1-worker-0", "Failed", exit_code=1)
    kube_api.append_log("t", "k1-worker-0", TORCHRUN_TAIL)
    kube_api.set_condition("t", "k1", "Failed", "PyTorchJobFailed", "PyTorchJob k1 is failed because 1 Worker replica(s) failed.")
    status = launcher.status("k1")
    assert status.message == ("PyTorchJob k1 is failed because 1 Worker replica(s) failed: k1-worker-0: "
                              "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB")


# -- 4. a job name in use is refused unless --replace --------------------------------------------
def _finished_job(root: Path, name: str) -> Path:
    job_dir = root / "jobs" / name
    job_dir.mkdir(parents=True)
    (job_dir / "logs").mkdir()
    (job_dir / "logs" / f"{name}-master-0.log").write_text("the earlier run's log\n")
    status = JobStatus(name=name, namespace="default", backend="local")
    status.conditions = set_condition([], "Succeeded", "PyTorchJobSucceeded", "done")
    ls.write_state(job_dir, ls.LocalState(status=status, uid="old", cwd=str(root)))
    return job_dir


def test_local_name_collision_is_refused_unless_replace(tmp_path, qtrain_home, monkeypatch):
    job_dir = _finished_job(qtrain_home, "again")
    spec = {"name": "again", "image": "r/i:1", "entrypoint": ["-m", "qwen3_trainer.platform.jobs.smoke"],
            "train": {"mib": 1, "iters": 1}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["submit", str(tmp_path / "spec.yaml")])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (f"error: local job again already exists (Succeeded); its record and "
                                             f"logs are under {job_dir}")
    assert "--replace" in result.stderr and (job_dir / "logs" / "again-master-0.log").exists()
    started = []
    monkeypatch.setattr("subprocess.Popen", lambda *a, **k: started.append(a) or _NoProcess())
    LocalLauncher().submit(JobSpec.model_validate(spec), replace=True)
    assert started and not (job_dir / "logs").exists() and ls.read_state(job_dir).uid != "old"


class _NoProcess:
    pid = 2 ** 22 + 1   # no such process: the record says a supervisor ran; nothing is left behind

    def poll(self):
        return 0


def test_k8s_replace_deletes_the_finished_job_first(kube_api, tmp_path):
    launcher = K8sLauncher(kubeconfig=kube_api.kubeconfig(tmp_path / "kc", namespace="t"))
    spec = JobSpec.model_validate({"name": "k2", "namespace": "t", "image": "r/i:1", "train": {"x": 1}})
    launcher.submit(spec)
    kube_api.set_condition("t", "k2", "Created", "PyTorchJobCreated", "created")
    with pytest.raises(LauncherError, match="k2 already exists \\(Created\\)"):
        launcher.submit(spec, replace=True)              # not finished: never replaced
    kube_api.set_condition("t", "k2", "Succeeded", "PyTorchJobSucceeded", "done")
    old_uid = kube_api.get("pytorchjobs", "t", "k2")["metadata"]["uid"]
    with pytest.raises(LauncherError, match="already exists"):
        launcher.submit(spec)
    launcher.submit(spec, replace=True)
    assert kube_api.get("pytorchjobs", "t", "k2")["metadata"]["uid"] != old_uid
    assert launcher.status("k2").state == "Pending"

