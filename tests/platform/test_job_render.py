"""JobSpec -> PyTorchJob rendering: operator shape, strict Kubernetes validation of the pod templates
(kubernetes-validate --strict), the committed k8s/jobs/rendered/ files, and parallelism that fits."""

from __future__ import annotations

import math
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from qwen3_trainer.platform.jobs.render import render
from qwen3_trainer.platform.jobs.spec import JobSpec, load_spec

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "k8s" / "jobs").glob("*.yaml"))   # their TrainJob renders: test_job_trainjob.py
K8S_VERSION = "1.33.0"


def _validate_strict(obj: dict) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{obj['kind']} {obj['metadata'].get('name')}: {str(exc).splitlines()[0]}")


def _as_pod(template: dict, name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **template["metadata"]},
            "spec": template["spec"]}


def test_example_specs_exist():
    names = {p.name for p in SPECS}
    assert {"debugmodel-cpu.yaml", "qwen3-30b-a3b-4x8.yaml", "qwen3-235b-a22b-32x8.yaml"} <= names


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_example_renders_validates_and_is_committed(path):
    spec, base = load_spec(path)
    rendered = render(spec, base)
    job = rendered.job
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert replicas["Master"]["replicas"] == 1
    assert replicas.get("Worker", {"replicas": 0})["replicas"] == spec.nodes - 1
    assert job["spec"]["nprocPerNode"] == str(spec.procs_per_node)
    for rtype, replica in replicas.items():
        container = replica["template"]["spec"]["containers"][0]
        assert container["name"] == "pytorch"
        assert container["ports"] == [{"containerPort": 23456, "name": "pytorchjob-port", "protocol": "TCP"}]
        _validate_strict(_as_pod(replica["template"], f"{spec.name}-{rtype.lower()}-0"))
    if rendered.configmap:
        _validate_strict(rendered.configmap)
        assert yaml.safe_load(rendered.configmap["data"]["config.yaml"]) == spec.train
    committed = ROOT / "k8s" / "jobs" / "rendered" / path.name
    assert committed.read_text() == rendered.to_yaml(), (
        f"{committed} is stale: qtrain job render {path.relative_to(ROOT)} > {committed.relative_to(ROOT)}"
    )


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_example_parallelism_fits_the_world(path):
    spec, _ = load_spec(path)
    par = spec.train["parallelism"]
    degrees = [par.get(k, 1) for k in ("dp_replicate", "dp_shard", "tp", "pp", "cp")]
    assert math.prod(degrees) == spec.world_size
    ep = par.get("ep", 1)
    # EP borrows from the FSDP (x CP) ranks and stays inside one node (all-to-all on NVLink)
    assert par.get("dp_shard", 1) % ep == 0
    assert spec.gpus_per_node == 0 or spec.gpus_per_node % ep == 0


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_example_train_config_is_a_valid_trainconfig(path):
    """The trainer's own model validates each example's config (skipped until the trainer exists)."""
    config = pytest.importorskip("qwen3_trainer.platform.train.config")
    spec, _ = load_spec(path)
    config.TrainConfig.model_validate(spec.train)


