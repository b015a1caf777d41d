"""Render a JobSpec to a Kubeflow ``kubeflow.org/v1`` PyTorchJob (plus the ConfigMap holding its
training config) through the kubeflow-training SDK and kubernetes client models; a ``kind: TrainJob``
spec renders through trainjob.py instead (Kubeflow Trainer v2), sharing the helpers here.

Shape, as the training operator expects it: one ``Master`` and ``nodes - 1`` ``Worker`` replicas
(elastic jobs: ``nodes`` Workers and no Master, torchrun's c10d rendezvous on worker-0 replaces the
static master), ``nprocPerNode`` = processes per node, the container named ``pytorch`` with the port
``pytorchjob-port`` the operator reads MASTER_PORT from. The container runs::

    torchrun --nnodes=$(PET_NNODES) --nproc-per-node=$(PET_NPROC_PER_NODE) --node-rank=$(PET_NODE_RANK)
             --master-addr=$(PET_MASTER_ADDR) --master-port=$(PET_MASTER_PORT)
             -m qwen3_trainer.cli.main train /etc/qtrain/config.yaml

``$(VAR)`` is Kubernetes' own expansion of the variables the operator injects into each pod, so the
rendezvous is visible in the manifest and the local launcher expands it the same way.

The training config travels in an immutable ConfigMap mounted at /etc/qtrain: it is inspectable with
kubectl, holds up to 1 MiB without quoting problems (an env var or inline arg would not), gives the
trainer the same file path locally and in the cluster, and the k8s launcher makes the PyTorchJob its
owner so it is garbage-collected with the job. A URI config (``s3://…``) needs no ConfigMap.

Gang scheduling: the pods get ``schedulerName`` and ``runPolicy.schedulingPolicy``; the operator
(started with ``--gang-scheduler-name``) creates the PodGroup and stamps the pods with its
label/annotation itself — rendering those here would strand the pods on a PodGroup that does not
exist when the operator's gang scheduling is off. Kueue: the queue label on the PyTorchJob.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubeflow.training import (
    KubeflowOrgV1ElasticPolicy,
    KubeflowOrgV1PyTorchJob,
    KubeflowOrgV1PyTorchJobSpec,
    KubeflowOrgV1ReplicaSpec,
    KubeflowOrgV1RunPolicy,
    KubeflowOrgV1SchedulingPolicy,
)
from kubernetes import client as k8s

from qwen3_trainer import __version__
from qwen3_trainer.platform.jobs.spec import URI, JobSpec

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"             # the operator finds the trainer container by this name
PORT_NAME = "pytorchjob-port"     # ... and MASTER_PORT by this port name
MASTER_PORT = 23456
CONFIG_DIR = "/etc/qtrain"
RUN_ID_LABEL = "qwen3-trainer.io/run-id"
MANAGED_BY = "qtrain"
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CONFIG_HASH_ANNOTATION = "qwen3-trainer.io/config-sha256"
DEFAULT_SCHEDULER = {"volcano": "volcano", "scheduler-plugins": "scheduler-plugins-scheduler"}
STATIC_RDZV = [
    "--nnodes=$(PET_NNODES)", "--nproc-per-node=$(PET_NPROC_PER_NODE)", "--node-rank=$(PET_NODE_RANK)",
    "--master-addr=$(PET_MASTER_ADDR)", "--master-port=$(PET_MASTER_PORT)",
]


@dataclass(frozen=True)
class RenderedJob:
    """The objects one JobSpec becomes, as plain JSON-able dicts (what the API server receives)."""

    job: dict[str, Any]                  # the PyTorchJob or TrainJob
    configmap: dict[str, Any] | None     # the training config, None for a URI config
    runtime: dict[str, Any] | None = None   # TrainJob only: its own TrainingRuntime (no `runtime:` named)

    @property
    def kind(self) -> str:
        return self.job["kind"]

    @property
    def objects(self) -> list[dict[str, Any]]:
        return [o for o in (self.configmap, self.runtime, self.job) if o is not None]

    def to_yaml(self) -> str:
        return yaml.dump_all(self.objects, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the ConfigMap's config file) as readable ``|`` blocks."""


def _str_block(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


def _list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    # a list of numbers (the exit codes of a pod failure policy) on one line
    flow = bool(data) and all(isinstance(x, int) and not isinstance(x, bool) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow or None)


_BlockDumper.add_representer(str, _str_block)
_BlockDumper.add_representer(list, _list)


def job_labels(spec: JobSpec) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "qwen3-trainer",
        "app.kubernetes.io/instance": spec.name,
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/part-of": "qwen3-trainer",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/version": __version__,
        RUN_ID_LABEL: spec.run,
        **spec.labels,
    }


