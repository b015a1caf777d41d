"""The recipe's presets: ``tiny`` (this CPU), ``single-gpu`` (one H200), ``full`` (the report's scale).

Each preset sizes all eight stages (graph.py). What changes between stages follows the report
(RECIPE.md): S2 shifts the mix towards STEM / reasoning and decays faster; S3 raises the sequence
length 4K -> 32K and the RoPE base 1e4 -> 1e6 (ABF); T1/T3 are SFT, T2/T4 GRPO, D on-policy
distillation after an off-policy phase. The report gives no batch sizes or learning rates: those
below are this project's choices, and the post-training ones of ``tiny`` are the settings the
post-training benchmark validated (docs/posttrain-history.md, runs 4-7): fusion at a quarter of the
cold start's lr (2e-3 undid the GRPO gain, 5e-4 kept it), GRPO sampling at T 0.8 / top-p 0.95,
off-policy distillation as SFT on the teacher's responses, on-policy target at teacher temperature 0.3.

- ``tiny``: debugmodel (2 layers, dim 64) on one CPU process per stage; sequence lengths scaled down
  (S3's 4K -> 32K jump becomes 128 -> 512), a few steps per stage: all eight stages in minutes.
- ``single-gpu``: Qwen3-1.7B teacher line and a 0.6B student (its own HF init), each stage on one
  H200 in bf16 compute: the preset of the post-training GPU runs.
- ``full``: Qwen3-235B-A22B through S1-T4 on 8 x H200 nodes and strong-to-weak distillation into
  30B-A3B (the report's line: flagship models trained through the four stages, smaller ones distilled),
  token budgets from R §3.2 (S1 >30T, S2 ~5T, S3 "hundreds of billions" -> 200B). Rendered, not run here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qwen3_trainer.recipe.graph import GRAPH, STAGES
from qwen3_trainer.recipe.layouts import check_layout
from qwen3_trainer.recipe.specs import (
    DistillObjective,
    GRPOObjective,
    Layout,
    Prepare,
    PretrainData,
    Reward,
    RewardModelStep,
    Scale,
    SFTObjective,
    StageSpec,
    Training,
)

DEFAULT_IMAGE = "ghcr.io/qwen3-trainer/qwen3-trainer:0.1.0"


class ThinkingEval(BaseModel):
    """The thinking-budget curve (R §4.3): held-out accuracy as the budget grows, run as a job on the
    stage's final checkpoint (``qtrain eval thinking-budget``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    budgets: list[int] = Field(min_length=1)    # thinking budgets (tokens)
    stages: list[str] = ["T4", "D"]             # checkpoints that get the curve
    problems: int = Field(8, gt=0)              # held-out generated problems
    max_new_tokens: int = Field(48, gt=0)
    seq_len: int = Field(192, gt=0)             # prompt + response context of the evaluation
    seed: int = 7                               # draws the held-out problems


class Preset(BaseModel):
    """A whole recipe: every stage's spec plus what the pipeline around them needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str
    teacher_flavor: str                         # S1-T4
    student_flavor: str                         # D
    # the student's own init: None = the teacher line's S3 (same flavor only), else an HF/DCP checkpoint
    student_init: str | None = None
    image: str = DEFAULT_IMAGE
    corpus_megabytes: float = Field(0.0, ge=0)  # tiny: size of the generated local corpus (0: bring data)
    data_root: str | None = None                # where the pretraining sources live (None: <root>/data)
    retries: int = Field(2, ge=0)               # Prefect task retries of a failed stage job
    vocab_size: int | None = None               # model.vocab_size of every stage (None: the flavor's rows)
    thinking_eval: ThinkingEval | None = None   # the thinking-budget curve after some stages (an eval job)
    stages: dict[str, StageSpec]

    @model_validator(mode="after")
    def _complete(self) -> Preset:
        if list(self.stages) != list(STAGES):
            missing = [s for s in STAGES if s not in self.stages] or [s for s in self.stages if s not in STAGES]
            raise ValueError(f"stages: must hold {', '.join(STAGES)} in order (check {missing[0] if missing else 'order'})")
        for name, spec in self.stages.items():
            if spec.stage != name:
                raise ValueError(f"stages.{name}: its spec says stage {spec.stage}")
            want = self.student_flavor if GRAPH[name].role == "student" else self.teacher_flavor
            if spec.flavor != want:
                raise ValueError(f"stages.{name}.flavor: {spec.flavor!r}, but the preset's "
                                 f"{GRAPH[name].role} is {want!r}")
            check_layout(spec)
        return self

    def spec(self, stage: str) -> StageSpec:
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        return self.stages[stage]

    def student_upstream(self) -> str | None:
        """The stage D's student starts from inside the pipeline (None: ``student_init``)."""
        return "S3" if self.student_init is None and self.student_flavor == self.teacher_flavor else None


