"""The Prefect flows of the Qwen3 recipe: one per stage and ``qwen3-pipeline`` chaining them.

This is the only module that imports Prefect; every stage's spec, configs, hash and job specs come
from the recipe layer (qwen3_trainer.recipe). A stage flow: skip if its checkpoint is registered
complete for the same config hash -> create its MLflow child run (params: the stage's spec) -> post-
training stages: submit the data-preparation job (rejection sampling, teacher responses, RL queries)
-> submit the training job through the platform launcher (task ``train``, retried by Prefect; the
trainer resumes from the newest complete checkpoint) -> wait, streaming step lines to the flow log
and a progress artifact -> the thinking-budget evaluation job where the preset asks for it ->
register the checkpoint (registry + MLflow tags, plots, model registry) -> a markdown artifact.

    qtrain pipeline run --preset tiny                       # the CLI calls qwen3_pipeline()
    prefect deploy --all                                    # prefect.yaml: process + kubernetes pools

Cancelling a flow run cancels the running job: the job wait cancels it on any interruption, and the
pipeline's ``on_cancellation`` / ``on_crashed`` hooks cancel whatever the registry still shows running.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.runtime import flow_run as current_flow_run

from qwen3_trainer.model import storage
from qwen3_trainer.recipe.graph import ALIASES, FLOW_NAMES, GRAPH, STAGES
from qwen3_trainer.recipe.jobs import job_spec
from qwen3_trainer.workflows import stage_job
from qwen3_trainer.workflows.lineage import Lineage, default_uri
from qwen3_trainer.workflows.plan import PipelineParams, StagePlan, StageRun, preflight, preset_of
from qwen3_trainer.workflows.registry import CheckpointRecord, PipelineRecord, Registry, new_pipeline_id, now

STEP_LINE = re.compile(r"\bstep (\d+) loss ([0-9.]+)")
SUMMARY_KEYS = ("loss_first", "loss", "grad_norm", "tokens_per_s", "steps")
SUMMARY_PREFIXES = ("eval/", "reward", "rollout/")  # RL / distillation stages


def _dump_dir(backend: str, stage: str, config_hash: str) -> str:
    if backend == "k8s":
        return f"/tmp/qtrain/{stage}-{config_hash}"
    home = Path(os.environ.get("QTRAIN_HOME") or Path.home() / ".qtrain")
    return str(home / "pipeline-dumps" / f"{stage}-{config_hash}")


# -- tasks ---------------------------------------------------------------------------------------
@task(name="prepare-data")
def prepare_data(params: PipelineParams) -> str | None:
    """tiny: the local corpus and reasoning documents under <root>/data (idempotent)."""
    preset = preset_of(params)
    if not preset.corpus_megabytes:
        return preset.data_root
    from qwen3_trainer.workflows.tiny_data import prepare

    return prepare(params.root, preset.corpus_megabytes)


@task(name="side-job", retry_delay_seconds=2)
def side_job(spec_json: dict[str, Any], backend: str, namespace: str | None) -> None:
    """A stage's data-preparation or evaluation job, run to completion (Prefect retries a failure)."""
    from qwen3_trainer.platform.jobs import JobSpec

    logger = get_run_logger()
    spec = JobSpec.model_validate(spec_json)
    final = stage_job.run(spec, backend, namespace=namespace, on_line=lambda line: logger.info("%s: %s", spec.name, line))
    if final.state != "Succeeded":
        raise RuntimeError(f"job {spec.name} {final.state}: {final.message}")


