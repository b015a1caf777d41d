"""The registry's rules (no Prefect, no jobs); the pipeline's plan is the recipe's (tests/recipe)."""

from __future__ import annotations

import pytest

from qwen3_trainer.workflows.plan import PipelineParams, plan
from qwen3_trainer.workflows.registry import CheckpointRecord, PipelineRecord, Registry


def test_pipeline_params_take_the_recipe(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        PipelineParams(preset="huge")
    with pytest.raises(ValueError, match="unknown stage 'S9'"):
        PipelineParams(stages="S1,S9")
    a = plan(PipelineParams(root=str(tmp_path / "a"), stages=["S1", "S2"]))
    b = plan(PipelineParams(root="s3://elsewhere/runs", stages=["S1", "S2"]))
    assert [a[s].config_hash for s in a] == [b[s].config_hash for s in b]  # where it runs is not in the hash
    student = plan(PipelineParams(stages=["D"], student_init="/models/other"))
    base = plan(PipelineParams(stages=["D"]))
    assert base["D"].upstream == "S3" and student["D"].upstream is None  # its own init, not the teacher line's S3
    assert student["D"].config_hash != base["D"].config_hash and student["T4"] == base["T4"]


def _complete_checkpoint(root, name="step-000004"):
    path = root / "ckpt" / name
    path.mkdir(parents=True)
    return path


def test_registry_registers_only_complete_checkpoints(tmp_path):
    reg = Registry(str(tmp_path))
    ckpt = _complete_checkpoint(tmp_path)
    record = CheckpointRecord(stage="S1", config_hash="abc", checkpoint_uri=str(ckpt))
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        reg.register(record)
    assert reg.completed("S1", "abc") is None
    (ckpt / "COMPLETE").write_text("ok\n")
    reg.register(record)
    assert reg.completed("S1", "abc").checkpoint_uri == str(ckpt)
    assert reg.completed("S1", "other-hash") is None
    (ckpt / "COMPLETE").unlink()  # a checkpoint removed since: no longer counts as done
    assert reg.completed("S1", "abc") is None


def test_registry_pipelines_latest(tmp_path):
    reg = Registry(str(tmp_path))
    with pytest.raises(ValueError, match="no pipeline runs"):
        reg.latest()
    for pid, created in (("tiny-b", "2026-01-02T00:00:00Z"), ("tiny-a", "2026-01-01T00:00:00Z")):
        reg.save_pipeline(PipelineRecord(pipeline_id=pid, preset="tiny", root=str(tmp_path), backend="local",
                                         created_at=created))
    assert [r.pipeline_id for r in reg.pipelines()] == ["tiny-a", "tiny-b"]
    reg.update_stage("tiny-b", "S1", status="running", job="qwen3-s1-x")
    assert reg.latest().stages["S1"].status == "running" and reg.latest().stages["S1"].job == "qwen3-s1-x"
