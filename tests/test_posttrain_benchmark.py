"""The post-training benchmark is a client of the recipe (benchmarks/posttrain_outcomes.py).

Its settings are a recipe file that ``get_preset`` loads; the product's ``tiny`` post-training defaults
are the ones it validated; its jobs are the recipe's; the committed posttrain.md is what the driver
renders from the committed results; the run history is a doc, not Python constants. No training here.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from qwen3_trainer.recipe.jobs import job_spec
from qwen3_trainer.recipe.plan import plan, validate
from qwen3_trainer.recipe.presets import PRESETS, get_preset

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "benchmarks" / "posttrain_outcomes.py"
RECIPE = ROOT / "benchmarks" / "posttrain_recipe.yaml"
BENCH = ("T1", "T2", "T3", "D")


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("posttrain_outcomes", DRIVER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def recipe():
    return get_preset(str(RECIPE))


def test_recipe_file_loads_and_its_stages_validate(recipe, tmp_path):
    assert recipe.name == "posttrain-benchmark"
    t1 = recipe.spec("T1")
    assert (t1.flavor, t1.training.seq_len, t1.prepare.difficulties, t1.prepare.seed) == ("debugmodel", 80, [5], 2)
    assert {s: recipe.spec(s).training.steps for s in BENCH} == {"T1": 240, "T2": 160, "T3": 300, "D": 240}
    assert all(recipe.spec(s).prepare == t1.prepare for s in BENCH)  # one split for every stage
    validate(plan(recipe, list(BENCH)), list(BENCH), str(tmp_path))


def test_tiny_defaults_are_what_the_benchmark_validated(recipe):
    tiny = PRESETS["tiny"]
    for p in (recipe, tiny):  # fusion well below the cold start's lr: 2e-3 undid the GRPO gain (run 3)
        assert p.spec("T3").training.lr == 5e-4 < p.spec("T1").training.lr
    g, tg = recipe.spec("T2").objective, tiny.spec("T2").objective
    assert (g.temperature, g.top_p) == (tg.temperature, tg.top_p) == (0.8, 0.95)
    assert recipe.spec("T2").training.lr == tiny.spec("T2").training.lr == 5e-4
    d, td = recipe.spec("D").objective, tiny.spec("D").objective
    assert (d.offpolicy_mode, d.teacher_temperature) == (td.offpolicy_mode, td.teacher_temperature) == ("sft", 0.3)
    assert recipe.spec("D").training.lr == tiny.spec("D").training.lr


def test_committed_results_render_to_the_committed_markdown(driver):
    results = json.loads((ROOT / "benchmarks" / "results" / "posttrain_outcomes.json").read_text())
    assert driver.render(results) == (ROOT / "benchmarks" / "posttrain.md").read_text()


def test_driver_imports_light_and_holds_no_run_history(driver):
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('d', sys.argv[1]); "
            "s.loader.exec_module(importlib.util.module_from_spec(s)); "
            "print(sorted(m for m in ('torch', 'torchtitan', 'prefect') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(DRIVER)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert not [n for n in vars(driver) if n.startswith(("PREREGISTERED", "PILOTS"))]
    source = DRIVER.read_text()
    assert "qwen3_trainer.cli.main" not in source and "subprocess.run([sys.executable" not in source
    assert len(source.splitlines()) < 400
    assert (ROOT / "docs" / "posttrain-history.md").exists()


def test_stages_run_as_the_recipes_jobs_and_are_reused(driver, recipe, tmp_path, monkeypatch):
    plans = plan(recipe, ["T1"])
    calls = []

    def fake_job(p, preset, config, kind, name):
        spec = job_spec(p, preset, config, kind=kind, backend="local", pipeline_id="posttrain-outcomes")
        calls.append((kind, spec.train))
        Path(p.workdir(str(tmp_path)), "data").mkdir(parents=True, exist_ok=True)
        return ["...", 'prepared T1: {"queries": 3}'] if kind == "prepare" else ["done"]

    monkeypatch.setattr(driver, "_job", fake_job)
    hf, report = driver.run_stage(plans["T1"], recipe, str(tmp_path), init=None, name="cold")
    assert [k for k, _ in calls] == ["prepare", "train"] and report == {"queries": 3}
    prep, train = calls[0][1], calls[1][1]
    assert prep["stage"] == "T1" and prep["problems"] == 400 and "init" not in train  # from random init
    assert train["training"]["steps"] == 240 and hf == f"{plans['T1'].workdir(str(tmp_path))}/hf"
    calls.clear()
    assert driver.run_stage(plans["T1"], recipe, str(tmp_path), init=None, name="cold")[1] == {"queries": 3}
    assert calls == []  # a finished stage is reused


def test_smoke_recipe_and_the_sft_arm(driver, recipe):
    small = driver.smoke(recipe)
    assert all(small.spec(s).training.steps == 2 for s in BENCH) and small.spec("D").objective.offpolicy_steps == 1
    d, d_sft = plan(recipe, ["D"])["D"], driver.sft_arm(recipe)
    assert d_sft.config_hash != d.config_hash  # the arms train in workdirs of their own
    assert d_sft.train_config("/r", init="/i", teacher="/t", dump="/d")["objective"]["params"]["offpolicy_steps"] == 240
