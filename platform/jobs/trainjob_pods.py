"""What Kubeflow Trainer v2 makes of a rendered TrainJob: ``numNodes`` identical node pods, their pod
template, and the restart policy its runtime spells in JobSet / Job terms (trainjob.py) read back in
the JobSpec's words. The local supervisor runs these pods as processes; the tests validate the
template with kubernetes-validate as the Pod it becomes.

The template is the runtime's ``node`` pod template with the TrainJob applied as the Trainer applies
it: ``trainer`` sets the ``node`` container's image, command, args and resources and merges its env
by name; ``runtimePatches`` merge in the way strategic merge treats these fields (maps and structs
merged, ``volumes``/``imagePullSecrets`` by name, ``volumeMounts`` by mount path, ``tolerations``
replaced). Without the runtime (a named cluster runtime this process cannot read) the base is a bare
``node`` container and the restart policy is the JobSpec default, ExitCode with 3 restarts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

NODE = "node"
BY_KEY = {"volumes": "name", "imagePullSecrets": "name", "containers": "name", "env": "name",
          "volumeMounts": "mountPath"}
DEFAULT_POLICY = ("ExitCode", 3)


@dataclass(frozen=True)
class NodePlan:
    nodes: int
    nproc_per_node: int
    template: dict[str, Any]      # pod template: {"metadata": ..., "spec": ...}
    restart_policy: str           # Never | OnFailure | ExitCode
    backoff_limit: int            # gang restarts before the job fails
    active_deadline_seconds: int | None

    @property
    def container(self) -> dict[str, Any]:
        return next(c for c in self.template["spec"]["containers"] if c["name"] == NODE)


def node_plan(job: dict[str, Any], runtime: dict[str, Any] | None) -> NodePlan:
    spec, trainer = job["spec"], job["spec"].get("trainer") or {}
    node_job = _node_job(runtime)
    template = copy.deepcopy(node_job.get("spec", {}).get("template") or {"spec": {"containers": [{"name": NODE}]}})
    template.setdefault("metadata", {})
    pod = template["spec"]
    container = next(c for c in pod["containers"] if c["name"] == NODE)
    for key in ("image", "command", "args"):
        if key in trainer:
            container[key] = trainer[key]
    if "resourcesPerNode" in trainer:
        container["resources"] = copy.deepcopy(trainer["resourcesPerNode"])
    if trainer.get("env"):
        container["env"] = _merge_list(container.get("env", []), trainer["env"], "name")
    for patch in spec.get("runtimePatches") or []:
        jobs = (((patch.get("trainingRuntimeSpec") or {}).get("template") or {}).get("spec") or {})
        for rjob in jobs.get("replicatedJobs") or []:
            if rjob["name"] == NODE:
                template = _merge(template, (((rjob.get("template") or {}).get("spec") or {}).get("template") or {}))
    restart, backoff = _restart_policy(runtime) if runtime else DEFAULT_POLICY
    nodes = trainer.get("numNodes") or ((runtime or {}).get("spec", {}).get("mlPolicy") or {}).get("numNodes", 1)
    return NodePlan(nodes=nodes, nproc_per_node=int(trainer.get("numProcPerNode", 1)), template=template,
                    restart_policy=restart, backoff_limit=backoff,
                    active_deadline_seconds=spec.get("activeDeadlineSeconds"))


def pod_of(plan: NodePlan, name: str, namespace: str) -> dict[str, Any]:
    """The template as the Pod object kubernetes-validate checks."""
    meta = {"name": name, "namespace": namespace, **plan.template.get("metadata", {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": plan.template["spec"]}


def _node_job(runtime: dict[str, Any] | None) -> dict[str, Any]:
    if not runtime:
        return {}
    jobs = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    return next(j for j in jobs if j["name"] == NODE)["template"]


def _restart_policy(runtime: dict[str, Any]) -> tuple[str, int]:
    """(restart policy, backoff limit) in the JobSpec's words, from trainjob.render_runtime's spelling."""
    failure = runtime["spec"]["template"]["spec"].get("failurePolicy") or {}
    restarts = failure.get("maxRestarts", 0)
    pod_failure = _node_job(runtime).get("spec", {}).get("podFailurePolicy")
    if restarts == 0:
        return "Never", 0
    return ("ExitCode" if pod_failure else "OnFailure"), restarts


def _merge(base: Any, patch: Any, key: str | None = None) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _merge(base.get(k), v, k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in BY_KEY:
        return _merge_list(base, patch, BY_KEY[key])
    return copy.deepcopy(patch)


def _merge_list(base: list, patch: list, by: str) -> list:
    out = [copy.deepcopy(item) for item in base]
    for item in patch:
        at = next((i for i, old in enumerate(out) if old.get(by) == item.get(by)), None)
        if at is None:
            out.append(copy.deepcopy(item))
        else:
            out[at] = _merge(out[at], item)
    return out


def core_objects(obj: dict[str, Any], runtime: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The core Kubernetes objects inside a Trainer object, for kubernetes-validate (it has no schema
    for Trainer's CRDs): a TrainingRuntime's ``node`` Job template as a batch/v1 Job and its pod
    template as a Pod; a TrainJob's node pod as it runs on ``runtime`` (trainer and patches applied)."""
    name, ns = obj["metadata"]["name"], obj["metadata"].get("namespace", "default")
    if obj["kind"] == "TrainJob":
        return [pod_of(node_plan(obj, runtime), f"{name}-node-0-0", ns)]
    job = _node_job(obj)
    meta = {"name": f"{name}-node-0", "namespace": ns, **job.get("metadata", {})}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-node-0-0", "namespace": ns},
           "spec": job["spec"]["template"]["spec"]}
    return [{"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job["spec"]}, pod]
