"""The post-training parallelism matrix (gloo, CPU, fp32): GRPO, on-policy distillation and reward-model
training under fsdp2, tp2, ep2 (debugmodel_moe) and fsdp2+tp2 each equal one process on the same global
batch within 1e-4 over 3 steps (loss, gradient norm, and each objective's own numbers: GRPO's mean reward
and KL, distillation's KL, the reward model's margin), and match the committed curves
(tests/assets/losses/posttrain-*.json; QWEN3_UPDATE_BASELINES=1 rewrites them).

What the rows exercise, beyond the objectives themselves:
- GRPO has ``kl_coef > 0`` against a reference checkpoint and a reward-model reward: both are frozen
  models placed like the policy (FSDP over the DP ranks, TP/EP), held as a shard per rank (checked);
- distillation's teacher is another shape than the dense student (3 layers), built from its own
  checkpoint, sharded; ``prompts_per_step: 3`` over 2 DP ranks gives the ranks 1 and 2 micro-batches:
  the trainer pads the short rank (without it the sharded forwards hang);
- under TP one rank per TP group decodes and broadcasts its rollouts (checked from the ranks' decode
  counts); micro-batch widths are padded to the TP degree (sequence parallelism: a collective
  mismatch without it); under EP the policy's scoring forwards leave the MoE balancer alone (it raised);
- after GRPO, the DP ranks score different numbers of sequences with the sharded reward model;
- MoE: the global-batch balancing loss equals one process's (``moe/lbl_global``): its token counts assume
  micro-batches of one shape on every rank, so the trainer pads them to the step's widest.

``layout_driver.py`` runs jobs one after another in one process group, each building its own meshes: one
launch holds the three 2-rank layouts x three objectives, one the 4-rank layout, one the one-process
references of both flavors (module fixtures; a launch costs ~10 s before its first step on 2 cores).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from qwen3_trainer.platform.data import synthetic as syn

pytestmark = pytest.mark.slow
TOL = 1e-4
DRIVER = Path(__file__).with_name("layout_driver.py")
BASELINES = Path(__file__).resolve().parents[2] / "assets" / "losses"
# compared per step; moe/lbl_global (MoE flavor) where every layout routes the same tokens: one micro-batch
# per rank, all as wide as the widest (distillation's 3 prompts over 2 ranks pad one rank with a copy)
KEYS = {"grpo": ("loss", "grad_norm", "reward/mean", "kl", "moe/lbl_global"),
        "distill_onpolicy": ("loss", "grad_norm", "kl"), "reward_model": ("loss", "grad_norm", "margin", "moe/lbl_global")}
# name: (flavor, world size, parallelism)
LAYOUTS = {
    "fsdp2": ("debugmodel", 2, {"dp_shard": 2}),
    "tp2": ("debugmodel", 2, {"tp": 2, "dp_shard": 1}),
    "ep2": ("debugmodel_moe", 2, {"dp_shard": 2, "ep": 2}),
    "fsdp2+tp2": ("debugmodel", 4, {"dp_shard": 2, "tp": 2}),
}
FOUR_RANKS = {"fsdp2+tp2"}
TWO_RANKS = [n for n in LAYOUTS if n not in FOUR_RANKS]


@pytest.fixture(scope="module")
def assets(tmp_path_factory, hf_checkpoint):
    tmp = tmp_path_factory.mktemp("matrix")
    train, _ = syn.split_problems(12, 4, seed=0, difficulties=[0])
    queries = str(tmp / "q.jsonl")
    # a length instruction gives random-init samples different rewards, so the advantages are not all 0
    syn.write_jsonl(queries, [{**syn.query_record(p), "constraints": [{"type": "max_words", "value": 2}]}
                              for p in train])
    rng = random.Random(0)
    pairs = [syn.preference_record(p, rng) for p in syn.problems(12, seed=1, difficulties=[0])]
    syn.write_jsonl(str(tmp / "p.jsonl"), pairs[:9])
    syn.write_jsonl(str(tmp / "pe.jsonl"), pairs[9:])
    moe = hf_checkpoint(seed=1, flavor="debugmodel_moe")  # the MoE rows' reference and teacher
    return {"queries": queries, "pairs": str(tmp / "p.jsonl"), "eval_pairs": str(tmp / "pe.jsonl"),
            "reward_model": hf_checkpoint(seed=2),
            "debugmodel": {"reference": hf_checkpoint(seed=1), "teacher": hf_checkpoint(seed=3, n_layers=3)},
            "debugmodel_moe": {"reference": moe, "teacher": moe}}


def _runs(assets: dict, layout: str, tmp: Path) -> dict:
    """The layout's three jobs, named ``<layout>/<objective>``."""
    flavor, world, parallelism = LAYOUTS[layout]
    dp = world // parallelism.get("tp", 1)
    return {f"{layout}/{name}": run for name, run in _objectives(assets, flavor, dp, parallelism, tmp / layout).items()}


