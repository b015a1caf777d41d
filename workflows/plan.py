"""What a pipeline run will do, worked out and checked before any job starts (no Prefect here).

``PipelineParams`` / ``StageRun`` are the flows' pydantic parameters (Prefect renders them as forms).
``plan`` asks the recipe layer (qwen3_trainer.recipe) for every stage's spec, configs and config hash;
``preflight`` checks everything that can fail early — preset and stage names, each stage's config
against ``TrainConfig``, its layout and its jobs against the cluster's node pools, the run root and
the cluster being reachable, the checkpoints a partial run (``stages=[...]``) needs from earlier runs —
and raises one-line ``ValueError``s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qwen3_trainer.model import storage
from qwen3_trainer.recipe import plan as recipe_plan
from qwen3_trainer.recipe.graph import STAGES, parse_stages
from qwen3_trainer.recipe.plan import StagePlan
from qwen3_trainer.recipe.presets import PRESETS, Preset, get_preset
from qwen3_trainer.workflows.registry import CheckpointRecord, Registry

__all__ = ["PipelineParams", "StagePlan", "StageRun", "plan", "preflight", "preset_of"]


def default_root() -> str:
    """``$QTRAIN_PIPELINE_ROOT``, else ``$QTRAIN_HOME/pipelines`` (default ``~/.qtrain/pipelines``)."""
    if os.environ.get("QTRAIN_PIPELINE_ROOT"):
        return os.environ["QTRAIN_PIPELINE_ROOT"]
    return str(Path(os.environ.get("QTRAIN_HOME") or Path.home() / ".qtrain") / "pipelines")


class PipelineParams(BaseModel):
    """Parameters of ``qwen3-pipeline``."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("tiny", description="the recipe: tiny (this CPU), single-gpu (one H200), full (a cluster) "
                                             "or a recipe .yaml file")
    root: str = Field(default_factory=default_root, description="run root: local folder or s3://bucket/prefix")
    backend: Literal["local", "k8s"] = Field("local", description="where stage jobs run")
    stages: list[str] = Field(default_factory=lambda: list(STAGES), description="stages to run, recipe order")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite)")
    experiment: str = Field("qwen3-pipeline", description="MLflow experiment")
    max_steps: int | None = Field(None, gt=0, description="cap every stage's steps (smoke runs, CI)")
    register_models: bool = Field(True, description="register each stage's HF export in the model registry")
    namespace: str | None = Field(None, description="k8s: namespace of the PyTorchJobs")
    student_init: str | None = Field(None, description="D: the student's own init (HF or DCP checkpoint); "
                                                       "default the preset's")

    @field_validator("preset")
    @classmethod
    def _preset(cls, v: str) -> str:
        get_preset(v)
        return v

    @field_validator("stages", mode="before")
    @classmethod
    def _stages(cls, v: Any) -> list[str]:
        return parse_stages(v)

    @field_validator("root")
    @classmethod
    def _root(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("root: empty")
        return v if storage.is_remote(v) else str(Path(v).expanduser().resolve())


class StageRun(BaseModel):
    """Parameters of one stage flow, as the pipeline calls it (or a person, from the UI)."""

    model_config = ConfigDict(extra="forbid")

    pipeline: PipelineParams
    pipeline_id: str
    parent_run_id: str | None = None           # the pipeline's MLflow run
    init_checkpoint: str | None = None         # the upstream stage's final checkpoint
    teacher_checkpoint: str | None = None      # D: the teacher (T4)


def preset_of(params: PipelineParams) -> Preset:
    """The run's preset, with ``student_init`` applied."""
    preset = get_preset(params.preset)
    if params.student_init:
        preset = preset.model_copy(update={"student_init": params.student_init})
    return preset


def plan(params: PipelineParams) -> dict[str, StagePlan]:
    """The chosen stages and every stage they start from (recipe.plan)."""
    return recipe_plan.plan(preset_of(params), params.stages, max_steps=params.max_steps)


def validate_configs(params: PipelineParams, plans: dict[str, StagePlan]) -> None:
    recipe_plan.validate(plans, params.stages, params.root)


def check_student_init(params: PipelineParams, plans: dict[str, StagePlan]) -> None:
    preset = preset_of(params)
    if "D" in params.stages and plans["D"].upstream is None and not preset.student_init:
        raise ValueError(f"stage D: the student ({preset.student_flavor}) is not the teacher line's flavor "
                         f"({preset.teacher_flavor}): give its init with --student-init (HF or DCP checkpoint)")


def preflight(params: PipelineParams) -> dict[str, StagePlan]:
    """All checks that need no job; returns the plan. Raises ValueError (one line)."""
    plans = plan(params)
    validate_configs(params, plans)
    check_student_init(params, plans)
    check_jobs(params, plans)
    check_root(params.root)
    check_datasets(params, plans)
    if params.backend == "k8s":
        from qwen3_trainer.workflows.stage_job import check_cluster

        check_cluster(params.namespace)
    missing_inputs(params, plans)
    return plans


def check_jobs(params: PipelineParams, plans: dict[str, StagePlan]) -> None:
    """Every job of every chosen stage builds against the cluster contract (pools, GPUs, resources)."""
    from qwen3_trainer.recipe.jobs import job_spec
    from qwen3_trainer.workflows.stage_job import cluster_config

    cluster = cluster_config(params.backend)
    preset = preset_of(params)
    for stage in params.stages:
        p = plans[stage]
        for kind, cfg in (("train", p.train), ("prepare", p.prepare), ("eval", p.evaluate)):
            if cfg is not None:
                job_spec(p, preset, cfg, kind=kind, backend=params.backend, pipeline_id="preflight",
                         cluster=cluster, namespace=params.namespace, remote_storage=storage.is_remote(params.root))


def check_datasets(params: PipelineParams, plans: dict[str, StagePlan]) -> None:
    """Every dataset a chosen stage names (the user's files, the preset's data root) exists."""
    preset = preset_of(params)
    for stage in params.stages:
        spec = plans[stage].spec
        named: list[tuple[str, str]] = []
        if spec.pretrain_data is not None:
            for source in spec.pretrain_data.mix:
                paths = spec.pretrain_data.paths.get(source)
                if paths:
                    named += [(f"stages.{stage}.pretrain_data.paths.{source}", p) for p in paths]
                elif preset.data_root:
                    named.append((f"data_root ({stage} source {source})", storage.join(preset.data_root, source)))
        if spec.prepare is not None:
            named += [(f"stages.{stage}.prepare.{key}", path) for key in ("dataset", "eval_dataset")
                      if (path := getattr(spec.prepare, key))]
        for key, path in named:
            try:
                found = storage.exists(path) or bool(_glob(path))
            except storage.StorageError as exc:
                raise ValueError(f"{key}: {exc}") from None
            if not found:
                raise ValueError(f"{key}: dataset {path} does not exist")


def _glob(path: str) -> list[str]:
    if not any(c in path for c in "*?["):
        return []
    fs, stripped = storage.filesystem(path)
    return fs.glob(stripped)


def check_root(root: str) -> None:
    if not storage.is_remote(root):
        try:
            Path(root).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"root {root} is not writable ({exc.strerror})") from None
        return
    try:
        storage.check_reachable(root)
    except storage.StorageError as exc:
        raise ValueError(f"root {exc}") from None


def missing_inputs(params: PipelineParams, plans: dict[str, StagePlan]) -> None:
    """A stage left out of ``stages`` that a chosen stage starts from must already be registered."""
    registry = Registry(params.root)
    for stage in params.stages:
        p = plans[stage]
        for needed in (p.upstream, p.teacher):
            if needed and needed not in params.stages and registry.completed(needed, plans[needed].config_hash) is None:
                raise ValueError(
                    f"stage {stage} starts from {needed}, which has no registered checkpoint for this "
                    f"preset under {params.root}: add {needed} to --stages")


def registered(params: PipelineParams, plans: dict[str, StagePlan], stage: str) -> CheckpointRecord | None:
    return Registry(params.root).completed(stage, plans[stage].config_hash)


def known_presets() -> list[str]:
    return list(PRESETS)
