"""Loss math against hand-computed values, torch's own KL and the unchunked log-softmax."""

import math

import pytest
import torch
import torch.nn.functional as F

from qwen3_trainer.platform.posttrain import losses as L
from qwen3_trainer.platform.posttrain.grpo import GRPO
from qwen3_trainer.platform.train.objectives import ObjectiveContext

IGN = L.IGNORE


def test_group_advantages_by_hand():
    adv = L.group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0]), 2)
    assert torch.allclose(adv, torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0, 0.0]), atol=1e-5)
    # group of 3: rewards 3, 0, 0 -> mean 1, population std sqrt(2)
    adv = L.group_advantages(torch.tensor([3.0, 0.0, 0.0]), 3)
    assert torch.allclose(adv, torch.tensor([2, -1, -1]) / math.sqrt(2), atol=1e-5)
    assert torch.allclose(L.group_advantages(torch.tensor([3.0, 0.0, 0.0]), 3, scale=False), torch.tensor([2.0, -1, -1]))
    with pytest.raises(ValueError, match="groups of 4"):
        L.group_advantages(torch.zeros(6), 4)


def test_k3_by_hand():
    logp, ref = torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25))
    assert L.k3_kl(logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)
    assert L.k3_kl(logp, logp).item() == 0.0


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.5, 0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    mask = torch.tensor([[True, True, True, False]])
    loss, ratio, clipped = L.clipped_policy_loss(logp, old, adv, mask, 0.2, 0.28)
    # r=1.5,A=1: min(1.5, 1.28) -> -1.28 | r=1.5,A=-1: min(-1.5,-1.28) -> 1.5 | r=.5,A=1: min(.5,.8) -> -.5 | masked
    assert torch.allclose(loss, torch.tensor([[-1.28, 1.5, -0.5, 0.0]]), atol=1e-6)
    assert clipped.tolist() == [[True, False, False, False]]
    assert torch.allclose(ratio, torch.tensor([[1.5, 1.5, 0.5, 0.0]]))


def test_kl_by_hand_and_against_torch():
    s = torch.zeros(1, 1, 2)  # student p = (.5, .5)
    t = torch.log(torch.tensor([[[0.9, 0.1]]]))
    m = torch.ones(1, 1, dtype=torch.bool)
    rev = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    fwd = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert L.reverse_kl(s, t, m).item() == pytest.approx(rev, abs=1e-6)
    assert L.forward_kl(s, t, m).item() == pytest.approx(fwd, abs=1e-6)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 11, generator=g), torch.randn(2, 3, 11, generator=g)
    mask = torch.ones(2, 3, dtype=torch.bool)
    ref = F.kl_div(b.log_softmax(-1), a.log_softmax(-1), log_target=True, reduction="none").sum(-1)  # KL(a||b)
    assert torch.allclose(L.reverse_kl(a, b, mask), ref, atol=1e-5)
    assert torch.allclose(L.forward_kl(b, a, mask), ref, atol=1e-5)


def test_bradley_terry_by_hand():
    assert L.bradley_terry(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(
        -math.log(1 / (1 + math.exp(-2))), abs=1e-6)


def test_vocab_mismatch_is_one_line():
    with pytest.raises(ValueError, match="teacher x has a vocabulary of 1000 rows but the policy has 151936"):
        L.check_vocab(151936, 1000, "teacher x")


def test_grpo_objective_loss_by_hand():
    """Token-level averaging: the sum over response tokens divided by the trainer's normaliser."""
    obj = GRPO("unused.jsonl", group_size=2, clip_low=0.2, clip_high=0.2, kl_coef=0.1)
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[0, 1, -100]])
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "labels": labels,
             "old_logprobs": torch.log(torch.tensor([[0.5, 0.3, 1.0]])) * torch.tensor([[1, 1, 0]]),
             "ref_logprobs": torch.log(torch.tensor([[0.25, 0.6, 1.0]])) * torch.tensor([[1, 1, 0]]),
             "advantages": torch.tensor([[1.0, 1.0, 1.0]])}
    assert obj.loss_tokens(batch) == 2
    loss, metrics = obj.loss(logits, batch, 4.0, ObjectiveContext())
    # token 0: ratio 1 -> -1; k3(ref .25 vs .5) = .5 + ln2 - 1 | token 1: ratio 2 -> clipped 1.2 -> -1.2; k3 = 0
    expected = (-1.0 + 0.1 * (0.5 + math.log(2) - 1) - 1.2 + 0.0) / 4.0
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert float(metrics["tokens"]) == 2 and float(metrics["clipped"]) == 1
    h0 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    h1 = -(0.6 * math.log(0.6) + 2 * 0.2 * math.log(0.2))
    assert float(metrics["entropy_sum"]) == pytest.approx(h0 + h1, abs=1e-5)


