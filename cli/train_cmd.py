"""``qtrain train CONFIG``: run a training job (one process, under torchrun, or in a PyTorchJob pod).

Examples:
    qtrain train configs/debug.yaml
    qtrain train run.yaml --set training.steps=100 --set checkpoint.dir=s3://bucket/run1
    torchrun --nproc-per-node 2 -m qwen3_trainer.cli.main train run.yaml
"""

from __future__ import annotations

from pathlib import Path
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
        if not key.strip() or any(not part for part in key.strip().split(".")):
            raise UsageError(f"--set {pair!r}: empty key", hint="e.g. --set training.steps=10")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {pair!r}: value is not YAML ({str(exc).splitlines()[0]})") from None
    return out


@handle_errors
def command(
    config: Annotated[str, typer.Argument(help="Training config: YAML, TOML or JSON (local or s3://).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: KEY=VALUE (dotted key).")] = None,
) -> None:
    """Train from CONFIG: pretraining, SFT, RL or distillation (fields: platform/train/config.py)."""
    from qwen3_trainer.model import storage

    overrides = _overrides(set_ or [])
    local = config.removeprefix("file://")
    if not storage.is_remote(config) and not Path(local).is_file():  # before the (seconds of) torch imports
        raise UsageError(f"{config}: no such config file" if not Path(local).exists() else f"{config}: not a file")
    from qwen3_trainer.platform.tracking import TrackingError
    from qwen3_trainer.platform.train.run import main

    try:
        code = main(config, overrides)
    except TrackingError as exc:
        raise UsageError(str(exc), hint="start MLflow or unset MLFLOW_TRACKING_URI") from None
    raise typer.Exit(code)
