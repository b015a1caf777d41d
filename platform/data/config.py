"""Typed configuration of the training data: named sources and how they are mixed and packed.

A stage of the recipe is one ``DataConfig``: its sources with their weights (stages change the mix),
the objective's data kind (``pretrain`` documents or ``sft`` chats), the packed row length and the
seed that fixes every shuffle. Unknown keys are rejected so a typo in a recipe fails at load time.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Format = Literal["jsonl", "parquet"]


class DataSource(BaseModel):
    """One named source: a set of jsonl/parquet files holding one document (or chat) per record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="unique name, used in the mix report and the loader state")
    paths: list[str] = Field(min_length=1, description="files, directories or globs; local or s3://")
    format: Format | None = Field(None, description="None: from the suffix (.jsonl[.gz], .parquet)")
    field: str = Field("text", description="record field: a string ('text') or chat turns ('messages')")
    weight: float = Field(1.0, gt=0, description="share of rows drawn from this source (normalised)")

    @field_validator("name")
    @classmethod
    def _name_is_plain(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", value):
            raise ValueError(f"source name {value!r} must be letters, digits, '_', '-' or '.'")
        return value


class DataConfig(BaseModel):
    """The data of one training stage."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[DataSource] = Field(min_length=1)
    kind: Literal["pretrain", "sft"] = Field("pretrain", description="documents, or chats with a loss mask")
    seq_len: int = Field(gt=0, description="tokens per row fed to the model (rows hold seq_len + 1)")
    seed: int = Field(0, ge=0, description="fixes document shuffles and the mixture order")
    cache: bool = Field(True, description="reuse pre-tokenised shards (<file>.qwen3-tokens/)")
    cache_dir: str | None = Field(
        None, description="fallback cache when the source location is not writable "
        "(default $QWEN3_DATA_CACHE or ~/.cache/qwen3-trainer/tokens)")
    sft_train_on: Literal["final", "all"] = Field(
        "final", description="sft: train the assistant turns after the last user query, or all of them")
    tokenize_batch: int = Field(512, gt=0, description="documents per tokenizer call while caching")

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate source names: {', '.join(dupes)}")
        return self

    def weights(self) -> dict[str, float]:
        """Normalised mixture weights by source name."""
        total = sum(s.weight for s in self.sources)
        return {s.name: s.weight / total for s in self.sources}
