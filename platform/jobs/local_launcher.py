"""The local launcher, the embedded default: runs the same rendered PyTorchJob (or TrainJob) as local
processes.

``submit`` renders the JobSpec, writes the job directory (local_state.py), and starts a detached
supervisor (local_supervisor.py) that runs one torchrun per replica; it returns at once. ``status``,
``wait``, ``logs``, ``cancel`` and ``list`` then work from any process, through the job directory.
Same method names and JobStatus shape as the Kubernetes launcher.

Local specifics: the image is not used (the replicas run this Python environment, cwd = the
submitter's); a ``secretKeyRef`` variable takes the submitting shell's value of the same name; a
job's name is its directory, so a name in use is refused, and a finished job's record and logs are
replaced only with ``replace=True`` (``qtrain job submit --replace``); GPUs are handed out per
replica when the spec asks for them, CPU jobs see none.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from qwen3_trainer.platform.jobs import local_state as ls
from qwen3_trainer.platform.jobs.render import RenderedJob, render
from qwen3_trainer.platform.jobs.spec import JobSpec
from qwen3_trainer.platform.jobs.status import JobHandle, JobStatus, LauncherError, set_condition

CANCEL_WAIT_S = 15.0


class LocalLauncher:
    backend = "local"

    def __init__(self, root: str | Path | None = None):
        self.root = ls.jobs_root(Path(root) if root else None)
        self._children: dict[str, subprocess.Popen] = {}   # supervisors this process started (reaped)

    # -- submit ---------------------------------------------------------------------------------
    def submit(self, spec: JobSpec, base_dir: str | Path | None = None, replace: bool = False) -> JobHandle:
        """Render and start ``spec``; returns once the supervisor runs (the job goes on without us).
        A job of the same name is refused, unless it has finished and ``replace`` is set."""
        rendered = render(spec, base_dir)
        gpus = _gpus_for(spec)
        job_dir = self._claim(spec.name, replace)
        try:
            self._write(job_dir, spec, rendered, gpus)
            uid = ls.read_state(job_dir).uid
            with open(job_dir / "supervisor.log", "ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "qwen3_trainer.platform.jobs.local_supervisor", str(job_dir)],
                    env={**os.environ, ls.SUPERVISOR_MARKER: uid}, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
        except BaseException:
            shutil.rmtree(job_dir, ignore_errors=True)
            raise
        ls.record_supervisor(job_dir, proc.pid)
        self._children[spec.name] = proc
        return JobHandle(self.backend, spec.name, spec.namespace, spec.run)

    def _claim(self, name: str, replace: bool) -> Path:
        job_dir = self.root / name
        if (job_dir / "state.json").exists():
            current = self.status(name)
            if not current.finished:
                raise LauncherError(f"local job {name} already exists ({current.state})",
                                    hint=f"qtrain job cancel {name}, or choose another name", status=409)
            if not replace:
                raise LauncherError(f"local job {name} already exists ({current.state}); its record and logs "
                                    f"are under {job_dir}", status=409,
                                    hint="submit with --replace to replace them, or choose another name")
            shutil.rmtree(job_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        return job_dir

    def _write(self, job_dir: Path, spec: JobSpec, rendered: RenderedJob, gpus: list[str] | None) -> None:
        (job_dir / "manifest.yaml").write_text(rendered.to_yaml())
        if rendered.configmap:
            volume = job_dir / "volumes" / "train-config"
            volume.mkdir(parents=True, exist_ok=True)
            for key, text in rendered.configmap["data"].items():
                (volume / key).write_text(text)
        status = JobStatus(name=spec.name, namespace=spec.namespace, backend=self.backend, run_id=spec.run)
        kind = rendered.kind
        status.conditions = set_condition([], "Created", f"{kind}Created", f"{kind} {spec.name} is created.")
        labels = rendered.job["metadata"].get("labels", {})
        ls.write_state(job_dir, ls.LocalState(status=status, uid=uuid.uuid4().hex, cwd=os.getcwd(),
                                              gpus=gpus, labels=labels))

    # -- read -----------------------------------------------------------------------------------
    def status(self, name: str) -> JobStatus:
        state = self._state(name)
        status = state.status
        child = self._children.get(name)
        if child is not None:
            child.poll()                  # reap our own finished supervisor
        if not status.finished and not ls.live_supervisor_pids(self.root / name, state.uid):
            time.sleep(0.2)               # it may have written its last state just now
            state = self._state(name)
            status = state.status
            if not status.finished:
                status.conditions = set_condition(status.conditions, "Failed", "SupervisorLost",
                                                  f"the local supervisor of {name} is gone; see supervisor.log")
        return status

    def wait(self, name: str, timeout: float | None = None,
             on_update: Callable[[JobStatus], None] | None = None, poll_s: float = 0.5) -> JobStatus:
        """Block until the job is Succeeded or Failed; ``on_update`` sees each new status."""
        end = None if timeout is None else time.monotonic() + timeout
        last = None
        while True:
            status = self.status(name)
            if on_update and status != last:
                on_update(status)
            last = status
            if status.finished:
                return status
            if end is not None and time.monotonic() > end:
                raise LauncherError(f"local job {name} still {status.state} after {timeout:.0f}s",
                                    hint=f"qtrain job status {name}")
            time.sleep(poll_s)

    def logs(self, name: str, replica: str = "master", index: int = 0, follow: bool = False,
             tail: int | None = None) -> Iterator[str]:
        """Lines of one replica's log (``master``/0 or ``worker``/i; ``master`` of an elastic job is
        worker-0; a TrainJob's ``node``/i, where master is node 0 and worker i node i+1); ``follow``
        tails it until the job finishes; ``tail`` keeps only the last lines."""
        if tail is not None and not follow:
            yield from collections.deque(self.logs(name, replica, index), maxlen=tail)
            return
        job_dir = self._dir(name)
        pod = local_pod(name, ls.read_manifest(job_dir), replica, index)
        path = job_dir / "logs" / f"{pod}.log"
        known = [r.name for r in self._state(name).status.replicas]
        if not path.exists() and known and pod not in known:
            raise LauncherError(f"local job {name} has no replica {pod}", hint=f"replicas: {', '.join(known)}",
                                status=404)
        while not path.exists():
            if not follow or self.status(name).finished:
                return
            time.sleep(0.2)
        with open(path, errors="replace") as f:
            pending = ""
            while True:
                chunk = f.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith("\n"):
                        yield pending.rstrip("\n")
                        pending = ""
                    continue
                if not follow:
                    break
                if self.status(name).finished:
                    yield from (pending + f.read()).splitlines()
                    return
                time.sleep(0.2)
            if pending:
                yield pending

    def list(self, selector: dict[str, str] | None = None) -> list[JobStatus]:
        """Local jobs whose labels match ``selector`` (all of them when None)."""
        out = []
        if not self.root.exists():
            return out
        for job_dir in sorted(self.root.iterdir()):
            if not (job_dir / "state.json").exists():
                continue
            state = ls.read_state(job_dir)
            if selector and any(state.labels.get(k) != v for k, v in selector.items()):
                continue
            out.append(self.status(job_dir.name))
        return out

    # -- cancel ---------------------------------------------------------------------------------
    def cancel(self, name: str) -> None:
        """Stop the job and every process it started; the record and logs stay (status shows
        Failed/JobCancelled)."""
        state = self._state(name)
        if state.status.finished:
            return
        job_dir = self._dir(name)
        for pid in ls.live_supervisor_pids(job_dir, state.uid):
            os.kill(pid, signal.SIGTERM)      # it kills the gang and records Failed/JobCancelled
        end = time.monotonic() + CANCEL_WAIT_S
        while time.monotonic() < end and ls.live_supervisor_pids(job_dir, state.uid):
            self._reap(name)
            time.sleep(0.1)
        ls.kill_all(state.uid)                # backstop: nothing of this job survives a cancel
        self._reap(name)
        state = self._state(name)
        if not state.status.finished:
            state.status.conditions = set_condition(state.status.conditions, "Failed", "JobCancelled",
                                                    f"{ls.read_manifest(job_dir)['kind']} {name} was cancelled.")
            ls.write_state(self._dir(name), state)

    # -- helpers --------------------------------------------------------------------------------
    def _dir(self, name: str) -> Path:
        job_dir = self.root / name
        if not (job_dir / "state.json").exists():
            raise LauncherError(f"no local job named {name} (under {self.root})",
                                hint="qtrain job list", status=404)
        return job_dir

    def _state(self, name: str) -> ls.LocalState:
        return ls.read_state(self._dir(name))

    def _reap(self, name: str) -> None:
        child = self._children.get(name)
        if child is not None:
            child.poll()


def local_pod(name: str, job: dict, replica: str, index: int) -> str:
    """The replica's pod name, as the operator or the JobSet names it (less the JobSet's random suffix)."""
    replica = replica.lower()
    if job["kind"] == "TrainJob":
        node = {"master": 0, "worker": index + 1}.get(replica, index)
        return f"{name}-node-0-{node}"
    if replica == "master" and "Master" not in job["spec"]["pytorchReplicaSpecs"]:
        replica, index = "worker", 0      # an elastic job has no Master: worker-0 hosts the rendezvous
    return f"{name}-{replica}-{index}"


def _gpus_for(spec: JobSpec) -> list[str] | None:
    if not spec.gpus_per_node:
        return None
    needed = spec.max_nodes * spec.gpus_per_node
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d for d in visible.split(",") if d.strip()]
    else:
        import torch

        ids = [str(i) for i in range(torch.cuda.device_count())]
    if len(ids) < needed:
        raise LauncherError(
            f"{spec.name} needs {spec.max_nodes} x {spec.gpus_per_node} GPUs, this machine has {len(ids)}",
            hint="run it with --backend k8s, or lower nodes / gpus_per_node for a local run")
    return ids[:needed]
