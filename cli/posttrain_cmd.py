"""``qtrain posttrain``: the post-training stages' data preparation, run as a job on the stage's node.

Examples:
    qtrain posttrain prepare prep.yaml                                   # one process
    torchrun --nproc-per-node 8 -m qwen3_trainer.cli.main posttrain prepare prep.yaml   # 8 GPUs share the work

The config (platform/posttrain/prepare.py ``PrepareConfig``) is what ``qtrain pipeline render --job prepare``
shows; the pipeline submits it through the launcher before the stage's training job.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from qwen3_trainer.cli.output import UsageError, handle_errors

app = typer.Typer(help="Post-training data preparation (rejection sampling, teacher responses, RL queries).",
                  no_args_is_help=True)


@app.command("prepare")
@handle_errors
def prepare_cmd(
    config: Annotated[str, typer.Argument(help="PrepareConfig: YAML or JSON (local or s3://).")],
) -> None:
    """Write a post-training stage's data files (T1 cold start, T2/T4 queries, T3 fusion, D teacher responses)."""
    from qwen3_trainer.cli.config_file import load_model
    from qwen3_trainer.platform.posttrain.prepare import PrepareConfig, RecordError, prepare

    cfg = load_model(config, PrepareConfig)
    try:
        report = prepare(cfg)
    except RecordError as exc:
        raise UsageError(str(exc)) from None
    typer.echo(f"prepared {cfg.stage}: " + json.dumps(report, default=str))
