"""Training jobs: a JobSpec (spec.py) rendered to a Kubeflow PyTorchJob (render.py) or a Kubeflow
Trainer v2 TrainJob (trainjob.py; trainjob_pods.py is what Trainer makes of it), run on Kubernetes
(k8s_launcher.py, the one module that talks to the API server; k8s_status.py reads both APIs' objects)
or as local processes (local_launcher.py + local_supervisor.py, the embedded default). Both launchers
return the same JobStatus shape (status.py).

    from qwen3_trainer.platform.jobs import get_launcher, load_spec
    spec, base = load_spec("k8s/jobs/debugmodel-cpu.yaml")
    launcher = get_launcher("local")            # or "k8s"
    handle = launcher.submit(spec, base_dir=base)
    final = launcher.wait(handle.name)          # JobStatus; final.state == "Succeeded"
"""

from __future__ import annotations

from typing import Literal

from qwen3_trainer.platform.jobs.render import RenderedJob, render
from qwen3_trainer.platform.jobs.spec import JobSpec, SpecError, load_spec, parse_spec
from qwen3_trainer.platform.jobs.status import JobHandle, JobStatus, LauncherError

__all__ = ["JobHandle", "JobSpec", "JobStatus", "LauncherError", "RenderedJob", "SpecError", "get_launcher",
           "load_spec", "parse_spec", "render"]


def get_launcher(backend: Literal["local", "k8s"] = "local", **kwargs):
    """``LocalLauncher(root=None)`` or ``K8sLauncher(namespace=None, kubeconfig=None, context=None)``."""
    if backend == "local":
        from qwen3_trainer.platform.jobs.local_launcher import LocalLauncher

        return LocalLauncher(**kwargs)
    if backend == "k8s":
        from qwen3_trainer.platform.jobs.k8s_launcher import K8sLauncher

        return K8sLauncher(**kwargs)
    raise ValueError(f"backend must be local or k8s, not {backend!r}")
