"""JobSpec: what a training job asks of the cluster, as a strict pydantic model read from YAML.

One JobSpec renders to one Kubeflow ``PyTorchJob`` (render.py, the default ``kind``) or one Kubeflow
Trainer v2 ``TrainJob`` (trainjob.py, ``kind: TrainJob``) and runs either on Kubernetes (k8s_launcher.py)
or as local processes (local_launcher.py). Every model forbids unknown fields, so a typo is an error
naming the field, never silently dropped. Checks done here, before any API call:

- ``name`` is a DNS-1035 label short enough for the pod/Service names (``<name>-worker-<i>``,
  ``<name>-node-0-<i>``);
- credentials reach the container only through ``secretKeyRef``: a literal value for a variable whose
  name has a SECRET/KEY/PASSWORD/TOKEN/CREDENTIALS part is rejected;
- variables the training operator owns (MASTER_ADDR, WORLD_SIZE, RANK, PET_*) cannot be set;
- one process per GPU (``nproc_per_node`` equals ``gpus_per_node`` when GPUs are requested);
- quantities, label keys/values and extended-resource names have Kubernetes syntax;
- a TrainJob asks for nothing Trainer v2 cannot express (``_trainjob_limits``), and ``runtime`` (the
  Trainer runtime a TrainJob references) is never given to a PyTorchJob.

``train`` is the training config the job runs (``qtrain train CONFIG``): a mapping (delivered in a
ConfigMap), a path to a YAML/TOML file (read at render time, relative to the spec file, and delivered
the same way), or a URI (``s3://…``) passed through for the trainer to read. It is deliberately
free-form here: the trainer validates its own config; this package never imports it.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qwen3_trainer.platform.validation import describe

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
EXTENDED_RESOURCE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A variable is a credential when one of its `_`-separated parts is one of these words
# (AWS_SECRET_ACCESS_KEY, HF_TOKEN, MLFLOW_TRACKING_PASSWORD; not TOKENIZERS_PARALLELISM).
CREDENTIAL_WORDS = {"SECRET", "KEY", "PASSWORD", "PASSWD", "TOKEN", "CREDENTIALS"}
# Set by the training operator on every pod (local_launcher.py sets the same); a user value would
# silently break the rendezvous.
OPERATOR_ENV = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "PYTHONUNBUFFERED"}
URI = re.compile(r"^[a-z][a-z0-9+.-]*://")
# operator pod name suffix: "-worker-<index>"; pod names become hostnames and Service names (63 chars)
MAX_NAME = 63


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Strict):
    name: str = Field(description="Kubernetes Secret name")
    key: str = Field(description="key inside the Secret")


class EnvVar(Strict):
    name: str
    value: str | None = None          # a literal (never for credentials)
    secret: SecretRef | None = None   # rendered as valueFrom.secretKeyRef

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if not ENV_NAME.match(self.name):
            raise ValueError(f"env name {self.name!r} is not a valid variable name")
        if (self.value is None) == (self.secret is None):
            raise ValueError(f"env {self.name}: give exactly one of `value` or `secret`")
        if self.name in OPERATOR_ENV or self.name.startswith("PET_"):
            raise ValueError(f"env {self.name} is set by the training operator; remove it")
        if self.value is not None and CREDENTIAL_WORDS & set(self.name.upper().split("_")):
            raise ValueError(
                f"env {self.name} looks like a credential: use `secret: {{name: ..., key: ...}}` "
                "(a secretKeyRef), never a literal value"
            )
        return self


class Toleration(Strict):
    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None


class NodePool(Strict):
    node_selector: dict[str, str] = {}      # e.g. {node.kubernetes.io/instance-type: p5.48xlarge}
    tolerations: list[Toleration] = []
    # a Kubernetes V1Affinity in its YAML (camelCase) form; unknown keys are rejected at render
    affinity: dict[str, Any] | None = None

    @field_validator("node_selector")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_labels(v, "node_selector")


class Resources(Strict):
    """Per pod (one pod per node). Requests are what the scheduler and Kueue's quota count, limits what
    the kubelet enforces; GPUs and ``extended`` go in both (Kubernetes requires it of extended resources).

    Memory limit defaults to the request: the pod is OOM-killed at the size it asked for rather than
    evicted under node pressure for using more (the memory-backed /dev/shm counts in it). CPU limit
    defaults to the request too (Guaranteed QoS, so a static CPU manager can pin cores); ``cpu_limit:
    null`` drops it (no CFS throttling of bursty data-loader / NCCL threads), as recipe/cluster.py's
    node pools do for training pods unless ``guaranteedQos``.
    """

    cpu: str = "4"                  # CPU request
    cpu_limit: str | None = "request"   # "request" (= cpu), a quantity >= cpu, or null (no CPU limit)
    memory: str = "16Gi"            # memory request
    memory_limit: str = "request"   # "request" (= memory) or a quantity >= memory
    shm: str = "8Gi"                # /dev/shm as an in-memory emptyDir (NCCL and dataloader workers)
    # RDMA / EFA devices, e.g. {vpc.amazonaws.com/efa: 32} or {rdma/rdma_shared_device_a: 1}
    extended: dict[str, int] = {}

    @field_validator("cpu", "memory", "shm")
    @classmethod
    def _quantity(cls, v: str) -> str:
        if not QUANTITY.match(v):
            raise ValueError(f"{v!r} is not a Kubernetes quantity (e.g. 16, 500m, 64Gi)")
        return v

    @field_validator("cpu_limit", "memory_limit")
    @classmethod
    def _limit(cls, v: str | None) -> str | None:
        if v not in (None, "request") and not QUANTITY.match(v):
            raise ValueError(f"{v!r} is neither `request` nor a Kubernetes quantity (e.g. 16, 64Gi)")
        return v

    @field_validator("extended")
    @classmethod
    def _extended(cls, v: dict[str, int]) -> dict[str, int]:
        for name, count in v.items():
            if not EXTENDED_RESOURCE.match(name) or name == "nvidia.com/gpu":
                raise ValueError(f"{name!r} is not an extended resource name (GPUs go in gpus_per_node)")
            if count < 1:
                raise ValueError(f"{name}: count must be >= 1")
        return v

    @model_validator(mode="after")
    def _limits_cover_requests(self) -> Resources:
        for name, request, limit in (("cpu", self.cpu, self.cpu_limit), ("memory", self.memory, self.memory_limit)):
            if limit not in (None, "request") and _amount(limit) < _amount(request):
                raise ValueError(f"{name}_limit: {limit} is below the request {request}")
        memory = self.memory if self.memory_limit == "request" else self.memory_limit
        if _amount(self.shm) > _amount(memory):
            raise ValueError(f"shm: {self.shm} exceeds the memory limit {memory} (/dev/shm counts in it)")
        return self

    def requests(self) -> dict[str, str]:
        """cpu and memory requests (render adds GPUs and ``extended``)."""
        return {"cpu": self.cpu, "memory": self.memory}

    def limits(self) -> dict[str, str]:
        """cpu (unless ``cpu_limit`` is null) and memory limits."""
        cpu = {} if self.cpu_limit is None else {"cpu": self.cpu if self.cpu_limit == "request" else self.cpu_limit}
        return {**cpu, "memory": self.memory if self.memory_limit == "request" else self.memory_limit}


_UNITS = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
          "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def _amount(quantity: str) -> Decimal:
    """A quantity (already checked against QUANTITY) in base units: cores or bytes."""
    number = quantity.rstrip("kmMGTPEi")
    return Decimal(number) * _UNITS[quantity[len(number):]]


class Scheduling(Strict):
    # none: default scheduler; volcano / scheduler-plugins: gang scheduling through the PodGroup the
    # training operator creates (it must run with --gang-scheduler-name); kueue: the job is admitted
    # as a whole by Kueue through the kueue.x-k8s.io/queue-name label.
    gang: Literal["none", "volcano", "scheduler-plugins", "kueue"] = "none"
    scheduler_name: str | None = None   # default: volcano / scheduler-plugins-scheduler
    queue: str | None = None            # Volcano queue or Kueue LocalQueue
    priority_class: str | None = None   # PriorityClass for the pods (and the PodGroup)
    schedule_timeout_seconds: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _queue(self) -> Scheduling:
        if self.gang == "kueue" and not self.queue:
            raise ValueError("gang=kueue needs `queue` (the Kueue LocalQueue name)")
        if self.gang in ("none", "kueue") and self.scheduler_name:
            raise ValueError(f"scheduler_name is only for gang=volcano/scheduler-plugins, not {self.gang}")
        return self


class RunPolicy(Strict):
    backoff_limit: int = Field(3, ge=0)                     # restarts of the whole job before Failed
    active_deadline_seconds: int | None = Field(None, ge=1)  # wall-clock limit of the job
    ttl_seconds_after_finished: int | None = Field(7 * 86400, ge=0)
    # Running: delete pods still running when the job ends (a hung worker keeps no GPUs), keep finished
    # pods and their logs
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"


class ElasticPolicy(Strict):
    min_nodes: int = Field(ge=1)
    max_nodes: int = Field(ge=1)
    max_restarts: int = Field(3, ge=0)      # torchrun worker-group restarts inside the pods
    rdzv_backend: Literal["c10d", "etcd", "etcd-v2"] = "c10d"
    rdzv_port: int = Field(29400, ge=1, le=65535)


class RuntimeRef(Strict):
    """An existing Kubeflow Trainer runtime for a TrainJob: the cluster's ``torch-distributed``
    ClusterTrainingRuntime, or a TrainingRuntime in the job's namespace (the chart installs one)."""

    name: str
    kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not DNS1123.match(v) or len(v) > 253:
            raise ValueError(f"{v!r} is not a valid runtime name (a DNS-1123 subdomain)")
        return v