def render(spec: JobSpec, base_dir: str | Path | None = None) -> RenderedJob:
    """JobSpec -> PyTorchJob (+ ConfigMap), or TrainJob (+ ConfigMap, + TrainingRuntime) for
    ``kind: TrainJob``. ``base_dir`` resolves a relative ``train`` file path."""
    if spec.kind == "TrainJob":
        from qwen3_trainer.platform.jobs.trainjob import render_trainjob  # imports 380 models: only here

        return render_trainjob(spec, base_dir)
    config_name, config_text, config_arg = training_config(spec, Path(base_dir or "."))
    labels = job_labels(spec)
    configmap = config_map(spec, labels, config_name, config_text)
    template = _pod_template(spec, labels, config_text, config_arg)
    replicas = {"Worker": spec.nodes} if spec.elastic else {"Master": 1, "Worker": spec.nodes - 1}
    replica_specs = {
        rtype: KubeflowOrgV1ReplicaSpec(replicas=n, restart_policy=spec.restart_policy, template=copy.deepcopy(template))
        for rtype, n in replicas.items() if n > 0
    }
    metadata_labels = dict(labels)
    if spec.scheduling.gang == "kueue":
        metadata_labels[KUEUE_QUEUE_LABEL] = spec.scheduling.queue
    job = KubeflowOrgV1PyTorchJob(
        api_version=API_VERSION, kind=KIND,
        metadata=k8s.V1ObjectMeta(name=spec.name, namespace=spec.namespace, labels=metadata_labels,
                                  annotations=dict(spec.annotations) or None),
        spec=KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(spec.procs_per_node),
            pytorch_replica_specs=replica_specs,
            run_policy=_run_policy(spec),
            elastic_policy=_elastic_policy(spec),
        ),
    )
    return RenderedJob(job=_sanitize(job), configmap=configmap)


def config_map(spec: JobSpec, labels: dict, config_name: str, config_text: str | None) -> dict[str, Any] | None:
    """The immutable ConfigMap ``<name>-config`` holding the training config (None for a URI config)."""
    if config_text is None:
        return None
    return _sanitize(k8s.V1ConfigMap(
        api_version="v1", kind="ConfigMap", immutable=True, data={config_name: config_text},
        metadata=k8s.V1ObjectMeta(name=f"{spec.name}-config", namespace=spec.namespace, labels=labels),
    ))


def training_config(spec: JobSpec, base_dir: Path) -> tuple[str, str | None, str]:
    """(file name in the ConfigMap, its text or None, the path/URI the trainer is given)."""
    train = spec.train
    if isinstance(train, dict):
        return "config.yaml", yaml.safe_dump(train, sort_keys=False), f"{CONFIG_DIR}/config.yaml"
    if URI.match(train):
        return "", None, train
    path = (base_dir / train).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"train: config file {path} not found")
    text = path.read_text()
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ValueError(f"train: {path.name} is neither YAML nor TOML")
    parsed = tomllib.loads(text) if suffix == ".toml" else yaml.safe_load(text)
    if not isinstance(parsed, dict):
        raise ValueError(f"train: {path} does not hold a mapping")
    name = "config.toml" if suffix == ".toml" else "config.yaml"
    return name, text, f"{CONFIG_DIR}/{name}"


def pod_resources(spec: JobSpec) -> tuple[dict[str, str], dict[str, str]]:
    """(requests, limits) of one node's pod: CPU and memory, GPUs and extended (RDMA/EFA) resources."""
    gpu = {"nvidia.com/gpu": str(spec.gpus_per_node)} if spec.gpus_per_node else {}
    extended = {name: str(n) for name, n in spec.resources.extended.items()}
    # GPUs and extended resources sit in both requests and limits (Kubernetes requires them equal)
    return {**spec.resources.requests(), **gpu, **extended}, {**spec.resources.limits(), **gpu, **extended}


def _pod_template(spec: JobSpec, labels: dict, config_text: str | None, config_arg: str) -> k8s.V1PodTemplateSpec:
    requests, limits = pod_resources(spec)
    volumes = [k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=spec.resources.shm))]
    mounts = [k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm")]
    annotations = {}
    if config_text is not None:
        volumes.append(k8s.V1Volume(name="train-config", config_map=k8s.V1ConfigMapVolumeSource(name=f"{spec.name}-config")))
        mounts.append(k8s.V1VolumeMount(name="train-config", mount_path=CONFIG_DIR, read_only=True))
        annotations[CONFIG_HASH_ANNOTATION] = hashlib.sha256(config_text.encode()).hexdigest()
    container = k8s.V1Container(
        name=CONTAINER, image=spec.image, image_pull_policy=spec.image_pull_policy,
        command=["torchrun"], args=[*_rdzv_args(spec), *spec.entrypoint, config_arg],
        env=_env(spec), ports=[k8s.V1ContainerPort(name=PORT_NAME, container_port=MASTER_PORT, protocol="TCP")],
        resources=k8s.V1ResourceRequirements(requests=requests, limits=limits),
        volume_mounts=mounts,
    )
    pool, sched = spec.node_pool, spec.scheduling
    pod = k8s.V1PodSpec(
        containers=[container], volumes=volumes,
        node_selector=dict(pool.node_selector) or None,
        tolerations=[_toleration(t) for t in pool.tolerations] or None,
        affinity=strict_model(pool.affinity, "V1Affinity", "node_pool.affinity") if pool.affinity else None,
        priority_class_name=sched.priority_class,
        scheduler_name=sched.scheduler_name or DEFAULT_SCHEDULER.get(sched.gang),
        service_account_name=spec.service_account,
        image_pull_secrets=[k8s.V1LocalObjectReference(name=n) for n in spec.image_pull_secrets] or None,
        security_context=(strict_model(spec.pod_security_context, "V1PodSecurityContext", "pod_security_context")
                          if spec.pod_security_context else None),
    )
    return k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=dict(labels), annotations=annotations or None), spec=pod)


