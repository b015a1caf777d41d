"""Security properties of every render and build: namespaced RBAC with exactly the needed verbs,
secrets only through secretKeyRef, nothing exposed outside the cluster by default, and pods that
meet the Pod Security "restricted" profile with probes and resource requests on every container."""

from __future__ import annotations

import base64
import re

import pytest
from chart_helpers import helm_template, load_docs
from k8s_objects import by_kind, containers, env_of, find, pod_specs

ROLE_RULES = {  # (apiGroup, resource) -> verbs: what the worker and its flow runs do, nothing more
    ("kubeflow.org", "pytorchjobs"): {"create", "get", "list", "watch", "delete"},
    ("trainer.kubeflow.org", "trainjobs"): {"create", "get", "list", "watch", "delete"},
    ("trainer.kubeflow.org", "trainingruntimes"): {"get"},  # a TrainJob's runtime exists before it is submitted
    ("", "configmaps"): {"create", "patch", "delete"},  # the job's train config, owned by its PyTorchJob
    ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
    ("", "pods"): {"get", "list", "watch"},
    ("", "pods/log"): {"get"},
    ("", "events"): {"get", "list", "watch"},
}
SENSITIVE = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY($|_)|ACCESS_KEY|CONNECTION_URL|STORE_URI|AUTH", re.I)
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret", "name"}


def _rules(role: dict) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def test_no_cluster_scoped_rbac(all_manifests):
    for source, objects in all_manifests.items():
        kinds = {o["kind"] for o in objects}
        assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, source


@pytest.mark.parametrize("source", ["helm:default", "helm:all-on-values", "kustomize:prod"])
def test_role_grants_exactly_the_needed_verbs(all_manifests, source):
    objects = all_manifests[source]
    (role,) = by_kind(objects, "Role")
    assert _rules(role) == ROLE_RULES
    assert role["metadata"]["namespace"]
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    worker_sa = find(objects, "ServiceAccount", "-worker")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": worker_sa,
                                    "namespace": role["metadata"]["namespace"]}]
    # the worker runs under that account; MLflow and training pods under the unbound one
    worker = find(objects, "Deployment", "-prefect-worker")["spec"]["template"]["spec"]
    assert worker["serviceAccountName"] == worker_sa
    mlflow = find(objects, "Deployment", "-mlflow")["spec"]["template"]["spec"]
    assert mlflow["serviceAccountName"].endswith("-workload") and mlflow["automountServiceAccountToken"] is False


def test_rbac_off_renders_no_role(helm):
    done = helm_template(helm, "--set", "rbac.create=false")
    assert done.returncode == 0, done.stderr
    assert not {o["kind"] for o in load_docs(done.stdout)} & {"Role", "RoleBinding"}


def _secret_values(objects: list[dict]) -> set[str]:
    values = set()
    for secret in by_kind(objects, "Secret"):
        values |= {base64.b64decode(v).decode() for v in secret.get("data", {}).values()}
        values |= set(secret.get("stringData", {}).values())
    return {v for v in values if len(v) >= 8}


def test_secrets_reach_containers_only_through_secret_key_ref(all_manifests):
    for source, objects in all_manifests.items():
        for where, spec in pod_specs(objects):
            for c in containers(spec):
                env = env_of(c)
                from_secret = {n for n, e in env.items() if "secretKeyRef" in e.get("valueFrom", {})}
                for name, entry in env.items():
                    if not SENSITIVE.search(name) or name in from_secret:
                        continue
                    # a literal is allowed only if it is a non-secret default (sqlite path) or
                    # assembles the secret from a secretKeyRef variable via $(VAR)
                    value = entry.get("value", "")
                    refs = set(re.findall(r"\$\((\w+)\)", value))
                    assert value.startswith("sqlite") or (refs and refs <= from_secret), \
                        f"{source} {where} {c['name']}: {name} is a literal"
                assert "envFrom" not in c or all("secretRef" not in e for e in c["envFrom"]), where


