"""The local job supervisor: runs one rendered PyTorchJob as local torchrun processes, the way the
training operator runs it as pods, and records its status in ``<job dir>/state.json``. A rendered
TrainJob runs the same way: its ``numNodes`` node pods (trainjob_pods.py: the runtime's pod template
with the TrainJob applied) become replicas ``<job>-node-0-<i>`` with the variables Trainer v2's Torch
plugin injects (``trainjob_env``: PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK = node index,
PET_MASTER_ADDR, PET_MASTER_PORT; no MASTER_ADDR/WORLD_SIZE/RANK), and its runtime's restart policy.

Started detached by local_launcher.py (``python -m qwen3_trainer.platform.jobs.local_supervisor DIR``)
so ``qtrain job submit`` returns and status/logs/cancel work from any process. Per replica (Master,
Workers) it starts the container's command with the environment the operator would inject
(``replica_env``: MASTER_ADDR=127.0.0.1, a free MASTER_PORT, WORLD_SIZE = replicas x nprocPerNode,
RANK = PET_NODE_RANK = node index, PET_NNODES, PET_NPROC_PER_NODE; the PET_RDZV_* set for elastic
jobs), expands ``$(VAR)`` in command/args as the kubelet does, maps ConfigMap mounts to files under
the job dir, and gives each replica its slice of the GPUs (none for a CPU job).

Failure handling follows the replica's restartPolicy and runPolicy.backoffLimit: ``Never`` fails the
job; ``OnFailure`` restarts on any non-zero exit; ``ExitCode`` restarts only on exit codes >= 128
(killed by a signal: OOM killer, preemption), failing at once on 1-127 (a trainer error). One
deliberate difference from the operator: a restart restarts the whole gang (every replica, a fresh
MASTER_PORT). With static rendezvous a lone restarted replica cannot rejoin the survivors; on a
cluster the survivors crash on the broken collective and are restarted in turn, so the end state is
the same. When several replicas have died by the time the supervisor looks, a signal death is taken
as the cause (the others' errors are its consequence).

Every process a replica starts carries ``QTRAIN_LOCAL_JOB=<uid>`` and ``QTRAIN_LOCAL_REPLICA=<pod>``
in its environment. torchrun puts its workers in new sessions, so process groups do not reach them;
the supervisor (and ``cancel`` as a backstop) finds and kills processes by these markers instead.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qwen3_trainer.platform.jobs import local_state as ls
from qwen3_trainer.platform.jobs.status import ReplicaStatus, now, set_condition
from qwen3_trainer.platform.jobs.trainjob_pods import node_plan

POLL_S = 0.2
KILL_GRACE_S = 5.0
SUCCESS_GRACE_S = 10.0     # after the Master succeeds, how long Workers get to exit on their own
# rendezvous variables of an enclosing torchrun (if the caller runs under one) must not leak in
_INHERITED_DROP = re.compile(r"^(PET_|TORCHELASTIC_|QTRAIN_LOCAL_)|^(LOCAL_RANK|LOCAL_WORLD_SIZE|GROUP_RANK|ROLE_RANK|"
                             r"ROLE_WORLD_SIZE|GROUP_WORLD_SIZE|MASTER_ADDR|MASTER_PORT|WORLD_SIZE|RANK)$")
_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass
class Replica:
    pod: str                   # <job>-master-0 / <job>-worker-<i>
    replica_type: str          # Master | Worker
    index: int
    node_rank: int
    restart_policy: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables are replaced, ``$$`` is a literal ``$``,
    undefined references stay as they are."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replica_env(job: dict, replica_type: str, index: int, port: int) -> dict[str, str]:
    """The variables the training operator (v1.9) injects into a replica's pod, for 127.0.0.1."""
    spec = job["spec"]
    total = sum(r["replicas"] for r in spec["pytorchReplicaSpecs"].values())
    nproc = spec.get("nprocPerNode", "auto")
    env = {"PYTHONUNBUFFERED": "1"}
    if "Master" in spec["pytorchReplicaSpecs"]:
        rank = index + 1 if replica_type == "Worker" else 0
        world = total * (int(nproc) if nproc.isdigit() else 1)
        env |= {"MASTER_ADDR": "127.0.0.1", "PET_MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                "PET_MASTER_PORT": str(port), "WORLD_SIZE": str(world), "RANK": str(rank),
                "PET_NPROC_PER_NODE": nproc, "PET_NODE_RANK": str(rank)}
    elastic = spec.get("elasticPolicy")
    if elastic is None:
        env["PET_NNODES"] = str(total)
        return env
    env |= {"PET_RDZV_ENDPOINT": f"127.0.0.1:{port}", "PET_RDZV_BACKEND": elastic.get("rdzvBackend", "c10d"),
            "PET_NNODES": f"{elastic['minReplicas']}:{elastic['maxReplicas']}"
            if "minReplicas" in elastic else str(spec["pytorchReplicaSpecs"]["Worker"]["replicas"])}
    if "maxRestarts" in elastic:
        env["PET_MAX_RESTARTS"] = str(elastic["maxRestarts"])
    if "rdzvId" in elastic:
        env["PET_RDZV_ID"] = elastic["rdzvId"]
    return env


