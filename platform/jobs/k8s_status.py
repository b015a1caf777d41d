"""How a PyTorchJob or a TrainJob and its pods read as a JobStatus: the two job APIs the Kubernetes
launcher speaks, described as data, and their objects mapped onto our conditions. Pure functions:
k8s_launcher.py makes the API calls.

A PyTorchJob's conditions are ours already (Created, Running, Restarting, Succeeded, Failed). A
TrainJob's (Kubeflow Trainer v2) are Created, Suspended, Complete and Failed: Complete reads as
Succeeded, a True Suspended as the state Suspended, and Running, which Trainer v2 does not set itself,
is what Kubeflow's SDK calls running (every node pod Running or Succeeded) unless the object carries
a Running condition of its own. Its pods are the JobSet's: ``jobset.sigs.k8s.io/jobset-name=<job>``,
replicated Job ``node``, the node index in ``batch.kubernetes.io/job-completion-index``.
"""

from __future__ import annotations

from dataclasses import dataclass

from qwen3_trainer.platform.jobs.status import Condition, JobStatus, ReplicaStatus

RUN_ID_LABEL = "qwen3-trainer.io/run-id"


@dataclass(frozen=True)
class JobApi:
    kind: str
    group: str
    version: str
    plural: str
    container: str           # the trainer container of every pod
    job_label: str           # pod label naming the job
    type_label: str          # pod label: replica type (PyTorchJob) or replicated Job (TrainJob)
    index_label: str         # pod label: replica index / node index
    crd_hint: str            # where to look when the API returns 404 for the kind

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def resource(self) -> str:
        return f"{self.plural}.{self.group}"

    def replica_selector(self, name: str, replica: str, index: int) -> str:
        """Label selector of one replica's pod (``master``/``worker``; TrainJob: ``node`` too, master = node
        0 and worker i = node i+1, the numbering of the PyTorchJob's Master and Workers)."""
        if self.kind == "TrainJob":
            node = {"master": 0, "worker": index + 1}.get(replica, index)
            return f"{self.job_label}={name},{self.type_label}=node,{self.index_label}={node}"
        return f"{self.job_label}={name},{self.type_label}={replica},{self.index_label}={index}"


PYTORCHJOB = JobApi("PyTorchJob", "kubeflow.org", "v1", "pytorchjobs", "pytorch", "training.kubeflow.org/job-name",
                    "training.kubeflow.org/replica-type", "training.kubeflow.org/replica-index",
                    "is the Kubeflow training operator installed? (kubectl get crd pytorchjobs.kubeflow.org)")
TRAINJOB = JobApi("TrainJob", "trainer.kubeflow.org", "v1alpha1", "trainjobs", "node", "jobset.sigs.k8s.io/jobset-name",
                  "jobset.sigs.k8s.io/replicatedjob-name", "batch.kubernetes.io/job-completion-index",
                  "is Kubeflow Trainer v2 installed? (kubectl get crd trainjobs.trainer.kubeflow.org)")
APIS = {api.kind: api for api in (PYTORCHJOB, TRAINJOB)}


def terminated_state(pod, container: str):
    cs = next((c for c in (pod.status.container_statuses or []) if c.name == container), None)
    terminated = cs and (cs.state and cs.state.terminated or cs.last_state and cs.last_state.terminated)
    return cs, terminated


def job_status(api: JobApi, job: dict, pods: list) -> JobStatus:
    meta, status = job["metadata"], job.get("status") or {}
    replicas = []
    for pod in pods:
        labels = pod.metadata.labels or {}
        if api.kind == "TrainJob" and labels.get(api.type_label) != "node":
            continue
        cs, terminated = terminated_state(pod, api.container)
        replicas.append(ReplicaStatus(
            name=pod.metadata.name, replica_type=labels.get(api.type_label, "").capitalize(),
            index=int(labels.get(api.index_label, 0)), phase=pod.status.phase or "Unknown",
            restarts=cs.restart_count if cs else 0, exit_code=terminated.exit_code if terminated else None))
    # TrainJob pods carry a random suffix: order them by node index, the operator's by name
    replicas.sort(key=(lambda r: r.index) if api.kind == "TrainJob" else (lambda r: r.name))
    conditions = [_condition(c) for c in status.get("conditions") or []]
    if api.kind == "TrainJob":
        conditions = _trainjob_conditions(meta["name"], conditions, replicas, (job.get("spec") or {}))
    return JobStatus(name=meta["name"], namespace=meta.get("namespace", ""), backend="k8s",
                     run_id=(meta.get("labels") or {}).get(RUN_ID_LABEL),
                     conditions=conditions, replicas=replicas, restarts=sum(r.restarts for r in replicas),
                     start_time=status.get("startTime"), completion_time=status.get("completionTime"))


def _condition(c: dict) -> Condition:
    return Condition(type=c["type"], status=c.get("status", "True"), reason=c.get("reason", ""),
                     message=c.get("message", ""), last_transition_time=c.get("lastTransitionTime", ""))


ORDER = {"Created": 0, "Suspended": 1, "Running": 2, "Succeeded": 3, "Failed": 3}


def _trainjob_conditions(name: str, conditions: list[Condition], replicas: list[ReplicaStatus],
                         spec: dict) -> list[Condition]:
    """A TrainJob's conditions in our words, ordered so the state (the last True one) is its phase."""
    out = [c.model_copy(update={"type": "Succeeded"}) if c.type == "Complete" else c for c in conditions]
    out = [c for c in out if c.type in ORDER]
    true = {c.type for c in out if c.status == "True"}
    nodes = (spec.get("trainer") or {}).get("numNodes") or 1
    up = [r for r in replicas if r.phase in ("Running", "Succeeded")]
    if not true & {"Running", "Suspended", "Succeeded", "Failed"} and replicas and len(up) >= nodes:
        stamp = max((c.last_transition_time for c in out), default="")
        out.append(Condition(type="Running", reason="NodesRunning", last_transition_time=stamp,
                             message=f"TrainJob {name}: all {nodes} node pod(s) are running."))
    return sorted(out, key=lambda c: ORDER[c.type])


def add_cause(status: JobStatus, line: str | None) -> None:
    """Append the failing replica's error line to the Failed condition's message."""
    if not line:
        return
    for i in range(len(status.conditions) - 1, -1, -1):
        c = status.conditions[i]
        if c.type == "Failed" and c.status == "True":
            message = c.message.rstrip(".")
            status.conditions[i] = c.model_copy(update={"message": f"{message}: {line}" if message else line})
            return
