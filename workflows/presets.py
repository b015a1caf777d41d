"""Stage knobs of the Qwen3 recipe and the presets that size them (no Prefect, no I/O).

Eight stages (RECIPE.md): pretraining S1 general -> S2 reasoning -> S3 long context, post-training
T1 long-CoT cold start -> T2 reasoning RL -> T3 thinking-mode fusion -> T4 general RL, and D
strong-to-weak distillation of the final teacher into a student.

What changes from stage to stage (R §3.2): S2 shifts the data mix towards STEM / code / reasoning and
decays the learning rate faster (a larger WSD decay share); S3 raises the sequence length 4K -> 32K and
the RoPE base 10,000 -> 1,000,000 (ABF). The post-training stages' configs come from
``platform.posttrain.stages.stage_config``; here they carry only their scale (nodes, sequence length).

Presets:
- ``tiny``: debugmodel (dense, 2 layers, dim 64) on this CPU, one process per stage; sequence
  lengths scaled down (4K -> 128; S3's 4K -> 32K jump becomes 128 -> 512, 4x instead of 8x, to stay
  inside the CPU budget), a few steps per stage. All eight stages run in minutes.
- ``full``: the report's scale for a real cluster: 235B-A22B teacher, 30B-A3B student, H200 nodes,
  token budgets from R §3.2 (S1 >30T, S2 ~5T, S3 "hundreds of billions" -> 200B). The report gives no
  batch size or learning rate; the global batch (tokens) and LRs below are this project's choice,
  documented as such. Rendered (``qtrain pipeline render --preset full``), not run here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Stage = Literal["S1", "S2", "S3", "T1", "T2", "T3", "T4", "D"]
STAGES: tuple[str, ...] = ("S1", "S2", "S3", "T1", "T2", "T3", "T4", "D")
PRETRAIN: tuple[str, ...] = ("S1", "S2", "S3")

# flow name (kebab-case) and model-registry alias of each stage
FLOW_NAMES = {"S1": "s1-general", "S2": "s2-reasoning", "S3": "s3-long-context", "T1": "t1-cold-start",
              "T2": "t2-reasoning-rl", "T3": "t3-fusion", "T4": "t4-general-rl", "D": "d-distillation"}
ALIASES = {"S1": "S1-general", "S2": "S2-reasoning", "S3": "S3-long-context", "T1": "T1-cold-start",
           "T2": "T2-reasoning-rl", "T3": "T3-fusion", "T4": "T4-general-rl", "D": "distilled"}
# the stage each stage starts from; D's student: see plan._upstream (its teacher is T4)
UPSTREAM = {"S1": None, "S2": "S1", "S3": "S2", "T1": "S3", "T2": "T1", "T3": "T2", "T4": "T3", "D": None}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StageKnobs(_Strict):
    """What one stage trains with and on how much hardware."""

    stage: Stage
    flavor: str                                 # model flavor (`qtrain model list`)
    seq_len: int = Field(gt=0)                  # training sequence length
    steps: int = Field(gt=0)                    # optimizer steps
    micro_batch_size: int = Field(1, gt=0)      # sequences per rank per micro-batch
    grad_accum: int = Field(1, gt=0)            # micro-batches per step
    lr: float = Field(3e-4, gt=0)               # peak learning rate
    warmup_steps: int = Field(0, ge=0)
    decay_ratio: float = Field(0.1, ge=0, le=1)  # WSD: share of steps spent decaying (S2 decays faster)
    rope_theta: float | None = None             # None: the flavor's 1e6 (S1/S2 train at 1e4, S3 raises it)
    data_mix: dict[str, float] = {}             # pretraining: source -> weight (tiny sources: web, reasoning)
    checkpoint_interval: int = Field(0, ge=0)   # steps between checkpoints (0: only the final one)
    token_budget: float | None = None           # tokens the stage is meant to see (documentation, full scale)
    nodes: int = Field(1, ge=1)                 # PyTorchJob nodes
    gpus_per_node: int = Field(0, ge=0)         # 0: CPU processes
    nproc_per_node: int = Field(1, ge=1)        # processes per node (= GPUs when there are GPUs)
    parallelism: dict[str, Any] = {}            # TrainConfig.parallelism (tp, pp, ep, cp, dp_shard)
    node_pool: str | None = None                # cluster.yaml node pool name (k8s)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @property
    def global_batch_tokens(self) -> int:
        dp = max(self.nodes * self.nproc_per_node // _model_parallel(self.parallelism), 1)
        return self.seq_len * self.micro_batch_size * self.grad_accum * dp


def _model_parallel(p: dict[str, Any]) -> int:
    return int(p.get("tp", 1)) * int(p.get("pp", 1)) * int(p.get("cp", 1))


class Preset(_Strict):
    name: str
    description: str
    teacher_flavor: str
    student_flavor: str
    image: str = "ghcr.io/qwen3-trainer/qwen3-trainer:0.1.0"
    corpus_megabytes: float = 0.0               # tiny: size of the locally generated corpus (0: bring data)
    data_root: str | None = None                # full: where the stage corpora live (s3://...)
    retries: int = Field(2, ge=0)               # Prefect task retries of a failed stage job
    vocab_size: int | None = None               # model.vocab_size of every stage (None: the flavor's rows)
    thinking_budgets: list[int] = []            # budgets of the thinking-budget curve (in-process eval)
    thinking_eval_stages: list[str] = ["T4", "D"]  # checkpoints that get the curve
    stages: dict[str, StageKnobs]

    def knobs(self, stage: str) -> StageKnobs:
        return self.stages[stage]


def _tiny() -> Preset:
    common = dict(flavor="debugmodel", micro_batch_size=2, device="cpu", checkpoint_interval=4)
    pre = {
        "S1": StageKnobs(stage="S1", seq_len=128, steps=8, lr=1e-3, warmup_steps=1, decay_ratio=0.1,
                         rope_theta=1e4, data_mix={"web": 1.0}, **common),
        # more reasoning data, faster LR decay (half the stage decays)
        "S2": StageKnobs(stage="S2", seq_len=128, steps=6, lr=6e-4, decay_ratio=0.5, rope_theta=1e4,
                         data_mix={"web": 0.3, "reasoning": 0.7}, **common),
        # 4K -> 32K scaled down to 128 -> 512, RoPE base 1e4 -> 1e6
        "S3": StageKnobs(stage="S3", seq_len=512, steps=4, lr=3e-4, decay_ratio=0.25, rope_theta=1e6,
                         data_mix={"web": 0.5, "reasoning": 0.5}, **{**common, "micro_batch_size": 1}),
    }
    post = {s: StageKnobs(stage=s, seq_len=512, steps=1, rope_theta=1e6, flavor="debugmodel", device="cpu")
            for s in ("T1", "T2", "T3", "T4", "D")}
    return Preset(name="tiny", description="debugmodel on one CPU process per stage, minutes end to end",
                  teacher_flavor="debugmodel", student_flavor="debugmodel", corpus_megabytes=0.4, retries=1,
                  thinking_budgets=[0, 8, 16, 32], stages={**pre, **post},
                  # the tokenizer's 151,669 ids exactly: the flavor's 267 padding rows stay untrained in a
                  # miniature run, and rollouts (T2-T4, D) sampling one would emit an undecodable id
                  vocab_size=151_669)


# full scale: 8 x H200 per node; 235B-A22B with EP 8 x PP 4 on 32 nodes (64-way data parallel). Global
# batch (project choice; the report gives none): 4096 x 4K = 16.8M tokens at S1/S2, 256 x 32K at S3.
_FULL_PAR = {"ep": 8, "pp": 4, "dp_shard": -1}


def _budgeted(knobs: StageKnobs) -> StageKnobs:
    """Steps that spend the stage's token budget at its global batch."""
    return knobs.model_copy(update={"steps": int(knobs.token_budget // knobs.global_batch_tokens)})


def _full() -> Preset:
    gpu = dict(flavor="235B-A22B", gpus_per_node=8, nproc_per_node=8, node_pool="gpu", device="cuda",
               parallelism=_FULL_PAR, checkpoint_interval=500, steps=1)
    pre = {
        "S1": _budgeted(StageKnobs(stage="S1", seq_len=4096, nodes=32, micro_batch_size=4, grad_accum=16,
                                   token_budget=30e12, lr=2e-4, warmup_steps=2000, decay_ratio=0.0,
                                   rope_theta=1e4, data_mix={"web": 0.85, "reasoning": 0.15}, **gpu)),
        "S2": _budgeted(StageKnobs(stage="S2", seq_len=4096, nodes=32, micro_batch_size=4, grad_accum=16,
                                   token_budget=5e12, lr=2e-4, decay_ratio=0.5, rope_theta=1e4,
                                   data_mix={"web": 0.4, "reasoning": 0.6}, **gpu)),
        "S3": _budgeted(StageKnobs(stage="S3", seq_len=32768, nodes=32, grad_accum=16, token_budget=200e9,
                                   lr=5e-5, decay_ratio=0.3, rope_theta=1e6,
                                   data_mix={"web": 0.75, "reasoning": 0.25},
                                   **{**gpu, "parallelism": {**_FULL_PAR, "cp": 4}})),
    }
    gpu.pop("steps")
    post = {s: StageKnobs(stage=s, seq_len=32768, nodes=n, steps=1, rope_theta=1e6, **gpu)
            for s, n in (("T1", 16), ("T2", 32), ("T3", 16), ("T4", 32))}
    post["D"] = StageKnobs(stage="D", seq_len=32768, nodes=8, steps=1, rope_theta=1e6,
                           **{**gpu, "flavor": "30B-A3B", "parallelism": {"ep": 8, "dp_shard": -1}})
    return Preset(name="full", description="Qwen3-235B-A22B through the whole recipe, 30B-A3B student (H200)",
                  teacher_flavor="235B-A22B", student_flavor="30B-A3B", data_root="s3://qwen3-corpus",
                  retries=3, stages={**pre, **post})


PRESETS: dict[str, Preset] = {"tiny": _tiny(), "full": _full()}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


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
