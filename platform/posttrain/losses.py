"""Post-training loss math on tensors (no trainer, no model): tested against hand-computed values.

Conventions: ``logits`` [B, S, V] predict ``labels`` [B, S] (already shifted; ``IGNORE`` = -100 marks
tokens outside the loss). Per-token functions return [B, S] tensors that are 0 at ignored positions;
objectives reduce them with ``aggregate`` and divide by the trainer's normaliser (``loss_units``).

``token_stats`` is the memory-bounded path for RL: log p(label) and entropy of softmax(logits / T)
``chunk`` rows at a time, the fp32 up-cast and log-softmax living one chunk at a time (each chunk is
recomputed in the backward pass by ``torch.utils.checkpoint``), so a 32K-token response over
Qwen3's 151,936-row vocabulary never holds the ~20 GB fp32 tensor, only ``chunk`` x V of it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100
CHUNK_ROWS = 2048  # token rows per fp32 chunk: 2048 x 151,936 x 4 B = 1.2 GB, times ~3 live buffers
LOSS_AGG = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per token in fp32 (0 where ignored), the whole vocabulary at once (``token_stats``
    is the chunked one)."""
    ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1), ignore_index=IGNORE,
                         reduction="none")
    return -ce.view_as(labels)


def token_entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Entropy of the predicted distribution per token (0 where ``mask`` is False)."""
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1) * mask


def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: bool = True,
                     eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: each reward minus its group's mean, divided by the group's std (population
    std, as in DeepSeekMath's GRPO) when ``scale``. ``rewards`` [N*G] is grouped consecutively."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)
    adv = r - r.mean(-1, keepdim=True)
    if scale:
        adv = adv / (r.std(-1, unbiased=False, keepdim=True) + eps)
    return adv.view(-1)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(policy || reference) per sampled token: e^{d} - d - 1 with
    d = ref_logp - logp (unbiased, always >= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Schulman's estimators of KL(policy || reference) from the sampled token's log-probs
    (http://joschu.net/blog/kl-approx.html): k1 = logp - ref (unbiased, can be < 0), k2 =
    (logp - ref)^2 / 2 (biased, low variance), k3 = e^{ref - logp} - (ref - logp) - 1."""
    if kind == "k1":
        return logp - ref_logp
    if kind == "k2":
        return 0.5 * (logp - ref_logp) ** 2
    if kind == "k3":
        return k3_kl(logp, ref_logp)
    raise ValueError(f"kl_estimator {kind!r} is unknown; known: {', '.join(KL_ESTIMATORS)}")


def _chunk_stats(x: torch.Tensor, labels: torch.Tensor, temperature: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    z = x.float() / temperature
    lse = torch.logsumexp(z, -1)
    logp = z.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) - lse
    entropy = lse - (torch.softmax(z, -1) * z).sum(-1)  # -sum p (z - lse)
    return torch.where(labels == IGNORE, 0.0, logp), entropy


