"""The chart's Role against what the code really does: the platform's Kubernetes launcher runs a
whole job lifecycle (submit with its ConfigMap, status, watch to completion, logs, list, cancel), as a
PyTorchJob and as a TrainJob on the TrainingRuntime the chart installs,
against the HTTP API double of tests/platform, every request the kubernetes client sends is recorded
and mapped to an RBAC (apiGroup, resource, verb), and each must be granted by the rendered Role, in
the Role's namespace. A verb the launcher starts to need fails here before it fails in a cluster."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
from chart_helpers import NAMESPACE, RELEASE
from k8s_objects import by_kind
from kubernetes.client import rest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
from kube_api_double import KubeApiDouble  # noqa: E402  (tests/platform's double, reused as is)

from qwen3_trainer.platform.jobs.k8s_launcher import K8sLauncher  # noqa: E402
from qwen3_trainer.platform.jobs.spec import JobSpec  # noqa: E402
from qwen3_trainer.platform.jobs.trainjob import render_runtime  # noqa: E402


def rbac_of(method: str, url: str, query: dict) -> tuple[str, str, str, str | None]:
    """(apiGroup, resource[/subresource], verb, namespace) of one API request."""
    parts = urlparse(url).path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest_parts = parts[2:] if parts[0] == "api" else parts[3:]
    namespace = None
    if rest_parts[:1] == ["namespaces"] and len(rest_parts) > 2:
        namespace, rest_parts = rest_parts[1], rest_parts[2:]
    resource, name, sub = (rest_parts + [None, None])[:3]
    if sub:
        resource = f"{resource}/{sub}"
    if method == "GET":
        verb = "get" if name else ("watch" if query.get("watch") in ("true", "True", True) else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
                "DELETE": "delete" if name else "deletecollection"}[method]
    return group, resource, verb, namespace


def _allowed(role: dict, group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in role["rules"])


@pytest.fixture
def recorded(monkeypatch):
    calls: list[tuple[str, str, dict]] = []
    original = rest.RESTClientObject.request

    def record(self, method, url, query_params=None, *args, **kwargs):
        query = dict(query_params or [])
        query.update({k: v[0] for k, v in parse_qs(urlparse(url).query).items()})
        calls.append((method, url, query))
        return original(self, method, url, query_params, *args, **kwargs)

    monkeypatch.setattr(rest.RESTClientObject, "request", record)
    return calls


@pytest.mark.parametrize("kind", ["PyTorchJob", "TrainJob"])
def test_role_grants_every_request_of_a_job_lifecycle(renders, recorded, tmp_path, kind):
    api = KubeApiDouble(token="t")
    api.start()
    try:
        launcher = K8sLauncher(kubeconfig=api.kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE))
        runtime = f"{RELEASE}-qwen3-trainer-torch"       # the chart's (jobs.api TrainJob)
        trainjob = {"kind": "TrainJob", "runtime": {"name": runtime, "kind": "TrainingRuntime"}}
        spec = JobSpec.model_validate({"name": "s1-run", "namespace": NAMESPACE, "image": "r/i:1", "nodes": 2,
                                       "gpus_per_node": 8, "train": {"model": {"flavor": "debugmodel"}},
                                       **(trainjob if kind == "TrainJob" else {})})
        own = spec.model_copy(update={"runtime": None})
        api._put("trainingruntimes", NAMESPACE, render_runtime(own, runtime, {}).to_dict())
        launcher.submit(spec)

        def operator():
            if kind == "TrainJob":
                pods = api.trainer_start(NAMESPACE, "s1-run")
            else:
                pods = api.operator_start(NAMESPACE, "s1-run")
            for pod in pods:
                api.set_pod(NAMESPACE, pod, "Running")
            api.append_log(NAMESPACE, pods[0], "step 1 | loss 3.0\n")
            time.sleep(0.5)
            for pod in pods:
                api.set_pod(NAMESPACE, pod, "Succeeded", exit_code=0)
            api.set_condition(NAMESPACE, "s1-run", "Complete" if kind == "TrainJob" else "Succeeded", "Done", "done")

        thread = threading.Thread(target=operator)
        thread.start()
        assert launcher.wait("s1-run", timeout=30).state == "Succeeded"
        thread.join()
        launcher.status("s1-run")
        assert list(launcher.logs("s1-run")) == ["step 1 | loss 3.0"]
        assert [j.name for j in launcher.list({"qwen3-trainer.io/run-id": "s1-run"})] == ["s1-run"]
        launcher.cancel("s1-run")
    finally:
        api.stop()

    seen = {rbac_of(m, u, q) for m, u, q in recorded if "/namespaces/" in u}
    plural = "trainjobs" if kind == "TrainJob" else "pytorchjobs"
    assert {verb for _, resource, verb, _ in seen if resource == plural} >= {"create", "get", "watch", "list", "delete"}
    assert {verb for _, _, verb, _ in seen} >= {"create", "patch", "get", "list", "watch", "delete"}  # a full lifecycle
    for values in ("default", "all-on-values"):
        (role,) = by_kind(renders[values], "Role")
        for group, resource, verb, namespace in sorted(seen, key=str):
            assert namespace == NAMESPACE == role["metadata"]["namespace"]
            assert _allowed(role, group, resource, verb), f"Role lacks {verb} on {group or 'core'}/{resource}"
    unscoped = [u for _, u, _ in recorded if "/namespaces/" not in u and not u.endswith("/version")]
    assert not unscoped, unscoped  # nothing cluster-scoped beyond the public /version


def test_mapping_of_requests_to_rbac():
    base = "https://k/apis/kubeflow.org/v1/namespaces/ml/pytorchjobs"
    assert rbac_of("GET", base, {"watch": True}) == ("kubeflow.org", "pytorchjobs", "watch", "ml")
    assert rbac_of("GET", base, {}) == ("kubeflow.org", "pytorchjobs", "list", "ml")
    assert rbac_of("DELETE", base + "/j", {}) == ("kubeflow.org", "pytorchjobs", "delete", "ml")
    assert rbac_of("GET", "https://k/api/v1/namespaces/ml/pods/p/log", {}) == ("", "pods/log", "get", "ml")
    assert rbac_of("PATCH", "https://k/api/v1/namespaces/ml/configmaps/c", {}) == ("", "configmaps", "patch", "ml")
    assert rbac_of("GET", "https://k/api/v1/nodes", {}) == ("", "nodes", "list", None)