def _rdzv_args(spec: JobSpec) -> list[str]:
    if not spec.elastic:
        return list(STATIC_RDZV)
    # elastic: the operator injects PET_NNODES=min:max and the c10d endpoint <job>-worker-0:<port>
    return [
        "--nnodes=$(PET_NNODES)", f"--nproc-per-node={spec.procs_per_node}",
        "--rdzv-backend=$(PET_RDZV_BACKEND)", "--rdzv-endpoint=$(PET_RDZV_ENDPOINT)",
        "--rdzv-id=$(PET_RDZV_ID)", f"--max-restarts={spec.elastic.max_restarts}",
    ]


def env_entries(spec: JobSpec) -> list[tuple[str, str | None, Any]]:
    """(name, literal value, SecretRef) of every variable the trainer container gets, in order."""
    return [("QTRAIN_JOB_NAME", spec.name, None), ("QTRAIN_RUN_ID", spec.run, None),
            *((var.name, var.value, var.secret) for var in spec.env)]


def _env(spec: JobSpec) -> list[k8s.V1EnvVar]:
    env = []
    for name, value, secret in env_entries(spec):
        if secret:
            ref = k8s.V1SecretKeySelector(name=secret.name, key=secret.key)
            env.append(k8s.V1EnvVar(name=name, value_from=k8s.V1EnvVarSource(secret_key_ref=ref)))
        else:
            env.append(k8s.V1EnvVar(name=name, value=value))
    return env


def _toleration(t) -> k8s.V1Toleration:
    return k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect,
                            toleration_seconds=t.toleration_seconds)


def _run_policy(spec: JobSpec) -> KubeflowOrgV1RunPolicy:
    rp, sched = spec.run_policy, spec.scheduling
    scheduling = None
    if sched.gang in ("volcano", "scheduler-plugins"):
        scheduling = KubeflowOrgV1SchedulingPolicy(
            min_available=spec.elastic.min_nodes if spec.elastic else spec.nodes,
            queue=sched.queue if sched.gang == "volcano" else None,
            priority_class=sched.priority_class,
            schedule_timeout_seconds=sched.schedule_timeout_seconds,
        )
    return KubeflowOrgV1RunPolicy(
        backoff_limit=rp.backoff_limit, active_deadline_seconds=rp.active_deadline_seconds,
        ttl_seconds_after_finished=rp.ttl_seconds_after_finished, clean_pod_policy=rp.clean_pod_policy,
        scheduling_policy=scheduling,
    )


def _elastic_policy(spec: JobSpec) -> KubeflowOrgV1ElasticPolicy | None:
    e = spec.elastic
    if e is None:
        return None
    return KubeflowOrgV1ElasticPolicy(
        min_replicas=e.min_nodes, max_replicas=e.max_nodes, max_restarts=e.max_restarts,
        rdzv_backend=e.rdzv_backend, rdzv_port=e.rdzv_port, rdzv_id=spec.name,
        n_proc_per_node=spec.procs_per_node,
    )


def _sanitize(obj: Any) -> dict[str, Any]:
    return k8s.ApiClient().sanitize_for_serialization(obj)


def strict_model(data: Any, klass: str, path: str) -> Any:
    """Build kubernetes client model ``klass`` from its YAML (camelCase) form, refusing unknown or
    mistyped fields (the client's own deserializer silently drops them)."""
    check_fields(data, klass, path)

    class _Response:
        def __init__(self, payload):
            self.data = json.dumps(payload)

    return k8s.ApiClient().deserialize(_Response(data), klass)


_PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}


def check_fields(data: Any, klass: str, path: str) -> None:
    """Refuse a field of ``data`` that kubernetes client model ``klass`` does not have, or a mistyped one."""
    if klass.startswith("list["):
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a list")
        for i, item in enumerate(data):
            check_fields(item, klass[5:-1], f"{path}[{i}]")
        return
    if klass.startswith("dict("):
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping")
        value_type = klass[5:-1].split(", ", 1)[1]
        for key, item in data.items():
            check_fields(item, value_type, f"{path}.{key}")
        return
    if klass in _PRIMITIVES:
        if not isinstance(data, _PRIMITIVES[klass]) or (klass == "int" and isinstance(data, bool)):
            raise ValueError(f"{path}: expected {klass}, got {type(data).__name__}")
        return
    model = getattr(k8s, klass)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping ({klass})")
    by_json = {json_key: attr for attr, json_key in model.attribute_map.items()}
    for key, item in data.items():
        if key not in by_json:
            raise ValueError(f"{path}.{key}: unknown field (valid: {', '.join(sorted(by_json))})")
        check_fields(item, model.openapi_types[by_json[key]], f"{path}.{key}")
