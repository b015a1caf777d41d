"""The post-training stages as complete TrainConfig dicts, for the pipeline (workflows/) to run.

Stages (RECIPE.md §Post-training): ``T1`` long-CoT cold start SFT, ``T2`` reasoning RL (GRPO), ``T3``
thinking-mode fusion SFT, ``T4`` general RL (GRPO with rule + instruction rewards), ``D``
strong-to-weak distillation — ONE config whose objective ``distill_onpolicy`` runs the off-policy
phase (``offpolicy_steps`` steps of forward KL on the teacher's responses in both modes) and then
the on-policy phase (reverse KL on the student's own samples).

Usage, per stage (each stage's output is the HF export ``stage_output(stage, workdir)``)::

    report = prepare_stage_data("T1", preset="tiny", workdir=w, policy_checkpoint=None)
    cfg = stage_config("T1", preset="tiny", workdir=w, init_checkpoint=base)   # -> qtrain train
    prepare_stage_data("T2", preset="tiny", workdir=w, policy_checkpoint=stage_output("T1", w))
    cfg = stage_config("T2", preset="tiny", workdir=w, init_checkpoint=stage_output("T1", w))
    prepare_stage_data("T3", ..., policy_checkpoint=stage_output("T2", w))   # rejection sampling
    cfg = stage_config("T3", ..., init_checkpoint=stage_output("T2", w))
    prepare_stage_data("T4", ...); cfg = stage_config("T4", ..., init_checkpoint=stage_output("T3", w))
    prepare_stage_data("D", ..., policy_checkpoint=None, teacher_checkpoint=stage_output("T4", w))
    cfg = stage_config("D", ..., init_checkpoint=student_base, teacher_checkpoint=stage_output("T4", w))

``prepare_stage_data`` must run before ``stage_config``'s job (it writes the data files the config
names); T1, T2 and T4 data are procedural, T3 samples from ``policy_checkpoint`` and D from the
teacher. ``init_checkpoint=None`` starts from the seeded random init (tests only). Preset ``tiny``:
debugmodel on CPU, place-value addition (40+7), each stage well under a minute of training.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

STAGES = ("T1", "T2", "T3", "T4", "D")
PRESETS = ("tiny",)

_TINY: dict[str, Any] = {
    "flavor": "debugmodel", "seq_len": 80, "mb": 4, "device": "cpu",
    "problems": 56, "heldout": 25, "difficulties": [0],
    "steps": {"T1": 40, "T2": 6, "T3": 30, "T4": 4, "D": 12},
    "lr": {"T1": 3e-3, "T2": 5e-4, "T3": 2e-3, "T4": 5e-4, "D": 1e-3},
    "max_new_tokens": 24, "group_size": 4, "prompts_per_step": 4,
}


def _check(stage: str, preset: str) -> dict[str, Any]:
    if stage not in STAGES:
        raise ValueError(f"unknown post-training stage {stage!r}; known: {', '.join(STAGES)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return _TINY


def stage_dir(stage: str, workdir: str) -> str:
    return str(Path(workdir) / stage)


def stage_output(stage: str, workdir: str) -> str:
    """The stage's exported HF checkpoint (the next stage's ``init_checkpoint``)."""
    return str(Path(stage_dir(stage, workdir)) / "hf")


def data_paths(stage: str, workdir: str) -> dict[str, str]:
    d = Path(stage_dir(stage, workdir)) / "data"
    return {
        "T1": {"sft": str(d / "coldstart_sft.jsonl")},
        "T2": {"queries": str(d / "queries.jsonl"), "heldout": str(d / "heldout.jsonl")},
        "T3": {"sft": str(d / "fusion_sft.jsonl")},
        "T4": {"queries": str(d / "queries.jsonl"), "heldout": str(d / "heldout.jsonl")},
        "D": {"prompts": str(d / "prompts.jsonl"), "teacher": str(d / "teacher_responses.jsonl"),
              "heldout": str(d / "heldout.jsonl")},
    }[stage]


def _base(stage: str, p: dict, workdir: str, init_checkpoint: str | None) -> dict[str, Any]:
    out = stage_dir(stage, workdir)
    return {
        "model": {"flavor": p["flavor"]},
        "training": {"steps": p["steps"][stage], "micro_batch_size": p["mb"], "grad_accum": 1,
                     "seq_len": p["seq_len"], "seed": 0, "device": p["device"]},
        "optimizer": {"lr": p["lr"][stage], "weight_decay": 0.0},
        "lr": {"schedule": "constant", "warmup_steps": 0},
        "checkpoint": {"dir": f"{out}/ckpt", "export_hf": stage_output(stage, workdir), "async_save": False},
        "tracking": {"run_name": f"posttrain-{stage}"},
        "init": {"path": init_checkpoint},
        "dump_dir": f"{out}/run",
    }


def stage_config(stage: str, *, preset: str, workdir: str, init_checkpoint: str | None,
                 teacher_checkpoint: str | None = None) -> dict[str, Any]:
    """A complete TrainConfig dict for ``stage`` (validate with ``TrainConfig.model_validate``)."""
    p = _check(stage, preset)
    cfg = _base(stage, p, workdir, init_checkpoint)
    paths = data_paths(stage, workdir)
    if stage in ("T1", "T3"):
        cfg["objective"] = {"name": "sft", "params": {}}
        cfg["data"] = {"kind": "sft", "sources": [{"name": f"{stage.lower()}-sft", "paths": [paths["sft"]],
                                                   "field": "messages"}]}
    elif stage in ("T2", "T4"):
        rewards = [{"name": "math", "weight": 1.0}, {"name": "format", "weight": 0.2}]
        if stage == "T4":
            rewards.append({"name": "instruction", "weight": 0.5})
        cfg["objective"] = {"name": "grpo", "params": {
            "queries": paths["queries"], "eval_queries": paths["heldout"], "eval_size": p["heldout"],
            "group_size": p["group_size"], "prompts_per_step": p["prompts_per_step"], "ppo_epochs": 2,
            "max_new_tokens": p["max_new_tokens"], "temperature": 1.0, "rewards": rewards,
            "kl_coef": 0.0}}
    else:
        teacher = teacher_checkpoint
        if not teacher:
            raise ValueError("stage D needs teacher_checkpoint (e.g. the T4 output)")
        cfg["objective"] = {"name": "distill_onpolicy", "params": {
            "teacher": teacher, "prompts": paths["prompts"], "offpolicy_data": paths["teacher"],
            "offpolicy_steps": p["steps"]["D"] // 2, "think_ratio": 0.5, "prompts_per_step": p["mb"],
            "max_new_tokens": p["max_new_tokens"], "eval_queries": paths["heldout"], "eval_size": p["heldout"]}}
    return cfg


def prepare_stage_data(stage: str, preset: str, workdir: str, policy_checkpoint: str | None = None, *,
                       teacher_checkpoint: str | None = None) -> dict[str, Any]:
    """Write the data files ``stage_config(stage, ...)`` names; returns counts and paths.

    T3 rejection-samples thinking answers from ``policy_checkpoint`` (the T2 model); D asks the
    teacher (``teacher_checkpoint``, else ``policy_checkpoint``) for responses in both modes.
    """
    from qwen3_trainer.platform.data import synthetic as syn

    p = _check(stage, preset)
    paths = data_paths(stage, workdir)
    train, held = syn.split_problems(p["problems"], p["heldout"], seed=0, difficulties=p["difficulties"])
    rng = random.Random(1)
    if stage == "T1":
        from qwen3_trainer.platform.posttrain.coldstart import run_coldstart

        pool = syn.coldstart_pool(train * 3, seed=0, difficulties=p["difficulties"])
        return run_coldstart(pool, paths["sft"])
    if stage == "T2":
        return {"queries": syn.write_jsonl(paths["queries"], [syn.query_record(q) for q in train]),
                "heldout": syn.write_jsonl(paths["heldout"], [syn.query_record(q) for q in held]), **paths}
    if stage == "T4":
        queries = [_general_query(q, rng) for q in train]
        return {"queries": syn.write_jsonl(paths["queries"], queries),
                "heldout": syn.write_jsonl(paths["heldout"], [syn.query_record(q, "/no_think") for q in held]),
                **paths}
    if stage == "T3":
        return _prepare_fusion(p, paths, train, policy_checkpoint)
    return _prepare_distill(p, paths, train, held, teacher_checkpoint or policy_checkpoint)


def _general_query(q, rng: random.Random) -> dict:
    """A math query with a random mode flag and an instruction to follow (general RL)."""
    rec = syn_query(q, rng.choice(["/think", "/no_think", ""]))
    rule = rng.choice([("End your answer with a period.", {"type": "ends_with", "value": "."}),
                       ("Answer in at most 6 words.", {"type": "max_words", "value": 6}),
                       ("Put the answer in \\boxed{}.", {"type": "boxed"})])
    rec["prompt"][-1]["content"] = f"{rule[0]} {rec['prompt'][-1]['content']}"
    rec["constraints"] = [rule[1]]
    return rec


def syn_query(q, flag: str) -> dict:
    from qwen3_trainer.platform.data.synthetic import query_record

    return query_record(q, flag)


def _load(path: str, p: dict):
    from qwen3_trainer.model.build import init_buffers
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    model = frozen_model(path, p["device"])
    model.model_args.max_seq_len = max(model.model_args.max_seq_len, p["seq_len"])
    init_buffers(model, p["device"])
    return model


def _prepare_fusion(p, paths, train, policy_checkpoint) -> dict[str, Any]:
    from qwen3_trainer.model.generation import LocalRolloutEngine
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.data import synthetic as syn
    from qwen3_trainer.platform.posttrain.fusion import build_fusion, rejection_sample

    if not policy_checkpoint:
        raise ValueError("stage T3 needs policy_checkpoint (the T2 model) to rejection-sample from")
    tok = load_tokenizer()
    half = len(train) // 2
    engine = LocalRolloutEngine(_load(policy_checkpoint, p), tok)
    thinking, rs = rejection_sample(engine, tok, [syn.query_record(q) for q in train[:half]], samples=4,
                                    max_new_tokens=p["max_new_tokens"], seq_len=p["seq_len"])
    # the miniature's stage-2 model may verify only part of its answers: worked solutions fill the rest
    filler = [syn.sft_record(q, thinking=True) for q in train[: half - len(thinking)]]
    nonthinking = [syn.sft_record(q, thinking=False) for q in train[half:]]
    records, stats = build_fusion(thinking + filler, nonthinking, seed=0)
    syn.write_jsonl(paths["sft"], records)
    return {"samples": len(records), "rejection_sampled": len(thinking), "synthetic_thinking": len(filler),
            "nonthinking": len(nonthinking), "rejection": dict(rs), "fusion": dict(stats), **paths}


def _prepare_distill(p, paths, train, held, teacher_checkpoint) -> dict[str, Any]:
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.data import synthetic as syn
    from qwen3_trainer.platform.posttrain.distill import teacher_responses

    if not teacher_checkpoint:
        raise ValueError("stage D needs teacher_checkpoint (the T4 model) for its off-policy responses")
    tok = load_tokenizer()
    queries = [syn.query_record(q) for q in train]
    records, stats = teacher_responses(_load(teacher_checkpoint, p), tok, queries[:64],
                                       max_new_tokens=p["max_new_tokens"], seq_len=p["seq_len"], verify=False)
    syn.write_jsonl(paths["teacher"], records)
    syn.write_jsonl(paths["prompts"], queries)
    syn.write_jsonl(paths["heldout"], [syn.query_record(q) for q in held])
    return {"teacher_responses": len(records), "teacher": dict(stats), **paths}