def test_no_secret_value_appears_outside_a_secret(all_manifests):
    # the generated passwords (helm:*) and the dev overlay's throwaway ones are never copied into
    # env values, args or ConfigMaps
    for source, objects in all_manifests.items():
        secrets = _secret_values(objects)
        text = repr([o for o in objects if o["kind"] != "Secret"])
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"{source}: secret value copied into a non-Secret object"


def test_generated_secrets_exist_where_expected(renders):
    assert {s["metadata"]["name"] for s in by_kind(renders["default"], "Secret")} == {"qwen3-qwen3-trainer-postgresql"}
    names = {s["metadata"]["name"] for s in by_kind(renders["all-on-values"], "Secret")}
    assert names == {"qwen3-qwen3-trainer-postgresql", "qwen3-qwen3-trainer-object-store"}
    assert not by_kind(renders["minimal-values"], "Secret")


def test_services_stay_inside_the_cluster(all_manifests):
    for source, objects in all_manifests.items():
        for svc in by_kind(objects, "Service"):
            assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"{source} {svc['metadata']['name']}"
        if source in ("helm:default", "kustomize:dev", "kustomize:prod"):
            assert not by_kind(objects, "Ingress"), source


def test_exposing_a_service_is_an_explicit_choice(helm):
    done = helm_template(helm, "--set", "mlflow.service.type=LoadBalancer")
    assert done.returncode == 0
    assert find(load_docs(done.stdout), "Service", "-mlflow")["spec"]["type"] == "LoadBalancer"


def _effective(spec: dict, c: dict, key: str):
    return c.get("securityContext", {}).get(key, spec.get("securityContext", {}).get(key))


def test_every_pod_meets_the_restricted_profile(all_manifests):
    for source, objects in all_manifests.items():
        for where, spec in pod_specs(objects):
            assert not {"hostNetwork", "hostPID", "hostIPC"} & {k for k, v in spec.items() if v}, where
            for volume in spec.get("volumes", []):
                assert set(volume) <= RESTRICTED_VOLUMES, f"{where}: volume {volume}"
            for c in containers(spec):
                ctx = c.get("securityContext", {})
                label = f"{source} {where} {c['name']}"
                assert _effective(spec, c, "runAsNonRoot") is True, label
                assert (_effective(spec, c, "runAsUser") or 1) > 0, label
                assert ctx.get("allowPrivilegeEscalation") is False, label
                assert ctx.get("privileged", False) is False, label
                assert ctx.get("capabilities", {}).get("drop") == ["ALL"], label
                assert not ctx.get("capabilities", {}).get("add"), label
                assert ctx.get("readOnlyRootFilesystem") is True, label
                assert _effective(spec, c, "seccompProfile") == {"type": "RuntimeDefault"}, label


def test_every_container_has_probes_and_requests(all_manifests):
    for source, objects in all_manifests.items():
        for where, spec in pod_specs(objects):
            for c in containers(spec):
                requests = c.get("resources", {}).get("requests", {})
                assert {"cpu", "memory"} <= set(requests), f"{source} {where} {c['name']}: requests"
                assert "memory" in c["resources"].get("limits", {}), f"{source} {where} {c['name']}: limit"
            run_to_completion = where.startswith("Job/")
            for c in containers(spec, init=False):
                if run_to_completion:  # a Job's container exits; Kubernetes forbids probes on init containers
                    continue
                assert "livenessProbe" in c and "readinessProbe" in c, f"{source} {where} {c['name']}: probes"


def test_service_account_tokens_only_where_the_api_is_used(all_manifests):
    for source, objects in all_manifests.items():
        for where, spec in pod_specs(objects):
            if where.endswith("-prefect-worker"):
                assert spec.get("automountServiceAccountToken", True), where
            else:
                assert spec.get("automountServiceAccountToken") is False, f"{source} {where}"