def token_stats(logits: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0,
                chunk: int = CHUNK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(label), entropy), each [B, S], of softmax(logits / temperature) in fp32, ``chunk``
    token rows at a time. log p is 0 where ignored; entropy is returned at every position (mask it).
    With autograd on, each chunk is checkpointed: its fp32 intermediates are freed after the forward
    and recomputed one chunk at a time in the backward, so fp32 memory stays ~3 x chunk x V."""
    if chunk < 1:
        raise ValueError(f"logprob_chunk must be >= 1, got {chunk}")
    flat, lab = logits.flatten(0, -2), labels.flatten()
    grad = torch.is_grad_enabled() and flat.requires_grad
    logps, ents = [], []
    # split (not slicing in a loop): one backward node concatenates the chunks' gradients once
    for x, y in zip(flat.split(chunk), lab.split(chunk), strict=True):
        lp, h = (checkpoint(_chunk_stats, x, y, temperature, use_reentrant=False) if grad
                 else _chunk_stats(x, y, temperature))
        logps.append(lp)
        ents.append(h)
    return torch.cat(logps).view_as(labels), torch.cat(ents).view_as(labels)


def aggregate(per_tok: torch.Tensor, mask: torch.Tensor, mode: str, max_len: int) -> torch.Tensor:
    """This micro-batch's share of the step's loss *before* the division by the trainer's normaliser,
    which is the sum of ``loss_units`` over every micro-batch and data-parallel rank of the step:

    - ``token-mean``: sum over loss tokens; units = tokens (every token of the step weighs the same).
    - ``seq-mean-token-mean``: each sequence's token mean, summed; units = sequences.
    - ``seq-mean-token-sum-norm`` (Dr. GRPO): each sequence's token sum / ``max_len`` (the generation
      budget, a constant), summed; units = sequences.

    A sequence is one row, never split over micro-batches or ranks, so its own token count is local;
    every per-sequence term is then divided by the global number of sequences. The result is the same
    for any micro-batch size, accumulation or data-parallel layout (verl divides the token sum by the
    micro-batch's padded width instead, which changes with the packing)."""
    total = per_tok * mask
    if mode == "token-mean":
        return total.sum()
    if mode == "seq-mean-token-mean":
        return (total.sum(-1) / mask.sum(-1).clamp(min=1)).sum()
    if mode == "seq-mean-token-sum-norm":
        return total.sum() / max_len
    raise ValueError(f"loss_agg {mode!r} is unknown; known: {', '.join(LOSS_AGG)}")


def loss_units(mask: torch.Tensor, mode: str) -> int:
    """What ``aggregate``'s mode averages over, counted in this micro-batch: loss tokens, or
    sequences (rows with at least one loss token)."""
    if mode == "token-mean":
        return int(mask.sum())
    return int((mask.sum(-1) > 0).sum())


def overlong_penalty(length: int, max_new_tokens: int, buffer: int, factor: float = 1.0) -> float:
    """DAPO's soft overlong punishment: 0 up to ``max_new_tokens - buffer`` tokens, then falling
    linearly to ``-factor`` at ``max_new_tokens`` (and ``-factor`` beyond)."""
    if buffer <= 0:
        return 0.0
    over = length - (max_new_tokens - buffer)
    return -factor * min(max(over, 0) / buffer, 1.0)


def zero_variance_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] bool per group: every reward of the group equal (no learning signal: DAPO drops them)."""
    r = rewards.float().view(-1, group_size)
    return (r == r[:, :1]).all(-1)


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                        mask: torch.Tensor, clip_low: float, clip_high: float
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token: -min(r A, clip(r, 1-lo, 1+hi) A), r = exp(logp - old).
    Returns (loss [B,S], ratio, clipped mask), all 0 outside ``mask``."""
    ratio = torch.exp(logp - old_logp)
    surr1 = ratio * adv
    surr2 = ratio.clamp(1 - clip_low, 1 + clip_high) * adv
    loss = -torch.minimum(surr1, surr2)
    clipped = (surr2 < surr1) & mask
    return loss * mask, ratio * mask, clipped


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """KL(student || teacher) per position over the full vocabulary (on-policy distillation)."""
    s = (student_logits.float() / temperature).log_softmax(-1)
    t = (teacher_logits.float() / temperature).log_softmax(-1)
    return (s.exp() * (s - t)).sum(-1) * mask


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) per position (off-policy distillation on teacher outputs)."""
    s = (student_logits.float() / temperature).log_softmax(-1)
    t = (teacher_logits.float() / temperature).log_softmax(-1)
    return (t.exp() * (t - s)).sum(-1) * mask


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair Bradley–Terry loss -log sigmoid(r_chosen - r_rejected)."""
    return -F.logsigmoid(chosen.float() - rejected.float())


def check_vocab(student_vocab: int, other_vocab: int, what: str) -> None:
    if student_vocab != other_vocab:
        raise ValueError(f"{what} has a vocabulary of {other_vocab} rows but the policy has {student_vocab}: "
                         f"they must share the tokenizer and vocabulary size")
