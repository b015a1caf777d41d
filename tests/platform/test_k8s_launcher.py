"""Kubernetes launcher against the HTTP API double (kube_api_double.py): the real kubernetes client
submits, watches, reads logs, cancels and lists; API errors become one line with a hint."""

from __future__ import annotations

import time

import pytest
from kube_api_double import wait_beside

from qwen3_trainer.platform.jobs.k8s_launcher import K8sLauncher
from qwen3_trainer.platform.jobs.render import render
from qwen3_trainer.platform.jobs.spec import JobSpec
from qwen3_trainer.platform.jobs.status import LauncherError

NS = "train"


def _spec(name="j1", **over) -> JobSpec:
    return JobSpec.model_validate({"name": name, "namespace": NS, "image": "r/i:1", "nodes": 3,
                                   "gpus_per_node": 8, "train": {"model": {"flavor": "debugmodel"}}, **over})


@pytest.fixture
def launcher(kube_api, tmp_path):
    return K8sLauncher(kubeconfig=kube_api.kubeconfig(tmp_path / "kubeconfig", namespace=NS))


def test_submit_creates_owned_configmap_and_the_rendered_job(kube_api, launcher):
    spec = _spec()
    handle = launcher.submit(spec)
    assert (handle.backend, handle.name, handle.namespace, handle.run_id) == ("k8s", "j1", NS, "j1")
    expected = render(spec)
    job = kube_api.get("pytorchjobs", NS, "j1")
    assert job["spec"] == expected.job["spec"] and job["metadata"]["labels"] == expected.job["metadata"]["labels"]
    cm = kube_api.get("configmaps", NS, "j1-config")
    assert cm["data"] == expected.configmap["data"] and cm["immutable"] is True
    assert cm["metadata"]["ownerReferences"] == [{
        "apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "j1", "uid": job["metadata"]["uid"],
        "controller": False, "blockOwnerDeletion": False}]
    assert [m for m, _ in kube_api.requests] == ["POST", "POST", "PATCH"]


def test_status_reports_conditions_and_pod_phases(kube_api, launcher):
    launcher.submit(_spec())
    kube_api.operator_start(NS, "j1")
    kube_api.set_pod(NS, "j1-master-0", "Running")
    kube_api.set_pod(NS, "j1-worker-0", "Running", restarts=2)
    kube_api.set_pod(NS, "j1-worker-1", "Failed", exit_code=137)
    kube_api.set_condition(NS, "j1", "Running", "PyTorchJobRunning", "PyTorchJob j1 is running.")
    s = launcher.status("j1")
    assert (s.state, s.backend, s.run_id, s.restarts, s.finished) == ("Running", "k8s", "j1", 2, False)
    assert [(r.name, r.replica_type, r.index, r.phase, r.restarts, r.exit_code) for r in s.replicas] == [
        ("j1-master-0", "Master", 0, "Running", 0, None), ("j1-worker-0", "Worker", 0, "Running", 2, None),
        ("j1-worker-1", "Worker", 1, "Failed", 0, 137)]
    assert [(c.type, c.status) for c in s.conditions] == [("Created", "True"), ("Running", "True")]


def test_wait_watches_until_succeeded_and_logs_follow(kube_api, launcher):
    launcher.submit(_spec(nodes=2))

    def operator():
        kube_api.operator_start(NS, "j1")
        time.sleep(0.3)
        for pod in ("j1-master-0", "j1-worker-0"):
            kube_api.set_pod(NS, pod, "Running")
        kube_api.set_condition(NS, "j1", "Running", "PyTorchJobRunning", "running")
        for step in range(3):
            kube_api.append_log(NS, "j1-master-0", f"step {step} | loss {4 - step}.0\n")
            time.sleep(0.2)
        kube_api.set_pod(NS, "j1-master-0", "Succeeded", exit_code=0)
        kube_api.set_pod(NS, "j1-worker-0", "Succeeded", exit_code=0)
        kube_api.set_condition(NS, "j1", "Succeeded", "PyTorchJobSucceeded", "PyTorchJob j1 is successfully completed.")

    lines = []

    def follow():
        if _wait_for_pod(kube_api):
            lines.extend(launcher.logs("j1", follow=True))

    final, states = wait_beside(launcher, "j1", operator, follow)
    assert final.state == "Succeeded" and final.message == "PyTorchJob j1 is successfully completed."
    assert states[0] in ("Pending", "Created") and states[-1] == "Succeeded" and "Running" in states
    assert lines == ["step 0 | loss 4.0", "step 1 | loss 3.0", "step 2 | loss 2.0"]
    assert list(launcher.logs("j1", tail=1)) == ["step 2 | loss 2.0"]
    assert list(launcher.logs("j1", replica="worker", index=0)) == []


def _wait_for_pod(kube_api, pod="j1-master-0", timeout=10) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if kube_api.get("pods", NS, pod):
            return True
        time.sleep(0.05)
    return False


