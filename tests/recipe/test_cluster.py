"""The cluster contract (recipe/cluster.py): cluster.yaml is typed, a bad key is one line naming it, and a
pod's resources follow its GPUs on the pool it runs on (the chart side: tests/deploy/test_chart_jobs.py)."""

from __future__ import annotations

import pytest
import yaml

from qwen3_trainer.platform.jobs.spec import Resources
from qwen3_trainer.recipe.cluster import ENV, ClusterConfig, amount, load_cluster_config

GIB = 2**30


def _write(tmp_path, data) -> str:
    path = tmp_path / "cluster.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return str(path)


def _error(tmp_path, data) -> str:
    path = _write(tmp_path, data)
    with pytest.raises(ValueError) as exc:
        load_cluster_config(path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{path}: "), message
    return message.removeprefix(f"{path}: ")


def test_no_file_means_the_chart_defaults(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    config = load_cluster_config()
    assert config == ClusterConfig()
    assert set(config.nodePools) == {"gpu", "cpu"}
    assert config.nodePools["gpu"].gpusPerNode == 8 and config.nodePools["cpu"].gpusPerNode == 0
    assert config.scheduling.gangScheduler == "none" and config.runPolicy.activeDeadlineSeconds == 0


def test_env_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV, _write(tmp_path, {"namespace": "ml", "s3": {"credentialsSecret": ""}}))
    config = load_cluster_config()
    assert config.namespace == "ml" and config.s3.credentialsSecret is None  # "": workload identity


@pytest.mark.parametrize("data, message", [
    ({"nodePools": {"gpu": {"gpusPerNod": 8}}}, "nodePools.gpu.gpusPerNod: unknown key"),
    ({"shmSize": "64Gi"}, "shmSize: unknown key"),
    ({"stages": {"S1": {"nodes": 4}}}, "stages: unknown key"),
    ({"nodePools": {"gpu": {"gpusPerNode": "eight"}}}, "nodePools.gpu.gpusPerNode: Input should be a valid integer"),
    ({"nodePools": {"gpu": {"gpusPerNode": 8, "memoryPerGpu": "lots"}}},
     "nodePools.gpu.memoryPerGpu: 'lots' is not a Kubernetes quantity"),
    ({"nodePools": {"gpu": {"gpusPerNode": 8, "tolerations": [{"key": "a", "effect": "Never"}]}}},
     "nodePools.gpu.tolerations.0.effect: Input should be"),
    ({"scheduling": {"gangScheduler": "kueue"}}, "scheduling.queueName: required with gangScheduler kueue"),
    ({"runPolicy": {"backoffLimit": -1}}, "runPolicy.backoffLimit: Input should be greater than or equal to 0"),
    ("nodePools: [gpu\n", "not valid YAML"),
    ("- gpu\n", "holds a list, not a mapping"),
])
def test_bad_cluster_yaml_is_one_line_naming_the_key(tmp_path, data, message):
    assert _error(tmp_path, data).startswith(message)


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.yaml: not found"):
        load_cluster_config(str(tmp_path / "nope.yaml"))


def test_default_gpu_pool_sizes_a_whole_node():
    res = ClusterConfig().nodePools["gpu"].pod_resources(8)
    assert amount(res["cpu"]) >= 32 and amount(res["memory"]) >= 256 * GIB and amount(res["shm"]) >= 64 * GIB
    assert res["cpu_limit"] is None and res["memory_limit"] == "request"  # no CPU throttling; OOM at the request
    parsed = Resources.model_validate(res)  # what a JobSpec's `resources` accepts
    assert parsed.limits() == {"memory": res["memory"]} and parsed.requests()["cpu"] == res["cpu"]


def test_resources_follow_the_gpus_and_the_pool(tmp_path):
    path = _write(tmp_path, {"nodePools": {
        "gpu": {"gpusPerNode": 8, "cpuPerGpu": 16, "guaranteedQos": True,
                "extendedResources": {"vpc.amazonaws.com/efa": 32}},
        "cpu": {"gpusPerNode": 0, "cpu": "500m", "memory": "2Gi", "shm": "256Mi"}}})
    config = load_cluster_config(path)
    whole, one = config.pool("gpu").pod_resources(8), config.pool("gpu").pod_resources(1)
    assert (whole["cpu"], whole["cpu_limit"], whole["extended"]) == ("128", "request", {"vpc.amazonaws.com/efa": 32})
    assert (one["cpu"], one["memory"], one["extended"]) == ("16", "128Gi", {"vpc.amazonaws.com/efa": 4})
    assert config.pool("cpu").pod_resources(0) | {"cpu_limit": None} == {
        "cpu": "500m", "cpu_limit": None, "memory": "2Gi", "memory_limit": "request", "shm": "256Mi", "extended": {}}
    with pytest.raises(ValueError, match=r"cluster\.yaml: nodePools\.gpu: requests 16 GPUs but a node has 8$"):
        config.pool("gpu").pod_resources(16)
    with pytest.raises(ValueError, match=r"nodePools\.tpu: no such node pool \(cpu, gpu\)"):
        config.pool("tpu")


def test_a_pod_above_the_node_allocatable_is_refused(tmp_path):
    pool = {"gpusPerNode": 8, "cpuPerGpu": "12", "allocatable": {"cpu": "64", "memory": "2Ti"}}
    assert _error(tmp_path, {"nodePools": {"gpu": pool}}) == (
        "nodePools.gpu: requests 96 CPU but a node has 64 allocatable")
    fits = load_cluster_config(_write(tmp_path, {"nodePools": {"gpu": {**pool, "cpuPerGpu": "8"}}}))
    assert fits.pool("gpu").pod_resources(8)["cpu"] == "64"
    big_shm = {"gpusPerNode": 8, "shmPerGpu": "256Gi"}
    assert "/dev/shm 2048Gi exceeds the pod's memory 1024Gi" in _error(tmp_path, {"nodePools": {"gpu": big_shm}})


def test_job_fragments_are_what_a_jobspec_takes():
    config = ClusterConfig.model_validate({"scheduling": {"gangScheduler": "kueue", "queueName": "q",
                                                          "priorityClassName": ""}})
    assert config.scheduling.job_scheduling() == {"gang": "kueue", "queue": "q", "priority_class": None}
    assert config.pool("gpu").job_node_pool() == {
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}], "affinity": None}


