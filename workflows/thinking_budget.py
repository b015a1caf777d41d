"""The thinking-budget curve of a checkpoint (R §4.3): held-out accuracy as the thinking budget grows.

Greedy decoding of held-out generated problems in thinking mode, with the budget applied by
``model.generation`` (at the budget the stop-thinking text is forced in and the answer follows),
scored by the post-training verifiers (``platform.posttrain.grpo.evaluate_accuracy``). Runs in the
flow's process: meant for the miniature preset's debug-sized models.
"""

from __future__ import annotations

DEVICE = "cpu"


def curve(checkpoint: str, budgets: list[int], *, problems: int = 8, max_new_tokens: int = 48,
          seq_len: int = 192, seed: int = 7) -> dict[str, list[tuple[int, float]]]:
    """{"accuracy": [(budget, value)], "format": [...], "response_tokens": [...]} over ``budgets``."""
    from qwen3_trainer.model.build import init_buffers
    from qwen3_trainer.model.generation import LocalRolloutEngine
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.data import synthetic
    from qwen3_trainer.platform.posttrain.grpo import evaluate_accuracy
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    model = frozen_model(checkpoint, DEVICE)
    model.model_args.max_seq_len = max(model.model_args.max_seq_len, seq_len + max_new_tokens)
    init_buffers(model, DEVICE)
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
