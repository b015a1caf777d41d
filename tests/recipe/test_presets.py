"""The recipe layer: presets against RECIPE.md, layouts the trainer supports, config hashes (no torch)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qwen3_trainer.recipe import configs as cf
from qwen3_trainer.recipe.graph import GRAPH, STAGES, parse_stages
from qwen3_trainer.recipe.layouts import check_layout
from qwen3_trainer.recipe.plan import plan, validate
from qwen3_trainer.recipe.presets import PRESETS, get_preset
from qwen3_trainer.recipe.specs import Layout

PRE = ["S1", "S2", "S3"]


def test_import_needs_neither_torch_nor_prefect():
    code = ("import sys, qwen3_trainer.recipe.plan, qwen3_trainer.recipe.jobs, qwen3_trainer.recipe.files; "
            "print(sorted(m for m in ('torch', 'prefect') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_preset_has_all_eight_stages():
    assert set(PRESETS) == {"tiny", "single-gpu", "full"}
    for p in PRESETS.values():
        assert list(p.stages) == list(STAGES)
        assert all(p.stages[s].flavor == p.teacher_flavor for s in STAGES if s != "D")
        assert p.stages["D"].flavor == p.student_flavor


def test_full_follows_the_report():
    full = PRESETS["full"]
    s1, s2, s3 = (full.spec(s) for s in PRE)
    assert (s1.training.seq_len, s2.training.seq_len, s3.training.seq_len) == (4096, 4096, 32768)   # R §3.2
    assert (s1.training.rope_theta, s3.training.rope_theta) == (1e4, 1e6)                             # ABF at S3
    assert s2.training.decay_ratio > s1.training.decay_ratio                                          # faster decay
    assert s2.pretrain_data.mix["reasoning"] > s1.pretrain_data.mix["reasoning"]                     # more STEM
    for s in (s1, s2, s3):  # steps x global batch covers the token budget to within one step
        budget = s.pretrain_data.token_budget
        assert 0 <= budget - s.training.steps * s.global_batch_tokens < s.global_batch_tokens
    assert full.teacher_flavor == "235B-A22B" and full.student_flavor == "30B-A3B"
    assert all(full.spec(s).scale.gpus_per_node == 8 for s in STAGES)
    for s in ("T2", "T4", "D"):  # rollout objectives: no pipeline parallelism
        assert full.spec(s).layout.pp == 1
    assert all(full.spec(s).layout.cp == 1 for s in STAGES)  # context parallelism is refused, not pretended


def test_tiny_keeps_the_miniature_and_the_benchmark_lessons():
    tiny = PRESETS["tiny"]
    s1, s3 = tiny.spec("S1"), tiny.spec("S3")
    assert s3.training.seq_len == 4 * s1.training.seq_len == 512
    assert all(tiny.spec(s).scale.device == "cpu" for s in STAGES)
    # fusion below the cold start's lr (docs/posttrain-history.md: 2e-3 undid the GRPO gain)
    assert tiny.spec("T3").training.lr < tiny.spec("T1").training.lr and tiny.spec("T3").training.lr <= 5e-4
    assert tiny.spec("D").objective.teacher_temperature == 0.3 and tiny.spec("D").objective.offpolicy_mode == "sft"


def test_single_gpu_runs_on_one_h200():
    p = PRESETS["single-gpu"]
    assert all(p.spec(s).scale.world_size == 1 and p.spec(s).scale.gpus_per_node == 1 for s in STAGES)
    assert (p.teacher_flavor, p.student_flavor) == ("1.7B", "0.6B")
    t2 = p.spec("T2").objective
    assert (t2.prompts_per_step, t2.group_size, t2.max_new_tokens) == (32, 8, 1024)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_stage_config_validates(name, tmp_path):
    preset = PRESETS[name]
    plans = plan(preset, list(STAGES))
    validate(plans, list(STAGES), str(tmp_path))
    for stage, p in plans.items():
        cfg = p.train_config(str(tmp_path), init="/i", teacher="/t", dump="/d")
        assert not any(tok in json.dumps(cfg) for tok in cf.TOKENS.values())      # every placeholder filled
        assert cfg["training"]["steps"] == p.spec.training.steps                # one source of truth
        assert cfg["parallelism"] == p.spec.layout.model_dump()
        assert (p.prepare is None) == (GRAPH[stage].kind == "pretrain")


def test_objective_params_are_the_objectives_keywords():
    import inspect

    from qwen3_trainer.platform.train.objectives import build_objective

    plans = plan(PRESETS["tiny"], list(STAGES))
    for stage in ("T2", "T4", "D"):
        obj = plans[stage].train_config("/r", init="/i", teacher="/t", dump="/d")["objective"]
        from qwen3_trainer.platform.posttrain import distill, grpo

        cls = grpo.GRPO if obj["name"] == "grpo" else distill.DistillOnPolicy
        accepted = set(inspect.signature(cls.__init__).parameters)
        assert set(obj["params"]) <= accepted, set(obj["params"]) - accepted
    build_objective("sft", {})


def test_unsupported_layouts_are_refused_in_one_line():
    t2 = PRESETS["full"].spec("T2")
    with pytest.raises(ValueError, match=r"stage T2 \(grpo\): layout.pp=4: pipeline parallelism supports only lm/sft"):
        check_layout(t2.model_copy(update={"layout": Layout(ep=8, pp=4)}))
    s3 = PRESETS["full"].spec("S3")
    with pytest.raises(ValueError, match="layout.cp=4: context parallelism is not implemented"):
        check_layout(s3.model_copy(update={"layout": Layout(ep=8, pp=4, cp=4)}))
    with pytest.raises(ValueError, match="does not divide the world size 256"):
        check_layout(s3.model_copy(update={"layout": Layout(pp=3)}))


def test_config_hash_covers_the_whole_spec(tmp_path):
    tiny = PRESETS["tiny"]
    base = plan(tiny, PRE)
    assert base["S3"].config_hash == plan(tiny, PRE)["S3"].config_hash
    capped = plan(tiny, PRE, max_steps=2)
    assert all(capped[s].config_hash != base[s].config_hash for s in PRE)
    assert capped["S1"].spec.training.steps == 2 == capped["S1"].train["training"]["steps"]
    # scale alone (no training knob) changes the hash, and the hash chains downstream
    s1 = tiny.spec("S1")
    wider = tiny.model_copy(update={"stages": {**tiny.stages, "S1": s1.model_copy(
        update={"scale": s1.scale.model_copy(update={"nproc_per_node": 2})})}})
    other = plan(wider, PRE)
    assert other["S1"].config_hash != base["S1"].config_hash and other["S3"].config_hash != base["S3"].config_hash


def test_stage_and_preset_names():
    assert parse_stages("s3,S1") == ["S1", "S3"] and parse_stages(None) == list(STAGES)
    with pytest.raises(ValueError, match="unknown stage 'S9'"):
        parse_stages("S1,S9")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_preset("huge")


def test_a_user_recipe_file(tmp_path):
    from qwen3_trainer.recipe.files import dump_preset

    path = tmp_path / "mine.yaml"
    path.write_text(dump_preset(PRESETS["tiny"]).replace("lr: 0.003", "lr: 0.002"))
    mine = get_preset(str(path))
    assert mine.spec("T1").training.lr == 2e-3 and mine.spec("T2") == PRESETS["tiny"].spec("T2")
    path.write_text(dump_preset(PRESETS["tiny"]).replace("micro_batch_size: 4", "micro_batchsize: 4", 1))
    with pytest.raises(ValueError, match=r"mine.yaml: stages.T1.training.micro_batchsize: unknown key"):
        get_preset(str(path))
    path.write_text(dump_preset(PRESETS["tiny"]).replace("student_flavor: debugmodel", "student_flavor: 0.6B"))
    with pytest.raises(ValueError, match=r"stages.D.flavor: 'debugmodel', but the preset's student is '0.6B'"):
        get_preset(str(path))
    path.write_text("stages: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        get_preset(str(path))


def test_the_trainer_refuses_context_parallelism_too():
    from qwen3_trainer.platform.train.config import TrainConfig

    with pytest.raises(ValueError, match="parallelism.cp=2: context parallelism is not implemented"):
        TrainConfig.model_validate({"model": {"flavor": "debugmodel"}, "training": {"steps": 1},
                                    "parallelism": {"cp": 2}})


def test_distillation_can_choose_a_teacher_cache_step():
    from qwen3_trainer.recipe.specs import DistillObjective

    for preset in PRESETS.values():  # off everywhere; a spec without the step dumps (and hashes) as before it existed
        assert preset.spec("D").objective.teacher_cache is None
        assert "teacher_cache" not in preset.spec("D").objective.model_dump()
    with pytest.raises(ValueError, match="teacher_cache: caches the off-policy phase's KL target; it needs "
                                         "offpolicy_mode 'kl' and offpolicy_steps > 0"):
        DistillObjective(offpolicy_steps=6, teacher_cache={"k": 8})  # offpolicy_mode sft
    tiny = PRESETS["tiny"]
    d = tiny.spec("D")
    obj = DistillObjective(**{**d.objective.model_dump(), "offpolicy_mode": "kl", "teacher_cache": {"k": 8}})
    mine = tiny.model_copy(update={"stages": {**tiny.stages, "D": d.model_copy(update={"objective": obj})}})
    p, base = plan(mine, ["D"])["D"], plan(tiny, ["D"])["D"]
    assert p.config_hash != base.config_hash and p.prepare["teacher_cache"] == {"k": 8, "dtype": "float16", "batch": 8}
    assert "teacher_cache" not in base.prepare and "teacher_cache" not in base.train["objective"]["params"]
    assert p.train["objective"]["params"]["teacher_cache"] == "{workdir}/data/teacher_cache"
