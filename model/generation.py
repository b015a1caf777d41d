"""Batched autoregressive generation for the torchtitan Qwen3 (dense and MoE): the API and its rules.

``generate`` runs on ``decode_engine.DecodeEngine`` (static KV cache, compiled decode step captured
in CUDA graphs per batch bucket, sampling on the device); ``generation_eager.generate_eager`` is the
original one-step-at-a-time loop, kept as the reference the engine is tested against. Positions count
real tokens only (left padding is skipped), as in transformers.

Per sequence it stops on a stop id (``<|im_end|>``/``<|endoftext|>`` by default) or at
``max_new_tokens``, and returns the generated ids, their log-probabilities under the model
(log-softmax of the raw logits, temperature 1, before top-k/top-p: what an RL importance ratio needs),
the lengths and the finish reason. Sampling: greedy (``temperature=0``), temperature, top-k, top-p.

Thinking budget (Qwen3 report §4.3): once a sequence has ``thinking_budget`` tokens after ``<think>``
without ``</think>``, the stop-thinking text is forced in, one token per step, and generation goes on
with the answer. Forced tokens are flagged in ``forced`` so an RL loss can leave them out.

``RolloutEngine`` is the interface RL codes against: ``LocalRolloutEngine`` wraps this module;
``model.vllm_client.VLLMRolloutEngine`` talks to a vLLM OpenAI-compatible server instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

# Qwen3 report §4.3 wording (default) and the Qwen quickstart wording.
STOP_THINKING_REPORT = (
    "Considering the limited time by the user, I have to give the solution based on the thinking directly now."
    "\n</think>.\n\n"
)
STOP_THINKING_QUICKSTART = (
    "\n\nConsidering the limited time by the user, I have to give the solution based on the thinking directly "
    "now.\n</think>\n\n"
)


@dataclass
class SamplingParams:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass kept (1 = off)
    top_k: int = 0  # most likely tokens kept (0 = off)
    stop_ids: tuple[int, ...] | None = None  # None = the tokenizer's <|im_end|>, <|endoftext|>
    thinking_budget: int | None = None  # thinking tokens before the stop-thinking text is forced in
    stop_thinking_text: str = STOP_THINKING_REPORT
    seed: int | None = None
    # the first row's index in the whole (all-rank) batch: the engine's sampling noise is a function of
    # (seed, step, row + row_offset, token), so a rank sampling rows k.. of a batch draws what one
    # process sampling the whole batch draws for them (layout-independent rollouts)
    row_offset: int = 0

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.thinking_budget is not None and self.thinking_budget < 0:
            raise ValueError(f"thinking_budget must be >= 0, got {self.thinking_budget}")
        if self.stop_ids is not None and any(int(t) != t or t < 0 for t in self.stop_ids):
            raise ValueError(f"stop_ids must be non-negative token ids, got {self.stop_ids}")


@dataclass
class GenerationOutput:
    tokens: list[list[int]]  # generated ids per sequence, the stop id included
    logprobs: list[list[float]]  # model log-prob of each generated id
    forced: list[list[bool]]  # True where the id was inserted by the thinking budget
    finish_reasons: list[str]  # "stop" or "length"
    lengths: list[int] = field(init=False)

    def __post_init__(self):
        self.lengths = [len(t) for t in self.tokens]


class RolloutEngine(Protocol):
    """What RL needs from an inference engine: token ids in, ids + log-probs out."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationOutput: ...


def _thinking_at_prompt_end(prompt: list[int], think: int, end_think: int, im_start: int) -> bool:
    """Whether the prompt ends inside an open ``<think>`` of the current assistant turn."""
    for tok in reversed(prompt):
        if tok == end_think or tok == im_start:
            return False
        if tok == think:
            return True
    return False


def _resolve(params: SamplingParams | None, overrides: dict) -> SamplingParams:
    params = params or SamplingParams()
    if overrides:
        params = SamplingParams(**{**params.__dict__, **overrides})
    params.validate()
    return params


def generate(
    model,
    prompts: list[list[int]],
    tokenizer=None,
    params: SamplingParams | None = None,
    **overrides,
) -> GenerationOutput:
    """Generate continuations of token-id ``prompts`` (a batch; any lengths) with ``model``.

    ``params`` fields may also be given as keywords: ``generate(model, ids, max_new_tokens=32,
    thinking_budget=100)``. The tokenizer (built-in Qwen3 one by default) supplies the stop ids and
    the ids of the stop-thinking text. Runs on the model's ``DecodeEngine`` (one per model, kept
    between calls so that its compiled steps and CUDA graphs are reused).
    """
    from qwen3_trainer.model.decode_engine import engine_for

    params = _resolve(params, overrides)
    if tokenizer is None:
        from qwen3_trainer.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    return engine_for(model).generate(prompts, params, tokenizer)


def _save_moe_counters(model) -> dict[str, torch.Tensor]:
    # generation must not count as training traffic in the experts' load-balancing statistics
    return {
        name: layer.moe.tokens_per_expert.clone()
        for name, layer in model.layers.items()
        if getattr(layer, "moe_enabled", False)
    }


def _restore_moe_counters(model, saved: dict[str, torch.Tensor]) -> None:
    for name, counts in saved.items():
        model.layers[name].moe.tokens_per_expert.copy_(counts)


def __getattr__(name: str):
    # the eager reference path's helpers moved to generation_eager; old imports keep working
    if name in ("CachedForward", "_nucleus", "_sample", "generate_eager"):
        from qwen3_trainer.model import generation_eager

        return getattr(generation_eager, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class LocalRolloutEngine:
    """``RolloutEngine`` on a local torchtitan model (CPU or one GPU), through its ``DecodeEngine``."""

    def __init__(self, model, tokenizer=None, **engine_options):
        from qwen3_trainer.model.decode_engine import DecodeEngine
        from qwen3_trainer.model.tokenizer import load_tokenizer

        self.model = model
        self.tokenizer = tokenizer or load_tokenizer()
        self.engine = DecodeEngine(model, **engine_options)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationOutput:
        params.validate()
        return self.engine.generate(prompts, params, self.tokenizer)

    def release(self) -> None:
        """Free the KV cache and CUDA graphs (compiled code stays); the next call rebuilds them."""
        self.engine.release()
