"""templates/jobs/configmap.yaml: the `cluster.yaml` the chart writes is the cluster contract
(recipe/cluster.py), key for key, for every values file and kustomize overlay; the chart's `jobs`
schema is generated from the same models, so `helm template` refuses what a flow run would.
templates/jobs/trainingruntime.yaml: the TrainingRuntime the chart installs for TrainJobs is the one
recipe/jobs.py cluster_runtime renders from that cluster.yaml."""

from __future__ import annotations

import json
import sys

import pytest
import yaml
from chart_helpers import CHART, ROOT, VALUES_FILES, helm_template, load_docs, run
from k8s_objects import find

from qwen3_trainer.recipe.cluster import (
    ClusterConfig,
    JobsValues,
    PodSecurityContext,
    amount,
    load_cluster_config,
)
from qwen3_trainer.recipe.jobs import cluster_runtime

PREFIX = "qwen3-qwen3-trainer"


def _cluster_yaml(objects) -> str:
    return find(objects, "ConfigMap", "-jobs")["data"]["cluster.yaml"]


def _load(objects, tmp_path) -> ClusterConfig:
    path = tmp_path / "cluster.yaml"
    path.write_text(_cluster_yaml(objects))
    return load_cluster_config(str(path))


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_cluster_yaml_is_the_contract(renders, values, tmp_path):
    cluster = _load(renders[values], tmp_path)  # refuses an unknown or mistyped key
    written = yaml.safe_load(_cluster_yaml(renders[values]))
    # ... and the chart writes every key the contract has: nothing is read that the chart cannot set
    assert set(written) == set(ClusterConfig.model_fields)
    assert cluster.serviceAccountName == f"{PREFIX}-workload"
    assert cluster.pool("gpu").tolerations[0].key == "nvidia.com/gpu"
    for pool in cluster.nodePools.values():
        pool.pod_resources(pool.gpusPerNode)  # a whole node's pod fits (load checks it too)
    expected = {"default": ("none", None, "qwen3-trainer-s3", f"http://{PREFIX}-mlflow:5000"),
                "all-on-values": ("kueue", "gpu-training", f"{PREFIX}-object-store", f"http://{PREFIX}-mlflow:5000"),
                "minimal-values": ("volcano", "training", None, "http://mlflow.mlops.svc:5000"),
                "sqlite-values": ("none", None, "qwen3-trainer-s3", f"http://{PREFIX}-mlflow:5000")}[values]
    got = (cluster.scheduling.gangScheduler, cluster.scheduling.queueName, cluster.s3.credentialsSecret,
           cluster.mlflow.trackingUri)
    assert got == expected


def test_default_values_are_the_contract_defaults(renders, tmp_path):
    cluster = _load(renders["default"], tmp_path)
    defaults = ClusterConfig()
    jobs = set(JobsValues.model_fields)
    assert cluster.model_dump(include=jobs) == defaults.model_dump(include=jobs)
    assert cluster.image == "ghcr.io/qwen3-trainer/qwen3-trainer:0.1.0" and cluster.namespace == "ml"
    assert cluster.podSecurityContext.runAsNonRoot and cluster.s3.checkpointRoot == "s3://qwen3-trainer/checkpoints"
    res = cluster.pool("gpu").pod_resources(8)  # an 8-GPU pod: CPU, memory and shm in proportion
    assert amount(res["cpu"]) >= 32 and amount(res["memory"]) >= 256 * 2**30 and res["shm"] == "256Gi"


def test_ci_pool_options_reach_the_pods(renders, tmp_path):
    cluster = _load(renders["all-on-values"], tmp_path)
    gpu, a100 = cluster.pool("gpu"), cluster.pool("a100")
    assert gpu.pod_resources(8) == {"cpu": "96", "cpu_limit": "request", "memory": "1024Gi",
                                    "memory_limit": "request", "shm": "256Gi",
                                    "extended": {"vpc.amazonaws.com/efa": 32}}
    assert gpu.pod_resources(2)["extended"] == {"vpc.amazonaws.com/efa": 8}
    assert a100.pod_resources(4)["cpu"] == "32" and a100.job_node_pool()["affinity"]["nodeAffinity"]
    assert cluster.imagePullSecrets[0].name == "regcred" and cluster.runPolicy.activeDeadlineSeconds == 604800


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_overlays_write_the_contract(builds, env, tmp_path):
    cluster = _load(builds[env], tmp_path)
    assert cluster.namespace == "qwen3-trainer"


