"""Reading a job's config file (YAML or JSON, local or ``s3://``) into a pydantic model, one-line errors."""

from __future__ import annotations

from pydantic import BaseModel

from qwen3_trainer.cli.output import bad_input


def load_model(path: str, model: type[BaseModel]) -> BaseModel:
    from qwen3_trainer.recipe.files import load_model_file

    with bad_input():
        return load_model_file(path, model, "config")
