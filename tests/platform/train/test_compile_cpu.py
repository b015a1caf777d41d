"""``compile: true`` trains an MoE model on CPU, and its losses equal the eager trainer's."""

import pytest
import torch


def _losses(compile_: bool, tmp_path) -> list[float]:
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    cfg = TrainConfig.model_validate({
        "model": {"flavor": "debugmodel_moe"},
        "training": {"steps": 3, "micro_batch_size": 2, "seq_len": 32, "device": "cpu", "seed": 0},
        "optimizer": {"lr": 3e-3},
        "lr": {"schedule": "constant"},
        "compile": compile_,
        "dump_dir": str(tmp_path / str(compile_)),
    })
    trainer = Trainer(cfg)
    tokens = torch.randint(0, 151_000, (2, 33), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(3):  # the same batch every step: the loss must fall
        losses.append(trainer.train_step([{"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}])["loss"])
    return losses


@pytest.mark.slow
def test_compiled_moe_matches_eager_on_cpu(tmp_path):
    # the router's expert counts must keep a static shape under compile (cpu_compat's histc)
    eager = _losses(False, tmp_path)
    compiled = _losses(True, tmp_path)
    assert eager[0] > eager[-1]  # it trains
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