def test_grpo_rejects_groups_of_one():
    with pytest.raises(ValueError, match="group_size"):
        GRPO("q.jsonl", group_size=1)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25))
    assert L.kl_estimate(logp, ref, "k1").item() == pytest.approx(math.log(2), abs=1e-6)  # log(pi / ref)
    assert L.kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * math.log(2) ** 2, abs=1e-6)
    assert L.kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2) - 1, abs=1e-6)
    with pytest.raises(ValueError, match="kl_estimator 'k9'"):
        L.kl_estimate(logp, ref, "k9")


def test_aggregation_modes_by_hand():
    # row 0: one loss token of loss 2; row 1: three tokens of loss 1; row 2: no loss token
    per_tok = torch.tensor([[2.0, 9.0, 9.0], [1.0, 1.0, 1.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[True, False, False], [True, True, True], [False, False, False]])
    assert L.aggregate(per_tok, mask, "token-mean", 4).item() == 5.0
    assert L.loss_units(mask, "token-mean") == 4
    assert L.aggregate(per_tok, mask, "seq-mean-token-mean", 4).item() == 2.0 + 1.0
    assert L.loss_units(mask, "seq-mean-token-mean") == 2  # the empty row is no sequence of the loss
    assert L.aggregate(per_tok, mask, "seq-mean-token-sum-norm", 4).item() == pytest.approx(2 / 4 + 3 / 4)
    assert L.loss_units(mask, "seq-mean-token-sum-norm") == 2
    with pytest.raises(ValueError, match="loss_agg 'mean'"):
        L.aggregate(per_tok, mask, "mean", 4)


def test_overlong_penalty_by_hand():
    # budget 10, buffer 4: free up to 6 tokens, then -1/4 per token down to -1 at 10
    assert [L.overlong_penalty(n, 10, 4) for n in (3, 6, 7, 9, 10, 12)] == [0.0, 0.0, -0.25, -0.75, -1.0, -1.0]
    assert L.overlong_penalty(8, 10, 4, factor=0.5) == -0.25
    assert L.overlong_penalty(10, 10, 0) == 0.0  # buffer 0: off


def test_zero_variance_groups():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    assert L.zero_variance_groups(r, 2).tolist() == [True, False, True]


def _reference_stats(logits, labels, temperature):
    z = (logits.float() / temperature).log_softmax(-1)
    logp = z.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (labels != IGN)
    return logp, -(z.exp() * z).sum(-1)


@pytest.mark.parametrize("chunk", [1, 3, 4, 100])
def test_chunked_stats_equal_the_unchunked_with_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g).requires_grad_()
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, 3] = labels[1, 0] = IGN
    w1, w2 = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    logp, ent = L.token_stats(logits, labels, temperature=0.7, chunk=chunk)
    ref_logp, ref_ent = _reference_stats(logits, labels, 0.7)
    assert torch.allclose(logp, ref_logp, atol=1e-6) and torch.allclose(ent, ref_ent, atol=1e-6)
    assert logp[0, 3] == 0 and logp[1, 0] == 0
    grad, = torch.autograd.grad((logp * w1 + ent * w2).sum(), logits)
    ref_grad, = torch.autograd.grad((ref_logp * w1 + ref_ent * w2).sum(), logits)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    with torch.no_grad():  # the no-grad path (old / reference log-probs) is the same arithmetic
        assert torch.equal(L.token_stats(logits, labels, temperature=0.7, chunk=chunk)[0], logp.detach())


def test_chunked_stats_never_hold_the_full_fp32_tensor():
    """bf16 logits [4, 64, V]: no fp32 tensor of more than chunk x V elements is ever made, forward or
    backward, and each chunk is recomputed once in the backward (checkpointed, not stored)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        largest, lse_calls = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is torch.ops.aten.logsumexp.default:
                self.lse_calls += 1
            for t in out if isinstance(out, tuple | list) else [out]:
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    self.largest = max(self.largest, t.numel())
            return out

    V, chunk = 50, 16
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 64, V, generator=g).bfloat16().requires_grad_()
    labels = torch.randint(0, V, (4, 64), generator=g)
    with Record() as rec:
        logp, ent = L.token_stats(logits, labels, chunk=chunk)
        (logp.sum() + ent.sum()).backward()
    assert rec.largest == chunk * V < 4 * 64 * V
    assert rec.lse_calls == 2 * (4 * 64 // chunk)  # forward + one recompute per chunk
    assert logits.grad.dtype == torch.bfloat16
