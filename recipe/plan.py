"""A pipeline's plan: for each chosen stage (and each stage it starts from) its spec, configs and hash.

``plan`` is pure (no I/O, no torch): the CLI's ``render``, the Prefect flows and the benchmarks all
call it, so a stage renders exactly as it runs. ``validate`` adds the checks that import the trainer's
config model (every stage's ``TrainConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qwen3_trainer.recipe import configs as cf
from qwen3_trainer.recipe.graph import GRAPH, STAGES
from qwen3_trainer.recipe.presets import Preset
from qwen3_trainer.recipe.specs import StageSpec


@dataclass(frozen=True)
class StagePlan:
    stage: str
    spec: StageSpec                       # what runs (``max_steps`` applied)
    config_hash: str
    train: dict[str, Any]                 # TrainConfig dict with {workdir}/{init}/... placeholders
    prepare: dict[str, Any] | None        # the data-preparation job's config (T1-T4, D)
    evaluate: dict[str, Any] | None       # the thinking-budget job's config
    upstream: str | None                  # the stage whose checkpoint it starts from (in the pipeline)
    teacher: str | None                   # D: the stage whose checkpoint teaches

    def workdir(self, root: str) -> str:
        return cf.stage_workdir(root, self.stage, self.config_hash)

    def _fill(self, cfg: dict[str, Any], root: str, **paths: str | None) -> dict[str, Any]:
        return cf.fill(cfg, workdir=self.workdir(root), root=root, **paths)

    def train_config(self, root: str, *, init: str | None, teacher: str | None, dump: str,
                     tracking: dict[str, Any] | None = None) -> dict[str, Any]:
        cfg = self._fill(self.train, root, init=init, teacher=teacher, dump=dump)
        if init is None and "init" in cfg:  # no checkpoint to start from: the seeded random init (tests)
            cfg.pop("init")
        if tracking:
            cfg["tracking"] = tracking
        return cfg

    def prepare_config(self, root: str, *, init: str | None, teacher: str | None) -> dict[str, Any] | None:
        return self._fill(self.prepare, root, init=init, teacher=teacher) if self.prepare else None

    def eval_config(self, root: str) -> dict[str, Any] | None:
        return self._fill(self.evaluate, root) if self.evaluate else None


def upstream_of(stage: str, preset: Preset) -> str | None:
    return preset.student_upstream() if GRAPH[stage].role == "student" else GRAPH[stage].upstream


def with_dependencies(stages: list[str], preset: Preset) -> list[str]:
    """``stages`` plus every stage they start from or learn from, in recipe order."""
    out: set[str] = set()
    todo = list(stages)
    while todo:
        stage = todo.pop()
        if stage not in out:
            out.add(stage)
            todo += [s for s in (upstream_of(stage, preset), GRAPH[stage].teacher) if s]
    return [s for s in STAGES if s in out]


def plan(preset: Preset, stages: list[str], *, max_steps: int | None = None) -> dict[str, StagePlan]:
    """The chosen stages and every stage they start from (hashes chain through all of them)."""
    plans: dict[str, StagePlan] = {}
    data_root = preset.data_root or "{root}/data"
    for stage in with_dependencies(stages, preset):
        spec = cf.capped(preset.spec(stage), max_steps)
        train = cf.train_config(spec, preset, data_root)
        prepare, evaluate = cf.prepare_config(spec, preset), cf.eval_config(spec, preset)
        up, teacher = upstream_of(stage, preset), GRAPH[stage].teacher
        upstream = [plans[s].config_hash for s in (up, teacher) if s]
        if GRAPH[stage].role == "student" and up is None:
            upstream.append(f"student_init={preset.student_init}")
        configs = {"train": train, "prepare": prepare, "evaluate": evaluate, "image": preset.image}
        plans[stage] = StagePlan(stage, spec, cf.config_hash(spec, configs, upstream), train, prepare, evaluate,
                                 up, teacher)
    return plans


def validate(plans: dict[str, StagePlan], stages: list[str], root: str) -> None:
    """Every chosen stage's training config against ``TrainConfig``; ValueError naming the stage."""
    for stage in stages:
        cfg = plans[stage].train_config(root, init="/placeholder/init", teacher="/placeholder/teacher",
                                        dump="/tmp/dump")
        try:
            cf.validate_train_config(cfg)
        except ValueError as exc:
            raise ValueError(f"stage {stage}: invalid training config: {exc}") from None
        prep = plans[stage].prepare_config(root, init="/placeholder/init", teacher="/placeholder/teacher")
        if prep and prep.get("reward_model"):  # T4's reward model is a training run of its own
            try:
                cf.validate_train_config(prep["reward_model"]["train"])
            except ValueError as exc:
                raise ValueError(f"stage {stage}: invalid reward-model training config: {exc}") from None
