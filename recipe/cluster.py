"""The cluster contract: what ``cluster.yaml`` (the chart's ``<fullname>-jobs`` ConfigMap, mounted at
``$QTRAIN_CLUSTER_CONFIG``) tells a flow run about the cluster its jobs go to.

It holds which Kubeflow API the jobs use (``api``: PyTorchJob, or TrainJob on Kubeflow Trainer v2 with
the runtime they reference), where jobs run and as whom (namespace, image, pull secrets, service account, pod security
context), the S3 and MLflow endpoints, gang scheduling, the run policy, and the node pools: what a
pool's nodes look like and how a pod on them gets CPU, memory and /dev/shm in proportion to the GPUs
it takes. How many nodes a stage takes, its sequence length and its step count are the recipe's
(presets.py), never the cluster's: the chart cannot change a stage behind its config hash.

Keys are camelCase, as in cluster.yaml and the chart's values (the attributes carry the same names).
Every model forbids unknown keys, so a typo is an error naming the file and the dotted key. The
chart's ``jobs`` block has the shape of ``JobsValues``; its JSON schema (``cluster_values_schema``)
is what helm/gen_schema.py writes into values.schema.json, so the chart rejects what this refuses.
No torch, no Prefect, no kubernetes import: the flows build JobSpecs from these plain values.
"""

from __future__ import annotations

import copy
import math
import os
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)

from qwen3_trainer.platform.validation import describe

ENV = "QTRAIN_CLUSTER_CONFIG"
QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"
_UNITS = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
          "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_QUANTITY = re.compile(QUANTITY)


def _quantity(value: Any) -> Any:
    # YAML writes `cpuPerGpu: 12` as an int; Kubernetes quantities are strings
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = format(Decimal(str(value)).normalize(), "f")
    if isinstance(value, str) and not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (e.g. 12, 500m, 128Gi)")
    return value


def _blank_none(value: Any) -> Any:
    return None if value == "" else value  # the chart writes "" for "not set"


Quantity = Annotated[str, BeforeValidator(_quantity),
                     WithJsonSchema({"type": ["string", "integer", "number"], "pattern": QUANTITY})]
