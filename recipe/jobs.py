"""A stage's jobs as JobSpecs: training, data preparation and evaluation, sized from its spec and the cluster.

The spec (recipe) says how many nodes and GPUs, which node pool and any per-pod overrides; the
cluster contract (``cluster.yaml``, recipe.cluster) says what a pool's nodes look like and how
pods get their CPU, memory and /dev/shm in proportion to their GPUs, plus identity, storage
credentials and gang scheduling. Nothing here is a stage knob: the chart cannot change a stage's
scale behind the config hash's back.

With ``api: TrainJob`` the JobSpecs are TrainJobs referencing the cluster's runtime; what a runtime
owns (gang scheduling through a PodGroup, priority, restarts, pull policy) is then the runtime's —
the chart renders the TrainingRuntime it installs from the same cluster values (``cluster_runtime`` is
that object, the chart's reference) — and only Kueue's queue label travels on each TrainJob.

Job names: ``qwen3-<stage>-<hash12>`` for training (a retried stage resubmits the same name and its
trainer resumes), ``...-prep`` for data preparation and ``...-eval`` for the thinking-budget curve.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from qwen3_trainer.recipe.plan import StagePlan
from qwen3_trainer.recipe.presets import Preset

JobKind = Literal["train", "prepare", "eval"]
ENTRYPOINTS = {
    "train": ["-m", "qwen3_trainer.cli.main", "train"],
    "prepare": ["-m", "qwen3_trainer.cli.main", "posttrain", "prepare"],
    "eval": ["-m", "qwen3_trainer.cli.main", "eval", "thinking-budget"],
}
SUFFIX = {"train": "", "prepare": "-prep", "eval": "-eval"}


def job_name(stage: str, config_hash: str, kind: JobKind = "train") -> str:
    return f"qwen3-{stage.lower()}-{config_hash[:12]}{SUFFIX[kind]}"


def _pool(p: StagePlan, cluster):
    scale = p.spec.scale
    name = scale.node_pool or ("gpu" if scale.gpus_per_node else "cpu")
    try:
        pool = cluster.pool(name)
    except ValueError as exc:
        raise ValueError(f"stage {p.stage}: {exc}") from None
    if scale.gpus_per_node > pool.gpusPerNode:
        raise ValueError(f"stage {p.stage}: needs {scale.gpus_per_node} GPUs per node; node pool {name!r} "
                         f"has {pool.gpusPerNode}")
    return pool


def job_spec(p: StagePlan, preset: Preset, config: dict[str, Any], *, kind: JobKind = "train",
             backend: str = "local", pipeline_id: str, cluster=None, namespace: str | None = None,
             remote_storage: bool = False):
    """The JobSpec of one of the stage's jobs (``config``: the filled config that job runs)."""
    from qwen3_trainer.platform.jobs import parse_spec
    from qwen3_trainer.recipe.cluster import load_cluster_config

    cluster = cluster if cluster is not None else load_cluster_config()
    scale = p.spec.scale
    pool = _pool(p, cluster)
    gpus = scale.gpus_per_node if kind != "eval" else min(scale.gpus_per_node, 1)
    # a preparation that trains T4's reward model (of the policy's size) takes the stage's nodes too
    trains = kind == "train" or (kind == "prepare" and p.spec.prepare is not None
                                 and p.spec.prepare.reward_model is not None)
    nodes = scale.nodes if trains else 1
    try:
        resources = pool.pod_resources(gpus)
    except ValueError as exc:
        raise ValueError(f"stage {p.stage}: {exc}") from None
    resources.update({k: v for k, v in p.spec.resources.model_dump().items() if v is not None})
    env: list[dict[str, Any]] = []
    if remote_storage:
        s3 = cluster.s3
        if s3.credentialsSecret:  # None under workload identity: the ServiceAccount carries the access
            env += [{"name": k, "secret": {"name": s3.credentialsSecret, "key": k}}
                    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
        endpoint = s3.endpointUrl or os.environ.get("AWS_ENDPOINT_URL_S3")
        if endpoint:
            env.append({"name": "AWS_ENDPOINT_URL_S3", "value": endpoint})
        region = s3.region or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            env.append({"name": "AWS_DEFAULT_REGION", "value": region})
    sched = cluster.scheduling
    run_policy = cluster.runPolicy
    try:
        runtime = cluster.trainjob_runtime()
    except ValueError as exc:
        raise ValueError(f"stage {p.stage}: {exc}") from None
    spec: dict[str, Any] = {
        "name": job_name(p.stage, p.config_hash, kind),
        "namespace": namespace or cluster.namespace or "default",
        "run_id": pipeline_id,
        "image": cluster.image or preset.image,
        "train": config,
        "entrypoint": ENTRYPOINTS[kind],
        "nodes": nodes,
        "gpus_per_node": gpus,
        "nproc_per_node": None if gpus else scale.nproc_per_node if trains else 1,
        "resources": resources,
        "env": env,
        "restart_policy": "ExitCode",
        "run_policy": {"backoff_limit": run_policy.backoffLimit if kind == "train" else min(run_policy.backoffLimit, 1),
                       "active_deadline_seconds": run_policy.activeDeadlineSeconds or None},
        "labels": {"qwen3-trainer.io/stage": p.stage, "qwen3-trainer.io/config-hash": p.config_hash[:16],
                   "qwen3-trainer.io/job-kind": kind},
        "scheduling": sched.job_scheduling(),
        "node_pool": pool.job_node_pool(),
    }
    if runtime is not None:   # the runtime holds the policies (module docstring)
        kueue = sched.gangScheduler == "kueue"
        spec |= {"kind": "TrainJob", "runtime": runtime,
                 "scheduling": {"gang": "kueue", "queue": sched.queueName} if kueue else {},
                 "run_policy": {"active_deadline_seconds": run_policy.activeDeadlineSeconds or None}}
        del spec["restart_policy"]
    else:
        spec["image_pull_policy"] = cluster.imagePullPolicy
    if cluster.serviceAccountName:
        spec["service_account"] = cluster.serviceAccountName
    spec["image_pull_secrets"] = [s.name for s in cluster.imagePullSecrets]
    if cluster.podSecurityContext is not None:
        spec["pod_security_context"] = cluster.podSecurityContext.model_dump(exclude_none=True, exclude_defaults=True)
    try:
        return parse_spec(spec, f"stage {p.stage} {kind} job")
    except ValueError as exc:
        raise ValueError(str(exc).splitlines()[0]) from None


def cluster_runtime(cluster, name: str) -> dict[str, Any]:
    """The TrainingRuntime the chart installs for ``cluster`` (api TrainJob, trainJob.runtime install), as
    platform.jobs renders it: templates/jobs/trainingruntime.yaml must render this spec (tests/deploy)."""
    from qwen3_trainer.platform.jobs import parse_spec
    from qwen3_trainer.platform.jobs.trainjob import render_runtime

    sched = cluster.scheduling
    spec = parse_spec({
        "name": name, "namespace": cluster.namespace or "default", "image": cluster.image or "unset/unset:0",
        "train": {}, "image_pull_policy": cluster.imagePullPolicy, "restart_policy": "ExitCode",
        "scheduling": {"gang": sched.gangScheduler if sched.gangScheduler == "volcano" else "none",
                       "queue": sched.queueName, "priority_class": sched.priorityClassName},
        "run_policy": {"backoff_limit": cluster.runPolicy.backoffLimit},
    }, "cluster runtime")
    return render_runtime(spec, name, {}).to_dict()
