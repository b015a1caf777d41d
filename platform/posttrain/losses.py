"""Post-training loss math on tensors (no trainer, no model): tested against hand-computed values.

Conventions: ``logits`` [B, S, V] predict ``labels`` [B, S] (already shifted; ``IGNORE`` = -100 marks
tokens outside the loss). Per-token functions return [B, S] tensors that are 0 at ignored positions;
objectives sum them and divide by the trainer's normaliser (token-level averaging over the step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) per token in fp32 (0 where ignored)."""
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
