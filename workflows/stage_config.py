"""A stage's complete training config (a ``TrainConfig`` dict) and its config hash.

Pretraining stages (S1-S3) are built here from their knobs (presets.py); post-training and
distillation stages (T1-T4, D) come from ``platform.posttrain.stages.stage_config``.

Configs are first built with placeholder paths (``{workdir}``, ``{init}``, ``{teacher}``, ``{dump}``,
``{root}``), hashed, then filled in. The hash therefore covers exactly what the stage trains — knobs,
data, objective, and (through ``upstream``) the hashes of the stages it starts from — and not where it
runs: the same stage re-run into the same root finds its registered checkpoint, while a changed knob
anywhere upstream gives a new hash, a new work directory and a new run.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from qwen3_trainer.model import storage
from qwen3_trainer.workflows.presets import PRETRAIN, Preset, StageKnobs

TOKENS = {"workdir": "{workdir}", "init": "{init}", "teacher": "{teacher}", "dump": "{dump}", "root": "{root}"}


def stage_workdir(root: str, stage: str, config_hash: str) -> str:
    return storage.join(root, "stages", f"{stage}-{config_hash}")


def data_sources(root: str) -> dict[str, str]:
    """Where the pipeline's prepared data lives under the run root (tiny: made by tiny_data.py)."""
    return {"web": storage.join(root, "data", "web"), "reasoning": storage.join(root, "data", "reasoning")}


def pretrain_config(knobs: StageKnobs, *, data_root: str) -> dict[str, Any]:
    """S1/S2/S3 as a TrainConfig dict (placeholders for paths)."""
    sources = [{"name": name, "paths": [storage.join(data_root, name)], "weight": weight}
               for name, weight in knobs.data_mix.items()]
    cfg: dict[str, Any] = {
        "model": {"flavor": knobs.flavor, "rope_theta": knobs.rope_theta},
        "training": {"steps": knobs.steps, "micro_batch_size": knobs.micro_batch_size,
                     "grad_accum": knobs.grad_accum, "seq_len": knobs.seq_len, "device": knobs.device},
        "parallelism": dict(knobs.parallelism),
        "optimizer": {"name": "AdamW", "lr": knobs.lr},
        "lr": {"schedule": "wsd", "warmup_steps": knobs.warmup_steps, "decay_ratio": knobs.decay_ratio},
        "data": {"sources": sources, "seq_len": knobs.seq_len},
        "checkpoint": {"dir": "{workdir}/ckpt", "interval": knobs.checkpoint_interval, "keep_last": 2,
                       "export_hf": "{workdir}/hf"},
        "objective": {"name": "lm"},
        "dump_dir": "{dump}",
    }
    if knobs.stage != "S1":
        cfg["init"] = {"path": "{init}", "format": "dcp"}
    return cfg


def posttrain_config(stage: str, preset: Preset) -> dict[str, Any]:
    """T1-T4 / D from the post-training module, built with placeholder paths."""
    try:
        from qwen3_trainer.platform.posttrain.stages import stage_config
    except ModuleNotFoundError as exc:
        raise ValueError(f"stage {stage} needs platform.posttrain.stages ({exc})") from None

    try:
        cfg = stage_config(stage, preset=preset.name, workdir="{workdir}", init_checkpoint="{init}",
                           teacher_checkpoint="{teacher}" if stage == "D" else None)
    except ValueError as exc:  # e.g. a preset the post-training module does not size yet
        raise ValueError(f"stage {stage}: platform.posttrain.stages: {exc}") from None
    cfg = dict(cfg)
    cfg["dump_dir"] = "{dump}"
    ckpt = dict(cfg.get("checkpoint") or {})
    ckpt.setdefault("dir", "{workdir}/ckpt")
    ckpt.setdefault("export_hf", "{workdir}/hf")
    cfg["checkpoint"] = ckpt
    return cfg


def template(stage: str, preset: Preset, data_root: str = "{root}/data") -> dict[str, Any]:
    knobs = preset.knobs(stage)
    cfg = pretrain_config(knobs, data_root=data_root) if stage in PRETRAIN else posttrain_config(stage, preset)
    cfg.pop("tracking", None)  # set per run by the pipeline (MLflow child run)
    if preset.vocab_size:
        cfg["model"] = {**cfg["model"], "vocab_size": preset.vocab_size}
    return cfg


def config_hash(stage: str, cfg: dict[str, Any], upstream: list[str]) -> str:
    doc = json.dumps({"stage": stage, "config": cfg, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def fill(cfg: dict[str, Any], **paths: str | None) -> dict[str, Any]:
    """Replace the placeholders (``workdir=..., init=..., root=...``) everywhere in ``cfg``."""
    text = json.dumps(cfg)
    for key, value in paths.items():
        if value is not None:
            text = text.replace(TOKENS[key], value.rstrip("/"))
    return json.loads(text)


def validate(cfg: dict[str, Any]) -> None:
    """Raise ValueError (one line) if ``cfg`` is not a valid TrainConfig or DataConfig."""
    from pydantic import ValidationError

    from qwen3_trainer.platform.train.config import TrainConfig

    try:
        parsed = TrainConfig.model_validate(cfg)
        if parsed.data is not None:
            from qwen3_trainer.platform.data import DataConfig

            DataConfig.model_validate({**parsed.data, "seq_len": parsed.data.get("seq_len", parsed.training.seq_len)})
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{loc}: {first['msg'].removeprefix('Value error, ')}") from None