def test_cancel_deletes_job_pods_and_configmap_then_404(kube_api, launcher):
    launcher.submit(_spec())
    kube_api.operator_start(NS, "j1")
    launcher.cancel("j1")
    assert kube_api.get("pytorchjobs", NS, "j1") is None
    assert kube_api.get("configmaps", NS, "j1-config") is None and kube_api.get("pods", NS, "j1-master-0") is None
    with pytest.raises(LauncherError) as info:
        launcher.status("j1")
    assert str(info.value) == 'cannot get PyTorchJob train/j1: 404 Not Found: pytorchjobs.kubeflow.org "j1" not found'
    assert info.value.hint == "qtrain job list --backend k8s shows the jobs of the namespace"


def test_list_by_label(kube_api, launcher):
    launcher.submit(_spec("a1", run_id="run-7"))
    launcher.submit(_spec("b1", labels={"team": "rl"}))
    kube_api.operator_start(NS, "a1")
    assert [j.name for j in launcher.list()] == ["a1", "b1"]
    only = launcher.list({"qwen3-trainer.io/run-id": "run-7"})
    assert [(j.name, len(j.replicas)) for j in only] == [("a1", 3)]
    assert [j.name for j in launcher.list({"team": "rl"})] == ["b1"]


def test_conflict_is_409_with_hint_and_stale_configmap_is_replaced(kube_api, launcher):
    launcher.submit(_spec())
    with pytest.raises(LauncherError, match=r"^PyTorchJob train/j1 already exists$") as info:
        launcher.submit(_spec())
    assert info.value.status == 409 and "qtrain job cancel j1" in info.value.hint
    # a ConfigMap left by a job that is gone is replaced, not a conflict
    kube_api._delete("pytorchjobs", NS, "j1")
    kube_api._put("configmaps", NS, {"metadata": {"name": "j1-config"}, "data": {"config.yaml": "old"}})
    launcher.submit(_spec())
    assert kube_api.get("configmaps", NS, "j1-config")["data"]["config.yaml"] != "old"


def test_invalid_422_rolls_back_the_configmap(kube_api, launcher):
    kube_api.inject_error("POST", "/pytorchjobs", 422,
                          'PyTorchJob.kubeflow.org "j1" is invalid: spec.runPolicy.backoffLimit: Invalid value')
    with pytest.raises(LauncherError) as info:
        launcher.submit(_spec())
    assert str(info.value) == ('cannot create PyTorchJob train/j1: 422 Unprocessable Entity: PyTorchJob.kubeflow.org '
                               '"j1" is invalid: spec.runPolicy.backoffLimit: Invalid value')
    assert "qtrain job render" in info.value.hint
    assert kube_api.get("configmaps", NS, "j1-config") is None


def test_missing_crd_hints_at_the_operator(kube_api, launcher):
    kube_api.inject_error("POST", "/pytorchjobs", 404, "the server could not find the requested resource")
    with pytest.raises(LauncherError) as info:
        launcher.submit(_spec())
    assert info.value.status == 404 and "training operator installed" in info.value.hint


def test_unauthorized_and_forbidden(kube_api, tmp_path):
    bad = K8sLauncher(kubeconfig=kube_api.kubeconfig(tmp_path / "bad", namespace=NS, token="wrong"))
    with pytest.raises(LauncherError) as info:
        bad.list()
    assert str(info.value) == "cannot list PyTorchJobs in train: 401 Unauthorized: Unauthorized"
    assert "kubectl auth whoami" in info.value.hint
    kube_api.forbidden_namespaces.add("locked")
    good = K8sLauncher(kubeconfig=kube_api.kubeconfig(tmp_path / "good", namespace="locked"))
    with pytest.raises(LauncherError) as info:
        good.submit(_spec(namespace="locked"))
    assert info.value.status == 403 and str(info.value).startswith("cannot create ConfigMap locked/j1-config: 403")
    assert "kubectl auth can-i create pytorchjobs.kubeflow.org -n locked" in info.value.hint


def test_unreachable_server_is_one_line(tmp_path, kube_api):
    cfg = kube_api.kubeconfig(tmp_path / "kc")
    kube_api.stop()
    launcher = K8sLauncher(kubeconfig=cfg)
    with pytest.raises(LauncherError, match=r"^cannot reach the Kubernetes API at http://127\.0\.0\.1:\d+"):
        launcher.list()


def test_kubeconfig_context_namespace_is_the_default(kube_api, tmp_path):
    launcher = K8sLauncher(kubeconfig=kube_api.kubeconfig(tmp_path / "kc", namespace="team-a"))
    assert launcher.namespace == "team-a"
    assert K8sLauncher(namespace="x", kubeconfig=str(tmp_path / "kc")).namespace == "x"
    with pytest.raises(LauncherError, match="cannot load kubeconfig"):
        K8sLauncher(kubeconfig=str(tmp_path / "missing"))
