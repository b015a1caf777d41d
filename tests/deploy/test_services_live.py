"""The chart's containers, run for real: the MLflow and Prefect servers start from exactly the env
and args the chart renders (secretKeyRef and $(VAR) resolved as the kubelet would, volume paths
mapped into a temp dir), answer on their probe paths, accept the Host headers in-cluster clients
send, store artifacts in S3 (a moto server), and the worker's init container registers the work pool
with the rendered base job template. Not run here: the worker itself (prefect-kubernetes + a cluster)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from chart_helpers import helm_template, load_docs
from k8s_objects import find

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
PREFIX = "qwen3-qwen3-trainer"
S3_SECRET = {("qwen3-trainer-s3", "AWS_ACCESS_KEY_ID"): "testing",
             ("qwen3-trainer-s3", "AWS_SECRET_ACCESS_KEY"): "testing"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubelet_env(container: dict, secrets: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: secretKeyRef looked up, $(VAR) expanded
    from variables defined earlier in the list (unknown references stay as written)."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secrets[(ref["name"], ref["key"])]
        else:
            env[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), entry.get("value", ""))
    return env


def _remap(env: dict[str, str], mounts: dict[str, Path]) -> dict[str, str]:
    """Point container mount paths at local dirs (one pass: a replaced path is not replaced again)."""
    pattern = re.compile("|".join(re.escape(m) for m in sorted(mounts, key=len, reverse=True)))
    return {key: pattern.sub(lambda m: str(mounts[m[0]]), value) for key, value in env.items()}


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path):
    full_env = {"PATH": f"{BIN}:/usr/bin:/bin", "OMP_NUM_THREADS": "1", **env}
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(BIN / args[0]), *args[1:]], env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this test started, nothing else
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _get(port: int, path: str, host: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host} if host else {})
        return conn.getresponse().status
    finally:
        conn.close()


def _wait_ready(proc, port: int, path: str, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
        try:
            if _get(port, path) == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def _render(helm, *sets: str) -> list[dict]:
    args = [a for s in sets for a in ("--set", s)]
    done = helm_template(helm, *args)
    assert done.returncode == 0, done.stderr
    return load_docs(done.stdout)


@pytest.fixture
def moto(tmp_path):
    port = _free_port()
    log = tmp_path / "moto.log"
    with _process(["moto_server", "-H", "127.0.0.1", "-p", str(port)], {}, log) as proc:
        _wait_ready(proc, port, "/moto-api/", log, timeout=60)
        yield f"http://127.0.0.1:{port}"


def test_mlflow_server_as_rendered(helm, moto, tmp_path):
    import boto3
    from mlflow import MlflowClient

    port = _free_port()
    objects = _render(helm, "postgresql.enabled=false", f"s3.endpointUrl={moto}",
                      f"mlflow.service.port={port}", "mlflow.workers=1")
    container = find(objects, "Deployment", "-mlflow")["spec"]["template"]["spec"]["containers"][0]
    env = _remap(kubelet_env(container, S3_SECRET), {"/data": tmp_path / "data", "/tmp": tmp_path / "tmp"})
    (tmp_path / "data").mkdir()
    (tmp_path / "tmp").mkdir()
    s3 = boto3.client("s3", endpoint_url=moto, aws_access_key_id="testing", aws_secret_access_key="testing",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="qwen3-trainer")
    log = tmp_path / "mlflow.log"
    with _process(container["args"], env, log) as proc:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            _wait_ready(proc, port, container[probe]["httpGet"]["path"], log)
        api = "/api/2.0/mlflow/experiments/search?max_results=1"
        for host in (f"{PREFIX}-mlflow:{port}", f"{PREFIX}-mlflow.ml.svc.cluster.local:{port}", f"localhost:{port}"):
            assert _get(port, api, host) == 200, host
        assert _get(port, api, "attacker.example.com") in (400, 403)  # DNS-rebinding guard still on

        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        run = client.create_run(client.create_experiment("chart-check"))
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: clients need no S3 keys
        client.log_text(run.info.run_id, "stage S1 done", "notes/summary.txt")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="qwen3-trainer", Prefix="mlflow-artifacts/")["Contents"]]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/notes/summary.txt") for k in keys), keys
    assert (tmp_path / "data" / "mlflow.db").exists()  # the backend store on the volume path


def test_prefect_server_and_work_pool_as_rendered(helm, tmp_path):
    port = _free_port()
    objects = _render(helm, "postgresql.enabled=false", f"prefect.server.service.port={port}")
    server = find(objects, "Deployment", "-prefect-server")["spec"]["template"]["spec"]["containers"][0]
    mounts = {"/home/prefect": tmp_path / "home", "/data": tmp_path / "data", "/etc/prefect": tmp_path / "etc"}
    for path in mounts.values():
        path.mkdir()
    env = _remap(kubelet_env(server, {}), mounts)
    log = tmp_path / "prefect.log"
    with _process(server["args"], env, log) as proc:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            _wait_ready(proc, port, server[probe]["httpGet"]["path"], log)

        # the worker's init container, as rendered: creates the pool, then (upgrade) overwrites it
        worker = find(objects, "Deployment", "-prefect-worker")["spec"]["template"]["spec"]
        template = find(objects, "ConfigMap", "-base-job-template")["data"]["base-job-template.json"]
        (mounts["/etc/prefect"] / "base-job-template.json").write_text(template)
        (init,) = worker["initContainers"]
        init_env = _remap(kubelet_env(init, {}), mounts)
        assert init_env["PREFECT_API_URL"] == f"http://{PREFIX}-prefect-server:{port}/api"
        init_env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"  # no cluster DNS here
        args = list(_remap(dict(enumerate(init["args"])), mounts).values())
        for attempt in ("create", "overwrite"):
            done = subprocess.run([str(BIN / args[0]), *args[1:]], env={"PATH": f"{BIN}:/usr/bin:/bin", **init_env},
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{attempt}: {done.stdout[-2000:]}{done.stderr[-2000:]}"

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/api/work_pools/qwen3-k8s")
        pool = json.loads(conn.getresponse().read())
        conn.close()
    assert pool["type"] == "kubernetes"
    assert pool["base_job_template"] == json.loads(template)
    assert (mounts["/data"] / "prefect.db").exists()


def test_prefect_server_rejects_a_broken_job_template(helm, tmp_path):
    # the check above can fail: a placeholder without a variable is refused by the server
    template = json.loads(find(_render(helm), "ConfigMap", "-base-job-template")["data"]["base-job-template.json"])
    template["job_configuration"]["job_manifest"]["spec"]["activeDeadlineSeconds"] = "{{ deadline }}"
    from prefect.server.schemas.actions import WorkPoolCreate

    with pytest.raises(ValueError, match="undeclared variable"):
        WorkPoolCreate(name="x", type="kubernetes", base_job_template=template)