@task(name="train", retry_delay_seconds=2)
def train(spec_json: dict[str, Any], backend: str, namespace: str | None, checkpoint_dir: str,
          where: tuple[str, str, str]) -> str:
    """Run the stage's job to completion; returns the final complete checkpoint. A failed job raises,
    and Prefect's retry resubmits it: the trainer resumes from the newest complete checkpoint."""
    from qwen3_trainer.platform.jobs import JobSpec
    from qwen3_trainer.platform.train.checkpoint import Checkpointer

    logger = get_run_logger()
    spec = JobSpec.model_validate(spec_json)
    steps = int(spec.train["training"]["steps"]) if isinstance(spec.train, dict) else 0
    progress = create_progress_artifact(0.0, key=f"{spec.name}-progress", description=f"{spec.name}: training steps")
    root, pipeline_id, stage = where
    registry = Registry(root)
    attempts = registry.load_pipeline(pipeline_id).stages[stage].attempts + 1
    registry.update_stage(pipeline_id, stage, attempts=attempts)
    resumed = Checkpointer(checkpoint_dir).latest()
    if resumed:
        logger.info("resuming %s from %s", spec.name, resumed)

    def on_line(line: str) -> None:
        m = STEP_LINE.search(line)
        if m:
            logger.info("%s: step %s/%d loss %s", spec.name, m.group(1), steps, m.group(2))
            if steps:
                update_progress_artifact(progress, min(100.0, 100.0 * int(m.group(1)) / steps))
        elif "error" in line.lower() or "Traceback" in line:
            logger.warning("%s: %s", spec.name, line)

    def on_status(status) -> None:
        logger.info("job %s: %s %s", spec.name, status.state, status.message)

    final = stage_job.run(spec, backend, on_line=on_line, on_status=on_status, namespace=namespace)
    if final.state != "Succeeded":
        raise RuntimeError(f"job {spec.name} {final.state}: {final.message}")
    latest = Checkpointer(checkpoint_dir).latest()
    if latest is None:
        raise RuntimeError(f"job {spec.name} succeeded but left no complete checkpoint in {checkpoint_dir}")
    update_progress_artifact(progress, 100.0)
    return latest


# -- one stage -----------------------------------------------------------------------------------
def run_stage(stage: str, run: StageRun) -> str:
    logger = get_run_logger()
    params = run.pipeline
    preset = preset_of(params)
    plans = preflight_cached(params)
    p: StagePlan = plans[stage]
    registry = Registry(params.root)
    if not registry.has_pipeline(run.pipeline_id):  # a stage flow run on its own (deployment, UI): its own record
        registry.save_pipeline(PipelineRecord(pipeline_id=run.pipeline_id, preset=params.preset, root=params.root,
                                              backend=params.backend))
    done = registry.completed(stage, p.config_hash)
    if done is not None:
        logger.info("%s: registered complete for config %s: %s (skipped)", stage, p.config_hash, done.checkpoint_uri)
        registry.update_stage(run.pipeline_id, stage, status="skipped", config_hash=p.config_hash,
                              checkpoint_uri=done.checkpoint_uri, hf_uri=done.hf_uri,
                              init_checkpoint=done.init_checkpoint, mlflow_run_id=done.mlflow_run_id,
                              finished_at=now())
        _stage_artifact(stage, p, done, None, skipped=True)
        return done.checkpoint_uri

    lineage = Lineage(params.mlflow_uri or default_uri(), params.experiment)
    init = run.init_checkpoint if p.upstream or GRAPH[stage].role != "student" else preset.student_init
    run_id = lineage.start_stage(run.parent_run_id, run.pipeline_id, stage, p.config_hash,
                                 p.spec.model_dump(mode="json"), init,
                                 run.teacher_checkpoint) if run.parent_run_id else None
    tracking = {"mlflow_uri": lineage.uri, "experiment": params.experiment, "run_id": run_id}
    cfg = p.train_config(params.root, init=init, teacher=run.teacher_checkpoint,
                         dump=_dump_dir(params.backend, stage, p.config_hash), tracking=tracking)
    hf_uri = cfg["checkpoint"].get("export_hf")
    staged_hf = _stage_hf_locally(cfg, params)
    jobs = {"backend": params.backend, "pipeline_id": run.pipeline_id, "namespace": params.namespace,
            "remote_storage": storage.is_remote(params.root)}
    spec = job_spec(p, preset, cfg, kind="train", **jobs)
    registry.update_stage(run.pipeline_id, stage, status="running", config_hash=p.config_hash, job=spec.name,
                          mlflow_run_id=run_id, init_checkpoint=init, started_at=now())
    curve = None
    try:
        prep = p.prepare_config(params.root, init=init, teacher=run.teacher_checkpoint)
        if prep is not None:
            side_job.with_options(retries=preset.retries)(
                job_spec(p, preset, prep, kind="prepare", **jobs).model_dump(mode="json"), params.backend,
                params.namespace)
        checkpoint = train.with_options(retries=preset.retries)(
            spec.model_dump(mode="json"), params.backend, params.namespace, cfg["checkpoint"]["dir"],
            (params.root, run.pipeline_id, stage))
        if staged_hf:  # the stage's own folder: replacing a partial export of an earlier attempt is right
            storage.publish_dir(staged_hf, hf_uri, overwrite=True)
        evaluation = p.eval_config(params.root)
        if evaluation is not None and run_id:
            side_job.with_options(retries=preset.retries)(
                job_spec(p, preset, evaluation, kind="eval", **jobs).model_dump(mode="json"), params.backend,
                params.namespace)
            curve = json.loads(storage.read_text(evaluation["out"]))
    except BaseException as exc:
        status = "cancelled" if not isinstance(exc, Exception) else "failed"
        registry.update_stage(run.pipeline_id, stage, status=status, error=str(exc)[:500], finished_at=now())
        if run_id:
            lineage.end(run_id, "KILLED" if status == "cancelled" else "FAILED")
        raise
    record = CheckpointRecord(stage=stage, config_hash=p.config_hash, checkpoint_uri=checkpoint, hf_uri=hf_uri,
                              init_checkpoint=init, teacher_checkpoint=run.teacher_checkpoint,
                              mlflow_run_id=run_id, pipeline_id=run.pipeline_id)
    model_version = None
    if run_id:
        lineage.tag(run_id, checkpoint_uri=checkpoint, hf_uri=hf_uri or "none", job=spec.name)
        record.metrics = {k: v for k, v in lineage.summary(run_id).items()
                          if k in SUMMARY_KEYS or k.startswith(SUMMARY_PREFIXES)}
        if curve is not None:
            lineage.log_thinking_curve(run_id, curve)
            record.metrics.update({f"think_acc@{b}": v for b, v in curve["accuracy"]})
        lineage.log_stage_plots(run_id, stage)
        if params.register_models and hf_uri:
            model_version = lineage.register_model(run_id, params.preset, stage, hf_uri)
    registry.register(record)
    registry.update_stage(run.pipeline_id, stage, status="completed", checkpoint_uri=checkpoint, hf_uri=hf_uri,
                          finished_at=now())
    _stage_artifact(stage, p, record, lineage.url(run_id) if run_id else None, model_version=model_version)
    logger.info("%s: checkpoint %s", stage, checkpoint)
    return checkpoint