OptionalStr = Annotated[str | None, BeforeValidator(_blank_none)]  # "" or null: not set
PoolName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
ExtendedName = Annotated[str, StringConstraints(
    pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")]


def amount(q: str) -> Decimal:
    """A quantity in base units (cores, bytes): ``amount("500m") == Decimal("0.5")``."""
    m = _QUANTITY.match(q)
    if not m:
        raise ValueError(f"{q!r} is not a Kubernetes quantity")
    suffix = m.group(2) or ""
    return Decimal(q[: len(q) - len(suffix)]) * _UNITS[suffix]


def _times(q: str, n: int) -> str:
    """``q`` x ``n`` in q's own unit: ``_times("128Gi", 8) == "1024Gi"``."""
    suffix = _QUANTITY.match(q).group(2) or ""
    return format((Decimal(q[: len(q) - len(suffix)]) * n).normalize(), "f") + suffix


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Toleration(_Strict):
    """A Kubernetes toleration, in its YAML form."""

    key: str | None = None
    operator: Literal["Exists", "Equal"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None


class Allocatable(_Strict):
    """What one node offers pods (``kubectl describe node``: Allocatable), after system reservations."""

    cpu: Quantity | None = None
    memory: Quantity | None = None


class NodePoolConfig(_Strict):
    """One kind of node, and how a pod that takes one node is sized on it.

    A GPU pod asks for ``gpusPerNode`` x (``cpuPerGpu``, ``memoryPerGpu``, ``shmPerGpu``) plus its share
    of ``extendedResources``; a CPU pod (0 GPUs) for the fixed ``cpu`` / ``memory`` / ``shm``.
    Defaults fit an 8 x H200 node (DGX H200 / p5en: 2 TiB, 192+ vCPUs).
    """

    nodeSelector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    affinity: dict[str, Any] = {}                 # a Kubernetes Affinity (checked when the job renders)
    gpusPerNode: int = Field(ge=0, le=16)         # GPUs of one node (nvidia.com/gpu)
    cpuPerGpu: Quantity = "12"                    # data-loader workers, NCCL proxies, checkpoint writers
    memoryPerGpu: Quantity = "128Gi"              # host memory per GPU (pinned buffers, async checkpoints)
    shmPerGpu: Quantity = "32Gi"                  # /dev/shm per GPU (NCCL, data-loader workers)
    cpu: Quantity = "2"                           # CPU pods (0 GPUs): CPU request
    memory: Quantity = "8Gi"                      # CPU pods: memory
    shm: Quantity = "1Gi"                         # CPU pods: /dev/shm
    # RDMA / EFA devices of one node, e.g. {vpc.amazonaws.com/efa: 32}; a pod taking fewer GPUs asks
    # for its share (rounded up)
    extendedResources: dict[ExtendedName, Annotated[int, Field(ge=1)]] = {}
    # CPU limit = request: Guaranteed QoS, so the kubelet's static CPU manager can pin cores NUMA-local
    # to the GPUs. Off: no CPU limit (no CFS throttling of bursty data-loader and NCCL threads).
    guaranteedQos: bool = False
    allocatable: Allocatable | None = None        # one node's allocatable; None: requests are not checked
    _where: str = PrivateAttr("nodePool")         # "cluster.yaml: nodePools.gpu", for error messages

    @model_validator(mode="after")
    def _no_gpu_extended(self) -> NodePoolConfig:
        if "nvidia.com/gpu" in self.extendedResources:
            raise ValueError("extendedResources: nvidia.com/gpu is not an extended resource here (set gpusPerNode)")
        return self

    def pod_resources(self, gpus_per_node: int) -> dict[str, Any]:
        """The ``resources`` of a JobSpec (platform.jobs.spec.Resources) for a pod taking
        ``gpus_per_node`` GPUs of one node of this pool; ValueError (one line) if it does not fit.

        Requests are what the scheduler and Kueue's quota count. Memory limit == request: a pod is
        OOM-killed at the size it asked for, never evicted under node pressure for using more than it
        asked (the memory-backed /dev/shm counts in it, so it must fit inside). CPU: no limit unless
        ``guaranteedQos`` (then limit == request).
        """
        if gpus_per_node < 0 or gpus_per_node > self.gpusPerNode:
            raise ValueError(f"{self._where}: requests {gpus_per_node} GPUs but a node has {self.gpusPerNode}")
        if gpus_per_node:
            cpu, memory = _times(self.cpuPerGpu, gpus_per_node), _times(self.memoryPerGpu, gpus_per_node)
            shm = _times(self.shmPerGpu, gpus_per_node)
            extended = {k: math.ceil(n * gpus_per_node / self.gpusPerNode) for k, n in self.extendedResources.items()}
        else:
            cpu, memory, shm, extended = self.cpu, self.memory, self.shm, {}
        node = self.allocatable or Allocatable()
        if node.cpu is not None and amount(cpu) > amount(node.cpu):
            raise ValueError(f"{self._where}: requests {cpu} CPU but a node has {node.cpu} allocatable")
        if node.memory is not None and amount(memory) > amount(node.memory):
            raise ValueError(f"{self._where}: requests {memory} of memory but a node has {node.memory} allocatable")
        if amount(shm) > amount(memory):
            raise ValueError(f"{self._where}: /dev/shm {shm} exceeds the pod's memory {memory} (it counts in it)")
        return {"cpu": cpu, "cpu_limit": "request" if self.guaranteedQos else None, "memory": memory,
                "memory_limit": "request", "shm": shm, "extended": extended}

    def job_node_pool(self) -> dict[str, Any]:
        """The ``node_pool`` of a JobSpec (platform.jobs.spec.NodePool: snake_case keys)."""
        tolerations = [{"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect,
                        "toleration_seconds": t.tolerationSeconds} for t in self.tolerations]
        return {"node_selector": dict(self.nodeSelector),
                "tolerations": [{k: v for k, v in t.items() if v is not None} for t in tolerations],
                "affinity": copy.deepcopy(self.affinity) or None}


class SchedulingConfig(_Strict):
    """Gang scheduling: ``kueue`` admits a job whole (queue label), ``volcano`` schedules its pods as a
    PodGroup (the training operator runs with ``--gang-scheduler-name=volcano``)."""

    # the chart's schema carries the queue rule too (helm template fails on it)
    model_config = ConfigDict(json_schema_extra={
        "if": {"required": ["gangScheduler"], "properties": {"gangScheduler": {"enum": ["kueue", "volcano"]}}},
        "then": {"properties": {"queueName": {"type": "string", "minLength": 1}}, "required": ["queueName"]},
    })

    gangScheduler: Literal["none", "kueue", "volcano"] = "none"
    queueName: OptionalStr = None                    # Kueue LocalQueue or Volcano queue
    priorityClassName: OptionalStr = None            # PriorityClass of the pods

    @model_validator(mode="after")
    def _queue(self) -> SchedulingConfig:
        if self.gangScheduler != "none" and not self.queueName:
            raise ValueError(f"queueName: required with gangScheduler {self.gangScheduler}")
        return self

    def job_scheduling(self) -> dict[str, Any]:
        """The ``scheduling`` of a JobSpec (platform.jobs.spec.Scheduling)."""
        return {"gang": self.gangScheduler, "queue": self.queueName, "priority_class": self.priorityClassName}


class RunPolicyConfig(_Strict):
    backoffLimit: int = Field(3, ge=0)            # job restarts before Failed (the trainer resumes)
    activeDeadlineSeconds: int = Field(0, ge=0)   # wall-clock limit of a job; 0: none


RuntimeName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253)]


class TrainJobValues(_Strict):
    """The runtime stage TrainJobs reference when ``api`` is TrainJob."""

    # install: a namespaced TrainingRuntime the chart creates from these jobs values (gang scheduling,
    # priority, restarts, image); cluster: the existing ClusterTrainingRuntime `clusterRuntimeName`
    runtime: Literal["install", "cluster"] = "install"
    clusterRuntimeName: RuntimeName = "torch-distributed"   # Kubeflow Trainer's own torch runtime


def _default_pools() -> dict[str, NodePoolConfig]:
    gpu = NodePoolConfig(gpusPerNode=8, nodeSelector={"nvidia.com/gpu.present": "true"},
                         tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")])
    return {"gpu": gpu, "cpu": NodePoolConfig(gpusPerNode=0)}


# What only a runtime the chart installs can carry: with an existing ClusterTrainingRuntime these
# are that runtime's, so a value of its own is refused (the schema says it too: helm template fails)
_CLUSTER_RUNTIME_RULE = {
    "if": {"required": ["api", "trainJob"], "properties": {
        "api": {"const": "TrainJob"},
        "trainJob": {"required": ["runtime"], "properties": {"runtime": {"const": "cluster"}}}}},
    "then": {"properties": {
        "scheduling": {"properties": {"gangScheduler": {"not": {"const": "volcano"}},
                                      "priorityClassName": {"maxLength": 0}}},
        "runPolicy": {"properties": {"backoffLimit": {"const": 3}}}}},
}


class JobsValues(_Strict):
    """The chart's ``jobs`` values block; cluster.yaml carries it as is."""

    model_config = ConfigDict(json_schema_extra=_CLUSTER_RUNTIME_RULE)

    # the Kubeflow API of stage jobs: PyTorchJob (training operator v1.9) or TrainJob (Trainer v2)
    api: Literal["PyTorchJob", "TrainJob"] = "PyTorchJob"
    trainJob: TrainJobValues = TrainJobValues()
    # pools a stage's scale names (`node_pool`; default `gpu` for GPU stages, `cpu` for CPU ones)
    nodePools: dict[PoolName, NodePoolConfig] = Field(default_factory=_default_pools, min_length=1)
    scheduling: SchedulingConfig = SchedulingConfig()
    runPolicy: RunPolicyConfig = RunPolicyConfig()

    @model_validator(mode="after")
    def _runtime_owns(self) -> JobsValues:
        if self.api != "TrainJob" or self.trainJob.runtime != "cluster":
            return self
        where = f"with api TrainJob on the ClusterTrainingRuntime {self.trainJob.clusterRuntimeName} (trainJob.runtime cluster)"
        if self.scheduling.gangScheduler == "volcano":
            raise ValueError(f"scheduling.gangScheduler: volcano needs the runtime's podGroupPolicy, {where} that "
                             "runtime decides it; set trainJob.runtime install")
        if self.scheduling.priorityClassName:
            raise ValueError(f"scheduling.priorityClassName: {where} the runtime's pod template decides it; set "
                             "trainJob.runtime install")
        if self.runPolicy.backoffLimit != RunPolicyConfig.model_fields["backoffLimit"].default:
            raise ValueError(f"runPolicy.backoffLimit: {where} the runtime's failure policy decides it; set "
                             "trainJob.runtime install")
        return self

    @model_validator(mode="after")
    def _pools_fit(self) -> JobsValues:
        for name, pool in self.nodePools.items():
            pool._where = f"nodePools.{name}"
            pool.pod_resources(pool.gpusPerNode)  # a whole node's pod fits the node
        return self


class S3Config(_Strict):
    bucket: str = "qwen3-trainer"
    region: str = "us-east-1"
    endpointUrl: OptionalStr = None                  # None: AWS S3
    # Secret holding AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; None ("" in the chart): workload identity
    credentialsSecret: OptionalStr = "qwen3-trainer-s3"
    checkpointRoot: str = "s3://qwen3-trainer/checkpoints"


class MlflowConfig(_Strict):
    trackingUri: OptionalStr = None


class SecretRef(_Strict):
    name: str = Field(min_length=1)


class SeccompProfile(_Strict):
    type: Literal["RuntimeDefault", "Localhost", "Unconfined"]
    localhostProfile: str | None = None


class PodSecurityContext(_Strict):
    """The subset of a Kubernetes PodSecurityContext the chart accepts (values.schema.json agrees)."""

    runAsNonRoot: bool | None = None
    runAsUser: int | None = Field(None, ge=0)
    runAsGroup: int | None = Field(None, ge=0)
    fsGroup: int | None = Field(None, ge=0)
    fsGroupChangePolicy: Literal["OnRootMismatch", "Always"] | None = None
    supplementalGroups: list[int] = []
    seccompProfile: SeccompProfile | None = None


class ClusterConfig(JobsValues):
    """All of cluster.yaml. ``ClusterConfig()`` is what the chart's default values write, less what
    only a release knows (namespace, image, service account, endpoints)."""

    namespace: str = "default"
    image: str | None = None                      # None: the preset's image
    imagePullPolicy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    imagePullSecrets: list[SecretRef] = []
    serviceAccountName: OptionalStr = None           # the chart's workload account (S3 only, no Role)
    podSecurityContext: PodSecurityContext | None = None
    # the TrainingRuntime the chart installed (trainJob.runtime install), named by the release
    trainingRuntimeName: OptionalStr = None
    s3: S3Config = S3Config()
    mlflow: MlflowConfig = MlflowConfig()
    _source: str = PrivateAttr("cluster defaults")  # the file it was read from, for error messages

    def pool(self, name: str) -> NodePoolConfig:
        """The node pool ``name``; ValueError (one line, naming the known pools) if there is none."""
        if name not in self.nodePools:
            raise ValueError(f"{self._source}: nodePools.{name}: no such node pool "
                             f"({', '.join(sorted(self.nodePools))})")
        return self.nodePools[name]

    def trainjob_runtime(self) -> dict[str, str] | None:
        """The ``runtime`` of a stage's JobSpec: None for PyTorchJobs; ValueError (one line) when the
        runtime to install has no name (a cluster.yaml not written by the chart)."""
        if self.api != "TrainJob":
            return None
        if self.trainJob.runtime == "cluster":
            return {"name": self.trainJob.clusterRuntimeName, "kind": "ClusterTrainingRuntime"}
        if not self.trainingRuntimeName:
            raise ValueError(f"{self._source}: trainingRuntimeName: required with api TrainJob and "
                             "trainJob.runtime install (the chart writes the installed runtime's name)")
        return {"name": self.trainingRuntimeName, "kind": "TrainingRuntime"}


def load_cluster_config(path: str | None = None) -> ClusterConfig:
    """cluster.yaml at ``path`` or ``$QTRAIN_CLUSTER_CONFIG``; neither: ``ClusterConfig()``. ValueError
    (one line, naming the file and the dotted key) if it is not there, not YAML or not the contract."""
    path = path or os.environ.get(ENV)
    if not path:
        return ClusterConfig()
    from qwen3_trainer.model import storage

    try:
        data = yaml.safe_load(storage.read_text(path))
    except FileNotFoundError:
        raise ValueError(f"{path}: not found (${ENV})") from None
    except storage.StorageError as exc:  # not found (older storage module), unreachable, a directory
        if "not found" in str(exc):
            raise ValueError(f"{path}: not found (${ENV})") from None
        raise ValueError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValueError(f"{path}: not valid YAML: {getattr(exc, 'problem', None) or exc}{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a {type(data).__name__}, not a mapping of cluster settings")
    try:
        config = ClusterConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: {describe(exc)}") from None
    config._source = path
    for name, pool in config.nodePools.items():
        pool._where = f"{path}: nodePools.{name}"
    return config


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if "$ref" in node:  # keep what sits next to the reference (a default)
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            return {**_inline(defs[node["$ref"].rsplit("/", 1)[-1]], defs), **_inline(siblings, defs)}
        out = {k: _inline(v, defs) for k, v in node.items() if k not in ("title", "$defs")}
        if "patternProperties" in out:  # the pattern is the only way in (a pool named GPU is refused)
            out["additionalProperties"] = False
        return out
    return [_inline(v, defs) for v in node] if isinstance(node, list) else node


def cluster_values_schema() -> dict[str, Any]:
    """JSON schema of the chart's ``jobs`` values (``JobsValues``), self-contained (no ``$ref``)."""
    schema = JobsValues.model_json_schema()
    return _inline(schema, schema.get("$defs", {}))
