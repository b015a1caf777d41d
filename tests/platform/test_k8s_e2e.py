"""Opt-in end-to-end test on a real cluster (marker ``k8s``): KUBECONFIG must point at a cluster with
the Kubeflow training operator v1.9, and QTRAIN_E2E_IMAGE name an image with this package. Submits a
2-node CPU PyTorchJob running the smoke test (platform/jobs/smoke.py), waits for Succeeded, reads
both replicas' logs and deletes it. Namespace: QTRAIN_E2E_NAMESPACE (default ``default``)."""

from __future__ import annotations

import os
import uuid

import pytest

from qwen3_trainer.platform.jobs import get_launcher
from qwen3_trainer.platform.jobs.spec import JobSpec

pytestmark = pytest.mark.k8s


@pytest.fixture
def cluster():
    if not os.environ.get("KUBECONFIG") or not os.environ.get("QTRAIN_E2E_IMAGE"):
        pytest.skip("set KUBECONFIG (a cluster with the training operator) and QTRAIN_E2E_IMAGE")
    launcher = get_launcher("k8s", namespace=os.environ.get("QTRAIN_E2E_NAMESPACE", "default"))
    launcher.list()        # reachable, authorised and the CRD is installed, or a LauncherError says which
    return launcher


def test_smoke_job_on_a_real_cluster(cluster):
    name = f"qtrain-e2e-{uuid.uuid4().hex[:6]}"
    spec = JobSpec.model_validate({
        "name": name, "namespace": cluster.namespace, "image": os.environ["QTRAIN_E2E_IMAGE"],
        "nodes": 2, "nproc_per_node": 1, "entrypoint": ["-m", "qwen3_trainer.platform.jobs.smoke"],
        "train": {"mib": 4, "iters": 2}, "resources": {"cpu": "1", "memory": "2Gi", "shm": "256Mi"},
        "run_policy": {"backoff_limit": 0, "active_deadline_seconds": 900}})
    cluster.submit(spec)
    try:
        final = cluster.wait(name, timeout=900)
        assert final.state == "Succeeded", final.message
        assert any("allreduce ok | world 2" in line for line in cluster.logs(name))
        assert list(cluster.logs(name, replica="worker", index=0)) is not None
    finally:
        cluster.cancel(name)
