"""``optimizer.implementation: compiled``: the clip division plus foreach AdamW equals the fused kernel with
the clip folded in as ``grad_scale``; compiled, it equals the eager step and stays one graph; the container's
step hooks still run; on CPU the trainer refuses it in one line."""

import pytest
import torch
from torch import nn

from qwen3_trainer.platform.train.optim_step import CompiledStep, clipped_step, make_capturable

KW = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def _params(seed: int = 0) -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(shape, generator=g)) for shape in ((17, 9), (9,), (4, 5, 6))]


def _grads(params, step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 3


class _Container(torch.optim.Optimizer):
    """The shape of torchtitan's OptimizersContainer: inner optimizers, an Optimizer with hooks."""

    def __init__(self, params):
        self.optimizers = [torch.optim.AdamW(params, foreach=True, **KW)]
        super().__init__(params, {"lr": KW["lr"]})

    def step(self, closure=None):
        for opt in self.optimizers:
            opt.step()


def test_clipped_step_equals_fused_with_grad_scale():
    ref, ours = _params(), _params()
    fused = torch.optim.AdamW(ref, fused=True, **KW)
    foreach = torch.optim.AdamW(ours, foreach=True, **KW)
    for step in range(4):
        _grads(ref, step)
        _grads(ours, step)
        scale = torch.tensor(1.0 + step)  # max(1, (norm + 1e-6) / max_norm): 1 = no clipping
        fused.grad_scale = scale
        fused.step()
        clipped_step([foreach], scale)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_compiled_step_equals_eager_in_one_graph():
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager_params, params = _params(), _params()
    eager = torch.optim.AdamW(eager_params, foreach=True, **KW)
    container = _Container(params)
    calls = []
    container.register_step_post_hook(lambda *_: calls.append("post"))
    step = CompiledStep(container, backend="inductor")  # float LR (constant here): lr_device None on CPU
    for i in range(3):
        _grads(eager_params, i)
        _grads(params, i)
        scale = torch.tensor(2.0 if i else 1.0)
        clipped_step([eager], scale)
        step(scale if i else None)  # None: no clipping (the expert-parallel path clips in its own pass)
    for a, b in zip(params, eager_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert calls == ["post"] * 3
    assert container.optimizers[0].param_groups[0]["lr"] == KW["lr"]  # the float is put back
    assert counters["stats"]["unique_graphs"] <= 2  # with and without a divisor, not one per step


def test_compiled_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="compiled needs a CUDA device"):
        make_capturable([torch.optim.AdamW(_params(), foreach=True)], torch.device("cpu"))
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    cfg = TrainConfig.model_validate({
        "model": {"flavor": "debugmodel"}, "training": {"steps": 1, "seq_len": 16, "device": "cpu"},
        "optimizer": {"implementation": "compiled"}, "dump_dir": str(tmp_path)})
    with pytest.raises(ValueError, match="compiled needs a CUDA device, not cpu"):
        Trainer(cfg)
