"""The compiled AdamW step equals torch's fused AdamW (state, lr changes, folded clip scale)."""

import pytest
import torch

from qwen3_trainer.platform.train import adamw
from qwen3_trainer.platform.train.config import OptimizerSection


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 2 ** -7)])
def test_compiled_step_matches_fused(monkeypatch, dtype, tol):
    monkeypatch.setattr(adamw, "BIG", 1000)  # the two larger tensors take the compiled kernel
    torch.manual_seed(0)
    shapes = [(64, 48), (3000,), (7,), (40, 30)]
    ref = [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in shapes]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    a = torch.optim.AdamW(ref, fused=True, **kw)
    b = adamw.adopt(torch.optim.AdamW(ours, **kw))
    for step in range(5):
        for p, q in zip(ref, ours, strict=True):
            q.grad = torch.randn_like(p)
            p.grad = q.grad.clone()
        for opt in (a, b):
            opt.param_groups[0]["lr"] = 1e-2 * (step + 1)
            opt.__dict__.pop("grad_scale", None)
            if step == 3:
                opt.grad_scale = torch.tensor(2.5)
        a.step()
        b.step()
    for p, q in zip(ref, ours, strict=True):
        torch.testing.assert_close(q.detach().float(), p.detach().float(), atol=tol * 4, rtol=tol)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(b.state[q][key].float(), a.state[p][key].float(), atol=tol * 4, rtol=tol)
    assert b.state_dict()["state"][0].keys() == a.state_dict()["state"][0].keys()
    with pytest.raises(AssertionError):  # the check can fail: a step without the clip scale differs
        c = [torch.nn.Parameter(p.detach().clone()) for p in ref]
        opt = adamw.adopt(torch.optim.AdamW(c, **kw))
        for q in c:
            q.grad = torch.ones_like(q)
        opt.step()
        torch.testing.assert_close(c[0].detach().float(), ref[0].detach().float())


def test_compiled_needs_adamw():
    with pytest.raises(ValueError, match="AdamW step"):
        OptimizerSection(name="Adam", implementation="compiled")
