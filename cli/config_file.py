"""Reading a job's config file (YAML or JSON, local or ``s3://``) into a pydantic model, one-line errors."""

from __future__ import annotations

import json

import yaml
from pydantic import BaseModel, ValidationError

from qwen3_trainer.cli.output import UsageError


def load_model(path: str, model: type[BaseModel]) -> BaseModel:
    from qwen3_trainer.model import storage

    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such config file") from None
    except storage.StorageError as exc:
        raise UsageError(f"{path}: {exc}") from None
    try:
        raw = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UsageError(f"{path}: {loc}: {first['msg'].removeprefix('Value error, ')}") from None