# -- tiny ------------------------------------------------------------------------------------------
def _tiny() -> Preset:
    cpu = Scale(device="cpu")
    pre = dict(flavor="debugmodel", scale=cpu)

    def pt(steps, lr, **kw):
        return Training(seq_len=128, steps=steps, micro_batch_size=2, lr=lr, checkpoint_interval=4, **kw)

    def post(steps, lr):
        return Training(seq_len=80, steps=steps, micro_batch_size=4, lr=lr, schedule="constant",
                        weight_decay=0.0, rope_theta=None)

    prep = Prepare(problems=56, heldout=25, difficulties=[0], samples=4, teacher_prompts=64, max_new_tokens=24)
    grpo = dict(group_size=4, prompts_per_step=4, ppo_epochs=2, minibatches=1, max_new_tokens=24, eval_size=25)
    stages = {
        "S1": StageSpec(stage="S1", training=pt(8, 1e-3, warmup_steps=1, decay_ratio=0.1, rope_theta=1e4),
                        pretrain_data=PretrainData(mix={"web": 1.0}), **pre),
        # more reasoning data, faster LR decay (half the stage decays)
        "S2": StageSpec(stage="S2", training=pt(6, 6e-4, decay_ratio=0.5, rope_theta=1e4),
                        pretrain_data=PretrainData(mix={"web": 0.3, "reasoning": 0.7}), **pre),
        # 4K -> 32K scaled down to 128 -> 512, RoPE base 1e4 -> 1e6
        "S3": StageSpec(stage="S3", training=Training(seq_len=512, steps=4, micro_batch_size=1, lr=3e-4,
                                                      decay_ratio=0.25, rope_theta=1e6, checkpoint_interval=4),
                        pretrain_data=PretrainData(mix={"web": 0.5, "reasoning": 0.5}), **pre),
        "T1": StageSpec(stage="T1", training=post(40, 3e-3), objective=SFTObjective(), prepare=prep, **pre),
        "T2": StageSpec(stage="T2", training=post(6, 5e-4), objective=GRPOObjective(**grpo), prepare=prep, **pre),
        # a quarter of the cold start's lr: 2e-3 undid the GRPO gain in the benchmark, 5e-4 kept it
        "T3": StageSpec(stage="T3", training=post(30, 5e-4), objective=SFTObjective(), prepare=prep, **pre),
        "T4": StageSpec(stage="T4", training=post(4, 5e-4), **pre, objective=GRPOObjective(
            **grpo, rewards=[Reward(name="math"), Reward(name="format", weight=0.2),
                             Reward(name="instruction", weight=0.5)]),
                        prepare=prep.model_copy(update={"reward_model": RewardModelStep(
                            pairs=48, eval_share=0.25, steps=6, lr=1e-3, micro_batch_size=4, weight=0.5)})),
        "D": StageSpec(stage="D", training=post(12, 1e-3), prepare=prep, **pre, objective=DistillObjective(
            offpolicy_steps=6, prompts_per_step=4, max_new_tokens=24, eval_size=25)),
    }
    return Preset(name="tiny", description="debugmodel on one CPU process per stage, minutes end to end",
                  teacher_flavor="debugmodel", student_flavor="debugmodel", corpus_megabytes=0.4, retries=1,
                  thinking_eval=ThinkingEval(budgets=[0, 8, 16, 32]), stages=stages,
                  # the tokenizer's 151,669 ids exactly: the flavor's 267 padding rows stay untrained in a
                  # miniature run, and rollouts (T2-T4, D) sampling one would emit an undecodable id
                  vocab_size=151_669)


