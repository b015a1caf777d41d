"""A user's own recipe: a YAML/JSON file holding a whole ``Preset`` (``qtrain recipe show NAME`` prints one
to start from). Read through the storage module (local or ``s3://``); every error is one line naming the
file and the dotted key.
"""

from __future__ import annotations

import json

import yaml
from pydantic import ValidationError

from qwen3_trainer.platform.validation import describe


def load_model_file(path: str, model, what: str = "file"):
    """A YAML/JSON file (local or s3://) validated as pydantic ``model``; ValueError (one line naming
    the file and the dotted key) if it is missing, unreadable, not a mapping or not the model."""
    from qwen3_trainer.model import storage

    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: not found") from None
    except storage.StorageError as exc:
        raise ValueError(f"{what} {path}: {exc}") from None
    try:
        raw = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} {path}: not valid YAML/JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{what} {path}: expected a mapping, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{what} {path}: {describe(exc)}") from None


def load_preset_file(path: str):
    from qwen3_trainer.recipe.presets import Preset

    return load_model_file(path, Preset, "recipe file")


def dump_preset(preset) -> str:
    """The preset as YAML, every field spelled out (a user edits it and passes it as --preset FILE)."""
    return yaml.safe_dump(preset.model_dump(mode="json"), sort_keys=False, width=110)
