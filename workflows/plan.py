"""What a pipeline run will do, worked out and checked before any job starts (no Prefect here).

``PipelineParams`` / ``StageRun`` are the flows' pydantic parameters (Prefect renders them as forms).
``plan`` builds every stage's config template and config hash, chained through the stages each one
starts from; ``preflight`` checks everything that can fail early — preset and stage names, each
stage's config against ``TrainConfig``, the run root and MLflow being reachable, the checkpoints a
partial run (``stages=[...]``) needs from earlier runs — and raises one-line ``ValueError``s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from qwen3_trainer.model import storage
from qwen3_trainer.workflows import stage_config as sc
from qwen3_trainer.workflows.presets import PRESETS, STAGES, UPSTREAM, Preset, get_preset, parse_stages
from qwen3_trainer.workflows.registry import CheckpointRecord, Registry


def default_root() -> str:
    """``$QTRAIN_PIPELINE_ROOT``, else ``$QTRAIN_HOME/pipelines`` (default ``~/.qtrain/pipelines``)."""
    if os.environ.get("QTRAIN_PIPELINE_ROOT"):
        return os.environ["QTRAIN_PIPELINE_ROOT"]
    return str(Path(os.environ.get("QTRAIN_HOME") or Path.home() / ".qtrain") / "pipelines")


class PipelineParams(BaseModel):
    """Parameters of ``qwen3-pipeline``."""

    model_config = ConfigDict(extra="forbid")

    preset: str = Field("tiny", description="stage knobs and scale: tiny (this CPU) or full (a cluster)")
    root: str = Field(default_factory=default_root, description="run root: local folder or s3://bucket/prefix")
    backend: Literal["local", "k8s"] = Field("local", description="where stage jobs run")
    stages: list[str] = Field(default_factory=lambda: list(STAGES), description="stages to run, recipe order")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (default $MLFLOW_TRACKING_URI or sqlite)")
    experiment: str = Field("qwen3-pipeline", description="MLflow experiment")
    max_steps: int | None = Field(None, gt=0, description="cap every stage's steps (smoke runs, CI)")
    register_models: bool = Field(True, description="register each stage's HF export in the model registry")
    namespace: str | None = Field(None, description="k8s: namespace of the PyTorchJobs")

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


@dataclass(frozen=True)
class StagePlan:
    stage: str
    config_hash: str
    template: dict[str, Any]          # TrainConfig dict with {workdir}/{init}/... placeholders
    upstream: str | None              # the stage whose checkpoint it starts from
    teacher: str | None               # D: the stage whose checkpoint teaches

    def workdir(self, root: str) -> str:
        return sc.stage_workdir(root, self.stage, self.config_hash)

    def config(self, root: str, *, init: str | None, teacher: str | None, dump: str,
               tracking: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg = sc.fill(self.template, workdir=self.workdir(root), init=init, teacher=teacher, dump=dump,
                      root=root)
        if tracking:
            cfg["tracking"] = tracking
        return cfg


def plan(params: PipelineParams) -> dict[str, StagePlan]:
    """The chosen stages and every stage they start from (hashes chain through all of them)."""
    preset = get_preset(params.preset)
    needed = _with_dependencies(params.stages)
    plans: dict[str, StagePlan] = {}
    for stage in (s for s in STAGES if s in needed):
        template = sc.template(stage, preset, data_root=_data_root(preset))
        if params.max_steps:
            _cap_steps(template, params.max_steps)
        up = _upstream(stage, preset)
        teacher = "T4" if stage == "D" else None
        upstream_hashes = [plans[s].config_hash for s in (up, teacher) if s]
        plans[stage] = StagePlan(stage, sc.config_hash(stage, template, upstream_hashes), template, up, teacher)
    return plans


def _upstream(stage: str, preset: Preset) -> str | None:
    """D's student starts from the pretrained base (S3) when it has the teacher's shape (tiny);
    a smaller student flavor starts from its own base, outside this pipeline."""
    if stage == "D":
        return "S3" if preset.student_flavor == preset.teacher_flavor else None
    return UPSTREAM[stage]


def _cap_steps(template: dict[str, Any], max_steps: int) -> None:
    steps = min(template["training"]["steps"], max_steps)
    template["training"]["steps"] = steps
    params = (template.get("objective") or {}).get("params") or {}
    if "offpolicy_steps" in params:  # D: the off-policy phase fits inside the capped run
        params["offpolicy_steps"] = min(params["offpolicy_steps"], max(steps // 2, 1))


def _with_dependencies(stages: list[str]) -> set[str]:
    out: set[str] = set()
    todo = list(stages)
    while todo:
        stage = todo.pop()
        if stage not in out:
            out.add(stage)
            todo += [s for s in (UPSTREAM[stage] or ("S3" if stage == "D" else None),
                                 "T4" if stage == "D" else None) if s]
    return out


def _data_root(preset: Preset) -> str:
    return preset.data_root or "{root}/data"


def validate_configs(params: PipelineParams, plans: dict[str, StagePlan]) -> None:
    for stage in params.stages:
        p = plans[stage]
        cfg = p.config(params.root, init="/placeholder/init", teacher="/placeholder/teacher", dump="/tmp/dump")
        try:
            sc.validate(cfg)
        except ValueError as exc:
            raise ValueError(f"stage {stage}: invalid training config: {exc}") from None


def preflight(params: PipelineParams) -> dict[str, StagePlan]:
    """All checks that need no job; returns the plan. Raises ValueError (one line)."""
    plans = plan(params)
    validate_configs(params, plans)
    check_root(params.root)
    if params.backend == "k8s":
        from qwen3_trainer.workflows.stage_job import check_cluster

        check_cluster(params.namespace)
    missing_inputs(params, plans)
    return plans


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
