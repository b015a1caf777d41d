"""Stage configs for the pipeline: complete, valid TrainConfigs whose data files the data step writes."""

import pytest

from qwen3_trainer.platform.posttrain import stages
from qwen3_trainer.platform.train.config import TrainConfig


@pytest.mark.parametrize("stage", stages.STAGES)
def test_every_stage_config_validates(stage, tmp_path):
    cfg = stages.stage_config(stage, preset="tiny", workdir=str(tmp_path), init_checkpoint="base/hf",
                              teacher_checkpoint="t4/hf")
    tc = TrainConfig.model_validate(cfg)
    assert tc.init.path == "base/hf" and tc.checkpoint.export_hf == stages.stage_output(stage, str(tmp_path))
    want = {"T1": "sft", "T2": "grpo", "T3": "sft", "T4": "grpo", "D": "distill_onpolicy"}[stage]
    assert tc.objective.name == want
    from qwen3_trainer.platform.train.objectives import build_objective

    build_objective(tc.objective.name, tc.objective.params)  # the params are the objective's


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown post-training stage 'T9'"):
        stages.stage_config("T9", preset="tiny", workdir=str(tmp_path), init_checkpoint=None)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        stages.stage_config("T1", preset="huge", workdir=str(tmp_path), init_checkpoint=None)
    with pytest.raises(ValueError, match="teacher_checkpoint"):
        stages.stage_config("D", preset="tiny", workdir=str(tmp_path), init_checkpoint=None)
    with pytest.raises(ValueError, match="policy_checkpoint"):
        stages.prepare_stage_data("T3", "tiny", str(tmp_path), None)


def test_procedural_data_steps(tmp_path):
    from qwen3_trainer.platform.data.synthetic import read_records

    w = str(tmp_path)
    t1 = stages.prepare_stage_data("T1", "tiny", w, None)
    assert t1["samples"] > 40 and sum(t1["query_dropped"].values()) > 0
    stages.prepare_stage_data("T2", "tiny", w, None)
    stages.prepare_stage_data("T4", "tiny", w, None)
    t2 = stages.data_paths("T2", w)
    train = {r["question"] for r in read_records(t2["queries"])}
    held = {r["question"] for r in read_records(t2["heldout"])}
    assert len(train) == 56 and len(held) == 25 and not train & held
    t4 = list(read_records(stages.data_paths("T4", w)["queries"]))
    assert all(r["constraints"] for r in t4)
    sft = list(read_records(stages.data_paths("T1", w)["sft"]))
    assert {r["messages"][0]["content"] for r in sft} <= train  # no held-out problem leaks into cold start
