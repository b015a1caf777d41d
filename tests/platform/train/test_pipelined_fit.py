"""``Trainer.fit`` reads each step's numbers after queueing the next (``launch_step`` / ``step_metrics``):
the history equals a loop of synchronous ``train_step`` calls number for number, a checkpoint step is
read before the save, and a non-finite loss stops the run at its own step."""

import math

import pytest
import torch

STEPS = 4


class _Loader:
    """Seeded random micro-batches, one list a step; ``poison_at`` puts NaN into a weight when the
    batch of that step is fetched (the previous step is queued by then)."""

    def __init__(self, trainer=None, poison_at: int | None = None):
        self.gen = torch.Generator().manual_seed(0)
        self.fetched, self.trainer, self.poison_at = 0, trainer, poison_at

    def next_step(self):
        self.fetched += 1
        if self.fetched == self.poison_at:
            with torch.no_grad():
                self.trainer.model_parts[0].norm.weight.fill_(math.nan)
        tokens = torch.randint(0, 2048, (2, 2, 33), generator=self.gen)
        return [{"input_ids": t[:, :-1].contiguous(), "labels": t[:, 1:].contiguous()} for t in tokens]

    def state_dict(self):
        return {"fetched": self.fetched}

    def load_state_dict(self, state):
        self.fetched = state["fetched"]


def _trainer(tmp_path, name: str, **checkpoint):
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    cfg = TrainConfig.model_validate({
        "model": {"flavor": "debugmodel_moe", "vocab_size": 2048},
        "training": {"steps": STEPS, "micro_batch_size": 2, "seq_len": 32, "device": "cpu", "seed": 0},
        "optimizer": {"lr": 3e-3},
        "lr": {"schedule": "constant"},
        "checkpoint": checkpoint,
        "dump_dir": str(tmp_path / name),
    })
    return Trainer(cfg)


KEYS = ("loss", "grad_norm", "lr", "tokens", "loss_tokens", "data/checksum", "moe/lbl_global",
        "moe/lbl_micro_batch", "moe/load_imbalance")


def test_fit_history_equals_synchronous_steps(tmp_path):
    piped = _trainer(tmp_path, "fit", dir=str(tmp_path / "ckpt"), interval=2, async_save=False)
    piped.loader = _Loader()
    result = piped.fit()
    steady = _trainer(tmp_path, "sync")
    loader = _Loader()
    want = [steady.train_step(loader.next_step()) for _ in range(STEPS)]
    got = result["history"]
    assert [h["step"] for h in got] == list(range(1, STEPS + 1))
    for g, w in zip(got, want, strict=True):
        assert {k: g[k] for k in KEYS} == {k: w[k] for k in KEYS}
        assert g["step_seconds"] > 0 and g["tokens_per_s"] > 0
    # the step-2 checkpoint holds the loader state of step 2, not of the step queued after it
    assert piped.checkpointer.load(piped.checkpointer.path(2), piped._ckpt_state(), 0)["data"] == {"fetched": 2}


def test_non_finite_loss_stops_at_its_step(tmp_path):
    trainer = _trainer(tmp_path, "nan")
    trainer.loader = _Loader(trainer, poison_at=3)
    with pytest.raises(FloatingPointError, match="at step 3"):
        trainer.fit()
    assert [h["step"] for h in trainer.history] == [1, 2]