def _stage_hf_locally(cfg: dict[str, Any], params: PipelineParams) -> str | None:
    """Local jobs with an s3:// root write the HF export to their dump dir; the flow publishes it
    (``storage.publish_dir``: the one atomic publish, local or s3://)."""
    if params.backend != "local" or not storage.is_remote(params.root) or not cfg["checkpoint"].get("export_hf"):
        return None
    local = f"{cfg['dump_dir']}/hf"
    cfg["checkpoint"]["export_hf"] = local
    return local


_PLANS: dict[str, dict[str, StagePlan]] = {}


def preflight_cached(params: PipelineParams) -> dict[str, StagePlan]:
    key = params.model_dump_json()
    if key not in _PLANS:
        _PLANS[key] = preflight(params)
    return _PLANS[key]


def _stage_artifact(stage: str, p: StagePlan, record: CheckpointRecord, mlflow_url: str | None, *,
                    skipped: bool = False, model_version: tuple[str, str] | None = None) -> None:
    rows = [f"| {k} | {v:.4g} |" for k, v in sorted(record.metrics.items())]
    model = f"`{model_version[0]}` v{model_version[1]} (alias `{ALIASES[stage]}`)" if model_version else "—"
    md = "\n".join([
        f"# {stage} · {FLOW_NAMES[stage]}" + (" (skipped: already registered)" if skipped else ""),
        "",
        f"- checkpoint: `{record.checkpoint_uri}`",
        f"- HF export: `{record.hf_uri or '—'}`",
        f"- started from: `{record.init_checkpoint or 'scratch'}`"
        + (f" · teacher `{record.teacher_checkpoint}`" if record.teacher_checkpoint else ""),
        f"- config hash: `{p.config_hash}`",
        f"- MLflow run: {f'[{record.mlflow_run_id}]({mlflow_url})' if mlflow_url else f'`{record.mlflow_run_id}`'}",
        f"- registered model: {model}",
        "",
        "| metric | value |", "|---|---|", *rows,
    ])
    create_markdown_artifact(md, key=f"{FLOW_NAMES[stage]}-summary", description=f"{stage} result")


def _stage_flow(stage: str):
    def stage_flow(run: StageRun) -> str:
        return run_stage(stage, run)

    stage_flow.__doc__ = f"Recipe stage {stage} ({FLOW_NAMES[stage]}): train from the previous checkpoint."
    stage_flow.__name__ = FLOW_NAMES[stage].replace("-", "_")
    return flow(name=FLOW_NAMES[stage], log_prints=True)(stage_flow)