# -- single-gpu ------------------------------------------------------------------------------------
def _single_gpu() -> Preset:
    gpu = Scale(gpus_per_node=1, device="cuda", node_pool="gpu")
    bf16 = dict(param_dtype="bfloat16", compile=True)
    teacher = dict(flavor="1.7B", scale=gpu)

    def pt(steps, lr, seq=4096, mb=4, **kw):
        return Training(seq_len=seq, steps=steps, micro_batch_size=mb, lr=lr, checkpoint_interval=200, **bf16, **kw)

    def post(steps, lr, seq=4096, mb=2, ac="none"):
        return Training(seq_len=seq, steps=steps, micro_batch_size=mb, lr=lr, schedule="constant",
                        weight_decay=0.0, activation_checkpointing=ac, checkpoint_interval=50, **bf16)

    prep = Prepare(problems=400, heldout=200, difficulties=[0, 1, 2, 3, 4, 5], samples=8, teacher_prompts=400,
                   max_new_tokens=1024)
    # verl / TRL-scale rollout batch on one GPU: 32 prompts x 8 samples, 1,024-token responses
    grpo = dict(group_size=8, prompts_per_step=32, ppo_epochs=1, minibatches=4, max_new_tokens=1024, eval_size=200)
    stages = {
        "S1": StageSpec(stage="S1", training=pt(2000, 3e-4, warmup_steps=100, decay_ratio=0.1, rope_theta=1e4),
                        pretrain_data=PretrainData(mix={"web": 0.85, "reasoning": 0.15}), **teacher),
        "S2": StageSpec(stage="S2", training=pt(500, 2e-4, decay_ratio=0.5, rope_theta=1e4),
                        pretrain_data=PretrainData(mix={"web": 0.4, "reasoning": 0.6}), **teacher),
        "S3": StageSpec(stage="S3", training=pt(100, 5e-5, seq=32768, mb=1, decay_ratio=0.3, rope_theta=1e6,
                                                activation_checkpointing="full"),
                        pretrain_data=PretrainData(mix={"web": 0.75, "reasoning": 0.25}), **teacher),
        "T1": StageSpec(stage="T1", training=post(300, 2e-5), objective=SFTObjective(), prepare=prep, **teacher),
        "T2": StageSpec(stage="T2", training=post(100, 1e-6, seq=2048, mb=8), objective=GRPOObjective(**grpo),
                        prepare=prep, **teacher),
        "T3": StageSpec(stage="T3", training=post(300, 5e-6), objective=SFTObjective(), prepare=prep, **teacher),
        "T4": StageSpec(stage="T4", training=post(100, 1e-6, seq=2048, mb=8), **teacher,
                        prepare=prep.model_copy(update={"reward_model": RewardModelStep(
                            pairs=2000, steps=100, lr=1e-5, micro_batch_size=8, weight=0.5)}),
                        objective=GRPOObjective(**grpo, rewards=[Reward(name="math"), Reward(name="format", weight=0.2),
                                                                 Reward(name="instruction", weight=0.5)])),
        "D": StageSpec(stage="D", flavor="0.6B", scale=gpu, training=post(300, 1e-5, seq=2048, mb=8), prepare=prep,
                       objective=DistillObjective(offpolicy_steps=100, prompts_per_step=32, max_new_tokens=1024,
                                                  temperature=1.0, top_p=1.0, teacher_temperature=1.0,
                                                  eval_size=200)),
    }
    return Preset(name="single-gpu", description="Qwen3-1.7B teacher line, 0.6B student, one H200 per stage",
                  teacher_flavor="1.7B", student_flavor="0.6B", data_root="s3://qwen3-trainer/data",
                  retries=2, stages=stages,
                  thinking_eval=ThinkingEval(budgets=[0, 256, 512, 1024, 2048], problems=200,
                                             max_new_tokens=3072, seq_len=4096))


