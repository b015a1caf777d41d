"""Every job of every stage of every preset renders to a PyTorchJob the operator's API and Kubernetes accept.

The PyTorchJob's own fields are walked against the kubeflow-training SDK models (the CRD's types: every
key known, every type right), its pod templates and ConfigMap pass kubernetes-validate ``--strict``;
the pods' resources follow the cluster contract.
"""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from kubeflow.training import models as kf
from kubernetes import client as k8s

from qwen3_trainer.platform.jobs import render
from qwen3_trainer.recipe.cluster import amount, load_cluster_config
from qwen3_trainer.recipe.graph import STAGES
from qwen3_trainer.recipe.jobs import job_spec
from qwen3_trainer.recipe.plan import plan
from qwen3_trainer.recipe.presets import PRESETS

ROOT = "s3://qwen3-trainer/pipelines"


def _walk(data, klass: str, path: str) -> None:
    """Refuse a key or a type the SDK model (``klass``) does not have; pod templates go to kubernetes-validate."""
    if klass.startswith("dict("):
        value_type = klass[5:-1].split(", ", 1)[1]
        assert isinstance(data, dict), path
        for k, v in data.items():
            _walk(v, value_type, f"{path}.{k}")
        return
    if klass in ("str", "int", "bool"):
        assert isinstance(data, {"str": str, "int": int, "bool": bool}[klass]), f"{path}: {data!r} is not {klass}"
        return
    if klass == "V1PodTemplateSpec":
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", **data["metadata"]}, "spec": data["spec"]}
        try:
            kubernetes_validate.validate(pod, "1.33.0", strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path}: {str(exc).splitlines()[0]}")
        return
    model = getattr(kf, klass, None) or getattr(k8s, klass)
    by_key = {v: model.openapi_types[k] for k, v in model.attribute_map.items()}
    assert isinstance(data, dict), path
    for key, value in data.items():
        assert key in by_key, f"{path}.{key}: not a field of {klass}"
        _walk(value, by_key[key], f"{path}.{key}")


def _jobs(preset):
    cluster = load_cluster_config()
    student_init = "s3://models/student" if preset.student_upstream() is None else None
    the_preset = preset.model_copy(update={"student_init": student_init})
    for stage, p in plan(the_preset, list(STAGES)).items():
        configs = {"train": p.train_config(ROOT, init="/i", teacher="/t", dump="/d"),
                   "prepare": p.prepare_config(ROOT, init="/i", teacher="/t"), "eval": p.eval_config(ROOT)}
        for kind, cfg in configs.items():
            if cfg is not None:
                yield stage, kind, p, job_spec(p, the_preset, cfg, kind=kind, backend="k8s", pipeline_id="t",
                                               cluster=cluster, remote_storage=True)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_job_of_every_stage_renders_and_validates(name):
    seen = set()
    for stage, kind, p, spec in _jobs(PRESETS[name]):
        rendered = render(spec)
        job = rendered.job
        assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
        _walk({k: v for k, v in job.items() if k != "status"}, "KubeflowOrgV1PyTorchJob", f"{stage}/{kind}")
        kubernetes_validate.validate(rendered.configmap, "1.33.0", strict=True)
        assert yaml.safe_load(rendered.configmap["data"]["config.yaml"])  # the config travels whole
        scale = p.spec.scale
        replicas = job["spec"]["pytorchReplicaSpecs"]
        nodes = sum(r["replicas"] for r in replicas.values())
        trains = kind == "train" or (kind == "prepare" and p.spec.prepare.reward_model is not None)
        assert nodes == (scale.nodes if trains else 1)  # T4's preparation trains its reward model at scale
        res = replicas["Master"]["template"]["spec"]["containers"][0]["resources"]
        gpus = int(res["limits"].get("nvidia.com/gpu", 0))
        assert gpus == (scale.gpus_per_node if kind != "eval" else min(scale.gpus_per_node, 1))
        if gpus:  # >= 4 CPU and >= 32 GiB per GPU
            assert amount(res["requests"]["cpu"]) >= 4 * gpus and amount(res["requests"]["memory"]) >= 32 * 2**30 * gpus
        seen.add((stage, kind))
    assert {s for s, _ in seen} == set(STAGES)
    assert {(s, "prepare") for s in ("T1", "T2", "T3", "T4", "D")} <= seen


def test_cluster_identity_reaches_the_pods(tmp_path, monkeypatch):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({
        "imagePullPolicy": "Always", "imagePullSecrets": [{"name": "regcred"}],
        "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
        "s3": {"credentialsSecret": ""},  # workload identity: no key Secret
    }))
    monkeypatch.setenv("QTRAIN_CLUSTER_CONFIG", str(cluster))
    p = plan(PRESETS["tiny"], ["S1"])["S1"]
    spec = job_spec(p, PRESETS["tiny"], p.train_config(ROOT, init=None, teacher=None, dump="/d"), backend="k8s",
                    pipeline_id="t", remote_storage=True)
    pod = render(spec).job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["containers"][0]["imagePullPolicy"] == "Always"
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001}
    assert not any("valueFrom" in e for e in pod["containers"][0].get("env", []))


def test_jobs_that_do_not_fit_the_cluster_are_refused(tmp_path, monkeypatch):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"nodePools": {"gpu": {"gpusPerNode": 4}, "cpu": {"gpusPerNode": 0}}}))
    monkeypatch.setenv("QTRAIN_CLUSTER_CONFIG", str(cluster))
    p = plan(PRESETS["full"], ["S1"])["S1"]
    cfg = p.train_config(ROOT, init=None, teacher=None, dump="/d")
    with pytest.raises(ValueError, match="stage S1: needs 8 GPUs per node; node pool 'gpu' has 4"):
        job_spec(p, PRESETS["full"], cfg, backend="k8s", pipeline_id="t")
    cluster.write_text(yaml.safe_dump({"nodePools": {"cpu": {"gpusPerNode": 0}}}))
    with pytest.raises(ValueError, match=r"stage S1: .*nodePools.gpu: no such node pool \(cpu\)"):
        job_spec(p, PRESETS["full"], cfg, backend="k8s", pipeline_id="t")


def test_the_walk_refuses_unknown_fields():
    with pytest.raises(AssertionError, match="spec.nprocPerNod: not a field of KubeflowOrgV1PyTorchJobSpec"):
        _walk({"spec": {"nprocPerNod": "8"}}, "KubeflowOrgV1PyTorchJob", "job")
    with pytest.raises(AssertionError, match="is not int"):
        _walk({"spec": {"runPolicy": {"backoffLimit": "3"}}}, "KubeflowOrgV1PyTorchJob", "job")
