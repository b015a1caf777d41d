"""The Qwen3 recipe's stage graph as data: eight stages, what each starts from, who teaches whom.

Pretraining S1 general -> S2 reasoning -> S3 long context; post-training T1 long-CoT cold start ->
T2 reasoning RL -> T3 thinking-mode fusion -> T4 general RL (the teacher line); D strong-to-weak
distillation of T4 into a student (RECIPE.md, R §3.2 and §4). The student starts from its own init
(``Preset.student_init``): the teacher line's S3 when it has the teacher's flavor (the miniature),
else an HF / DCP checkpoint given by the user. No torch, no Prefect: flows, the CLI and benchmarks
read this table and never restate it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["pretrain", "sft", "rl", "distill"]


@dataclass(frozen=True)
class StageNode:
    name: str
    kind: Kind
    flow: str                     # Prefect flow name (kebab-case)
    alias: str                    # model-registry alias of the stage's output
    upstream: str | None          # the stage whose checkpoint it starts from (D: see student_upstream)
    teacher: str | None = None    # D: the stage whose checkpoint teaches
    role: Literal["teacher", "student"] = "teacher"
    prepares_data: bool = False   # a data-preparation job runs before its training job


GRAPH: dict[str, StageNode] = {n.name: n for n in (
    StageNode("S1", "pretrain", "s1-general", "S1-general", None),
    StageNode("S2", "pretrain", "s2-reasoning", "S2-reasoning", "S1"),
    StageNode("S3", "pretrain", "s3-long-context", "S3-long-context", "S2"),
    StageNode("T1", "sft", "t1-cold-start", "T1-cold-start", "S3", prepares_data=True),
    StageNode("T2", "rl", "t2-reasoning-rl", "T2-reasoning-rl", "T1", prepares_data=True),
    StageNode("T3", "sft", "t3-fusion", "T3-fusion", "T2", prepares_data=True),
    StageNode("T4", "rl", "t4-general-rl", "T4-general-rl", "T3", prepares_data=True),
    StageNode("D", "distill", "d-distillation", "distilled", None, teacher="T4", role="student",
              prepares_data=True),
)}
STAGES: tuple[str, ...] = tuple(GRAPH)
PRETRAIN: tuple[str, ...] = tuple(s for s, n in GRAPH.items() if n.kind == "pretrain")
FLOW_NAMES = {s: n.flow for s, n in GRAPH.items()}
ALIASES = {s: n.alias for s, n in GRAPH.items()}


def parse_stages(spec: str | list[str] | None) -> list[str]:
    """'S1,S2' / ['S1', 'S2'] / None (all) -> stage names in recipe order; unknown names raise."""
    if spec is None or spec == [] or spec == "":
        return list(STAGES)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    wanted = [s.strip().upper() for s in items if s.strip()]
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    return [s for s in STAGES if s in wanted]
