"""Each post-training objective as a real `qtrain train` job (subprocess, a few steps on debugmodel)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from qwen3_trainer.platform.data import synthetic as syn

pytestmark = pytest.mark.slow


def run_train(config: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run([sys.executable, "-m", "qwen3_trainer.cli.main", "train", str(config)],
                         env={**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
                         capture_output=True, text=True, timeout=600)
    if check and out.returncode != 0:
        raise AssertionError(f"train failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def _config(tmp: Path, objective: dict, *, steps=2, data=None, init=None, mb=4) -> Path:
    cfg = {"model": {"flavor": "debugmodel"},
           "training": {"steps": steps, "micro_batch_size": mb, "seq_len": 64, "seed": 0, "device": "cpu"},
           "optimizer": {"lr": 1e-3, "weight_decay": 0.0}, "lr": {"schedule": "constant"},
           "objective": objective, "init": {"path": init},
           "checkpoint": {"dir": str(tmp / "ckpt"), "export_hf": str(tmp / "hf"), "async_save": False},
           "dump_dir": str(tmp / "run")}
    if data:
        cfg["data"] = {"kind": "sft", "sources": [{"name": "d", "paths": [data], "field": "messages"}]}
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics(tmp: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]


def _queries(tmp: Path, n=12) -> tuple[str, str]:
    train, held = syn.split_problems(n, 4, seed=0, difficulties=[0])
    q, e = str(tmp / "q.jsonl"), str(tmp / "e.jsonl")
    # a length instruction gives random-init samples different rewards, so the advantages are not all 0
    syn.write_jsonl(q, [{**syn.query_record(p), "constraints": [{"type": "max_words", "value": 2}]} for p in train]
                    + [{"prompt": "not a dialog", "answer": "1"}])
    syn.write_jsonl(e, [syn.query_record(p) for p in held])
    return q, e


def test_grpo_job_with_kl_to_reference(tmp_path, hf_checkpoint):
    q, e = _queries(tmp_path)
    params = {"queries": q, "eval_queries": e, "group_size": 4, "prompts_per_step": 2, "ppo_epochs": 2,
              "max_new_tokens": 6, "kl_coef": 0.05, "rewards": [{"name": "math"}, {"name": "instruction"}], "seed": 3}
    out = run_train(_config(tmp_path, {"name": "grpo", "params": params}, init=hf_checkpoint()))
    rows = _metrics(tmp_path)
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]  # one round, two epochs over it
    assert steps[0]["ratio_mean"] == pytest.approx(1.0, abs=1e-5)  # first pass: old = current policy
    assert steps[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the initial policy
    assert steps[0]["rollout/zero_std_groups"] < 1  # some group had a reward spread
    assert steps[1]["kl"] > 0 and steps[1]["ratio_mean"] != 1.0  # the second epoch is off-policy
    assert all("entropy" in r and "reward/math" in r and "reward/instruction" in r for r in steps)
    assert sum("eval/accuracy" in r for r in rows) == 2
    assert "skipped 1 malformed records" in out.stdout + out.stderr
    assert (tmp_path / "hf" / "config.json").exists()


def test_reward_model_job(tmp_path):
    rng = random.Random(0)
    pairs = [syn.preference_record(p, rng) for p in syn.problems(20, seed=1, difficulties=[0, 1])]
    syn.write_jsonl(str(tmp_path / "p.jsonl"), pairs + [{"prompt": [], "chosen": "x"}])
    params = {"pairs": str(tmp_path / "p.jsonl"), "eval_pairs": str(tmp_path / "p.jsonl")}
    run_train(_config(tmp_path, {"name": "reward_model", "params": params}, steps=3, mb=2))
    rows = _metrics(tmp_path)
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 3 and all(0 <= r["pair_accuracy"] <= 1 for r in steps)
    assert steps[0]["loss"] == pytest.approx(0.693, abs=0.05)  # untrained head: -log sigmoid(~0)
    assert sum("eval/pair_accuracy" in r for r in rows) == 2


def test_distill_offpolicy_kl_job(tmp_path, hf_checkpoint):
    recs = [syn.sft_record(p, thinking=i % 2 == 0) for i, p in enumerate(syn.problems(16, seed=2))]
    syn.write_jsonl(str(tmp_path / "t.jsonl"), recs)
    obj = {"name": "distill_offpolicy", "params": {"teacher": hf_checkpoint(seed=1), "mode": "kl"}}
    run_train(_config(tmp_path, obj, data=str(tmp_path / "t.jsonl"), init=hf_checkpoint()))
    steps = [r for r in _metrics(tmp_path) if "loss" in r]
    assert len(steps) == 2 and all(r["loss"] > 0 for r in steps)


def test_distill_onpolicy_job_runs_both_phases(tmp_path, hf_checkpoint):
    q, e = _queries(tmp_path)
    syn.write_jsonl(str(tmp_path / "t.jsonl"), [syn.sft_record(p, thinking=True) for p in syn.problems(8, seed=3)])
    params = {"teacher": hf_checkpoint(seed=1), "prompts": q, "offpolicy_data": str(tmp_path / "t.jsonl"),
              "offpolicy_steps": 1, "prompts_per_step": 4, "max_new_tokens": 6, "eval_queries": e}
    run_train(_config(tmp_path, {"name": "distill_onpolicy", "params": params}, init=hf_checkpoint()))
    rows = _metrics(tmp_path)
    steps = [r for r in rows if "loss" in r]
    assert [r["phase/offpolicy"] for r in steps] == [1.0, 0.0]
    assert all(r["kl"] > 0 for r in steps)
    assert sum("eval/accuracy_think" in r and "eval/accuracy_no_think" in r for r in rows) == 2


def test_teacher_with_another_vocabulary_is_one_line_error(tmp_path, hf_checkpoint):
    q, _ = _queries(tmp_path)
    params = {"teacher": hf_checkpoint(vocab_size=152000), "prompts": q}
    out = run_train(_config(tmp_path, {"name": "distill_onpolicy", "params": params}), check=False)
    assert out.returncode == 2
    assert "objective.params.teacher:" in out.stderr and "has a vocabulary of 152000 rows but the policy has 151936" in out.stderr
    assert "Traceback" not in out.stderr


def test_coldstart_stage_sft_job(tmp_path):
    """T1 of the tiny recipe: its preparation job's data, then its training config, as the pipeline runs them."""
    from qwen3_trainer.platform.posttrain.prepare import PrepareConfig, prepare
    from qwen3_trainer.recipe.plan import plan
    from qwen3_trainer.recipe.presets import PRESETS

    p = plan(PRESETS["tiny"], ["T1"])["T1"]
    prepare(PrepareConfig.model_validate(p.prepare_config(str(tmp_path), init=None, teacher=None)))
    cfg = p.train_config(str(tmp_path), init=None, teacher=None, dump=str(tmp_path / "run"))
    cfg["training"]["steps"] = 2
    path = tmp_path / "t1.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_train(path)
    assert Path(p.workdir(str(tmp_path)), "hf", "config.json").exists()