def test_debug_spec_renders_exactly():
    """A hand-written expectation for the whole container of the debug job."""
    spec, base = load_spec(ROOT / "k8s" / "jobs" / "debugmodel-cpu.yaml")
    job = render(spec, base).job
    pod = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["containers"] == [{
        "args": ["--nnodes=$(PET_NNODES)", "--nproc-per-node=$(PET_NPROC_PER_NODE)",
                 "--node-rank=$(PET_NODE_RANK)", "--master-addr=$(PET_MASTER_ADDR)",
                 "--master-port=$(PET_MASTER_PORT)", "-m", "qwen3_trainer.cli.main", "train",
                 "/etc/qtrain/config.yaml"],
        "command": ["torchrun"],
        "env": [{"name": "QTRAIN_JOB_NAME", "value": "qwen3-debugmodel-cpu"},
                {"name": "QTRAIN_RUN_ID", "value": "qwen3-debugmodel-cpu"}],
        "image": "ghcr.io/qwen3-trainer/qwen3-trainer:0.1.0",
        "imagePullPolicy": "IfNotPresent",
        "name": "pytorch",
        "ports": [{"containerPort": 23456, "name": "pytorchjob-port", "protocol": "TCP"}],
        "resources": {"limits": {"cpu": "4", "memory": "8Gi"}, "requests": {"cpu": "4", "memory": "8Gi"}},
        "volumeMounts": [{"mountPath": "/dev/shm", "name": "dshm"},
                         {"mountPath": "/etc/qtrain", "name": "train-config", "readOnly": True}],
    }]
    assert pod["volumes"] == [{"emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}, "name": "dshm"},
                              {"configMap": {"name": "qwen3-debugmodel-cpu-config"}, "name": "train-config"}]
    assert job["spec"]["runPolicy"] == {"backoffLimit": 2, "activeDeadlineSeconds": 1800,
                                        "cleanPodPolicy": "Running", "ttlSecondsAfterFinished": 3600}
    assert job["metadata"]["labels"]["qwen3-trainer.io/run-id"] == "qwen3-debugmodel-cpu"
    assert job["metadata"]["labels"]["app.kubernetes.io/instance"] == "qwen3-debugmodel-cpu"


def test_gpu_job_resources_secrets_and_gang():
    spec, base = load_spec(ROOT / "k8s" / "jobs" / "qwen3-235b-a22b-32x8.yaml")
    job = render(spec, base).job
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 31
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["resources"]["limits"] == {"cpu": "180", "memory": "1800Gi", "nvidia.com/gpu": "8",
                                        "vpc.amazonaws.com/efa": "16"}
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "name": "AWS_SECRET_ACCESS_KEY",
        "valueFrom": {"secretKeyRef": {"key": "AWS_SECRET_ACCESS_KEY", "name": "qwen3-trainer-s3"}}}
    assert "value" not in env["MLFLOW_TRACKING_PASSWORD"]
    assert pod["schedulerName"] == "volcano" and pod["priorityClassName"] == "training-high"
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {
        "minAvailable": 32, "priorityClass": "training-high", "queue": "h200-training"}
    assert pod["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]


def test_kueue_labels_the_job_not_the_scheduler():
    spec, base = load_spec(ROOT / "k8s" / "jobs" / "qwen3-30b-a3b-4x8.yaml")
    job = render(spec, base).job
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "h200-training"
    assert "schedulingPolicy" not in job["spec"]["runPolicy"]
    assert "schedulerName" not in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]


def _base(**over) -> JobSpec:
    return JobSpec.model_validate({"name": "t", "image": "r/i:1", "train": {"a": 1}, **over})


def test_elastic_renders_workers_only_with_c10d():
    job = render(_base(nodes=2, nproc_per_node=2, elastic={"min_nodes": 1, "max_nodes": 4})).job
    assert list(job["spec"]["pytorchReplicaSpecs"]) == ["Worker"]
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    assert job["spec"]["elasticPolicy"] == {"maxReplicas": 4, "maxRestarts": 3, "minReplicas": 1,
                                            "nProcPerNode": 2, "rdzvBackend": "c10d", "rdzvId": "t",
                                            "rdzvPort": 29400}
    args = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["args"]
    assert args[:6] == ["--nnodes=$(PET_NNODES)", "--nproc-per-node=2", "--rdzv-backend=$(PET_RDZV_BACKEND)",
                        "--rdzv-endpoint=$(PET_RDZV_ENDPOINT)", "--rdzv-id=$(PET_RDZV_ID)", "--max-restarts=3"]


def test_train_config_from_file_and_uri(tmp_path):
    (tmp_path / "cfg.toml").write_text('[model]\nflavor = "debugmodel"\n')
    r = render(_base(train="cfg.toml"), tmp_path)
    assert r.configmap["data"] == {"config.toml": '[model]\nflavor = "debugmodel"\n'}
    assert r.job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"][-1] == \
        "/etc/qtrain/config.toml"
    r = render(_base(train="s3://bucket/cfg.yaml"))
    assert r.configmap is None and r.objects == [r.job]
    container = r.job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["args"][-1] == "s3://bucket/cfg.yaml"
    assert [m["name"] for m in container["volumeMounts"]] == ["dshm"]
    with pytest.raises(FileNotFoundError, match="train: config file .*missing.yaml not found"):
        render(_base(train="missing.yaml"), tmp_path)


def test_affinity_is_strict():
    good = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}}
    job = render(_base(node_pool={"affinity": good})).job
    assert job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["affinity"] == good
    typo = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerm": []}}}
    with pytest.raises(ValueError, match=r"node_pool.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"
                                         r".nodeSelectorTerm: unknown field \(valid: nodeSelectorTerms\)"):
        render(_base(node_pool={"affinity": typo}))
    with pytest.raises(ValueError, match=r"matchExpressions\[0\].values: expected a list"):
        render(_base(node_pool={"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": "z", "operator": "In", "values": "a"}]}]}}}}))
