"""JobSpec -> Kubeflow Trainer v2 TrainJob (trainjob.py): every example renders, round-trips through
the kubeflow-trainer-api models without losing a field, its core parts (node pod, node Job) pass
kubernetes-validate --strict and equal the committed k8s/jobs/rendered/*.trainjob.yaml; each JobSpec
knob lands where Trainer reads it; what v2 cannot express, or a mixed-up API choice, is one line
(exit 2) and nothing is submitted."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from qwen3_trainer.cli.job_cmd import app
from qwen3_trainer.platform.jobs import render
from qwen3_trainer.platform.jobs.spec import JobSpec, load_spec
from qwen3_trainer.platform.jobs.trainjob import round_trip
from qwen3_trainer.platform.jobs.trainjob_pods import core_objects, node_plan

ROOT = Path(__file__).resolve().parents[2]
SPECS = sorted((ROOT / "k8s" / "jobs").glob("*.yaml"))
runner = CliRunner()


def _strict(obj: dict) -> None:
    try:
        kubernetes_validate.validate(obj, "1.33.0", strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {str(exc).splitlines()[0]}")


def _patch(job: dict) -> dict:
    """The node pod template patch of our runtime patch."""
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == "qwen3-trainer.io/qtrain"
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    return node["template"]["spec"]["template"]


def _node_pod_spec(runtime: dict) -> dict:
    return runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("path", SPECS, ids=lambda p: p.stem)
def test_example_renders_round_trips_validates_and_is_committed(path):
    spec, base = load_spec(path, kind="TrainJob")
    rendered = render(spec, base)
    assert [o["kind"] for o in rendered.objects] == ["ConfigMap", "TrainingRuntime", "TrainJob"]
    job, runtime = rendered.job, rendered.runtime
    assert (job["apiVersion"], runtime["apiVersion"]) == ("trainer.kubeflow.org/v1alpha1",) * 2
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                         "name": spec.name}
    for obj in (job, runtime):
        assert round_trip(obj) == obj                        # no field lost through the models
    for obj in [*core_objects(job, runtime), *core_objects(runtime), rendered.configmap]:
        _strict(obj)
    trainer = job["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (spec.nodes, spec.procs_per_node)
    # the trainer runs the PyTorchJob's container line: same torchrun, same PET_* rendezvous, same config
    pytorch = render(spec.model_copy(update={"kind": "PyTorchJob"}), base).job
    container = pytorch["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert [trainer[k] for k in ("command", "args", "env", "image")] == \
        [container[k] for k in ("command", "args", "env", "image")]
    assert trainer["resourcesPerNode"] == container["resources"]
    committed = ROOT / "k8s" / "jobs" / "rendered" / f"{path.stem}.trainjob.yaml"
    assert committed.read_text() == rendered.to_yaml(), (
        f"{committed} is stale: qtrain job render {path.relative_to(ROOT)} --kind TrainJob > "
        f"{committed.relative_to(ROOT)}")


def test_node_pool_rdma_shm_secrets_and_volcano_gang():
    spec, base = load_spec(ROOT / "k8s/jobs/qwen3-235b-a22b-32x8.yaml", kind="TrainJob")
    rendered = render(spec, base)
    pod = _patch(rendered.job)["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H200"}
    assert pod["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert pod["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == \
        "topology.k8s.aws/network-node-layer-2"
    assert pod["volumes"][0] == {"emptyDir": {"medium": "Memory", "sizeLimit": "256Gi"}, "name": "dshm"}
    assert pod["containers"] == [{"name": "node", "volumeMounts": [
        {"mountPath": "/dev/shm", "name": "dshm"}, {"mountPath": "/etc/qtrain", "name": "train-config", "readOnly": True}]}]
    trainer = rendered.job["spec"]["trainer"]
    assert trainer["resourcesPerNode"]["limits"]["vpc.amazonaws.com/efa"] == "16"
    env = {e["name"]: e for e in trainer["env"]}
    assert env["MLFLOW_TRACKING_PASSWORD"] == {"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": {
        "secretKeyRef": {"key": "password", "name": "mlflow-credentials"}}}
    # Volcano: the runtime's PodGroup policy, scheduler, queue annotation and the pods' priority
    runtime = rendered.runtime["spec"]
    assert runtime["podGroupPolicy"] == {"volcano": {}}
    assert runtime["template"]["metadata"] == {"annotations": {"scheduling.volcano.sh/queue-name": "h200-training"}}
    node = _node_pod_spec(rendered.runtime)
    assert (node["schedulerName"], node["priorityClassName"]) == ("volcano", "training-high")
    assert runtime["template"]["spec"]["failurePolicy"]["maxRestarts"] == 10
    assert runtime["template"]["spec"]["ttlSecondsAfterFinished"] == 604800
    # the Trainer's pod: patches applied on the runtime, the job's pod labels for the affinity to select
    plan = node_plan(rendered.job, rendered.runtime)
    assert plan.template["metadata"]["labels"]["app.kubernetes.io/instance"] == spec.name
    assert plan.template["spec"]["schedulerName"] == "volcano" and plan.container["image"] == spec.image


def test_kueue_labels_the_trainjob_and_deadline_is_the_trainjobs():
    spec, base = load_spec(ROOT / "k8s/jobs/qwen3-30b-a3b-4x8.yaml", kind="TrainJob")
    rendered = render(spec, base)
    assert rendered.job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "h200-training"
    assert "podGroupPolicy" not in rendered.runtime["spec"] and "schedulerName" not in _node_pod_spec(rendered.runtime)
    spec, base = load_spec(ROOT / "k8s/jobs/debugmodel-cpu.yaml", kind="TrainJob")
    assert render(spec, base).job["spec"]["activeDeadlineSeconds"] == 1800


def _spec(**over) -> JobSpec:
    return JobSpec.model_validate({"kind": "TrainJob", "name": "t", "image": "r/i:1", "train": {"a": 1}, **over})


@pytest.mark.parametrize(("restart", "backoff", "read_back"), [
    ("ExitCode", 4, ("ExitCode", 4)), ("OnFailure", 2, ("OnFailure", 2)), ("Never", 5, ("Never", 0)),
    ("ExitCode", 0, ("Never", 0)),      # no restarts at all: the two mean the same
])
def test_restart_policy_in_jobset_terms_reads_back(restart, backoff, read_back):
    rendered = render(_spec(restart_policy=restart, run_policy={"backoff_limit": backoff}))
    job_template = rendered.runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]
    assert job_template["backoffLimit"] == 0 and _node_pod_spec(rendered.runtime)["restartPolicy"] == "Never"
    exit_codes = job_template.get("podFailurePolicy", {}).get("rules", [{}])[0].get("onExitCodes", {})
    assert exit_codes.get("values") == (list(range(1, 128)) if restart == "ExitCode" else None)
    plan = node_plan(rendered.job, rendered.runtime)
    assert (plan.restart_policy, plan.backoff_limit) == read_back


def test_a_named_runtime_renders_no_runtime_of_its_own():
    rendered = render(_spec(runtime={"name": "torch-distributed"}, scheduling={"gang": "kueue", "queue": "q"}))
    assert [o["kind"] for o in rendered.objects] == ["ConfigMap", "TrainJob"]
    assert rendered.job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org",
                                                  "kind": "ClusterTrainingRuntime", "name": "torch-distributed"}
    (pod,) = core_objects(rendered.job)         # the node pod from the TrainJob alone still validates
    _strict(pod)


BAD = [
    ({"elastic": {"min_nodes": 1, "max_nodes": 2}}, "elastic: a TrainJob cannot express it"),
    ({"run_policy": {"clean_pod_policy": "All"}}, "run_policy.clean_pod_policy: a TrainJob cannot express All"),
    ({"scheduling": {"gang": "volcano", "schedule_timeout_seconds": 60}},
     "scheduling.schedule_timeout_seconds: a TrainJob cannot express it with gang=volcano"),
    ({"runtime": {"name": "torch-distributed"}, "scheduling": {"priority_class": "high"}},
     "scheduling.priority_class: runtime ClusterTrainingRuntime torch-distributed decides it"),
    ({"runtime": {"name": "torch-distributed"}, "run_policy": {"backoff_limit": 9}},
     "run_policy.backoff_limit: runtime ClusterTrainingRuntime torch-distributed decides it"),
    ({"runtime": {"name": "mine", "kind": "TrainingRuntime"}, "scheduling": {"gang": "volcano"}},
     "scheduling.gang: volcano is the podGroupPolicy of runtime TrainingRuntime mine"),
    ({"runtime": {"name": "Not_A_Name"}}, "runtime.name: 'Not_A_Name' is not a valid runtime name"),
    ({"kind": "PyTorchJob", "runtime": {"name": "torch-distributed"}},
     "runtime: names a Kubeflow Trainer runtime, which only a TrainJob references (kind is PyTorchJob)"),
]


@pytest.mark.parametrize(("patch", "expected"), BAD, ids=[b[1].split(":")[0] for b in BAD])
def test_bad_input_is_one_line_exit_2_nothing_submitted(patch, expected, tmp_path, kube_api):
    data = yaml.safe_load((ROOT / "k8s/jobs/debugmodel-cpu.yaml").read_text())
    for runtime_owned in ("run_policy", "restart_policy"):    # so each case trips on its own field
        del data[runtime_owned]
    data |= {"kind": "TrainJob"} | patch
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    kubeconfig = kube_api.kubeconfig(tmp_path / "kc")
    for args in (["render", str(path)], ["submit", str(path), "--backend", "k8s", "--kubeconfig", kubeconfig]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert lines[0].startswith(f"error: {path}: {expected}"), lines[0]
        assert len(lines) == 2 and lines[1].startswith("hint:")
    assert kube_api.requests == []


def test_kind_option_and_a_mixed_up_choice(tmp_path):
    spec = ROOT / "k8s/jobs/qwen3-30b-a3b-4x8.yaml"
    result = runner.invoke(app, ["render", str(spec), "--kind", "TrainJob"])
    assert result.exit_code == 0, result.output
    assert result.stdout == (ROOT / "k8s/jobs/rendered/qwen3-30b-a3b-4x8.trainjob.yaml").read_text()
    as_json = runner.invoke(app, ["render", str(spec), "-k", "TrainJob", "--json"])
    assert [o["kind"] for o in json.loads(as_json.stdout)] == ["ConfigMap", "TrainingRuntime", "TrainJob"]
    declared = tmp_path / "declared.yaml"
    declared.write_text(yaml.safe_dump(yaml.safe_load(spec.read_text()) | {"kind": "TrainJob"}))
    assert runner.invoke(app, ["render", str(declared), "--kind", "TrainJob"]).exit_code == 0
    result = runner.invoke(app, ["render", str(declared), "--kind", "PyTorchJob"])
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (f"error: {declared}: kind: the spec says TrainJob, --kind says "
                                             "PyTorchJob; drop one")


def test_readme_render_lines_run_as_written():
    """The Jobs section's `qtrain job render` lines, both kinds, print the committed renders."""
    section = (ROOT / "README.md").read_text().split("## Jobs\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#")[0].split() for line in section.splitlines() if line.startswith("qtrain job render ")]
    assert {"--kind" in argv for argv in lines} == {True, False}
    for argv in lines:
        result = runner.invoke(app, argv[2:])
        assert result.exit_code == 0, (argv, result.output)
        suffix = ".trainjob.yaml" if "TrainJob" in argv else ".yaml"
        assert result.stdout == (ROOT / "k8s/jobs/rendered" / (Path(argv[3]).stem + suffix)).read_text()