# -- full ------------------------------------------------------------------------------------------
def _full() -> Preset:
    node = Scale(nodes=32, gpus_per_node=8, device="cuda", node_pool="gpu")
    bf16 = dict(param_dtype="bfloat16", activation_checkpointing="full")
    moe = Layout(ep=8, pp=4)                    # 235B-A22B: 94 layers over 4 stages, experts over 8
    teacher = dict(flavor="235B-A22B", layout=moe, scale=node)
    data = "s3://qwen3-corpus/posttrain"

    def post(steps, lr, nodes, layout=moe, **kw):
        return dict(training=Training(seq_len=32768, steps=steps, lr=lr, schedule="cosine", warmup_steps=20,
                                      weight_decay=0.1, checkpoint_interval=50, **bf16, **kw),
                    layout=layout, scale=node.model_copy(update={"nodes": nodes}))

    def prep(name, **kw):
        return Prepare(dataset=f"{data}/{name}.jsonl", eval_dataset=f"{data}/heldout.jsonl", **kw)

    no_pp = Layout(ep=8)                        # GRPO / distillation: no pipeline parallelism
    grpo = dict(group_size=16, prompts_per_step=64, ppo_epochs=1, minibatches=4, max_new_tokens=30720,
                temperature=1.0, top_p=1.0, eval_size=512)
    # global batch 4096 x 4K = 16.8M tokens at S1/S2 (64-way data parallel x 4 x 16), 1024 x 32K at S3
    stages = {
        "S1": StageSpec(stage="S1", pretrain_data=PretrainData(mix={"web": 0.85, "reasoning": 0.15}, token_budget=30e12),
                        training=Training(seq_len=4096, steps=1, micro_batch_size=4, grad_accum=16, lr=2e-4,
                                          warmup_steps=2000, decay_ratio=0.0, rope_theta=1e4,
                                          checkpoint_interval=500, **bf16), **teacher).budgeted(),
        "S2": StageSpec(stage="S2", pretrain_data=PretrainData(mix={"web": 0.4, "reasoning": 0.6}, token_budget=5e12),
                        training=Training(seq_len=4096, steps=1, micro_batch_size=4, grad_accum=16, lr=2e-4,
                                          decay_ratio=0.5, rope_theta=1e4, checkpoint_interval=500, **bf16),
                        **teacher).budgeted(),
        "S3": StageSpec(stage="S3", pretrain_data=PretrainData(mix={"web": 0.75, "reasoning": 0.25}, token_budget=200e9),
                        training=Training(seq_len=32768, steps=1, grad_accum=16, lr=5e-5, decay_ratio=0.3,
                                          rope_theta=1e6, checkpoint_interval=500, **bf16), **teacher).budgeted(),
        "T1": StageSpec(stage="T1", flavor="235B-A22B", objective=SFTObjective(), prepare=prep("coldstart"),
                        **post(300, 1e-5, 16)),
        "T2": StageSpec(stage="T2", flavor="235B-A22B", objective=GRPOObjective(**grpo),
                        prepare=prep("reasoning_queries"), **post(200, 1e-6, 32, no_pp)),
        # fusion well below the cold start's lr, so it adds the mode switch without undoing RL
        "T3": StageSpec(stage="T3", flavor="235B-A22B", objective=SFTObjective(), prepare=prep("fusion_queries"),
                        **post(500, 3e-6, 16)),
        "T4": StageSpec(stage="T4", flavor="235B-A22B", **post(200, 1e-6, 32, no_pp),
                        prepare=prep("general_queries", reward_model=RewardModelStep(
                            dataset=f"{data}/preference_pairs.jsonl", eval_share=0.02, steps=1000, lr=5e-6,
                            micro_batch_size=1, weight=0.5)),
                        objective=GRPOObjective(**grpo, rewards=[Reward(name="math"), Reward(name="format", weight=0.2),
                                                                 Reward(name="instruction", weight=0.5)])),
        "D": StageSpec(stage="D", flavor="30B-A3B", prepare=prep("distill_prompts", teacher_prompts=100_000,
                                                                 max_new_tokens=30720),
                       objective=DistillObjective(offpolicy_steps=500, prompts_per_step=64, max_new_tokens=30720,
                                                  temperature=1.0, top_p=1.0, teacher_temperature=1.0, eval_size=512),
                       **post(1500, 1e-5, 8, no_pp)),
    }
    return Preset(name="full", description="Qwen3-235B-A22B through the whole recipe, distilled into 30B-A3B (H200)",
                  teacher_flavor="235B-A22B", student_flavor="30B-A3B", data_root="s3://qwen3-corpus",
                  retries=3, stages=stages,
                  thinking_eval=ThinkingEval(budgets=[0, 1024, 4096, 8192, 16384, 32768], problems=512,
                                             max_new_tokens=38912, seq_len=40960))


PRESETS: dict[str, Preset] = {p.name: p for p in (_tiny(), _single_gpu(), _full())}


def get_preset(name: str) -> Preset:
    """A preset by name, or a user's recipe file (YAML/JSON of a ``Preset``); ValueError (one line)."""
    if name in PRESETS:
        return PRESETS[name]
    if name.endswith((".yaml", ".yml", ".json")):
        from qwen3_trainer.recipe.files import load_preset_file

        return load_preset_file(name)
    raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)} (or a recipe .yaml file)")
