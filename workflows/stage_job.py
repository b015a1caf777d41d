"""A stage as a training job: its JobSpec, and submit -> follow -> wait through the platform launcher.

The JobSpec (``platform.jobs``) carries the stage's complete training config inline (rendered into
the PyTorchJob's ConfigMap), so the same spec runs as local processes (the embedded default) or on
Kubernetes. The job name is ``qwen3-<stage>-<config hash>``: a retried stage resubmits the same name
and its trainer resumes from the newest complete checkpoint in its ``checkpoint.dir``.

On Kubernetes, cluster defaults come from ``$QTRAIN_CLUSTER_CONFIG`` (the Helm chart mounts its
``cluster.yaml``): namespace, image, service account, node pools, gang scheduling, the S3
credentials Secret and per-stage nodes / backoff / deadline.

``run`` follows the job's log (training-step lines go to ``on_line``) while waiting; whatever stops
the wait early — an exception, Ctrl-C, a flow cancellation (SIGTERM) — cancels the job first.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import yaml

from qwen3_trainer.platform.jobs import JobSpec, JobStatus, get_launcher, parse_spec
from qwen3_trainer.workflows.presets import Preset

S3_SECRET = "qwen3-trainer-s3"  # the chart's default credentials Secret (README: Deploy on Kubernetes)


def job_name(stage: str, config_hash: str) -> str:
    return f"qwen3-{stage.lower()}-{config_hash[:12]}"


def cluster_config() -> dict[str, Any]:
    path = os.environ.get("QTRAIN_CLUSTER_CONFIG")
    if not path:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def check_cluster(namespace: str | None) -> None:
    """Raise ValueError (one line) if the Kubernetes API cannot be configured."""
    from qwen3_trainer.platform.jobs import LauncherError

    try:
        get_launcher("k8s", namespace=namespace or cluster_config().get("namespace"))
    except LauncherError as exc:
        raise ValueError(str(exc)) from None


def build_spec(stage: str, preset: Preset, config_hash: str, train: dict[str, Any], *, backend: str,
               pipeline_id: str, namespace: str | None = None, remote_storage: bool = False) -> JobSpec:
    knobs = preset.knobs(stage)
    cluster = cluster_config() if backend == "k8s" else {}
    per_stage = (cluster.get("stages") or {}).get(stage, {})
    pool_name = per_stage.get("nodePool") or knobs.node_pool
    pool = (cluster.get("nodePools") or {}).get(pool_name or "", {})
    env: list[dict[str, Any]] = []
    if remote_storage:
        secret = (cluster.get("s3") or {}).get("credentialsSecret") or S3_SECRET
        env += [{"name": k, "secret": {"name": secret, "key": k}} for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
        endpoint = (cluster.get("s3") or {}).get("endpointUrl") or os.environ.get("AWS_ENDPOINT_URL_S3")
        if endpoint:
            env.append({"name": "AWS_ENDPOINT_URL_S3", "value": endpoint})
        region = (cluster.get("s3") or {}).get("region") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            env.append({"name": "AWS_DEFAULT_REGION", "value": region})
    sched = cluster.get("scheduling") or {}
    gang = sched.get("gangScheduler") or "none"
    spec: dict[str, Any] = {
        "name": job_name(stage, config_hash),
        "namespace": namespace or cluster.get("namespace") or "default",
        "run_id": pipeline_id,
        "image": cluster.get("image") or preset.image,
        "train": train,
        "nodes": per_stage.get("nodes") or knobs.nodes,
        "gpus_per_node": pool.get("gpusPerNode", knobs.gpus_per_node),
        "nproc_per_node": knobs.nproc_per_node if not knobs.gpus_per_node else None,
        "env": env,
        "restart_policy": "ExitCode",
        "run_policy": {"backoff_limit": per_stage.get("backoffLimit", 1),
                       "active_deadline_seconds": per_stage.get("activeDeadlineSeconds") or None},
        "labels": {"qwen3-trainer.io/stage": stage, "qwen3-trainer.io/config-hash": config_hash[:16]},
        "scheduling": {"gang": gang, "queue": sched.get("queueName") or None,
                       "priority_class": sched.get("priorityClassName") or None},
    }
    if knobs.gpus_per_node == 0 and "gpusPerNode" not in pool:
        spec["resources"] = {"cpu": "2", "memory": "8Gi", "shm": "1Gi"}
    if pool:
        spec["node_pool"] = {"node_selector": pool.get("nodeSelector") or {},
                             "tolerations": pool.get("tolerations") or [],
                             "affinity": pool.get("affinity") or None}
    if cluster.get("serviceAccountName"):
        spec["service_account"] = cluster["serviceAccountName"]
    return parse_spec(spec, f"stage {stage}")


def run(spec: JobSpec, backend: str, *, on_line: Callable[[str], None] = print,
        on_status: Callable[[JobStatus], None] | None = None, namespace: str | None = None) -> JobStatus:
    """Submit ``spec``, stream its log, wait for Succeeded/Failed. Cancels the job if interrupted."""
    launcher = get_launcher(backend) if backend == "local" else get_launcher(backend, namespace=namespace or spec.namespace)
    launcher.submit(spec)
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(launcher, spec.name, on_line, stop), daemon=True,
                                name=f"logs-{spec.name}")
    follower.start()
    try:
        final = launcher.wait(spec.name, on_update=on_status)
    except BaseException:
        cancel(launcher, spec.name)
        raise
    finally:
        stop.set()
        follower.join(timeout=10)
    return final


def cancel(launcher, name: str) -> None:
    try:
        launcher.cancel(name)
    except Exception as exc:  # noqa: BLE001 - the original error matters more
        print(f"cancelling job {name} failed: {exc}")


def cancel_job(backend: str, name: str, namespace: str | None = None) -> None:
    launcher = get_launcher(backend) if backend == "local" else get_launcher(backend, namespace=namespace)
    cancel(launcher, name)


def _follow(launcher, name: str, on_line: Callable[[str], None], stop: threading.Event) -> None:
    try:
        for line in launcher.logs(name, follow=True):
            if stop.is_set():
                return
            on_line(line)
    except Exception as exc:  # noqa: BLE001 - log streaming is best effort; wait() decides
        on_line(f"(log stream of {name} ended: {exc})")
