"""The shapes both launchers return, so callers (CLI, workflows) never care where a job runs.

A job's conditions follow the training operator's (``Created``, ``Running``, ``Restarting``,
``Succeeded``, ``Failed``, each with a reason and a message; a TrainJob's may also be ``Suspended``,
k8s_status.py maps Trainer's onto these); its ``state`` is the type of the latest condition whose
status is ``True``, as ``kubectl get pytorchjob`` shows it. One ReplicaStatus per pod
(Kubernetes) or per torchrun process (local), named like the operator's pods: ``<job>-master-0``,
``<job>-worker-<i>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import BaseModel

TERMINAL = ("Succeeded", "Failed")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Condition(BaseModel):
    type: str                  # Created | Running | Restarting | Succeeded | Failed | Suspended (TrainJob)
    status: str = "True"
    reason: str = ""
    message: str = ""
    last_transition_time: str = ""


class ReplicaStatus(BaseModel):
    name: str                  # <job>-master-0 / <job>-worker-<i> / (TrainJob) <job>-node-0-<i>[-<suffix>]
    replica_type: str          # Master | Worker | Node
    index: int
    phase: str                 # Pending | Running | Succeeded | Failed | Unknown
    restarts: int = 0
    exit_code: int | None = None
    pid: int | None = None     # local backend: the replica's torchrun process


class JobStatus(BaseModel):
    name: str
    namespace: str
    backend: str               # local | k8s
    run_id: str | None = None
    conditions: list[Condition] = []
    replicas: list[ReplicaStatus] = []
    restarts: int = 0          # local: gang restarts; k8s: sum of the pods' container restartCount
    start_time: str | None = None
    completion_time: str | None = None

    @property
    def state(self) -> str:
        true = [c for c in self.conditions if c.status == "True"]
        return true[-1].type if true else "Pending"

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL

    @property
    def message(self) -> str:
        true = [c for c in self.conditions if c.status == "True"]
        return true[-1].message if true else ""

    def summary(self) -> dict:
        """JSON for scripts: the model plus the derived state."""
        return {**self.model_dump(), "state": self.state}


def set_condition(conditions: list[Condition], type_: str, reason: str, message: str) -> list[Condition]:
    """The operator's condition update: one condition per type (latest wins); Running and Restarting
    exclude each other; a terminal condition turns both off."""
    out = []
    for c in conditions:
        if c.type == type_:
            continue
        if c.status == "True" and (
            (type_ in ("Running", "Restarting") and c.type in ("Running", "Restarting"))
            or (type_ in TERMINAL and c.type in ("Running", "Restarting"))
        ):
            c = c.model_copy(update={"status": "False"})
        out.append(c)
    out.append(Condition(type=type_, reason=reason, message=message, last_transition_time=now()))
    return out


@dataclass(frozen=True)
class JobHandle:
    """What ``submit`` returns: enough to find the job again from any process."""

    backend: str
    name: str
    namespace: str
    run_id: str


class LauncherError(Exception):
    """A launcher failure as one line plus a hint; ``status`` is the HTTP code for API errors."""

    def __init__(self, message: str, hint: str | None = None, status: int | None = None):
        super().__init__(message)
        self.hint = hint
        self.status = status
