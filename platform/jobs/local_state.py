"""On-disk state of local jobs, shared by the local launcher (any process) and its supervisor.

Layout, under ``$QTRAIN_HOME/jobs/<name>/`` (``QTRAIN_HOME`` defaults to ``~/.qtrain``)::

    manifest.yaml        the rendered objects (ConfigMap + PyTorchJob, or ConfigMap + TrainingRuntime +
                         TrainJob), exactly what k8s would get
    state.json           JobStatus + local details, rewritten atomically by the supervisor
    volumes/<volume>/    ConfigMap volumes as files (the trainer's /etc/qtrain/config.yaml lands here)
    logs/<pod>.log       each replica's stdout+stderr, appended across restarts
    supervisor.log       the supervisor's own record

Processes are found by environment markers (``/proc/<pid>/environ``): replicas and everything they
start carry ``QTRAIN_LOCAL_JOB=<uid>``, the supervisor carries ``QTRAIN_LOCAL_SUPERVISOR=<uid>``.
Between fork and exec a new process still shows its parent's environment, so the supervisor itself
is known by the identity (pid and kernel start time) the submitter records in ``supervisor.pid``.
"""

from __future__ import annotations

import os
import re
import signal
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import BaseModel

from qwen3_trainer.platform.jobs.status import JobStatus

JOB_MARKER = "QTRAIN_LOCAL_JOB"
SUPERVISOR_MARKER = "QTRAIN_LOCAL_SUPERVISOR"


class LocalState(BaseModel):
    status: JobStatus
    uid: str
    cwd: str                          # the replicas' working directory (the submitter's)
    gpus: list[str] | None = None     # device ids handed out to replicas, None for CPU jobs
    labels: dict[str, str] = {}


def home() -> Path:
    return Path(os.environ.get("QTRAIN_HOME") or Path.home() / ".qtrain")


def jobs_root(root: Path | None = None) -> Path:
    return (root or home()) / "jobs"


def read_state(job_dir: Path) -> LocalState:
    return LocalState.model_validate_json((job_dir / "state.json").read_text())


def write_state(job_dir: Path, state: LocalState) -> None:
    tmp = job_dir / f".state.{os.getpid()}.tmp"
    tmp.write_text(state.model_dump_json(indent=1))
    os.replace(tmp, job_dir / "state.json")


def read_manifest(job_dir: Path) -> dict:
    """The job of the job's manifest: its PyTorchJob or TrainJob."""
    return next(d for d in _manifest(job_dir) if d["kind"] in ("PyTorchJob", "TrainJob"))


def read_runtime(job_dir: Path) -> dict | None:
    """The TrainingRuntime a TrainJob's manifest carries (None: it names a runtime of the cluster)."""
    return next((d for d in _manifest(job_dir) if d["kind"] == "TrainingRuntime"), None)


def _manifest(job_dir: Path) -> list[dict]:
    return list(yaml.safe_load_all((job_dir / "manifest.yaml").read_text()))


def log_path(job_dir: Path, pod: str) -> Path:
    path = job_dir / "logs" / f"{pod}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


ATTEMPT_HEADER = "==== qtrain: attempt "
MAX_ERROR_LINE = 500
_RANK_PREFIX = re.compile(r"^\[(?:rank|default)?\d+\]:?\s*")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt)\b(?::.*)?$")
# what torchrun prints about a failed worker: the consequence, never the cause
_LAUNCHER_NOISE = ("ChildFailedError", "SignalException", "torch.distributed.elastic")


def last_error_line(lines: Iterable[str]) -> str | None:
    """The line that says why a replica failed, from the end of its log: the last one-line error of the
    CLI (``error: ...``), else the last exception line of a traceback (``ValueError: ...``), skipping what
    torchrun adds about a failed worker. Used for the Failed condition of both backends."""
    cli = exception = None
    for raw in lines:
        line = _RANK_PREFIX.sub("", raw.strip())
        if line.startswith("error: "):
            cli = line
        elif _EXCEPTION_LINE.match(line) and not any(n in line for n in _LAUNCHER_NOISE):
            exception = line
    found = cli or exception
    return found[:MAX_ERROR_LINE] if found else None


def last_attempt_error(path: Path, max_lines: int = 400) -> str | None:
    """``last_error_line`` of the latest attempt in a replica's log file (``None`` without one)."""
    try:
        with open(path, errors="replace") as f:
            tail = deque(f, maxlen=max_lines)
    except OSError:
        return None
    lines = list(tail)
    starts = [i for i, line in enumerate(lines) if line.startswith(ATTEMPT_HEADER)]
    return last_error_line(lines[starts[-1] + 1:] if starts else lines)


def _pids_with(marker: str, uid: str) -> list[int]:
    needle = f"{marker}={uid}".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry.name))
        except OSError:             # gone, a zombie, or not ours
            continue
    return pids


def job_pids(uid: str) -> list[int]:
    """Live processes of a job's replicas (torchrun agents, their workers, anything they started)."""
    return _pids_with(JOB_MARKER, uid)


def supervisor_pids(uid: str) -> list[int]:
    return _pids_with(SUPERVISOR_MARKER, uid)


def _start_time(pid: int) -> str | None:
    """The kernel start time of a live, non-zombie process (with the pid, a unique identity)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def record_supervisor(job_dir: Path, pid: int) -> None:
    (job_dir / "supervisor.pid").write_text(f"{pid} {_start_time(pid)}\n")


def live_supervisor_pids(job_dir: Path, uid: str) -> list[int]:
    """The job's supervisor, by the identity the submitter recorded (valid from fork on, and one
    ``/proc`` read instead of a scan); job directories without a record fall back to the marker."""
    try:
        pid, start = (job_dir / "supervisor.pid").read_text().split()
    except (OSError, ValueError):
        return supervisor_pids(uid)
    return [int(pid)] if _start_time(int(pid)) == start else []


def signal_job(uid: str, sig: int) -> None:
    for pid in job_pids(uid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_all(uid: str) -> None:
    """Backstop for cancel: SIGKILL the supervisor and every replica process of the job."""
    for pid in supervisor_pids(uid) + job_pids(uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
