"""``compile: true`` trains an MoE model on CPU, and its steps equal the eager trainer's: losses, gradient
norms and the global-batch balancing statistics, over two micro-batches a step, with each MoE block
compiled whole (one graph, the balancer's hooks inside it) and as torchtitan's compiled regions."""

import functools

import pytest
import torch

KEYS = ("loss", "grad_norm", "moe/lbl_global", "moe/lbl_micro_batch", "moe/load_imbalance")


def _trainer(compile_: bool, scope: str, tmp_path):
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    cfg = TrainConfig.model_validate({
        "model": {"flavor": "debugmodel_moe", "n_layers": 1},  # one MoE block: one graph to compile
        "training": {"steps": 3, "micro_batch_size": 2, "seq_len": 32, "device": "cpu", "seed": 0},
        "optimizer": {"lr": 3e-3},
        "lr": {"schedule": "constant"},
        "compile": compile_,
        "moe": {"compile_scope": scope},
        "dump_dir": str(tmp_path / f"{compile_}-{scope}"),
    })
    return Trainer(cfg)


def _steps(trainer) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    mbs = [torch.randint(0, 151_000, (2, 33), generator=g) for _ in range(2)]
    rows = []
    for _ in range(3):  # the same two micro-batches every step (the loss must fall); two a step
        # exercise the balancer's running frequencies
        out = trainer.train_step([{"input_ids": t[:, :-1], "labels": t[:, 1:]} for t in mbs])
        rows.append({k: out[k] for k in KEYS})
    return rows


@functools.cache
def _eager(tmp: str) -> list[dict]:
    from pathlib import Path

    return _steps(_trainer(False, "block", Path(tmp)))


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["block", "regions"])
def test_compiled_moe_matches_eager_on_cpu(scope, tmp_path_factory):
    # the router's expert counts must keep a static shape under compile (cpu_compat's histc)
    from torch._dynamo.eval_frame import OptimizedModule
    from torch._dynamo.utils import counters

    eager = _eager(str(tmp_path_factory.getbasetemp() / "eager"))
    torch._dynamo.reset()
    counters.clear()
    trainer = _trainer(True, scope, tmp_path_factory.mktemp(scope))
    blocks = list(trainer.model_parts[0].layers.values())
    assert all(isinstance(b, OptimizedModule) for b in blocks) == (scope == "block")
    compiled = _steps(trainer)
    assert eager[0]["loss"] > eager[-1]["loss"] and eager[0]["moe/lbl_global"] > 0  # it trains
    for got, want in zip(compiled, eager, strict=True):
        for k in KEYS:
            assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), (k, got, want)
    assert not counters["graph_break"], dict(counters["graph_break"])  # fullgraph: nothing fell back


def test_whole_blocks_need_a_plain_layout():
    from types import SimpleNamespace

    from qwen3_trainer.platform.train.parallel import whole_moe_blocks_allowed

    cfg = SimpleNamespace(activation_checkpointing="none")
    plain = SimpleNamespace(ep_enabled=False, tp_enabled=False)
    assert whole_moe_blocks_allowed(plain, cfg)
    assert not whole_moe_blocks_allowed(SimpleNamespace(ep_enabled=True, tp_enabled=False), cfg)
    assert not whole_moe_blocks_allowed(SimpleNamespace(ep_enabled=False, tp_enabled=True), cfg)
    assert not whole_moe_blocks_allowed(plain, SimpleNamespace(activation_checkpointing="selective"))
