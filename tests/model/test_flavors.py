"""Every flavor's parameter totals equal the official HF config's, counted on the meta device."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from qwen3_trainer.model.flavors import FLAVORS, UnknownFlavorError, count_params, get_flavor

# RECIPE.md: totals of the official HF configs (transformers on the meta device)
HF_TOTALS = {
    "0.6B": (596_049_920, 596_049_920),
    "1.7B": (1_720_574_976, 1_720_574_976),
    "4B": (4_022_468_096, 4_022_468_096),
    "8B": (8_190_735_360, 8_190_735_360),
    "14B": (14_768_307_200, 14_768_307_200),
    "32B": (32_762_123_264, 32_762_123_264),
    "30B-A3B": (30_532_122_624, 3_353_032_704),
    "235B-A22B": (235_093_634_560, 22_190_763_520),
}


@pytest.mark.parametrize("flavor", list(HF_TOTALS))
def test_totals_match_hf(flavor):
    n = count_params(FLAVORS[flavor])
    assert (n.total, n.active) == HF_TOTALS[flavor]


def test_debug_twins_exist_and_are_small():
    for name in ("debugmodel", "debugmodel_moe"):
        assert count_params(FLAVORS[name]).total < 25_000_000
    assert FLAVORS["debugmodel_moe"].moe_enabled and not FLAVORS["debugmodel"].moe_enabled


def test_recipe_facts():
    for name in HF_TOTALS:
        args = FLAVORS[name]
        assert args.rope_theta == 1_000_000 and args.qk_norm and args.norm_eps == 1e-6
        if args.moe_enabled:
            assert args.moe_args.num_shared_experts == 0 and args.moe_args.route_norm
            assert (args.moe_args.num_experts, args.moe_args.top_k) == (128, 8)


def test_unknown_flavor():
    with pytest.raises(UnknownFlavorError, match="unknown flavor '7B'"):
        get_flavor("7B")


def test_cli_model_list_json():
    out = subprocess.run([sys.executable, "-m", "qwen3_trainer.cli.main", "model", "list", "--json"],
                         capture_output=True, text=True, check=True)
    rows = {r["flavor"]: r for r in json.loads(out.stdout)}
    assert set(HF_TOTALS) <= set(rows)
    assert rows["235B-A22B"]["active_params"] == 22_190_763_520
    assert rows["30B-A3B"]["experts"] == "128/8"
