"""The pipeline registry: JSON files in the run root (a local folder or ``s3://``), through fsspec.

Layout under the root::

    registry/checkpoints/<stage>-<config hash>.json   one per stage that FINISHED: its checkpoint
    registry/pipelines/<pipeline id>.json             one per pipeline run: each stage's status

A checkpoint record is written once, only after the stage's job succeeded and its final checkpoint
carries the ``COMPLETE`` marker, so a stage that did not finish is never registered; a re-run finds a
record for the same stage and config hash and skips the stage. Each file is written whole (local:
temp file + rename; S3: one PUT), so a reader never sees half a record and nothing is lost when a
process stops.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from qwen3_trainer.model import storage

StageStatus = Literal["pending", "running", "completed", "skipped", "failed", "cancelled", "not-run"]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class CheckpointRecord(BaseModel):
    stage: str
    config_hash: str
    checkpoint_uri: str                 # the final DCP checkpoint (step-NNNNNN/ with COMPLETE)
    hf_uri: str | None = None           # its HF safetensors export
    init_checkpoint: str | None = None  # what the stage started from
    teacher_checkpoint: str | None = None
    mlflow_run_id: str | None = None
    pipeline_id: str | None = None
    metrics: dict[str, float] = {}
    completed_at: str = Field(default_factory=now)


class StageRecord(BaseModel):
    status: StageStatus = "pending"
    config_hash: str | None = None
    checkpoint_uri: str | None = None
    hf_uri: str | None = None
    init_checkpoint: str | None = None
    mlflow_run_id: str | None = None
    job: str | None = None              # the PyTorchJob / local job name
    attempts: int = 0
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None


class PipelineRecord(BaseModel):
    pipeline_id: str
    preset: str
    root: str
    backend: str
    status: Literal["running", "completed", "failed", "cancelled"] = "running"
    mlflow_run_id: str | None = None
    mlflow_url: str | None = None
    prefect_flow_run_id: str | None = None
    created_at: str = Field(default_factory=now)
    updated_at: str = Field(default_factory=now)
    stages: dict[str, StageRecord] = {}


def new_pipeline_id(preset: str) -> str:
    return f"{preset}-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


class Registry:
    def __init__(self, root: str):
        self.root = root.rstrip("/")

    # -- paths ---------------------------------------------------------------------------------
    def _ckpt_path(self, stage: str, config_hash: str) -> str:
        return storage.join(self.root, "registry", "checkpoints", f"{stage}-{config_hash}.json")

    def _pipeline_path(self, pipeline_id: str) -> str:
        return storage.join(self.root, "registry", "pipelines", f"{pipeline_id}.json")

    # -- checkpoints ---------------------------------------------------------------------------
    def completed(self, stage: str, config_hash: str) -> CheckpointRecord | None:
        """The registered checkpoint of ``stage`` for this config hash, if it still exists."""
        path = self._ckpt_path(stage, config_hash)
        if not storage.exists(path):
            return None
        record = CheckpointRecord.model_validate_json(storage.read_text(path))
        marker = storage.join(record.checkpoint_uri, "COMPLETE")
        return record if storage.exists(marker) else None

    def register(self, record: CheckpointRecord) -> None:
        marker = storage.join(record.checkpoint_uri, "COMPLETE")
        if not storage.exists(marker):
            raise ValueError(f"{record.stage}: {record.checkpoint_uri} is not a complete checkpoint (no COMPLETE)")
        _write(self._ckpt_path(record.stage, record.config_hash), record.model_dump_json(indent=1))

    # -- pipelines -----------------------------------------------------------------------------
    def save_pipeline(self, record: PipelineRecord) -> None:
        record.updated_at = now()
        _write(self._pipeline_path(record.pipeline_id), record.model_dump_json(indent=1))

    def has_pipeline(self, pipeline_id: str) -> bool:
        return storage.exists(self._pipeline_path(pipeline_id))

    def load_pipeline(self, pipeline_id: str) -> PipelineRecord:
        path = self._pipeline_path(pipeline_id)
        if not storage.exists(path):
            raise ValueError(f"no pipeline {pipeline_id!r} under {self.root}")
        return PipelineRecord.model_validate_json(storage.read_text(path))

    def update_stage(self, pipeline_id: str, stage: str, **fields: Any) -> PipelineRecord:
        record = self.load_pipeline(pipeline_id)
        current = record.stages.get(stage, StageRecord())
        record.stages[stage] = current.model_copy(update=fields)
        self.save_pipeline(record)
        return record

    def pipelines(self) -> list[PipelineRecord]:
        """Every pipeline run under the root, oldest first."""
        folder = storage.join(self.root, "registry", "pipelines")
        if not storage.exists(folder):
            return []
        out = []
        for name in storage.listdir(folder):
            if name.endswith(".json"):
                out.append(PipelineRecord.model_validate_json(storage.read_text(storage.join(folder, name))))
        return sorted(out, key=lambda r: (r.created_at, r.pipeline_id))

    def latest(self) -> PipelineRecord:
        runs = self.pipelines()
        if not runs:
            raise ValueError(f"no pipeline runs under {self.root}")
        return runs[-1]


def _write(path: str, text: str) -> None:
    fs, p = storage.filesystem(path)
    if storage.is_remote(path):
        fs.pipe(p, text.encode())
        return
    os.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = f"{p}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, p)


def load_json(path: str) -> dict:
    return json.loads(storage.read_text(path))
