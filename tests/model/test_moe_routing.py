"""Gather dispatch/combine (model/moe_routing.py) against torchtitan's own ``MoE.forward``."""

import pytest
import torch

from qwen3_trainer.model import moe_routing
from qwen3_trainer.model.build import build_model
from qwen3_trainer.model.titan import MoE


def _moe_layers(model):
    return [m for m in model.modules() if isinstance(m, MoE)]


def _run(model, tokens):
    model.zero_grad(set_to_none=True)
    logits = model(tokens)
    (logits.float().square().mean()).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("compiled", [False, True])
def test_gather_routing_matches_torchtitan(compiled, monkeypatch):
    torch.manual_seed(0)
    model = build_model("debugmodel_moe", device="cpu", seed=0)
    assert len(_moe_layers(model)) == 2 and all("forward" in m.__dict__ for m in _moe_layers(model))
    if compiled:
        monkeypatch.setattr(moe_routing, "_kernels", dict(moe_routing._kernels))
        moe_routing.compile_routing()
    tokens = torch.randint(0, 151_000, (2, 24))
    logits, grads = _run(model, tokens)
    assert moe_routing.uninstall(model) == 2  # torchtitan's own MoE.forward from here on
    ref_logits, ref_grads = _run(model, tokens)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    assert ref_grads.keys() == grads.keys() and any("router" in n for n in grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_combine_gradients_by_finite_differences():
    torch.manual_seed(1)
    tokens, k, dim = 5, 2, 3
    order = torch.randperm(tokens * k)
    routed = torch.randn(tokens * k, dim, dtype=torch.float64, requires_grad=True)
    scores = torch.rand(tokens, k, dtype=torch.float64, requires_grad=True)
    x = torch.randn(tokens, dim, dtype=torch.float64, requires_grad=True)
    inverse = moe_routing._inverse(order)
    assert torch.equal(inverse[order], torch.arange(tokens * k))
    torch.autograd.gradcheck(lambda r, s: moe_routing._Combine.apply(r, s, order, inverse, torch.float64),
                                (routed, scores))
    torch.autograd.gradcheck(lambda v: moe_routing._Dispatch.apply(v, order, inverse, k), (x,))


def test_compiled_kernels_take_any_token_count(monkeypatch):
    """Rollouts and SFT batches change the token count every call: no recompile-limit failure."""
    monkeypatch.setattr(moe_routing, "_kernels", dict(moe_routing._kernels))
    moe_routing.compile_routing()
    k, dim = 2, 8
    for tokens in range(3, 3 + 12):
        x = torch.randn(tokens, dim, requires_grad=True)
        scores = torch.rand(tokens, k, requires_grad=True)
        order = torch.randperm(tokens * k)
        routed, inverse = moe_routing._kernels["dispatch"](x, order, k)
        out = moe_routing._kernels["combine"](routed * 2, scores, order, inverse, x.dtype)
        out.sum().backward()
        expected = 2 * x.detach() * scores.detach().sum(dim=1, keepdim=True)
        torch.testing.assert_close(out.detach(), expected)
