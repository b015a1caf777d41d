"""TrainJobs through both launchers. Kubernetes, against the API double: submit (ConfigMap + own
TrainingRuntime + TrainJob, both owned by the job), watch with Trainer's conditions mapped onto ours
(Created, Running from the node pods, Complete -> Succeeded, Failed with the failing node's error line,
Suspended), logs from the node pods, list by label beside PyTorchJobs, cancel; a runtime that does not
exist stops the submit with one line and nothing created. Local: the same processes as the PyTorchJob
of the same spec, and a real 2-node run."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from kube_api_double import wait_beside
from typer.testing import CliRunner

from qwen3_trainer.cli.job_cmd import app
from qwen3_trainer.platform.jobs import render
from qwen3_trainer.platform.jobs.k8s_launcher import K8sLauncher
from qwen3_trainer.platform.jobs.local_supervisor import plan
from qwen3_trainer.platform.jobs.spec import JobSpec
from qwen3_trainer.platform.jobs.status import LauncherError

NS = "train"
runner = CliRunner()


def _spec(name="tj", **over) -> JobSpec:
    return JobSpec.model_validate({"kind": "TrainJob", "name": name, "namespace": NS, "image": "r/i:1", "nodes": 2,
                                   "gpus_per_node": 8, "train": {"model": {"flavor": "debugmodel"}}, **over})


@pytest.fixture
def launcher(kube_api, tmp_path):
    return K8sLauncher(kubeconfig=kube_api.kubeconfig(tmp_path / "kubeconfig", namespace=NS))


def test_submit_creates_runtime_and_configmap_owned_by_the_trainjob(kube_api, launcher):
    expected = render(_spec())
    launcher.submit(_spec())
    job = kube_api.get("trainjobs", NS, "tj")
    assert job["spec"] == expected.job["spec"]
    owner = [{"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "name": "tj",
              "uid": job["metadata"]["uid"], "controller": False, "blockOwnerDeletion": False}]
    runtime = kube_api.get("trainingruntimes", NS, "tj")
    assert runtime["spec"] == expected.runtime["spec"] and runtime["metadata"]["ownerReferences"] == owner
    assert kube_api.get("configmaps", NS, "tj-config")["metadata"]["ownerReferences"] == owner
    assert [m for m, _ in kube_api.requests] == ["POST", "POST", "POST", "PATCH", "PATCH"]


def test_watch_to_complete_with_logs_list_and_cancel(kube_api, launcher, tmp_path):
    launcher.submit(_spec())
    launcher.submit(_spec("pt", kind="PyTorchJob", labels={"team": "rl"}))
    pods = []

    def trainer():
        pods.extend(kube_api.trainer_start(NS, "tj"))
        time.sleep(0.3)
        for pod in pods:
            kube_api.set_pod(NS, pod, "Running")
        for step in range(2):
            kube_api.append_log(NS, pods[0], f"step {step} | loss {3 - step}.0\n")
            time.sleep(0.2)
        for pod in pods:
            kube_api.set_pod(NS, pod, "Succeeded", exit_code=0)
        kube_api.set_condition(NS, "tj", "Complete", "JobSetCompleted", "TrainJob tj is completed")

    lines = []

    def follow():
        end = time.monotonic() + 10
        while not pods and time.monotonic() < end:
            time.sleep(0.05)
        lines.extend(launcher.logs("tj", follow=True))

    final, states = wait_beside(launcher, "tj", trainer, follow)
    assert (final.state, final.message) == ("Succeeded", "TrainJob tj is completed")
    assert states[0] in ("Pending", "Created") and "Running" in states and states[-1] == "Succeeded"
    assert [(r.replica_type, r.index, r.phase) for r in final.replicas] == [("Node", 0, "Succeeded"),
                                                                             ("Node", 1, "Succeeded")]
    assert lines == ["step 0 | loss 3.0", "step 1 | loss 2.0"]
    kube_api.append_log(NS, pods[1], "node 1 here\n")
    assert list(launcher.logs("tj", replica="worker", index=0)) == ["node 1 here"]   # worker i = node i+1
    assert list(launcher.logs("tj", replica="node", index=1, tail=1)) == ["node 1 here"]
    fresh = K8sLauncher(kubeconfig=kube_api.kubeconfig(tmp_path / "kc2", namespace=NS))   # finds it by name
    assert fresh.status("tj").state == "Succeeded"
    assert [j.name for j in fresh.list()] == ["pt", "tj"]
    assert [j.name for j in fresh.list({"qwen3-trainer.io/run-id": "tj"})] == ["tj"]
    fresh.cancel("tj")
    assert [kube_api.get(kind, NS, name) for kind, name in (("trainjobs", "tj"), ("trainingruntimes", "tj"),
                                                            ("configmaps", "tj-config"), ("pods", pods[0]))] == [None] * 4
    with pytest.raises(LauncherError, match=r'^cannot get TrainJob train/tj: 404 Not Found: trainjobs'):
        fresh.status("tj")


def test_failed_and_suspended_conditions(kube_api, launcher):
    launcher.submit(_spec())
    pods = kube_api.trainer_start(NS, "tj")
    kube_api.set_condition(NS, "tj", "Suspended", "Suspended", "TrainJob is suspended")
    assert launcher.status("tj").state == "Suspended" and not launcher.status("tj").finished
    kube_api.set_condition(NS, "tj", "Suspended", "Resumed", "TrainJob is resumed")
    with kube_api._cond:   # Trainer turns Suspended False on resume
        kube_api.objects[("trainjobs", NS, "tj")]["status"]["conditions"][-1]["status"] = "False"
    kube_api.set_pod(NS, pods[0], "Running")
    assert launcher.status("tj").state == "Created"          # one of two nodes up: not running yet
    kube_api.set_pod(NS, pods[1], "Failed", exit_code=1)
    kube_api.append_log(NS, pods[1], "step 1\nerror: data source 'web': no files match s3://b/w/\n")
    kube_api.set_condition(NS, "tj", "Failed", "JobSetFailed", "jobset failed.")
    status = launcher.status("tj")
    assert status.state == "Failed" and status.finished
    assert status.message == f"jobset failed: {pods[1]}: error: data source 'web': no files match s3://b/w/"


def test_missing_runtime_is_one_line_and_nothing_is_created(kube_api, launcher, tmp_path):
    with pytest.raises(LauncherError) as info:
        launcher.submit(_spec(runtime={"name": "qwen3-torch", "kind": "TrainingRuntime"}))
    assert str(info.value) == "TrainJob train/tj: its runtime TrainingRuntime train/qwen3-torch does not exist on the cluster"
    assert info.value.status == 404 and "kubectl get trainingruntimes -n train" in info.value.hint
    assert [m for m, _ in kube_api.requests] == ["GET"]
    # an account that may not read cluster-scoped runtimes: Trainer's webhook refuses, nothing is left
    kube_api.forbid_cluster_scope = True
    with pytest.raises(LauncherError, match=r"^TrainJob train/tj: its runtime ClusterTrainingRuntime "
                                            r"torch-distributed does not exist on the cluster$"):
        launcher.submit(_spec(runtime={"name": "torch-distributed"}))
    assert not [key for key in kube_api.objects if key[0] != "pods"]
    kube_api.forbid_cluster_scope = False
    kube_api.add_cluster_runtime("torch-distributed")
    spec = tmp_path / "tj.yaml"
    spec.write_text(yaml.safe_dump({**_spec(runtime={"name": "torch-distributed"}).model_dump(mode="json"),
                                    "train": "s3://b/cfg.yaml"}))
    kc = kube_api.kubeconfig(tmp_path / "kc", namespace=NS)
    assert runner.invoke(app, ["submit", str(spec), "-b", "k8s", "--kubeconfig", kc]).exit_code == 0
    again = runner.invoke(app, ["submit", str(spec), "-b", "k8s", "--kubeconfig", kc])
    assert again.exit_code == 2
    assert again.stderr.splitlines()[0].startswith("error: cannot create TrainJob train/tj: 409 Conflict")


def test_a_name_in_use_by_the_other_kind_is_a_conflict(kube_api, launcher):
    """Both kinds' jobs would own the ConfigMap <name>-config: a live PyTorchJob's is never replaced."""
    launcher.submit(_spec(kind="PyTorchJob"))
    config = kube_api.get("configmaps", NS, "tj-config")
    with pytest.raises(LauncherError, match=r"^PyTorchJob train/tj already exists$") as info:
        launcher.submit(_spec())
    assert info.value.status == 409
    assert kube_api.get("configmaps", NS, "tj-config") == config and kube_api.get("trainjobs", NS, "tj") is None


def test_list_skips_a_kind_the_cluster_does_not_serve(kube_api, launcher):
    launcher.submit(_spec())
    kube_api.served = {"trainjobs"}                          # Trainer v2 only, no training operator
    assert [j.name for j in launcher.list()] == ["tj"]
    kube_api.served = set()
    with pytest.raises(LauncherError, match="cannot list PyTorchJobs in train: 404") as info:
        launcher.list()
    assert "training operator installed" in info.value.hint


def test_local_plan_runs_what_the_pytorchjob_runs(tmp_path):
    """Same argv (torchrun + rendezvous + config file) and container env per node; the operator's
    variables are v2's PET_* set (no MASTER_ADDR / WORLD_SIZE / RANK), names are the JobSet's."""
    spec = _spec(nodes=3, gpus_per_node=2, env=[{"name": "LEVEL", "value": "debug"}])
    base = {"PATH": "/bin"}
    gpus = [str(i) for i in range(6)]
    v1 = plan(render(spec.model_copy(update={"kind": "PyTorchJob"})).job, tmp_path, "u", 4242, gpus, base)
    rendered = render(spec)
    v2 = plan(rendered.job, tmp_path, "u", 4242, gpus, base, runtime=rendered.runtime)
    assert [r.pod for r in v2] == ["tj-node-0-0", "tj-node-0-1", "tj-node-0-2"]
    assert [r.argv for r in v2] == [r.argv for r in v1]
    assert [r.restart_policy for r in v2] == ["ExitCode"] * 3
    operator = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "QTRAIN_LOCAL_REPLICA"}
    for a, b in zip(v1, v2, strict=True):
        assert {k: v for k, v in a.env.items() if k not in operator} == \
            {k: v for k, v in b.env.items() if k not in operator}
    assert not operator - {"QTRAIN_LOCAL_REPLICA"} & set(v2[0].env)
    assert v2[2].env["LEVEL"] == "debug" and v2[2].env["CUDA_VISIBLE_DEVICES"] == "4,5"


@pytest.mark.slow
def test_local_trainjob_runs_to_completion(tmp_path, qtrain_home, allreduce_spec):
    """`qtrain job submit --kind TrainJob --wait` runs for real (one node, to stay cheap: the plan test
    above covers several nodes' variables): the stand-in trainer's gloo all_reduce, logs, the record."""
    spec = tmp_path / "ar.yaml"
    spec.write_text(yaml.safe_dump(allreduce_spec("tjar", nodes=1)))
    result = runner.invoke(app, ["submit", str(spec), "--kind", "TrainJob", "--wait", "--json"])
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)
    assert final["state"] == "Succeeded" and final["conditions"][0]["reason"] == "TrainJobCreated"
    assert [(r["name"], r["phase"]) for r in final["replicas"]] == [("tjar-node-0-0", "Succeeded")]
    assert json.loads((tmp_path / "out-tjar" / "result.json").read_text()) == {"world_size": 1, "sum": 1.0}
    rank0 = json.loads((tmp_path / "out-tjar" / "rank0.json").read_text())
    assert (rank0["env"]["PET_NODE_RANK"], rank0["env"]["PET_NNODES"]) == ("0", "1")
    assert rank0["config"] == str(qtrain_home / "jobs/tjar/volumes/train-config/config.yaml")
    manifest = list(yaml.safe_load_all((qtrain_home / "jobs/tjar/manifest.yaml").read_text()))
    assert [d["kind"] for d in manifest] == ["ConfigMap", "TrainingRuntime", "TrainJob"]
    logs = runner.invoke(app, ["logs", "tjar", "--tail", "1"])
    assert logs.stdout.splitlines() == ["step 2 | done | world 1"]