def test_a_pod_the_node_cannot_hold_is_refused_at_load(helm, tmp_path):
    done = helm_template(helm, "--set", "jobs.nodePools.gpu.allocatable.cpu=64",
                         "--show-only", "templates/jobs/configmap.yaml")
    assert done.returncode == 0, done.stderr
    with pytest.raises(ValueError, match=r"cluster\.yaml: nodePools\.gpu: requests 96 CPU but a node has 64 allocatable"):
        _load(load_docs(done.stdout), tmp_path)


def test_jobs_schema_is_generated_from_the_contract():
    done = run([sys.executable, ROOT / "helm" / "gen_schema.py", "--check"])
    assert done.returncode == 0, done.stderr
    jobs = json.loads((CHART / "values.schema.json").read_text())["properties"]["jobs"]
    assert set(jobs["properties"]) == set(JobsValues.model_fields) == {"api", "trainJob", "nodePools", "scheduling",
                                                                       "runPolicy"}
    assert jobs["if"]["properties"]["trainJob"]["properties"]["runtime"] == {"const": "cluster"}  # the API-choice rule


def test_pod_security_context_schema_agrees_with_the_contract():
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["podSecurityContext"]
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(PodSecurityContext.model_fields)


@pytest.mark.parametrize("values", ["all-on-values", "volcano"])
def test_installed_runtime_is_the_contracts(renders, helm, values, tmp_path):
    """api TrainJob + trainJob.runtime install: one TrainingRuntime, the one cluster_runtime renders from
    the cluster.yaml of the same release (kueue + priority in all-on-values; a Volcano PodGroup)."""
    if values == "volcano":
        done = helm_template(helm, "--set", "jobs.api=TrainJob", "--set", "jobs.scheduling.gangScheduler=volcano",
                             "--set", "jobs.scheduling.queueName=h200", "--set", "jobs.runPolicy.backoffLimit=0")
        assert done.returncode == 0, done.stderr
        objects = load_docs(done.stdout)
    else:
        objects = renders[values]
    cluster = _load(objects, tmp_path)
    (runtime,) = [o for o in objects if o["kind"] == "TrainingRuntime"]
    assert runtime["metadata"]["name"] == cluster.trainingRuntimeName == f"{PREFIX}-torch"
    assert cluster.trainjob_runtime() == {"name": f"{PREFIX}-torch", "kind": "TrainingRuntime"}
    expected = cluster_runtime(cluster, cluster.trainingRuntimeName)
    assert runtime["spec"] == expected["spec"]
    assert runtime["metadata"]["labels"]["trainer.kubeflow.org/framework"] == "torch"
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    if values == "volcano":
        assert runtime["spec"]["podGroupPolicy"] == {"volcano": {}} and pod["schedulerName"] == "volcano"
        assert runtime["spec"]["template"]["metadata"]["annotations"] == {"scheduling.volcano.sh/queue-name": "h200"}
        assert runtime["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] == 0
    else:   # kueue admits TrainJobs by their queue label: no PodGroup; the priority is the pods'
        assert "podGroupPolicy" not in runtime["spec"] and pod["priorityClassName"] == "training-high"
        assert runtime["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] == 6


def test_runtime_choice(renders, tmp_path):
    """PyTorchJob (default) and TrainJob on the cluster's runtime install no TrainingRuntime."""
    for values, ref in (("default", None), ("sqlite-values", {"name": "torch-distributed",
                                                               "kind": "ClusterTrainingRuntime"})):
        assert not [o for o in renders[values] if o["kind"] == "TrainingRuntime"], values
        assert _load(renders[values], tmp_path).trainjob_runtime() == ref