def trainjob_env(nodes: int, nproc_per_node: int, node_rank: int, port: int) -> dict[str, str]:
    """The variables Kubeflow Trainer v2's Torch plugin injects into a node pod, for 127.0.0.1."""
    return {"PYTHONUNBUFFERED": "1", "PET_NNODES": str(nodes), "PET_NPROC_PER_NODE": str(nproc_per_node),
            "PET_NODE_RANK": str(node_rank), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}


def plan(job: dict, job_dir: Path, uid: str, port: int, gpus: list[str] | None = None,
         base_env: dict[str, str] | None = None, log=print, runtime: dict | None = None) -> list[Replica]:
    """The processes that run ``job``: one per replica (PyTorchJob: Master first; TrainJob: node 0 first).
    ``runtime``: a TrainJob's own TrainingRuntime, when its manifest carries one."""
    name = job["metadata"]["name"]
    base = {k: v for k, v in (os.environ if base_env is None else base_env).items() if not _INHERITED_DROP.match(k)}
    pods = []          # (pod, replica type, index, restart policy, pod spec, container, operator env)
    if job["kind"] == "TrainJob":
        nodes = node_plan(job, runtime)
        for i in range(nodes.nodes):
            pods.append((f"{name}-node-0-{i}", "Node", i, nodes.restart_policy, nodes.template["spec"],
                         nodes.container, trainjob_env(nodes.nodes, nodes.nproc_per_node, i, port)))
    else:
        for rtype in ("Master", "Worker"):
            rspec = job["spec"]["pytorchReplicaSpecs"].get(rtype)
            pod_spec = rspec and rspec["template"]["spec"]
            for index in range(rspec["replicas"] if rspec else 0):
                container = next(c for c in pod_spec["containers"] if c["name"] == "pytorch")
                pods.append((f"{name}-{rtype.lower()}-{index}", rtype, index, rspec.get("restartPolicy", "Never"),
                             pod_spec, container, replica_env(job, rtype, index, port)))
    replicas = []
    for node_rank, (pod, rtype, index, restart, pod_spec, container, operator_env) in enumerate(pods):
        per_node = int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        mounts = _local_mounts(pod_spec, container, job_dir)
        env = dict(base)
        env |= _container_env(container, base, log=lambda m, p=pod: log(f"{p}: {m}"))
        env |= operator_env
        env |= {"QTRAIN_LOCAL_JOB": uid, "QTRAIN_LOCAL_REPLICA": pod}
        mine = (gpus or [])[node_rank * per_node:(node_rank + 1) * per_node]
        env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        argv = [_remap(expand(a, env), mounts) for a in [*container.get("command", []), *container.get("args", [])]]
        if argv and argv[0] == "torchrun":
            argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
        replicas.append(Replica(pod, rtype, index, node_rank, restart, argv, env))
    return replicas


