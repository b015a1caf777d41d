"""The thinking-budget curve of a checkpoint (R §4.3), as a job: ``qtrain eval thinking-budget CONFIG``.

Greedy decoding of held-out generated problems in thinking mode, with the budget applied by
``model.generation`` (at the budget the stop-thinking text is forced in and the answer follows),
scored by the post-training verifiers (``grpo.evaluate_accuracy``). The job runs on the stage's
node (one process) and writes ``{"accuracy": [[budget, value], ...], "format": ..., "response_tokens": ...}``
as JSON to ``out`` (local or ``s3://``), which the pipeline logs to the stage's MLflow run.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ThinkingBudgetConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint: str                             # HF directory or DCP checkpoint (local or s3://)
    out: str                                    # the curve as JSON
    budgets: list[int] = Field(min_length=1)
    problems: int = Field(8, gt=0)
    max_new_tokens: int = Field(48, gt=0)
    seq_len: int = Field(192, gt=0)
    seed: int = 7
    device: Literal["auto", "cpu", "cuda"] = "auto"


def curve(checkpoint: str, budgets: list[int], *, problems: int = 8, max_new_tokens: int = 48,
          seq_len: int = 192, seed: int = 7, device: str = "cpu") -> dict[str, list[tuple[int, float]]]:
    """{"accuracy": [(budget, value)], "format": [...], "response_tokens": [...]} over ``budgets``."""
    from qwen3_trainer.model.build import init_buffers
    from qwen3_trainer.model.generation import LocalRolloutEngine
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.data import synthetic
    from qwen3_trainer.platform.posttrain.grpo import evaluate_accuracy
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    model = frozen_model(checkpoint, device)
    model.model_args.max_seq_len = max(model.model_args.max_seq_len, seq_len + max_new_tokens)
    init_buffers(model, device)
    tok = load_tokenizer()
    engine = LocalRolloutEngine(model, tok)
    _, held = synthetic.split_problems(problems, problems, seed=seed, difficulties=(0,))
    records = [synthetic.query_record(p, "/think") for p in held]
    out: dict[str, list[tuple[int, float]]] = {"accuracy": [], "format": [], "response_tokens": []}
    for budget in sorted(budgets):
        m = evaluate_accuracy(engine, tok, records, max_new_tokens=max_new_tokens, seq_len=seq_len,
                              thinking_budget=budget)
        out["accuracy"].append((budget, m["eval/accuracy"]))
        out["format"].append((budget, m["eval/format"]))
        out["response_tokens"].append((budget, m["eval/response_tokens"]))
    return out


def run(cfg: ThinkingBudgetConfig) -> dict[str, list[tuple[int, float]]]:
    from qwen3_trainer.model import storage

    device = cfg.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    result = curve(cfg.checkpoint, cfg.budgets, problems=cfg.problems, max_new_tokens=cfg.max_new_tokens,
                   seq_len=cfg.seq_len, seed=cfg.seed, device=device)
    fs, path = storage.filesystem(cfg.out)
    if not storage.is_remote(cfg.out):
        fs.makedirs(fs._parent(path), exist_ok=True)
    with fs.open(path, "w") as fh:
        fh.write(json.dumps(result))
    return result