def test_rendered_pod_requests_and_limits():
    from qwen3_trainer.platform.jobs import parse_spec, render

    spec = parse_spec({"name": "s1", "image": "ghcr.io/x/y:1", "train": "s3://b/c.yaml", "nodes": 2, "gpus_per_node": 8,
                       "resources": ClusterConfig().pool("gpu").pod_resources(8)})
    pod = render(spec).job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    assert pod["containers"][0]["resources"] == {
        "requests": {"cpu": "96", "memory": "1024Gi", "nvidia.com/gpu": "8"},
        "limits": {"memory": "1024Gi", "nvidia.com/gpu": "8"}}  # no CPU limit; GPUs in both
    assert pod["volumes"][0]["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Gi"}


@pytest.mark.parametrize("resources, message", [
    ({"cpu": "8", "cpu_limit": "4"}, "cpu_limit: 4 is below the request 8"),
    ({"memory": "64Gi", "memory_limit": "32Gi"}, "memory_limit: 32Gi is below the request 64Gi"),
    ({"memory": "8Gi", "shm": "16Gi"}, "shm: 16Gi exceeds the memory limit 8Gi"),
    ({"cpu_limit": "lots"}, "'lots' is neither `request` nor a Kubernetes quantity"),
])
def test_jobspec_limits_cover_requests(resources, message):
    with pytest.raises(ValueError, match=message):
        Resources.model_validate(resources)
    assert Resources(cpu="8", cpu_limit="12", memory="32Gi", memory_limit="48Gi").limits() == {"cpu": "12", "memory": "48Gi"}
