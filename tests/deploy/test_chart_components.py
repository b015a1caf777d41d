"""What each component is wired to, per values file: databases, S3, the Prefect API, the work pool's
job template, names and labels (the job-defaults ConfigMap: test_chart_jobs.py)."""

from __future__ import annotations

import json
import re

import pytest
from chart_helpers import CHART, NAMESPACE, RELEASE, VALUES_FILES, helm_template, load_docs, run
from k8s_objects import by_kind, containers, env_of, find, pod_specs

PREFIX = "qwen3-qwen3-trainer"


def _container(objects, kind, suffix, index=0):
    return find(objects, kind, suffix)["spec"]["template"]["spec"]["containers"][index]


def _secret_ref(entry):
    ref = entry["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_default_components(renders):
    objects = renders["default"]
    assert {(o["kind"], o["metadata"]["name"].removeprefix(PREFIX + "-")) for o in objects} == {
        ("ServiceAccount", "worker"), ("ServiceAccount", "workload"), ("Role", "worker"), ("RoleBinding", "worker"),
        ("Secret", "postgresql"), ("ConfigMap", "postgresql-init"), ("ConfigMap", "jobs"),
        ("ConfigMap", "base-job-template"), ("Service", "postgresql"), ("StatefulSet", "postgresql"),
        ("Service", "prefect-server"), ("Deployment", "prefect-server"), ("Deployment", "prefect-worker"),
        ("Service", "mlflow"), ("Deployment", "mlflow")}


def test_prefect_server_on_bundled_postgresql(renders):
    env = env_of(_container(renders["default"], "Deployment", "-prefect-server"))
    assert env["PREFECT_SERVER_DATABASE_DRIVER"]["value"] == "postgresql+asyncpg"
    assert env["PREFECT_SERVER_DATABASE_HOST"]["value"] == f"{PREFIX}-postgresql"
    assert env["PREFECT_SERVER_DATABASE_NAME"]["value"] == "prefect"
    assert _secret_ref(env["PREFECT_SERVER_DATABASE_PASSWORD"]) == (f"{PREFIX}-postgresql", "password")
    pg_env = env_of(_container(renders["default"], "StatefulSet", "-postgresql"))
    assert pg_env["POSTGRES_DB"]["value"] == "prefect"
    assert env["PREFECT_SERVER_DATABASE_USER"]["value"] == pg_env["POSTGRES_USER"]["value"]
    init = find(renders["default"], "ConfigMap", "-postgresql-init")["data"]
    assert init == {"10-mlflow-database.sql": "CREATE DATABASE mlflow OWNER qwen3;\n"}


def test_mlflow_backend_per_mode(renders):
    bundled = env_of(_container(renders["default"], "Deployment", "-mlflow"))
    assert bundled["MLFLOW_BACKEND_STORE_URI"]["value"] == \
        f"postgresql://qwen3:$(POSTGRES_PASSWORD)@{PREFIX}-postgresql:5432/mlflow"
    assert list(bundled).index("POSTGRES_PASSWORD") < list(bundled).index("MLFLOW_BACKEND_STORE_URI")  # $(VAR) order
    external = env_of(_container(renders["all-on-values"], "Deployment", "-mlflow"))
    assert _secret_ref(external["MLFLOW_BACKEND_STORE_URI"]) == ("mlflow-db", "url")
    sqlite = env_of(_container(renders["sqlite-values"], "Deployment", "-mlflow"))
    assert sqlite["MLFLOW_BACKEND_STORE_URI"]["value"] == "sqlite:////data/mlflow.db"
    assert find(renders["sqlite-values"], "PersistentVolumeClaim", "-mlflow-sqlite")
    assert find(renders["sqlite-values"], "Deployment", "-mlflow")["spec"]["replicas"] == 1
    assert find(renders["all-on-values"], "Deployment", "-mlflow")["spec"]["replicas"] == 2


def test_mlflow_artifacts_and_hosts(renders):
    proxied = env_of(_container(renders["default"], "Deployment", "-mlflow"))
    assert proxied["MLFLOW_SERVE_ARTIFACTS"]["value"] == "true"
    assert proxied["MLFLOW_ARTIFACTS_DESTINATION"]["value"] == "s3://qwen3-trainer/mlflow-artifacts"
    hosts = proxied["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert {f"{PREFIX}-mlflow", f"{PREFIX}-mlflow:*", f"{PREFIX}-mlflow.{NAMESPACE}.svc*", "localhost:*"} <= set(hosts)
    direct = env_of(_container(renders["all-on-values"], "Deployment", "-mlflow"))
    assert direct["MLFLOW_SERVE_ARTIFACTS"]["value"] == "false"
    assert direct["MLFLOW_DEFAULT_ARTIFACT_ROOT"]["value"] == "s3://qwen3-trainer/mlflow-artifacts"
    assert {"mlflow.ci.example.com", "mlflow.internal.example.com"} <= set(
        direct["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(","))


def test_s3_credentials_per_mode(renders):
    keyed = env_of(_container(renders["default"], "Deployment", "-mlflow"))
    assert _secret_ref(keyed["AWS_SECRET_ACCESS_KEY"]) == ("qwen3-trainer-s3", "AWS_SECRET_ACCESS_KEY")
    assert "AWS_ENDPOINT_URL_S3" not in keyed  # AWS itself
    in_cluster = env_of(_container(renders["all-on-values"], "Deployment", "-mlflow"))
    store = f"{PREFIX}-object-store"
    assert in_cluster["AWS_ENDPOINT_URL_S3"]["value"] == f"http://{store}:9000"
    assert _secret_ref(in_cluster["AWS_ACCESS_KEY_ID"]) == (store, "AWS_ACCESS_KEY_ID")
    minio = env_of(_container(renders["all-on-values"], "Deployment", "-object-store"))
    assert _secret_ref(minio["MINIO_ROOT_PASSWORD"]) == (store, "AWS_SECRET_ACCESS_KEY")
    job = find(renders["all-on-values"], "Job", "-object-store-bucket")
    assert env_of(job["spec"]["template"]["spec"]["containers"][0])["BUCKET"]["value"] == "qwen3-trainer"
    # workload identity: no keys anywhere, the role annotation on both accounts
    minimal = renders["minimal-values"]
    for _, spec in pod_specs(minimal):
        for c in containers(spec):
            assert "AWS_ACCESS_KEY_ID" not in env_of(c)
    for sa in by_kind(minimal, "ServiceAccount"):
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/qwen3-trainer")


def test_worker_serves_the_pool_against_the_server(renders):
    objects = renders["default"]
    spec = find(objects, "Deployment", "-prefect-worker")["spec"]["template"]["spec"]
    worker = spec["containers"][0]
    args = worker["args"]
    assert args[:5] == ["prefect", "worker", "start", "--type", "kubernetes"]
    assert args[args.index("--pool") + 1] == "qwen3-k8s" and "--with-healthcheck" in args
    env = env_of(worker)
    server = find(objects, "Service", "-prefect-server")
    assert env["PREFECT_API_URL"]["value"] == f"http://{server['metadata']['name']}:{server['spec']['ports'][0]['port']}/api"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        env["PREFECT_KUBERNETES_CLUSTER_UID"]["value"])
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["value"] == NAMESPACE
    (sync,) = spec["initContainers"]
    assert sync["args"] == ["prefect", "work-pool", "create", "qwen3-k8s", "--type", "kubernetes",
                            "--base-job-template", "/etc/prefect/base-job-template.json", "--overwrite"]
    external = renders["minimal-values"]
    ext_env = env_of(_container(external, "Deployment", "-prefect-worker"))
    assert ext_env["PREFECT_API_URL"]["value"] == "http://prefect-server.prefect.svc:4200/api"
    queues = _container(renders["all-on-values"], "Deployment", "-prefect-worker")["args"]
    assert queues.count("--work-queue") == 2 and queues[queues.index("--limit") + 1] == "4"


def test_base_job_template_hands_defaults_to_flow_runs(renders):
    template = json.loads(find(renders["default"], "ConfigMap", "-base-job-template")["data"]["base-job-template.json"])
    config = template["job_configuration"]
    assert config["env"] == "{{ env }}" and config["command"] == "{{ command }}"
    props = template["variables"]["properties"]
    assert props["namespace"]["default"] == NAMESPACE
    assert props["service_account_name"]["default"] == f"{PREFIX}-worker"
    assert props["image"]["default"] == "ghcr.io/qwen3-trainer/qwen3-trainer:0.1.0"
    pod = config["job_manifest"]["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["QTRAIN_CLUSTER_CONFIG"]["value"] == "/etc/qwen3-trainer/cluster.yaml"
    assert env["MLFLOW_TRACKING_URI"]["value"] == f"http://{PREFIX}-mlflow:5000"
    assert _secret_ref(env["AWS_ACCESS_KEY_ID"]) == ("qwen3-trainer-s3", "AWS_ACCESS_KEY_ID")
    assert pod["volumes"][0] == {"name": "cluster-config", "configMap": {"name": f"{PREFIX}-jobs"}}


def test_selectors_ports_and_references_resolve(all_manifests):
    for source, objects in all_manifests.items():
        if source == "kustomize:base":  # a fragment: its Services' workloads live in the overlays
            continue
        names = {(o["kind"], o["metadata"]["name"]) for o in objects}
        pods = [o for o in objects if o["kind"] in {"Deployment", "StatefulSet"}]
        for svc in by_kind(objects, "Service"):
            targets = [p for p in pods if svc["spec"]["selector"].items() <= p["spec"]["template"]["metadata"]["labels"].items()]
            assert len(targets) == 1, f"{source} Service {svc['metadata']['name']} selects {len(targets)} workloads"
            port_names = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
            assert {p["targetPort"] for p in svc["spec"]["ports"]} <= port_names, svc["metadata"]["name"]
        for workload in pods:
            assert workload["spec"]["selector"]["matchLabels"].items() <= workload["spec"]["template"]["metadata"]["labels"].items()
        for where, spec in pod_specs(objects):
            for volume in spec.get("volumes", []):
                if "configMap" in volume:
                    assert ("ConfigMap", volume["configMap"]["name"]) in names, f"{source} {where}"
                if "persistentVolumeClaim" in volume:
                    assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names, where


def test_names_fit_63_characters_and_carry_standard_labels(helm):
    release = "a-very-long-release-name-that-goes-on-and-on-and-on-for-sixty"
    done = helm_template(helm, "--set", "objectStore.enabled=true", "--set", "ingress.enabled=true")
    done_long = helm_template(helm, "--set", "objectStore.enabled=true", "--set", "ingress.enabled=true",
                              "--set", f"fullnameOverride={release}")
    for result in (done, done_long):
        assert result.returncode == 0, result.stderr
        for obj in load_docs(result.stdout):
            name = obj["metadata"]["name"]
            assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
            labels = obj["metadata"]["labels"]
            assert {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "helm.sh/chart"} <= set(labels), name
    long_objects = load_docs(done_long.stdout)
    keys = [(o["kind"], o["metadata"]["name"]) for o in long_objects]
    assert len(set(keys)) == len(keys)  # truncation never merges two objects
    # the component suffix survives truncation, the release part is cut
    assert any(name.endswith("-object-store-bucket") and len(name) == 63 for _, name in keys)


def test_prefect_server_on_an_external_database(helm):
    done = helm_template(helm, "--set", "prefect.server.database.externalUrlSecret=prefect-db",
                         "--set", "postgresql.enabled=false")
    assert done.returncode == 0, done.stderr
    objects = load_docs(done.stdout)
    env = env_of(_container(objects, "Deployment", "-prefect-server"))
    assert _secret_ref(env["PREFECT_SERVER_DATABASE_CONNECTION_URL"]) == ("prefect-db", "url")
    assert "PREFECT_SERVER_DATABASE_HOST" not in env
    # MLflow falls back to its sqlite volume; Prefect needs none
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("PersistentVolumeClaim", f"{PREFIX}-mlflow-sqlite") in kinds
    assert ("PersistentVolumeClaim", f"{PREFIX}-prefect-server-sqlite") not in kinds
    assert not by_kind(objects, "StatefulSet")


@pytest.mark.parametrize("values", ["default", "all-on-values"])
def test_notes_say_how_to_reach_each_ui_and_submit(helm, values):
    path = VALUES_FILES[values]
    done = run([helm, "install", RELEASE, CHART, "--namespace", NAMESPACE, "--dry-run=client",
                *(["-f", path] if path else [])])
    assert done.returncode == 0, done.stderr
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply --server-side -k k8s/operator/" in notes
    assert 'work pool "qwen3-k8s"' in notes and "prefect deployment run" in notes
    if values == "default":
        assert f"port-forward svc/{PREFIX}-prefect-server 4200:4200" in notes
        assert f"port-forward svc/{PREFIX}-mlflow 5000:5000" in notes
        assert "create secret generic qwen3-trainer-s3" in notes
    else:
        assert "https://prefect.ci.example.com" in notes and "https://mlflow.ci.example.com" in notes
        assert f"http://{PREFIX}-object-store:9000" in notes