s1_general = _stage_flow("S1")
s2_reasoning = _stage_flow("S2")
s3_long_context = _stage_flow("S3")
t1_cold_start = _stage_flow("T1")
t2_reasoning_rl = _stage_flow("T2")
t3_fusion = _stage_flow("T3")
t4_general_rl = _stage_flow("T4")
d_distillation = _stage_flow("D")
STAGE_FLOWS = {"S1": s1_general, "S2": s2_reasoning, "S3": s3_long_context, "T1": t1_cold_start,
               "T2": t2_reasoning_rl, "T3": t3_fusion, "T4": t4_general_rl, "D": d_distillation}


# -- the pipeline --------------------------------------------------------------------------------
def _cancel_running(flow_obj, flow_run, state) -> None:
    """on_cancellation / on_crashed: cancel the jobs the registry shows running for this flow run."""
    raw = flow_run.parameters.get("params") or {}
    params = PipelineParams.model_validate(raw) if isinstance(raw, dict) else raw
    registry = Registry(params.root)
    for record in registry.pipelines():
        if record.prefect_flow_run_id != str(flow_run.id):
            continue
        for stage, s in record.stages.items():
            if s.status == "running" and s.job:
                stage_job.cancel_job(params.backend, s.job, params.namespace)
                registry.update_stage(record.pipeline_id, stage, status="cancelled", finished_at=now())
        record = registry.load_pipeline(record.pipeline_id)
        record.status = "cancelled"
        registry.save_pipeline(record)


@flow(name="qwen3-pipeline", log_prints=True, on_cancellation=[_cancel_running], on_crashed=[_cancel_running])
def qwen3_pipeline(params: PipelineParams, pipeline_id: str | None = None) -> dict[str, str]:
    """The Qwen3 recipe end to end: S1 -> S2 -> S3 -> T1 -> T2 -> T3 -> T4, then D distils T4 into
    the student. Returns each stage's checkpoint URI."""
    logger = get_run_logger()
    plans = preflight_cached(params)
    pipeline_id = pipeline_id or new_pipeline_id(params.preset)
    registry = Registry(params.root)
    lineage = Lineage(params.mlflow_uri or default_uri(), params.experiment)
    parent = lineage.start_pipeline(pipeline_id, params.preset, params.model_dump(mode="json"))
    record = PipelineRecord(pipeline_id=pipeline_id, preset=params.preset, root=params.root,
                            backend=params.backend, mlflow_run_id=parent, mlflow_url=lineage.url(parent),
                            prefect_flow_run_id=str(current_flow_run.id or ""))
    for stage in (s for s in STAGES if s in plans):
        record.stages[stage] = _pending(stage, params, plans)
    registry.save_pipeline(record)
    logger.info("pipeline %s: root %s, MLflow run %s", pipeline_id, params.root, lineage.url(parent) or parent)
    checkpoints: dict[str, str] = {}
    try:
        prepare_data(params)
        for stage in (s for s in STAGES if s in plans):
            p = plans[stage]
            init = checkpoints.get(p.upstream) if p.upstream else None
            teacher = checkpoints.get(p.teacher) if p.teacher else None
            if stage in params.stages:
                checkpoints[stage] = STAGE_FLOWS[stage](StageRun(
                    pipeline=params, pipeline_id=pipeline_id, parent_run_id=parent,
                    init_checkpoint=init, teacher_checkpoint=teacher))
            elif (done := registry.completed(stage, p.config_hash)) is not None:
                checkpoints[stage] = done.checkpoint_uri
                registry.update_stage(pipeline_id, stage, status="skipped", config_hash=p.config_hash,
                                      checkpoint_uri=done.checkpoint_uri, mlflow_run_id=done.mlflow_run_id)
    except BaseException:
        record = registry.load_pipeline(pipeline_id)
        record.status = "failed"
        registry.save_pipeline(record)
        lineage.end(parent, "FAILED")
        raise
    stage_runs = {s: r.mlflow_run_id for s, r in registry.load_pipeline(pipeline_id).stages.items()
                  if r.mlflow_run_id and s in checkpoints}
    lineage.log_pipeline_plot(parent, stage_runs)
    record = registry.load_pipeline(pipeline_id)
    record.status = "completed"
    registry.save_pipeline(record)
    lineage.end(parent)
    create_table_artifact(
        [{"stage": s, "status": r.status, "checkpoint": r.checkpoint_uri, "mlflow_run": r.mlflow_run_id}
         for s, r in record.stages.items()],
        key="qwen3-pipeline-stages", description=f"pipeline {pipeline_id}")
    return checkpoints


def _pending(stage: str, params: PipelineParams, plans: dict[str, StagePlan]):
    from qwen3_trainer.workflows.registry import StageRecord

    return StageRecord(status="pending" if stage in params.stages else "not-run",
                       config_hash=plans[stage].config_hash)
