"""A stage's job through the platform launcher: submit -> follow -> wait (the JobSpecs come from recipe.jobs).

The JobSpec carries the job's complete config inline (rendered into the PyTorchJob's ConfigMap),
so the same spec runs as local processes (the embedded default) or on Kubernetes. On Kubernetes the
cluster contract comes from ``$QTRAIN_CLUSTER_CONFIG`` (the Helm chart mounts its ``cluster.yaml``;
typed by recipe.cluster).

``run`` follows the job's log (training-step lines go to ``on_line``) while waiting; whatever stops
the wait early — an exception, Ctrl-C, a flow cancellation (SIGTERM) — cancels the job first.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from qwen3_trainer.platform.jobs import JobSpec, JobStatus, get_launcher


def cluster_config(backend: str = "k8s"):
    """The typed cluster contract (defaults when no cluster.yaml is mounted)."""
    from qwen3_trainer.recipe.cluster import load_cluster_config

    return load_cluster_config()


def check_cluster(namespace: str | None) -> None:
    """Raise ValueError (one line) if the Kubernetes API cannot be configured."""
    from qwen3_trainer.platform.jobs import LauncherError

    try:
        get_launcher("k8s", namespace=namespace or cluster_config().namespace)
    except LauncherError as exc:
        raise ValueError(str(exc)) from None


def _launcher(backend: str, namespace: str | None):
    return get_launcher(backend) if backend == "local" else get_launcher(backend, namespace=namespace)


def run(spec: JobSpec, backend: str, *, on_line: Callable[[str], None] = print,
        on_status: Callable[[JobStatus], None] | None = None, namespace: str | None = None) -> JobStatus:
    """Submit ``spec``, stream its log, wait for Succeeded/Failed. Cancels the job if interrupted."""
    launcher = _launcher(backend, namespace or spec.namespace)
    submit(launcher, spec)
    follower = threading.Thread(target=_follow, args=(launcher, spec.name, on_line), daemon=True,
                                name=f"logs-{spec.name}")
    follower.start()
    try:
        final = launcher.wait(spec.name, on_update=on_status)
    except BaseException:
        cancel(launcher, spec.name)
        raise
    finally:
        follower.join(timeout=10)
    return final


def submit(launcher, spec: JobSpec) -> None:
    """A pipeline stage resubmits its own job name on retry (the trainer resumes): replace it."""
    launcher.submit(spec, replace=True)


def cancel(launcher, name: str) -> None:
    try:
        launcher.cancel(name)
    except Exception as exc:  # noqa: BLE001 - the original error matters more
        print(f"cancelling job {name} failed: {exc}")


def cancel_job(backend: str, name: str, namespace: str | None = None) -> None:
    cancel(_launcher(backend, namespace), name)


def _follow(launcher, name: str, on_line: Callable[[str], None]) -> None:
    try:  # read to the end of the log (the job's last lines come after wait() returns)
        for line in launcher.logs(name, follow=True):
            on_line(line)
    except Exception as exc:  # noqa: BLE001 - log streaming is best effort; wait() decides
        on_line(f"(log stream of {name} ended: {exc})")