# Knobs a TrainJob leaves to its training runtime (the JobSet template: failure policy, Job pod failure
# policy, pod template): without `runtime:` the job renders a TrainingRuntime of its own that holds
# them; with a named runtime they are that runtime's, so a value other than the default is refused.
RUNTIME_OWNED = ("run_policy.backoff_limit", "run_policy.ttl_seconds_after_finished", "restart_policy",
                 "image_pull_policy", "scheduling.scheduler_name", "scheduling.priority_class",
                 "scheduling.schedule_timeout_seconds")


class JobSpec(Strict):
    # PyTorchJob: kubeflow.org/v1 (training operator v1.9); TrainJob: trainer.kubeflow.org/v1alpha1
    kind: Literal["PyTorchJob", "TrainJob"] = "PyTorchJob"
    # TrainJob only: the runtime it references; None renders a TrainingRuntime for this job alone
    runtime: RuntimeRef | None = None
    name: str
    namespace: str = "default"
    run_id: str | None = None           # defaults to name; labels every object (qwen3-trainer.io/run-id)
    image: str
    train: dict[str, Any] | str         # training config: mapping, file path, or URI (module docstring)
    # what torchrun runs; the config path is appended as the last argument
    entrypoint: list[str] = ["-m", "qwen3_trainer.cli.main", "train"]
    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(0, ge=0)
    nproc_per_node: int | None = Field(None, ge=1)   # default: gpus_per_node (1 when no GPUs)
    node_pool: NodePool = NodePool()
    resources: Resources = Resources()
    env: list[EnvVar] = []
    service_account: str | None = None
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    image_pull_secrets: list[str] = []  # Secret names (registry credentials)
    # a Kubernetes PodSecurityContext in its YAML (camelCase) form, e.g. {runAsNonRoot: true, fsGroup: 10001}
    pod_security_context: dict[str, Any] | None = None
    scheduling: Scheduling = Scheduling()
    run_policy: RunPolicy = RunPolicy()
    elastic: ElasticPolicy | None = None
    # Never / OnFailure / ExitCode (retry only exit codes >= 128: signals, OOM-kill, preemption).
    # Always is refused: it would restart a trainer that finished.
    restart_policy: Literal["Never", "OnFailure", "ExitCode"] = "ExitCode"
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not DNS1035.match(v):
            raise ValueError(f"{v!r} is not a DNS-1035 label (lowercase letters, digits, '-', starts with a letter)")
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not DNS1035.match(v) or len(v) > MAX_NAME:
            raise ValueError(f"{v!r} is not a valid namespace name")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        last = v.rsplit("/", 1)[-1]
        if "@sha256:" not in v and (":" not in last or last.endswith(":latest")):
            raise ValueError(f"image {v!r} must be pinned by a tag or digest (not :latest)")
        return v

    @field_validator("labels")
    @classmethod
    def _user_labels(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_labels(v, "labels")

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        # the longest pod hostname: the operator's <name>-worker-<i>, the JobSet's <name>-node-0-<i>
        longest = f"-node-0-{self.nodes - 1}" if self.kind == "TrainJob" else f"-worker-{max(self.max_nodes - 2, 0)}"
        if len(self.name) + len(longest) > MAX_NAME:
            raise ValueError(f"name: {self.name!r} is too long: pod '{self.name}{longest}' exceeds {MAX_NAME} chars")
        if not LABEL_VALUE.match(self.run) or len(self.run) > MAX_NAME:
            raise ValueError(f"run_id: {self.run!r} is not a valid label value (63 chars, alphanumeric, '-_.')")
        if self.gpus_per_node and self.nproc_per_node not in (None, self.gpus_per_node):
            raise ValueError(
                f"nproc_per_node: {self.nproc_per_node} != gpus_per_node {self.gpus_per_node} "
                "(one process per GPU)"
            )
        if self.elastic and not self.elastic.min_nodes <= self.nodes <= self.elastic.max_nodes:
            raise ValueError(f"elastic: nodes={self.nodes} must lie in [min_nodes, max_nodes]")
        if isinstance(self.train, str) and not self.train.strip():
            raise ValueError("train: empty config path")
        if not self.entrypoint:
            raise ValueError("entrypoint: empty")
        if self.kind == "TrainJob":
            self._trainjob_limits()
        elif self.runtime is not None:
            raise ValueError("runtime: names a Kubeflow Trainer runtime, which only a TrainJob references "
                             "(kind is PyTorchJob): set kind: TrainJob or drop runtime")
        return self

    def _trainjob_limits(self) -> None:
        """What Kubeflow Trainer v2 (v1alpha1) cannot express, as one line naming the field."""
        if self.elastic is not None:
            raise ValueError("elastic: a TrainJob cannot express it (Trainer v2's torch policy has no elastic "
                             "rendezvous); use kind: PyTorchJob")
        if self.run_policy.clean_pod_policy != "Running":
            raise ValueError(f"run_policy.clean_pod_policy: a TrainJob cannot express "
                             f"{self.run_policy.clean_pod_policy} (its JobSet deletes running pods when it ends "
                             "and keeps finished ones: Running)")
        sched = self.scheduling
        if sched.gang == "volcano" and sched.schedule_timeout_seconds is not None:
            raise ValueError("scheduling.schedule_timeout_seconds: a TrainJob cannot express it with gang=volcano "
                             "(Trainer v2's Volcano PodGroup has no schedule timeout; scheduler-plugins' has)")
        if self.runtime is None:
            return
        where = f"runtime {self.runtime.kind} {self.runtime.name}"
        if sched.gang in ("volcano", "scheduler-plugins"):
            raise ValueError(f"scheduling.gang: {sched.gang} is the podGroupPolicy of {where}, which a TrainJob "
                             "cannot set; drop `runtime` (the job then renders its own TrainingRuntime) or the gang")
        for field in RUNTIME_OWNED:
            if _at(self, field) != _at(type(self), field):
                raise ValueError(f"{field}: {where} decides it, a TrainJob cannot set it; drop `runtime` (the "
                                 f"job then renders its own TrainingRuntime) or the {field.rsplit('.', 1)[-1]}")

    @property
    def run(self) -> str:
        return self.run_id or self.name

    @property
    def procs_per_node(self) -> int:
        return self.gpus_per_node or self.nproc_per_node or 1

    @property
    def max_nodes(self) -> int:
        return self.elastic.max_nodes if self.elastic else self.nodes

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node


def _at(spec: JobSpec | type[JobSpec], path: str) -> Any:
    """The value at a dotted field path of a spec; of the JobSpec class: that field's default."""
    *parents, last = path.split(".")
    for part in parents:
        spec = spec.model_fields[part].annotation if isinstance(spec, type) else getattr(spec, part)
    return spec.model_fields[last].default if isinstance(spec, type) else getattr(spec, last)


def _check_labels(labels: dict[str, str], field: str) -> dict[str, str]:
    for key, value in labels.items():
        if not LABEL_KEY.match(key) or len(key.rsplit("/", 1)[-1]) > MAX_NAME:
            raise ValueError(f"{field}: {key!r} is not a valid label key")
        if not LABEL_VALUE.match(value) or len(value) > MAX_NAME:
            raise ValueError(f"{field}: {key}={value!r} is not a valid label value")
    return labels


class SpecError(ValueError):
    """An invalid JobSpec, as one line naming the field: ``spec.yaml: resources.memory: ...``."""


def parse_spec(data: Any, source: str = "spec") -> JobSpec:
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a JobSpec holds a YAML mapping, got {type(data).__name__}")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source}: {describe(exc)}") from exc


def load_spec(path: str | Path, kind: str | None = None) -> tuple[JobSpec, Path]:
    """Read a JobSpec YAML file; returns the spec and the folder relative paths resolve against.
    ``kind`` (``qtrain job render --kind``) chooses the API for a spec that does not name one itself.
    Raises SpecError (a ValueError) naming the file and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if kind is not None and isinstance(data, dict):
        if data.get("kind", kind) != kind:
            raise SpecError(f"{path}: kind: the spec says {data['kind']}, --kind says {kind}; drop one")
        data = {**data, "kind": kind}
    return parse_spec(data, str(path)), path.resolve().parent
