"""Stage jobs as Kubeflow Trainer v2 TrainJobs when cluster.yaml says ``api: TrainJob``: every job of
every stage references the cluster's runtime, carries only what a TrainJob may (the runtime owns gang
scheduling, priority and restarts), round-trips through the kubeflow-trainer-api models and its node
pod passes kubernetes-validate --strict; a contract that mixes up the API choice is one line."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from qwen3_trainer.platform.jobs import render
from qwen3_trainer.platform.jobs.trainjob import round_trip
from qwen3_trainer.platform.jobs.trainjob_pods import core_objects
from qwen3_trainer.recipe.cluster import load_cluster_config
from qwen3_trainer.recipe.graph import STAGES
from qwen3_trainer.recipe.jobs import job_spec
from qwen3_trainer.recipe.plan import plan
from qwen3_trainer.recipe.presets import PRESETS

ROOT = "s3://qwen3-trainer/pipelines"
KUEUE = {"gangScheduler": "kueue", "queueName": "q", "priorityClassName": "high"}


def _cluster(tmp_path, **jobs):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump({"api": "TrainJob", "trainingRuntimeName": "rel-torch", **jobs}))
    return load_cluster_config(str(path))


def _train_spec(cluster, preset="full", stage="S1"):
    p = plan(PRESETS[preset], [stage])[stage]
    cfg = p.train_config(ROOT, init=None, teacher=None, dump="/d")
    return job_spec(p, PRESETS[preset], cfg, backend="k8s", pipeline_id="t", cluster=cluster, remote_storage=True)


@pytest.mark.parametrize("name", ["tiny", "full"])
def test_every_stage_job_is_a_trainjob_on_the_installed_runtime(name, tmp_path):
    cluster = _cluster(tmp_path, scheduling=KUEUE, runPolicy={"backoffLimit": 6})
    preset = PRESETS[name].model_copy(update={"student_init": "s3://m/s" if name == "full" else None})
    seen = set()
    for stage, p in plan(preset, list(STAGES)).items():
        configs = {"train": p.train_config(ROOT, init="/i", teacher="/t", dump="/d"),
                   "prepare": p.prepare_config(ROOT, init="/i", teacher="/t"), "eval": p.eval_config(ROOT)}
        for kind, cfg in configs.items():
            if cfg is None:
                continue
            spec = job_spec(p, preset, cfg, kind=kind, backend="k8s", pipeline_id="t", cluster=cluster,
                            remote_storage=True)
            rendered = render(spec)
            job = rendered.job
            assert (job["kind"], rendered.runtime) == ("TrainJob", None)   # the chart's runtime, not its own
            assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                                 "name": "rel-torch"}
            assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "q"
            trains = kind == "train" or (kind == "prepare" and p.spec.prepare.reward_model is not None)
            assert job["spec"]["trainer"]["numNodes"] == (p.spec.scale.nodes if trains else 1)
            assert round_trip(job) == job
            for obj in core_objects(job):
                kubernetes_validate.validate(obj, "1.33.0", strict=True)
            env = job["spec"]["trainer"]["env"]
            assert all("valueFrom" in e for e in env if e["name"].startswith("AWS_") and "KEY" in e["name"])
            seen.add(stage)
    assert seen == set(STAGES)


def test_cluster_runtime_and_the_pytorchjob_default(tmp_path):
    spec = _train_spec(_cluster(tmp_path, trainJob={"runtime": "cluster"}))
    assert spec.kind == "TrainJob" and spec.runtime.model_dump() == {"name": "torch-distributed",
                                                                     "kind": "ClusterTrainingRuntime"}
    assert spec.scheduling.gang == "none" and spec.run_policy.backoff_limit == 3   # the runtime's, not ours
    assert _train_spec(load_cluster_config()).kind == "PyTorchJob"


def test_mixed_up_api_choice_is_one_line(tmp_path):
    with pytest.raises(ValueError) as info:
        _cluster(tmp_path, trainJob={"runtime": "cluster"}, scheduling={"gangScheduler": "volcano", "queueName": "q"})
    assert str(info.value).startswith(f"{tmp_path / 'cluster.yaml'}: scheduling.gangScheduler: volcano needs the "
                                      "runtime's podGroupPolicy") and "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"runPolicy.backoffLimit: with api TrainJob on the ClusterTrainingRuntime"):
        _cluster(tmp_path, trainJob={"runtime": "cluster"}, runPolicy={"backoffLimit": 1})
    unnamed = tmp_path / "unnamed.yaml"
    unnamed.write_text(yaml.safe_dump({"api": "TrainJob"}))
    with pytest.raises(ValueError, match=r"^stage S1: .*unnamed.yaml: trainingRuntimeName: required with api TrainJob"):
        _train_spec(load_cluster_config(str(unnamed)))
