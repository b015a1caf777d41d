"""Training objectives: what a micro-batch's loss is, given the policy's logits.

An objective returns the *sum* of its per-token losses divided by ``normalizer`` — the number of
loss-bearing tokens in the whole step across every micro-batch and data-parallel rank — so that
summing gradients over micro-batches and ranks (FSDP reduce-sum, division disabled) gives exactly
the global token-mean gradient, whatever the parallelism or accumulation.

Registered here: ``lm`` (pretraining: next-token cross-entropy on packed documents) and ``sft``
(the same on chat samples whose labels are masked to assistant tokens by the data loader).
Post-training objectives (GRPO, distillation, reward model) register themselves with
``register_objective`` and may use the trainer's hooks: a frozen reference/teacher model
(``ctx.reference``) and per-token weights (``batch["weights"]``). Those that make their own batches
(rollouts, on-policy samples, preference pairs) subclass ``BatchProducer``: the trainer's one loop
(``Trainer.fit``: resume, per-step logging, checkpoint cadence, finish) asks them for each step's
batches instead of reading its data loader; ranks may produce different numbers and widths of
micro-batches (``Trainer.align_micro_batches`` evens them out).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

IGNORE = -100


@dataclass
class ObjectiveContext:
    """What the trainer hands an objective beyond the batch."""

    reference: torch.nn.Module | None = None  # frozen reference / teacher (its own placement)
    step: int = 0
    # path -> a frozen model placed like the policy (Trainer.load_frozen); None: one device, unsharded
    load_frozen: Callable[[str], torch.nn.Module] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Objective(Protocol):
    name: str
    needs_reference: bool

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], normalizer: float,
             ctx: ObjectiveContext) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss to backward, metrics summed over the step: floats or 0-d tensors, which the
        trainer reads once at the end of the step to avoid a device sync per micro-batch)."""
        ...

    def loss_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens of this micro-batch that count toward the normaliser."""
        ...


StepBatches = tuple[list[dict[str, torch.Tensor]], dict[str, float]]


class BatchProducer(abc.ABC):
    """An objective that produces its own batches, plugged into ``Trainer.fit``'s one loop.

    The trainer resumes first (``trainer.step`` is then the resumed step), calls ``start`` once, then
    runs one optimizer step per item of ``steps`` — each item is the step's micro-batches and extra
    metrics to log with it (rollout statistics) — while ``trainer.step < training.steps``, logs and
    checkpoints on the configured cadence, calls ``end`` and finishes the run (final checkpoint, HF
    export). ``steps`` must be a function of ``trainer.step`` (seeds, data order), so a resumed run
    continues the same sequence. Evaluations log through ``trainer.log(metrics)``.
    """

    @abc.abstractmethod
    def start(self, trainer) -> None:
        """Load data, frozen models and the rollout engine; the first evaluation."""

    @abc.abstractmethod
    def steps(self, trainer) -> Iterator[StepBatches]:
        """Each optimizer step's (micro-batches, extra metrics)."""

    def step_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Turn the step's summed objective metrics (``objective/...``) into what is logged."""
        return metrics

    def end(self, trainer) -> None:  # noqa: B027 - optional hook, a no-op by default
        """After the last step, before the final checkpoint: the last evaluation."""


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token CE in fp32, 0 where labels == IGNORE; shape of ``labels``."""
    flat = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(0, 1), ignore_index=IGNORE,
                           reduction="none")
    return flat.view_as(labels)


class TokenCrossEntropy:
    """Next-token cross-entropy with optional per-token weights (``batch["weights"]``)."""

    needs_reference = False

    def __init__(self, name: str = "lm", **params: Any):
        if params:
            raise ValueError(f"objective {name!r} takes no params, got {sorted(params)}")
        self.name = name

        self._ce = token_cross_entropy

    def compile(self) -> None:
        self._ce = torch.compile(token_cross_entropy)

    def loss_tokens(self, batch):
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, logits, batch, normalizer, ctx):
        ce = self._ce(logits, batch["labels"])
        if "weights" in batch:
            ce = ce * batch["weights"].to(ce.dtype)
        total = ce.sum()
        return total / normalizer, {"loss_sum": total.detach()}


_REGISTRY: dict[str, Callable[..., Objective]] = {
    "lm": lambda **p: TokenCrossEntropy("lm", **p),
    "sft": lambda **p: TokenCrossEntropy("sft", **p),
}


def register_objective(name: str, factory: Callable[..., Objective]) -> None:
    _REGISTRY[name] = factory


def build_objective(name: str, params: dict[str, Any]) -> Objective:
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"objective.name {name!r} is unknown; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**params)


def _load_plugins() -> None:
    # post-training objectives live in their own modules and register on import
    import importlib

    for module in ("qwen3_trainer.platform.posttrain.objectives",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
