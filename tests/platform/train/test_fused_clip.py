"""Gradient clipping folded into the fused AdamW step equals torchtitan's separate clipping pass."""


import pytest
import torch


def _losses(implementation: str, max_norm: float, tmp_path) -> tuple[list[float], list[float]]:
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    cfg = TrainConfig.model_validate({
        "model": {"flavor": "debugmodel"},
        "training": {"steps": 4, "micro_batch_size": 2, "seq_len": 32, "device": "cpu", "seed": 0,
                     "max_norm": max_norm},
        "optimizer": {"lr": 3e-3, "implementation": implementation},
        "lr": {"schedule": "constant"},
        "dump_dir": str(tmp_path / implementation),
    })
    trainer = Trainer(cfg)
    gen = torch.Generator().manual_seed(0)
    losses, norms = [], []
    for _ in range(4):
        tokens = torch.randint(0, 151_000, (2, 33), generator=gen)
        m = trainer.train_step([{"input_ids": tokens[:, :-1], "labels": tokens[:, 1:]}])
        losses.append(m["loss"])
        norms.append(m["grad_norm"])
    return losses, norms


@pytest.mark.parametrize("max_norm", [0.05, 1e4])  # clipping active on every step / never
def test_fused_clip_matches_separate_pass(max_norm, tmp_path):
    ref_loss, ref_norm = _losses("foreach", max_norm, tmp_path)
    loss, norm = _losses("fused", max_norm, tmp_path)
    assert ref_norm[0] > 0.05  # the small max_norm really clips
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm, ref_norm, rtol=1e-4, atol=1e-6)


def test_total_grad_norm_equals_get_total_norm():
    """The clip norm without per-tensor ``.to`` is bit-equal to torch's ``get_total_norm``, over
    several dtypes and shapes, and 0 for no gradients."""
    from qwen3_trainer.platform.train.trainer import total_grad_norm

    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(shape, generator=gen).to(dtype) * 3
             for shape, dtype in (((7, 5), torch.float32), ((64,), torch.bfloat16), ((3, 4, 5), torch.float32),
                                  ((1,), torch.bfloat16), ((129, 3), torch.float32))]  # fmt: skip
    ref = torch.nn.utils.get_total_norm(grads, 2.0, False, True)
    assert torch.equal(total_grad_norm(grads), ref)
    assert float(total_grad_norm([])) == 0.0
