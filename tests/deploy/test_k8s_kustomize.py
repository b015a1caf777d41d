"""k8s/: the kustomize base and overlays build with the real kubectl, match the chart they are
rendered from, and give each environment what it promises (dev: one node, no GPUs; prod: GPU pools
with Kueue gang admission)."""

from __future__ import annotations

import sys

import yaml
from chart_helpers import ROOT, run
from k8s_objects import by_kind, containers, env_of, find, pod_specs

from qwen3_trainer.recipe.cluster import amount, load_cluster_config
from qwen3_trainer.recipe.presets import PRESETS

NAMESPACE = "qwen3-trainer"


def _cluster(objects):
    return yaml.safe_load(find(objects, "ConfigMap", "-jobs")["data"]["cluster.yaml"])


def _contract(objects, tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(find(objects, "ConfigMap", "-jobs")["data"]["cluster.yaml"])
    return load_cluster_config(str(path))


def _pool_of(scale) -> str:
    return scale.node_pool or ("gpu" if scale.gpus_per_node else "cpu")


def test_platform_files_match_the_chart(helm):
    done = run([sys.executable, ROOT / "helm" / "render_k8s.py", "--check", "--helm", helm])
    assert done.returncode == 0, done.stderr


def test_every_object_is_namespaced_or_cluster_scoped_on_purpose(builds):
    cluster_scoped = {"Namespace", "PriorityClass", "ResourceFlavor", "ClusterQueue"}
    for name, objects in builds.items():
        for obj in objects:
            ns = obj["metadata"].get("namespace")
            assert (ns is None) == (obj["kind"] in cluster_scoped), f"{name} {obj['kind']}/{obj['metadata']['name']}"
            assert ns in (None, NAMESPACE)
            assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kustomize", obj["metadata"]["name"]


def test_overlays_are_complete_platforms(builds):
    for env in ("dev", "prod"):
        kinds = {(o["kind"], o["metadata"]["name"]) for o in builds[env]}
        for component in ("prefect-server", "prefect-worker", "mlflow"):
            assert ("Deployment", f"qwen3-trainer-{component}") in kinds, (env, component)
            assert ("Service", f"qwen3-trainer-{component}") in kinds or component == "prefect-worker"
        assert ("StatefulSet", "qwen3-trainer-postgresql") in kinds
        assert ("Namespace", NAMESPACE) in kinds


def test_dev_is_one_node_without_gpus(builds, tmp_path):
    dev = builds["dev"]
    cluster = _cluster(dev)
    assert set(cluster["nodePools"]) == {"cpu"} and cluster["nodePools"]["cpu"]["gpusPerNode"] == 0
    assert cluster["scheduling"]["gangScheduler"] == "none"
    contract = _contract(dev, tmp_path)
    for stage, spec in PRESETS["tiny"].stages.items():  # the tiny preset runs there: one CPU node per stage
        assert spec.scale.nodes == 1 and _pool_of(spec.scale) == "cpu", stage
        contract.pool("cpu").pod_resources(spec.scale.gpus_per_node)
    assert cluster["s3"]["endpointUrl"] == "http://qwen3-trainer-object-store:9000"
    for where, spec in pod_specs(dev):
        assert not spec.get("nodeSelector") and not spec.get("tolerations"), where
        for c in containers(spec):
            assert "nvidia.com/gpu" not in str(c.get("resources")), where
    # nothing to clean up: no PersistentVolumeClaims, PostgreSQL on an emptyDir
    assert not by_kind(dev, "PersistentVolumeClaim")
    assert "volumeClaimTemplates" not in find(dev, "StatefulSet", "-postgresql")["spec"]
    # the dev Secrets exist under the names every reference uses
    secrets = {s["metadata"]["name"]: set(s["data"]) for s in by_kind(dev, "Secret")}
    assert secrets == {"qwen3-trainer-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
                       "qwen3-trainer-postgresql": {"password"}}
    for _, spec in pod_specs(dev):
        for c in containers(spec):
            for entry in env_of(c).values():
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]], ref


def test_prod_gang_schedules_gpu_jobs_through_kueue(builds, tmp_path):
    prod = builds["prod"]
    cluster = _cluster(prod)
    assert cluster["scheduling"] == {"gangScheduler": "kueue", "queueName": "qwen3-training",
                                     "priorityClassName": "qwen3-training"}
    gpu = cluster["nodePools"]["gpu"]
    assert gpu["gpusPerNode"] == 8 and gpu["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    (local_queue,) = by_kind(prod, "LocalQueue")
    assert local_queue["metadata"] == {**local_queue["metadata"], "name": "qwen3-training", "namespace": NAMESPACE}
    (cluster_queue,) = by_kind(prod, "ClusterQueue")
    assert local_queue["spec"]["clusterQueue"] == cluster_queue["metadata"]["name"]
    assert cluster_queue["spec"]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
    flavors = {f["metadata"]["name"]: f for f in by_kind(prod, "ResourceFlavor")}
    queued = {f["name"] for g in cluster_queue["spec"]["resourceGroups"] for f in g["flavors"]}
    assert queued == set(flavors)
    assert flavors["h200"]["spec"]["nodeLabels"] == gpu["nodeSelector"]
    gpu_quota = {r["name"]: amount(str(r["nominalQuota"])) for g in cluster_queue["spec"]["resourceGroups"]
                 for f in g["flavors"] if f["name"] == "h200" for r in f["resources"]}
    contract = _contract(prod, tmp_path)
    for stage, spec in PRESETS["full"].stages.items():  # every stage of the full preset is admitted whole
        scale = spec.scale
        assert _pool_of(scale) == "gpu", stage
        pod = contract.pool("gpu").pod_resources(scale.gpus_per_node)
        assert scale.nodes * scale.gpus_per_node <= gpu_quota["nvidia.com/gpu"], stage
        assert scale.nodes * amount(pod["cpu"]) <= gpu_quota["cpu"], stage
        assert scale.nodes * amount(pod["memory"]) <= gpu_quota["memory"], stage
    (priority,) = by_kind(prod, "PriorityClass")
    assert priority["metadata"]["name"] == cluster["scheduling"]["priorityClassName"]
    assert not by_kind(prod, "Secret")  # prod secrets come from outside, never from git


def test_dev_trainer_installs_the_runtime_its_jobs_reference(builds, tmp_path):
    objects = builds["dev-trainer"]
    contract = _contract(objects, tmp_path)
    (runtime,) = by_kind(objects, "TrainingRuntime")
    assert contract.api == "TrainJob" and contract.trainjob_runtime() == {
        "name": runtime["metadata"]["name"], "kind": "TrainingRuntime"}
    assert runtime["metadata"]["namespace"] == NAMESPACE
    # otherwise it is dev: the same CPU pool and policies
    assert contract.model_dump(include={"nodePools", "scheduling", "runPolicy"}) == \
        _contract(builds["dev"], tmp_path).model_dump(include={"nodePools", "scheduling", "runPolicy"})


def test_namespace_enforces_baseline_and_warns_restricted(builds):
    ns = find(builds["base"], "Namespace", NAMESPACE)["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/enforce"] == "baseline"
    assert ns["pod-security.kubernetes.io/warn"] == "restricted"
