"""Every rendered object validates against the Kubernetes 1.33 OpenAPI schemas, strictly
(kubernetes-validate: unknown fields are errors). Custom resources, which it has no schema for, are
skipped only when listed here; Kubeflow Trainer's TrainingRuntime instead round-trips through the
kubeflow-trainer-api models without losing a field and its core parts (the node Job and its pod
template) validate as batch/v1 Job and Pod."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from chart_helpers import VALUES_FILES, run
from k8s_objects import find

from qwen3_trainer.platform.jobs.trainjob import round_trip
from qwen3_trainer.platform.jobs.trainjob_pods import core_objects

K8S_VERSION = "1.33.0"
TRAINER = "trainer.kubeflow.org/v1alpha1"
# Custom resources kubernetes-validate cannot check (no schema): the prod overlay's Kueue queues.
UNCHECKABLE = {
    ("kueue.x-k8s.io/v1beta1", "ResourceFlavor"),
    ("kueue.x-k8s.io/v1beta1", "ClusterQueue"),
    ("kueue.x-k8s.io/v1beta1", "LocalQueue"),
}


def _validate_all(objects: list[dict]) -> tuple[int, list[str]]:
    checked, errors = 0, []
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in UNCHECKABLE:
            continue
        if obj["apiVersion"] == TRAINER:
            where = f"{obj['kind']}/{obj['metadata']['name']}"
            try:
                if round_trip(obj) != obj:
                    errors.append(f"{where}: loses fields through the kubeflow-trainer-api models")
            except ValueError as err:   # pydantic's ValidationError: a mistyped field or a bad enum value
                errors.append(f"{where}: {' '.join(line.strip() for line in str(err).splitlines()[:3])}")
            sub_checked, sub_errors = _validate_all(core_objects(obj))
            checked, errors = checked + (sub_checked > 0), errors + sub_errors
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
            checked += 1
        except kubernetes_validate.ValidationError as err:
            path = "/".join(str(p) for p in err.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{obj['apiVersion']} {obj['kind']}: no schema and not listed in UNCHECKABLE")
    return checked, errors


@pytest.mark.parametrize("source", [f"helm:{v}" for v in VALUES_FILES] + ["kustomize:base", "kustomize:dev",
                                                                          "kustomize:prod", "kustomize:dev-trainer"])
def test_every_object_validates_strictly(all_manifests, source):
    objects = all_manifests[source]
    checked, errors = _validate_all(objects)
    assert not errors, "\n".join(errors)
    assert checked >= 5, f"{source}: only {checked} objects checked"


def test_only_listed_custom_resources_are_skipped(all_manifests):
    skipped = {(o["apiVersion"], o["kind"]) for objs in all_manifests.values() for o in objs
               if (o["apiVersion"], o["kind"]) in UNCHECKABLE}
    assert skipped == UNCHECKABLE  # every entry is used: the list never grows stale


def test_validator_rejects_an_unknown_field(renders):
    deployment = json.loads(json.dumps(find(renders["default"], "Deployment", "-mlflow")))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    _, errors = _validate_all([deployment])
    assert errors and "livenessProbes" in errors[0]


def test_trainer_runtimes_are_checked_not_skipped(all_manifests):
    runtimes = [o for key in ("helm:all-on-values", "kustomize:dev-trainer") for o in all_manifests[key]
                if o["kind"] == "TrainingRuntime"]
    assert len(runtimes) == 2
    broken = json.loads(json.dumps(runtimes[0]))
    node = broken["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]
    node["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    node["spec"]["backoffLimitt"] = 0
    _, errors = _validate_all([broken])
    assert any("backoffLimitt" in e for e in errors) and any("imagePullPolicy" in e or "Sometimes" in e for e in errors)


def test_cli_validates_the_default_render(renders, tmp_path):
    # the command line the issue names, once, on the whole default render
    cli = Path(sys.executable).parent / "kubernetes-validate"
    path = tmp_path / "default.yaml"
    path.write_text(yaml.safe_dump_all(renders["default"]))
    done = run([cli, "-k", K8S_VERSION, "--strict", "--quiet", path])
    assert done.returncode == 0, done.stdout + done.stderr


def _fill(node, variables: dict):
    """Prefect's templating of a base job template: "{{ x }}" alone takes x's value (any type)."""
    if isinstance(node, dict):
        return {k: _fill(v, variables) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, variables) for v in node]
    if isinstance(node, str):
        whole = re.fullmatch(r"\{\{ (\w+) \}\}", node)
        if whole:
            return variables[whole[1]]
        return re.sub(r"\{\{ (\w+) \}\}", lambda m: str(variables[m[1]]), node)
    return node


@pytest.mark.parametrize("values", ["default", "all-on-values"])
def test_flow_run_job_of_the_work_pool_validates(renders, values):
    cm = find(renders[values], "ConfigMap", "-base-job-template")
    template = json.loads(cm["data"]["base-job-template.json"])
    props = template["variables"]["properties"]
    variables = {k: v["default"] for k, v in props.items() if "default" in v}
    variables |= {"name": "qwen3-pipeline-abc", "labels": {"prefect.io/flow-run-id": "1"},
                  "command": ["prefect", "flow-run", "execute"]}
    job = _fill(template["job_configuration"]["job_manifest"], variables)
    checked, errors = _validate_all([job | {"metadata": job["metadata"] | {"name": "x"}}])
    assert not errors and checked == 1, errors
    spec = job["spec"]["template"]["spec"]
    assert spec["serviceAccountName"].endswith("-worker")
    assert spec["containers"][0]["image"] == variables["image"]
