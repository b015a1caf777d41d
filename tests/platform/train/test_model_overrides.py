"""The config's model overrides reach the built model, and are checked against the layout."""

import pytest

from qwen3_trainer.platform.train.config import TrainConfig


def _raw(tmp_path, **model) -> dict:
    return {
        "model": {"flavor": "debugmodel", **model},
        "training": {"steps": 1, "micro_batch_size": 1, "seq_len": 16, "device": "cpu"},
        "dump_dir": str(tmp_path),
    }


def test_n_layers_cuts_the_flavor_depth(tmp_path):
    from qwen3_trainer.platform.train.trainer import Trainer

    trainer = Trainer(TrainConfig.model_validate(_raw(tmp_path, n_layers=1, vocab_size=512)))
    assert trainer.model_args.n_layers == 1
    assert len(trainer.model_parts[0].layers) == 1
    full = Trainer(TrainConfig.model_validate(_raw(tmp_path, vocab_size=512)))
    assert full.model_args.n_layers == 2  # the flavor's


def test_n_layers_is_checked_against_pipeline_stages(tmp_path):
    raw = _raw(tmp_path, n_layers=1, tie_embeddings=False)
    raw["parallelism"] = {"pp": 2}
    with pytest.raises(ValueError, match="pp=2 exceeds the model's 1 layers"):
        TrainConfig.model_validate(raw)
    raw["model"]["n_layers"] = 0
    with pytest.raises(ValueError, match="n_layers"):
        TrainConfig.model_validate(raw)