def _container_env(container: dict, base: dict[str, str], log) -> dict[str, str]:
    out = {}
    for var in container.get("env", []):
        if "value" in var:
            out[var["name"]] = expand(var["value"], {**base, **out})
        elif var["name"] in base:       # a secretKeyRef: the submitting shell's own value, if it has one
            out[var["name"]] = base[var["name"]]
        else:
            log(f"env {var['name']} comes from {sorted(var.get('valueFrom', {}))} and is not set locally; left unset")
    return out


def _local_mounts(pod_spec: dict, container: dict, job_dir: Path) -> dict[str, Path]:
    """mountPath -> local folder, for the ConfigMap volumes (written by the launcher under volumes/)."""
    config_volumes = {v["name"] for v in pod_spec.get("volumes", []) if "configMap" in v}
    return {m["mountPath"]: job_dir / "volumes" / m["name"]
            for m in container.get("volumeMounts", []) if m["name"] in config_volumes}


def _remap(arg: str, mounts: dict[str, Path]) -> str:
    for mount, local in mounts.items():
        if arg == mount or arg.startswith(mount.rstrip("/") + "/"):
            return str(local) + arg[len(mount.rstrip("/")):]
    return arg


class Supervisor:
    def __init__(self, job_dir: Path):
        self.dir = job_dir
        self.state = ls.read_state(job_dir)
        self.job = ls.read_manifest(job_dir)
        self.kind = self.job["kind"]
        self.runtime = ls.read_runtime(job_dir)
        self.cancelled = False
        if self.kind == "TrainJob":
            nodes = node_plan(self.job, self.runtime)
            self.backoff_limit, deadline = nodes.backoff_limit, nodes.active_deadline_seconds
        else:
            run_policy = self.job["spec"].get("runPolicy", {})
            self.backoff_limit, deadline = run_policy.get("backoffLimit", 3), run_policy.get("activeDeadlineSeconds")
        self.deadline = time.monotonic() + deadline if deadline else None
        self.gpus = self.state.gpus

    def log(self, message: str) -> None:
        print(f"{now()} {message}", flush=True)

    def set(self, type_: str, reason: str, message: str) -> None:
        s = self.state.status
        s.conditions = set_condition(s.conditions, type_, reason, message)
        if type_ == "Running" and s.start_time is None:
            s.start_time = now()
        if type_ in ("Succeeded", "Failed"):
            s.completion_time = now()
        self.log(f"{type_}: {message}")
        ls.write_state(self.dir, self.state)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_cancel)
        signal.signal(signal.SIGINT, self._on_cancel)
        name, kind = self.state.status.name, self.kind
        while True:
            replicas = self._start(self.state.status.restarts)
            if self.cancelled:
                outcome, culprit, code = "cancelled", None, None
            else:
                self.set("Running", f"{kind}Running", f"{kind} {name} is running.")
                outcome, culprit, code = self._monitor(replicas)
            self._kill(replicas)
            self._record(replicas)
            if outcome == "succeeded":
                self.set("Succeeded", f"{kind}Succeeded", f"{kind} {name} is successfully completed.")
                return 0
            if outcome == "cancelled":
                self.set("Failed", "JobCancelled", f"{kind} {name} was cancelled.")
                return 1
            if outcome == "deadline":
                self.set("Failed", "DeadlineExceeded", f"{kind} {name} has run longer than activeDeadlineSeconds.")
                return 1
            why = f"{culprit.pod} exited with code {code}"
            error = ls.last_attempt_error(ls.log_path(self.dir, culprit.pod))
            if error:
                why += f" ({error})"
            retry = culprit.restart_policy == "OnFailure" or (culprit.restart_policy == "ExitCode" and code >= 128)
            if not retry:
                self.set("Failed", f"{kind}Failed",
                         f"{kind} {name} is failed because {why} (restartPolicy {culprit.restart_policy}).")
                return 1
            if self.state.status.restarts >= self.backoff_limit:
                self.set("Failed", "BackoffLimitExceeded",
                         f"{kind} {name} has failed because it has reached the specified backoff limit "
                         f"({self.backoff_limit}); last: {why}.")
                return 1
            self.state.status.restarts += 1
            self.set("Restarting", f"{kind}Restarting", f"{kind} {name} is restarting because {why}.")

    def _on_cancel(self, signum, frame) -> None:
        self.cancelled = True

    def _start(self, attempt: int) -> list[Replica]:
        replicas = plan(self.job, self.dir, self.state.uid, free_port(), self.gpus, log=self.log, runtime=self.runtime)
        for r in replicas:
            path = ls.log_path(self.dir, r.pod)
            with open(path, "ab") as out:
                out.write(f"{ls.ATTEMPT_HEADER}{attempt} of {r.pod} started at {now()} ====\n".encode())
                out.flush()
                r.proc = subprocess.Popen(r.argv, env=r.env, cwd=self.state.cwd, stdin=subprocess.DEVNULL,
                                          stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.log(f"started {r.pod} pid {r.proc.pid}: {' '.join(r.argv)}")
        self._record(replicas)
        return replicas

    def _monitor(self, replicas: list[Replica]) -> tuple[str, Replica | None, int | None]:
        master = next((r for r in replicas if r.replica_type == "Master"), None)
        success_at = None
        while True:
            if self.cancelled:
                return "cancelled", None, None
            if self.deadline and time.monotonic() > self.deadline:
                return "deadline", None, None
            codes = {r.pod: _exit_code(r.proc.poll()) for r in replicas}
            failed = [r for r in replicas if codes[r.pod] not in (None, 0)]
            if failed and success_at is None:
                culprit = max(failed, key=lambda r: codes[r.pod] >= 128)   # a signal death is the cause
                return "failed", culprit, codes[culprit.pod]
            done = all(c == 0 for c in codes.values())
            if done or (master and codes[master.pod] == 0 and success_at is None):
                success_at = success_at or time.monotonic()
            if success_at and (done or time.monotonic() - success_at > SUCCESS_GRACE_S):
                return "succeeded", None, None
            self._record(replicas)
            time.sleep(POLL_S)

    def _kill(self, replicas: list[Replica]) -> None:
        """Stop every process of the job except this supervisor: SIGTERM, grace, SIGKILL."""
        ls.signal_job(self.state.uid, signal.SIGTERM)
        end = time.monotonic() + KILL_GRACE_S
        while time.monotonic() < end and ls.job_pids(self.state.uid):
            for r in replicas:
                r.proc.poll()
            time.sleep(0.1)
        ls.signal_job(self.state.uid, signal.SIGKILL)
        for r in replicas:
            r.proc.wait()

    def _record(self, replicas: list[Replica]) -> None:
        out = []
        for r in replicas:
            code = _exit_code(r.proc.poll()) if r.proc else None
            phase = "Running" if code is None else "Succeeded" if code == 0 else "Failed"
            out.append(ReplicaStatus(name=r.pod, replica_type=r.replica_type, index=r.index, phase=phase,
                                     restarts=self.state.status.restarts, exit_code=code, pid=r.proc.pid))
        if out != self.state.status.replicas:
            self.state.status.replicas = out
            ls.write_state(self.dir, self.state)


def _exit_code(returncode: int | None) -> int | None:
    """A container's exit code: a process killed by signal N reports 128 + N (137 = SIGKILL)."""
    if returncode is None:
        return None
    return 128 - returncode if returncode < 0 else returncode


def main() -> None:
    job_dir = Path(sys.argv[1])
    sup = Supervisor(job_dir)
    try:
        code = sup.run()
    except Exception as exc:  # the state must say what happened, whatever happened
        ls.signal_job(sup.state.uid, signal.SIGKILL)
        sup.set("Failed", "SupervisorError", f"local supervisor failed: {type(exc).__name__}: {exc}")
        raise
    sys.exit(code)


if __name__ == "__main__":
    main()
