"""The tiny pipeline end to end on real services: checkpoints on s3:// (a moto server), a real MLflow
server, Prefect's test harness; every stage a real local training job (2 steps each).

Asserts, per stage: its final checkpoint (COMPLETE) and HF export exist in S3; its MLflow run is a
child of the pipeline's run, started from the upstream checkpoint, with the trainer's loss metrics, a
loss plot and a registered model version under the stage alias; its Prefect markdown artifact exists;
``qtrain pipeline show --latest --json`` reports it. A re-run skips every stage and submits no job.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from qwen3_trainer.model import storage
from qwen3_trainer.recipe.graph import ALIASES, FLOW_NAMES, GRAPH, STAGES

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_tiny_pipeline_on_s3_mlflow_prefect(s3_bucket, mlflow_server, prefect_server, qtrain_home):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from qwen3_trainer.cli.pipeline_cmd import app
    from qwen3_trainer.workflows.flows import qwen3_pipeline
    from qwen3_trainer.workflows.plan import PipelineParams, plan
    from qwen3_trainer.workflows.registry import Registry

    stages = list(STAGES)
    root = f"{s3_bucket}/runs"
    params = PipelineParams(preset="tiny", root=root, stages=stages, mlflow_uri=mlflow_server,
                            experiment="e2e", max_steps=2)
    plans = plan(params)
    checkpoints = qwen3_pipeline(params, pipeline_id="tiny-e2e-1")
    assert list(checkpoints) == stages

    # -- S3: every stage's checkpoint and HF export
    for stage, uri in checkpoints.items():
        assert uri.startswith(f"{root}/stages/{stage}-") and uri.endswith("/step-000002"), uri
        assert storage.exists(f"{uri}/COMPLETE") and storage.exists(f"{uri}/.metadata")
        assert storage.exists(uri.rsplit("/ckpt/", 1)[0] + "/hf/config.json")

    # -- registry + CLI
    record = Registry(root).load_pipeline("tiny-e2e-1")
    assert record.status == "completed"
    out = CliRunner().invoke(app, ["show", "--latest", "--json", "--root", root])
    assert out.exit_code == 0, out.output
    shown = {s["stage"]: s for s in json.loads(out.output)["stages"]}
    for stage in stages:
        assert shown[stage]["status"] == "completed"
        assert shown[stage]["checkpoint_uri"] == checkpoints[stage]
        assert shown[stage]["mlflow_run_id"] == record.stages[stage].mlflow_run_id

    # -- MLflow lineage
    client = MlflowClient(mlflow_server)
    parent = client.get_run(record.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["qwen3.pipeline_id"] == "tiny-e2e-1"
    assert "plots/pipeline_loss.png" in [a.path for a in client.list_artifacts(parent.info.run_id, "plots")]
    for stage in stages:
        run = client.get_run(shown[stage]["mlflow_run_id"])
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent.info.run_id and run.info.run_name == FLOW_NAMES[stage]
        assert run.info.status == "FINISHED" and tags["qwen3.checkpoint_uri"] == checkpoints[stage]
        up = plans[stage].upstream  # D's student starts from the S3 base (same flavor in tiny)
        assert up == (GRAPH[stage].upstream or ("S3" if stage == "D" else None))
        assert tags["qwen3.init_checkpoint"] == (checkpoints[up] if up else "none")
        if stage == "D":
            assert tags["qwen3.teacher_checkpoint"] == checkpoints["T4"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
        assert run.data.params["model.flavor"] == "debugmodel"  # logged by the trainer itself
        # the recipe spec the flow logs and the config the trainer logs agree (both capped to 2 steps)
        spec = plans[stage].spec
        assert run.data.params["training.steps"] == run.data.params["recipe.training.steps"] == "2"
        assert run.data.params["training.seq_len"] == run.data.params["recipe.training.seq_len"] == str(
            spec.training.seq_len)
        assert float(run.data.params["optimizer.lr"]) == float(run.data.params["recipe.training.lr"])
        assert "plots/loss.png" in [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
        name = "qwen3-tiny-student" if stage == "D" else "qwen3-tiny-teacher"
        version = client.get_model_version_by_alias(name, ALIASES[stage])
        assert version.run_id == run.info.run_id
        assert "config.json" in [a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(run.info.run_id, "hf")]
    s1, s3 = (client.get_run(shown[s]["mlflow_run_id"]) for s in ("S1", "S3"))
    assert (float(s1.data.params["model.rope_theta"]), float(s3.data.params["model.rope_theta"])) == (1e4, 1e6)
    assert (s1.data.params["training.seq_len"], s3.data.params["training.seq_len"]) == ("128", "512")

    # -- Prefect UI artifacts
    with get_client(sync_client=True) as prefect:
        keys = {a.key for a in prefect.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(like_="%-summary")))}
    assert {f"{FLOW_NAMES[s]}-summary" for s in stages} <= keys

    # -- data preparation and the thinking-budget curve ran as jobs, not in the flow's process
    jobs = {p.name for p in (qtrain_home / "jobs").iterdir()}
    for stage in ("T1", "T2", "T3", "T4", "D"):
        assert f"qwen3-{stage.lower()}-{plans[stage].config_hash[:12]}-prep" in jobs
    for stage in ("T4", "D"):
        assert f"qwen3-{stage.lower()}-{plans[stage].config_hash[:12]}-eval" in jobs
        run = client.get_run(shown[stage]["mlflow_run_id"])
        assert [m.step for m in client.get_metric_history(run.info.run_id, "thinking_budget/accuracy")] == [0, 8, 16, 32]
    # T4's preparation job trained the reward model that its GRPO scores with (model-based reward)
    t4 = client.get_run(shown["T4"]["mlflow_run_id"]).data
    assert "reward/reward_model" in t4.metrics

    # -- a re-run skips every stage: no new job, same checkpoints
    jobs_before = sorted(p.name for p in (qtrain_home / "jobs").iterdir())
    states_before = {p: (qtrain_home / "jobs" / p / "state.json").stat().st_mtime_ns for p in jobs_before}
    again = qwen3_pipeline(params, pipeline_id="tiny-e2e-2")
    assert again == checkpoints
    second = Registry(root).load_pipeline("tiny-e2e-2")
    assert {s: r.status for s, r in second.stages.items()} == dict.fromkeys(stages, "skipped")
    assert {p: (qtrain_home / "jobs" / p / "state.json").stat().st_mtime_ns for p in jobs_before} == states_before
