"""Stage knobs against RECIPE.md, config hashes, the registry's rules (no Prefect, no jobs)."""

from __future__ import annotations

import json

import pytest

from qwen3_trainer.workflows import stage_config as sc
from qwen3_trainer.workflows.plan import PipelineParams, plan
from qwen3_trainer.workflows.presets import PRESETS, STAGES, parse_stages
from qwen3_trainer.workflows.registry import CheckpointRecord, PipelineRecord, Registry

PRE = ["S1", "S2", "S3"]


def test_recipe_knobs_full_scale():
    full = PRESETS["full"]
    s1, s2, s3 = (full.knobs(s) for s in PRE)
    assert (s1.seq_len, s2.seq_len, s3.seq_len) == (4096, 4096, 32768)        # R §3.2
    assert (s1.rope_theta, s2.rope_theta, s3.rope_theta) == (1e4, 1e4, 1e6)   # ABF at S3
    assert s2.decay_ratio > s1.decay_ratio                                    # faster decay at S2
    assert s2.data_mix["reasoning"] > s1.data_mix["reasoning"]               # more STEM/reasoning
    assert (s1.token_budget, s2.token_budget) == (30e12, 5e12)
    for k in (s1, s2, s3):  # steps x global batch covers the budget to within one step
        assert 0 <= k.token_budget - k.steps * k.global_batch_tokens < k.global_batch_tokens
    assert full.teacher_flavor == "235B-A22B" and full.knobs("D").flavor == full.student_flavor == "30B-A3B"


def test_tiny_scales_seq_and_rope_like_the_recipe():
    tiny = PRESETS["tiny"]
    s1, s2, s3 = (tiny.knobs(s) for s in PRE)
    assert s3.seq_len == 4 * s1.seq_len == 512 and s2.seq_len == s1.seq_len
    assert (s1.rope_theta, s3.rope_theta) == (1e4, 1e6)
    assert s2.decay_ratio > s1.decay_ratio and s2.data_mix["reasoning"] > s1.data_mix.get("reasoning", 0)


def test_pretraining_configs_chain_and_validate(tmp_path):
    params = PipelineParams(preset="tiny", root=str(tmp_path), stages=PRE)
    plans = plan(params)
    s3 = plans["S3"].config(str(tmp_path), init="/ckpt/S2/step-000006", teacher=None, dump="/tmp/d")
    sc.validate(s3)
    assert s3["model"]["rope_theta"] == 1e6 and s3["training"]["seq_len"] == 512
    assert s3["init"] == {"path": "/ckpt/S2/step-000006", "format": "dcp"}
    assert s3["checkpoint"]["dir"] == f"{tmp_path}/stages/S3-{plans['S3'].config_hash}/ckpt"
    assert {s["name"]: s["weight"] for s in s3["data"]["sources"]} == {"web": 0.5, "reasoning": 0.5}
    assert not any(token in json.dumps(s3) for token in sc.TOKENS.values())  # every placeholder filled
    s1 = plans["S1"].config(str(tmp_path), init=None, teacher=None, dump="/tmp/d")
    assert "init" not in s1 and s1["model"]["rope_theta"] == 1e4


def test_config_hash_follows_upstream_knobs_not_paths(tmp_path):
    a = plan(PipelineParams(root=str(tmp_path / "a"), stages=PRE))
    b = plan(PipelineParams(root="s3://elsewhere/runs", stages=PRE))
    assert [a[s].config_hash for s in PRE] == [b[s].config_hash for s in PRE]
    capped = plan(PipelineParams(root=str(tmp_path), stages=PRE, max_steps=2))
    # S1..S3 are all capped; each differs, and S2 would differ even through its upstream alone
    assert all(capped[s].config_hash != a[s].config_hash for s in PRE)
    t = a["S2"].template
    assert sc.config_hash("S2", t, ["other-upstream"]) != a["S2"].config_hash
    assert sc.config_hash("S2", t, [a["S1"].config_hash]) == a["S2"].config_hash


def test_stage_names():
    assert parse_stages("s3,S1") == ["S1", "S3"] and parse_stages(None) == list(STAGES)
    with pytest.raises(ValueError, match="unknown stage 'S9'"):
        parse_stages("S1,S9")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        PipelineParams(preset="huge")


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
