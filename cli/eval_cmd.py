"""``qtrain eval``: evaluations of a checkpoint, run as jobs (the pipeline submits them after a stage).

Examples:
    qtrain eval thinking-budget eval.yaml        # {checkpoint, out, budgets, problems, ...}
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from qwen3_trainer.cli.output import handle_errors

app = typer.Typer(help="Evaluate a checkpoint: the thinking-budget curve.", no_args_is_help=True)


@app.command("thinking-budget")
@handle_errors
def thinking_budget_cmd(
    config: Annotated[str, typer.Argument(help="ThinkingBudgetConfig: YAML or JSON (local or s3://).")],
) -> None:
    """Held-out accuracy of a checkpoint as the thinking budget grows (R §4.3); writes JSON to `out`."""
    from qwen3_trainer.cli.config_file import load_model
    from qwen3_trainer.platform.posttrain.thinking_budget import ThinkingBudgetConfig, run

    cfg = load_model(config, ThinkingBudgetConfig)
    result = run(cfg)
    typer.echo(f"thinking-budget curve -> {cfg.out}: " + json.dumps(result["accuracy"]))
