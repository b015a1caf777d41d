"""Which parallel layouts each objective really supports, checked at render / preflight (one line each).

The trainer (platform.train) supports FSDP2 (+ HSDP), tensor, pipeline and expert parallelism for
``lm`` and ``sft``. The rollout objectives (GRPO, on-policy distillation) generate with the whole
policy on every rank, and the trainer drives them through its non-pipelined step, so pipeline
parallelism is refused for them. Context parallelism is not wired into the trainer (torchtitan 0.2.2's
``context_parallel`` needs the attention and the data loader sharded along the sequence; neither is
done here), so ``cp > 1`` is refused everywhere rather than silently ignored: long-context stages
train 32K sequences with activation checkpointing instead.
"""

from __future__ import annotations

from qwen3_trainer.recipe.specs import StageSpec

PIPELINE_OBJECTIVES = ("lm", "sft")


def check_layout(spec: StageSpec) -> dict[str, int]:
    """The resolved degrees of ``spec`` on its scale; ValueError (one line, naming the stage) if unsupported."""
    p, name = spec.layout, spec.objective.name
    where = f"stage {spec.stage} ({name})"
    if p.cp > 1:
        raise ValueError(f"{where}: layout.cp={p.cp}: context parallelism is not implemented in this trainer; "
                         "use cp 1 (32K sequences train with activation_checkpointing)")
    if p.pp > 1 and name not in PIPELINE_OBJECTIVES:
        raise ValueError(f"{where}: layout.pp={p.pp}: pipeline parallelism supports only "
                         f"{'/'.join(PIPELINE_OBJECTIVES)} (rollouts need the whole policy on a rank)")
    try:
        return p.degrees(spec.scale.world_size)
    except ValueError as exc:
        raise ValueError(f"{where}: layout on {spec.scale.nodes} node(s) x {spec.scale.procs_per_node} "
                         f"process(es): {exc}") from None
