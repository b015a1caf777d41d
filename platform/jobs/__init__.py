"""Training jobs: a JobSpec (spec.py) rendered to a Kubeflow PyTorchJob (render.py), run on Kubernetes
(k8s_launcher.py, the one module that talks to the API server) or as local processes
(local_launcher.py + local_supervisor.py, the embedded default). Both launchers return the same
JobStatus shape (status.py).

    from qwen3_trainer.platform.jobs import get_launcher, load_spec
    spec, base = load_spec("k8s/jobs/debugmodel-cpu.yaml")
    launcher = get_launcher("local")            # or "k8s"
    handle = launcher.submit(spec, base_dir=base)
    final = launcher.wait(handle.name)          # JobStatus; final.state == "Succeeded"
"""
