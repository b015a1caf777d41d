"""``qtrain train CONFIG``: run a training job (one process, under torchrun, or in a PyTorchJob pod).

Examples:
    qtrain train configs/debug.yaml
    qtrain train run.yaml --set training.steps=100 --set checkpoint.dir=s3://bucket/run1
    torchrun --nproc-per-node 2 -m qwen3_trainer.cli.main train run.yaml
"""

from __future__ import annotations

from typing import Annotated

import typer
import yaml

from qwen3_trainer.cli.output import UsageError, handle_errors


def _overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE", hint="e.g. --set training.steps=10")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


@handle_errors
def command(
    config: Annotated[str, typer.Argument(help="Training config: YAML, TOML or JSON (local or s3://).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: KEY=VALUE (dotted key).")] = None,
) -> None:
    """Train from CONFIG: pretraining, SFT, RL or distillation (fields: platform/train/config.py)."""
    from qwen3_trainer.platform.tracking import TrackingError
    from qwen3_trainer.platform.train.run import main

    try:
        code = main(config, _overrides(set_ or []))
    except TrackingError as exc:
        raise UsageError(str(exc), hint="start MLflow or unset MLFLOW_TRACKING_URI") from None
    raise typer.Exit(code)
