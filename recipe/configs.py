"""From a stage's spec to the configs its jobs run, and the config hash that names its work directory.

Three jobs per stage at most, each config a plain dict built from the ``StageSpec`` alone:
``train_config`` (a ``TrainConfig``: ``qtrain train``), ``prepare_config`` (post-training data,
``qtrain posttrain prepare``) and ``eval_config`` (the thinking-budget curve, ``qtrain eval``).
Configs are built with placeholder paths (``{workdir}``, ``{init}``, ``{teacher}``, ``{dump}``,
``{root}``), hashed, then filled. The hash covers the whole spec (scale and resources included), the
configs and the hashes of the stages it starts from — not where it runs: the same stage re-run into
the same root finds its registered checkpoint; a changed knob anywhere upstream gives a new hash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from qwen3_trainer.model import storage
from qwen3_trainer.platform.posttrain.prepare import FILES, REWARD_MODEL, REWARD_PAIRS, TEACHER_CACHE
from qwen3_trainer.recipe.graph import GRAPH
from qwen3_trainer.recipe.presets import Preset
from qwen3_trainer.recipe.specs import StageSpec

TOKENS = {"workdir": "{workdir}", "init": "{init}", "teacher": "{teacher}", "dump": "{dump}", "root": "{root}"}

# the files a stage's preparation writes and its training reads, under <workdir>/data (named by the job)
DATA_FILES = FILES


def stage_workdir(root: str, stage: str, config_hash: str) -> str:
    return storage.join(root, "stages", f"{stage}-{config_hash}")


def data_paths(stage: str, workdir: str = "{workdir}") -> dict[str, str]:
    return {k: f"{workdir}/data/{name}" for k, name in DATA_FILES[stage].items()}


def capped(spec: StageSpec, max_steps: int | None) -> StageSpec:
    """``spec`` with at most ``max_steps`` steps (smoke runs); D's off-policy phase fits inside."""
    if not max_steps or spec.training.steps <= max_steps:
        return spec
    update: dict[str, Any] = {"training": spec.training.model_copy(update={"steps": max_steps})}
    if spec.objective.name == "distill_onpolicy":
        off = min(spec.objective.offpolicy_steps, max(max_steps // 2, 1))
        update["objective"] = spec.objective.model_copy(update={"offpolicy_steps": off})
    rm = spec.prepare.reward_model if spec.prepare else None
    if rm is not None and rm.steps > max_steps:  # T4's reward model is a training run too
        update["prepare"] = spec.prepare.model_copy(update={"reward_model": rm.model_copy(update={"steps": max_steps})})
    return spec.model_copy(update=update)


def _model(spec: StageSpec, preset: Preset) -> dict[str, Any]:
    model: dict[str, Any] = {"flavor": spec.flavor}
    if spec.training.rope_theta is not None:
        model["rope_theta"] = spec.training.rope_theta
    if spec.n_layers:
        model["n_layers"] = spec.n_layers
    if preset.vocab_size:
        model["vocab_size"] = preset.vocab_size
    return model


def _objective(spec: StageSpec) -> dict[str, Any]:
    obj = spec.objective
    params = obj.model_dump(mode="json", exclude={"name"})
    if obj.name in ("lm", "sft"):
        return {"name": obj.name, "params": {}}
    paths = data_paths(spec.stage)
    if obj.name == "grpo":
        params["rewards"] = [{k: v for k, v in r.items() if v not in (None, {})} for r in params["rewards"]]
        params.update(queries=paths["queries"], eval_queries=paths["heldout"])
        rm = spec.prepare.reward_model if spec.prepare else None
        if rm is not None:  # trained by the stage's preparation job (prepare_config)
            params["rewards"].append({"name": "reward_model", "weight": rm.weight,
                                      "model": f"{{workdir}}/data/{REWARD_MODEL}/hf"})
    else:  # distill_onpolicy: the teacher is the T4 checkpoint, its off-policy responses prepared
        params.update(teacher="{teacher}", prompts=paths["prompts"], offpolicy_data=paths["teacher"],
                      eval_queries=paths["heldout"])
        if obj.teacher_cache is not None:  # written by the stage's preparation job (prepare_config)
            params["teacher_cache"] = f"{{workdir}}/data/{TEACHER_CACHE}"
    return {"name": obj.name, "params": params}


def train_config(spec: StageSpec, preset: Preset, data_root: str = "{root}/data") -> dict[str, Any]:
    """The stage's ``TrainConfig`` dict (placeholders for paths); ``tracking`` is set per run."""
    t = spec.training
    cfg: dict[str, Any] = {
        "model": _model(spec, preset),
        "training": {"steps": t.steps, "micro_batch_size": t.micro_batch_size, "grad_accum": t.grad_accum,
                     "seq_len": t.seq_len, "seed": t.seed, "device": spec.scale.device, "param_dtype": t.param_dtype},
        "parallelism": spec.layout.model_dump(),
        "optimizer": {"name": "AdamW", "lr": t.lr, "weight_decay": t.weight_decay},
        "lr": {"schedule": t.schedule, "warmup_steps": t.warmup_steps, "decay_ratio": t.decay_ratio},
        "activation_checkpointing": t.activation_checkpointing,
        "compile": t.compile,
        "checkpoint": {"dir": "{workdir}/ckpt", "interval": t.checkpoint_interval, "keep_last": 2,
                       "export_hf": "{workdir}/hf"},
        "objective": _objective(spec),
        "dump_dir": "{dump}",
    }
    if spec.pretrain_data is not None:
        d = spec.pretrain_data
        cfg["data"] = {"seq_len": t.seq_len, "sources": [
            {"name": name, "paths": d.paths.get(name) or [storage.join(data_root, name)], "weight": weight}
            for name, weight in d.mix.items()]}
    elif spec.objective.name == "sft":
        cfg["data"] = {"kind": "sft", "sources": [{"name": f"{spec.stage.lower()}-sft",
                                                   "paths": [data_paths(spec.stage)["sft"]], "field": "messages"}]}
    if GRAPH[spec.stage].upstream or GRAPH[spec.stage].role == "student":
        cfg["init"] = {"path": "{init}", "format": "dcp" if spec.stage in ("S2", "S3") else "auto"}
    if spec.stage[0] != "S":
        # post-training checkpoints are small and few: save synchronously (no background thread at exit)
        cfg["checkpoint"]["async_save"] = False
    return cfg


def prepare_config(spec: StageSpec, preset: Preset) -> dict[str, Any] | None:
    """The ``qtrain posttrain prepare`` config of a post-training stage (None for pretraining)."""
    if spec.prepare is None:
        return None
    cfg = {"stage": spec.stage, "out": "{workdir}/data", "device": spec.scale.device,
           "seq_len": spec.training.seq_len, **spec.prepare.model_dump(mode="json")}
    if spec.stage == "T3":
        cfg["policy"] = "{init}"      # rejection sampling from the T2 model
    if spec.stage == "D":
        cfg["policy"] = "{teacher}"   # the teacher answers the prompts in both modes
        if spec.objective.teacher_cache is not None:  # ... then caches its top-k over those answers
            cfg["teacher_cache"] = spec.objective.teacher_cache.model_dump(mode="json")
    if spec.prepare.reward_model is not None:  # T4: the reward model, trained from the T3 model first
        cfg["reward_model"] = {**spec.prepare.reward_model.model_dump(mode="json", include={"dataset", "pairs",
                                                                                             "eval_share"}),
                               "train": reward_model_config(spec, preset)}
    if preset.vocab_size:
        cfg["vocab_size"] = preset.vocab_size
    return cfg


def reward_model_config(spec: StageSpec, preset: Preset) -> dict[str, Any]:
    """The ``TrainConfig`` of T4's reward model (run inside its preparation job): the stage's model,
    layout and dtype, from the stage's init, on the pairs the job writes under ``data/reward_model``."""
    rm = spec.prepare.reward_model
    cfg = train_config(spec, preset)
    cfg.pop("data", None)
    folder = f"{{workdir}}/data/{REWARD_MODEL}"
    cfg["training"].update(steps=rm.steps, micro_batch_size=rm.micro_batch_size, grad_accum=1)
    cfg["optimizer"]["lr"] = rm.lr
    cfg["lr"] = {"schedule": "cosine", "warmup_steps": 0, "decay_ratio": 1.0}
    # a few checkpoints on the way: a retried preparation job resumes its reward model mid-run
    cfg["checkpoint"].update(dir=f"{folder}/ckpt", interval=max(rm.steps // 4, 1), keep_last=1,
                             export_hf=f"{folder}/hf")
    cfg["objective"] = {"name": "reward_model", "params": {
        "pairs": f"{folder}/{REWARD_PAIRS['train']}",
        **({"eval_pairs": f"{folder}/{REWARD_PAIRS['eval']}"} if rm.eval_share else {})}}
    cfg["dump_dir"] = "{dump}/reward_model"
    return cfg


def eval_config(spec: StageSpec, preset: Preset) -> dict[str, Any] | None:
    """The thinking-budget curve job of the stage's final checkpoint, if the preset asks for one."""
    ev = preset.thinking_eval
    if ev is None or spec.stage not in ev.stages:
        return None
    return {"checkpoint": "{workdir}/hf", "out": "{workdir}/eval/thinking_budget.json",
            "device": spec.scale.device, **ev.model_dump(mode="json", exclude={"stages"})}


def config_hash(spec: StageSpec, configs: dict[str, Any], upstream: list[str]) -> str:
    doc = json.dumps({"spec": spec.model_dump(mode="json"), "configs": configs, "upstream": upstream},
                     sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def fill(cfg: dict[str, Any], **paths: str | None) -> dict[str, Any]:
    """Replace the placeholders (``workdir=..., init=..., root=...``) everywhere in ``cfg``."""
    text = json.dumps(cfg)
    for key, value in paths.items():
        if value is not None:
            text = text.replace(TOKENS[key], value.rstrip("/"))
    return json.loads(text)


def validate_train_config(cfg: dict[str, Any]) -> None:
    """Raise ValueError (one line) if ``cfg`` is not a valid TrainConfig (imports the trainer's model)."""
    from pydantic import ValidationError

    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.validation import describe

    try:
        parsed = TrainConfig.model_validate(cfg)
        if parsed.data is not None:
            from qwen3_trainer.platform.data import DataConfig

            DataConfig.model_validate({**parsed.data, "seq_len": parsed.data.get("seq_len", parsed.training.seq_len)})
    except ValidationError as exc:
        raise ValueError(describe(exc)) from None