def _objectives(assets: dict, flavor: str, dp: int, parallelism: dict, tmp: Path) -> dict:
    frozen = assets[flavor]
    objectives = {
        "grpo": ({"queries": assets["queries"], "group_size": 2, "prompts_per_step": 2, "max_new_tokens": 4,
                  "temperature": 1.0, "kl_coef": 0.05, "reference": frozen["reference"],
                  "rewards": [{"name": "instruction"}, {"name": "format"},
                              {"name": "reward_model", "weight": 0.5, "model": assets["reward_model"],
                               "params": {"batch": 2}}]}, 4 // dp, 1),
        "distill_onpolicy": ({"teacher": frozen["teacher"], "prompts": assets["queries"], "prompts_per_step": 3,
                              "samples_per_prompt": 1, "max_new_tokens": 4, "temperature": 1.0}, 1, 1),
        # the global batch is micro_batch_size x grad_accum x dp pairs: 4 in every layout, one micro-batch
        # per rank (with accumulation the MoE balancer's earlier micro-batches use running frequencies)
        "reward_model": ({"pairs": assets["pairs"], "eval_pairs": assets["eval_pairs"]}, 4 // dp, 1),
    }
    runs = {}
    for name, (params, mb, accum) in objectives.items():
        runs[name] = {"model": {"flavor": flavor},
                      "training": {"steps": 3, "micro_batch_size": mb, "grad_accum": accum, "seq_len": 64,
                                   "seed": 0, "device": "cpu"},
                      "optimizer": {"lr": 1e-3, "weight_decay": 0.0}, "lr": {"schedule": "constant"},
                      "parallelism": parallelism, "objective": {"name": name, "params": params},
                      "dump_dir": str(tmp / name)}
    return runs


def _launch(runs: dict, tmp: Path, nproc: int) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "spec.json").write_text(json.dumps({"runs": runs}))
    launch = [] if nproc == 1 else ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--standalone"]
    cmd = [sys.executable, *launch, str(DRIVER), str(tmp / "spec.json"), str(tmp / "out.json")]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                         timeout=150 * nproc)  # a collective mismatch hangs: fail in minutes
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return json.loads((tmp / "out.json").read_text())


def _curves(result: dict, prefix: str = "") -> dict[str, dict[str, list[float]]]:
    rows = {name: result[prefix + name]["rows"] for name in KEYS}
    return {name: {k: [r[k] for r in rows[name]] for k in keys if k in rows[name][0]} for name, keys in KEYS.items()}


def _compare_baseline(name: str, curves: dict) -> None:
    path = BASELINES / f"posttrain-{name}.json"
    if os.environ.get("QWEN3_UPDATE_BASELINES"):
        path.write_text(json.dumps(curves, indent=1) + "\n")
    assert path.exists(), f"no committed baseline {path.name}: run with QWEN3_UPDATE_BASELINES=1 and commit it"
    ref = json.loads(path.read_text())
    for objective, keys in curves.items():
        for key, values in keys.items():
            base = ref[objective][key]
            assert len(base) == len(values) and all(abs(a - b) <= TOL for a, b in zip(base, values, strict=True)), (
                f"{name} {objective} {key}: baseline {base} vs {values}")


@pytest.fixture(scope="module")
def single(tmp_path_factory, assets):
    """One-process reference curves of both flavors, from one launch."""
    tmp = tmp_path_factory.mktemp("single")
    flavors = ("debugmodel", "debugmodel_moe")
    runs = {f"{flavor}/{name}": run for flavor in flavors
            for name, run in _objectives(assets, flavor, 1, {}, tmp / flavor).items()}
    result = _launch(runs, tmp, 1)
    for run in result.values():  # one process holds every frozen model whole
        for frozen in run["ranks"][0]["frozen"].values():
            assert frozen["local_bytes"] == frozen["bytes"] and frozen["dtype"] == "torch.float32"
    curves = {flavor: _curves(result, f"{flavor}/") for flavor in flavors}
    for flavor, curve in curves.items():
        _compare_baseline(f"single-{flavor}", curve)
    return curves


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, assets):
    """Every 2-rank layout's jobs, from one launch."""
    tmp = tmp_path_factory.mktemp("two")
    return _launch({k: v for layout in TWO_RANKS for k, v in _runs(assets, layout, tmp).items()}, tmp, 2)


@pytest.mark.parametrize("layout", LAYOUTS)  # all slow (multi-process): fsdp2+tp2 is 4 processes on 2 cores
def test_layout_matches_one_process(layout, tmp_path, assets, single, request):
    flavor, world, par = LAYOUTS[layout]
    tp = par.get("tp", 1)
    ref = single[flavor]
    runs = request.getfixturevalue("two_ranks") if world == 2 else _launch(_runs(assets, layout, tmp_path),
                                                                            tmp_path, world)
    result = {k.split("/", 1)[1]: v for k, v in runs.items() if k.startswith(f"{layout}/")}
    got = _curves(result)
    for name, keys in got.items():
        assert len(result[name]["rows"]) == 3
        assert all(g > 1e-4 for g in keys["grad_norm"]), (name, keys)
        for key, values in keys.items():
            diff = max(abs(a - b) for a, b in zip(ref[name][key], values, strict=True))
            assert diff <= TOL, f"{layout} {name} {key}: one process {ref[name][key]} vs {values}"
    _compare_baseline(layout, got)

    for name in ("grpo", "distill_onpolicy"):
        ranks = result[name]["ranks"]
        # one decoding rank per TP group (TP is the innermost mesh dim: a group is tp consecutive ranks)
        assert [r["decode_calls"] > 0 for r in ranks] == [i % tp == 0 for i in range(world)], ranks
        assert [r["engine_model"] for r in ranks] == [i % tp == 0 for i in range(world)]
        assert all(r["rollout/sync_s"] > 0 and r["rollout/generate_s"] > 0 for r in result[name]["rows"])
    for name in ("grpo", "distill_onpolicy"):  # the frozen models: a shard per rank, in the compute dtype
        for rank in result[name]["ranks"]:
            for frozen in rank["frozen"].values():
                assert frozen["dtype"] == "torch.float32" and frozen["local_bytes"] <= 0.6 * frozen["bytes"], rank
    scores = [r["scores"] for r in result["grpo"]["ranks"]]
    assert [len(s) for s in scores] == [i // tp + 1 for i in range(world)]  # DP rank r scored r + 1
    assert all(abs(s[0] - scores[0][0]) < 1e-5 for s in scores), scores
