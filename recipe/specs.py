"""One typed spec per recipe stage: what it trains, on which data, with which layout, on how much hardware.

A ``StageSpec`` is the single home of every stage knob. The training config the job runs
(``recipe.configs.train_config``), the data-preparation job (``recipe.configs.prepare_config``),
the PyTorchJob's scale and resources (``recipe.jobs``) and the config hash are all derived from it,
so what MLflow logs is what ran. Models forbid unknown keys: a typo in a user's recipe file is an
error naming the key. No torch here (the training config is validated against ``TrainConfig``
lazily, at render/preflight).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _WithOptionalSteps(_Strict):
    """A spec with optional steps added after specs were first hashed: an unset one is left out of the
    dump, so a spec without it dumps (and hashes) as it did before the step existed."""

    OPTIONAL_STEPS: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _without_unset_steps(self, handler) -> dict[str, Any]:
        out = handler(self)
        for name in self.OPTIONAL_STEPS:
            if getattr(self, name) is None:
                out.pop(name, None)
        return out


class Scale(_Strict):
    """How much hardware one stage job takes (a PyTorchJob: ``nodes`` pods)."""

    nodes: int = Field(1, ge=1)                 # pods (Master + Workers)
    gpus_per_node: int = Field(0, ge=0)         # 0: CPU processes
    nproc_per_node: int = Field(1, ge=1)        # CPU jobs: processes per node (GPU jobs: one per GPU)
    node_pool: str | None = None                # cluster.yaml node pool (None: `gpu` / `cpu` by GPUs)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @property
    def procs_per_node(self) -> int:
        return self.gpus_per_node or self.nproc_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @model_validator(mode="after")
    def _procs(self) -> Scale:
        if self.gpus_per_node and self.nproc_per_node not in (1, self.gpus_per_node):
            raise ValueError(f"nproc_per_node {self.nproc_per_node} != gpus_per_node {self.gpus_per_node} "
                             "(one process per GPU)")
        if self.device == "cpu" and self.gpus_per_node:
            raise ValueError("device cpu with gpus_per_node > 0")
        return self


class Layout(_Strict):
    """Parallel degrees (TrainConfig.parallelism). ``dp_shard`` -1: what the world size leaves."""

    dp_replicate: int = Field(1, ge=1)
    dp_shard: int = Field(-1, ge=-1)
    tp: int = Field(1, ge=1)
    pp: int = Field(1, ge=1)
    ep: int = Field(1, ge=1)
    cp: int = Field(1, ge=1)

    def degrees(self, world_size: int) -> dict[str, int]:
        """Resolve ``dp_shard`` for ``world_size``; ValueError (one line) if the degrees do not fit."""
        fixed = self.dp_replicate * self.tp * self.pp * self.cp
        if world_size % fixed:
            raise ValueError(f"dp_replicate*tp*pp*cp = {fixed} does not divide the world size {world_size}")
        dp_shard = world_size // fixed if self.dp_shard == -1 else self.dp_shard
        if dp_shard < 1 or fixed * dp_shard != world_size:
            raise ValueError(f"dp_replicate*dp_shard*tp*pp*cp = {fixed * dp_shard} != world size {world_size}")
        if self.ep > 1 and (dp_shard * self.cp * self.tp) % self.ep:
            raise ValueError(f"ep={self.ep} must divide dp_shard*cp*tp = {dp_shard * self.cp * self.tp}")
        return {**self.model_dump(), "dp_shard": dp_shard}


class Training(_Strict):
    """Optimisation knobs of one stage (TrainConfig.training / optimizer / lr / checkpoint)."""

    seq_len: int = Field(gt=0)                  # training sequence length
    steps: int = Field(gt=0)                    # optimizer steps
    micro_batch_size: int = Field(1, gt=0)      # sequences per rank per micro-batch
    grad_accum: int = Field(1, gt=0)            # micro-batches per step
    lr: float = Field(3e-4, gt=0)               # peak learning rate
    schedule: Literal["wsd", "cosine", "constant"] = "wsd"
    warmup_steps: int = Field(0, ge=0)
    decay_ratio: float = Field(0.1, ge=0, le=1)  # wsd: share of steps spent decaying (S2 decays faster)
    weight_decay: float = Field(0.1, ge=0)
    rope_theta: float | None = None             # None: the flavor's 1e6 (S1/S2 train at 1e4, S3 raises it)
    param_dtype: Literal["float32", "bfloat16"] = "float32"   # mixed-precision compute dtype
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    compile: bool = False
    checkpoint_interval: int = Field(0, ge=0)   # steps between checkpoints (0: only the final one)
    seed: int = 0


class PretrainData(_Strict):
    """A pretraining mixture: source name -> weight, each source a list of jsonl/parquet paths."""

    mix: dict[str, float]                       # source -> sampling weight
    # source -> paths (local or s3://); a source not listed reads <data_root>/<source>
    paths: dict[str, list[str]] = {}
    token_budget: float | None = None           # tokens the stage is meant to see (sets `steps`)

    @model_validator(mode="after")
    def _weights(self) -> PretrainData:
        if not self.mix or any(w <= 0 for w in self.mix.values()):
            raise ValueError("mix: every source needs a weight > 0")
        unknown = set(self.paths) - set(self.mix)
        if unknown:
            raise ValueError(f"paths: {sorted(unknown)[0]!r} is not a source of the mix")
        return self


class RewardModelStep(_Strict):
    """A step of T4's preparation job: a reward model (platform.posttrain.reward_model, Bradley-Terry on
    preference pairs) trained from the stage's init (the T3 model); its checkpoint becomes T4's
    ``reward_model`` reward beside the rule rewards (general RL's model-based rewards, R §4.4)."""

    dataset: str | None = None                  # user preference pairs (prompt, chosen, rejected); None: generated
    pairs: int = Field(96, gt=0)                # generated: training pairs (from the stage's problems' seed)
    eval_share: float = Field(0.125, ge=0, lt=1)  # pairs held out for the pair-accuracy check
    steps: int = Field(20, gt=0)
    lr: float = Field(1e-4, gt=0)
    micro_batch_size: int = Field(4, gt=0)      # pairs per micro-batch (each pair is two sequences)
    weight: float = Field(0.5, gt=0)            # the reward's weight in T4's reward sum


class Prepare(_WithOptionalSteps):
    """The data-preparation job of a post-training stage (``qtrain posttrain prepare``).

    Without ``dataset`` the stage's data is generated (the miniature's place-value problems); with
    it, the user's file is checked record by record and used: T1/T3 chats (``messages``), T2/T4 RL
    queries (``prompt`` + ``answer``, optional ``constraints``), D prompts (``prompt``)."""

    OPTIONAL_STEPS = ("reward_model",)

    dataset: str | None = None                  # user data (jsonl/parquet, local or s3://)
    eval_dataset: str | None = None             # held-out RL queries (T2/T4/D evaluation)
    problems: int = Field(56, gt=0)             # generated: training problems
    heldout: int = Field(25, ge=0)              # generated: held-out problems
    difficulties: list[int] = [0]               # generated: synthetic difficulty levels
    samples: int = Field(8, gt=0)               # T3: rejection samples per query; D: unused
    teacher_prompts: int = Field(64, gt=0)      # D: prompts the teacher answers (both modes)
    max_new_tokens: int = Field(24, gt=0)       # T3/D: generation length of the policy / teacher
    seed: int = 0
    reward_model: RewardModelStep | None = None  # T4: train the model-based reward first (R §4.4)


class Reward(_Strict):
    name: str                                   # platform.posttrain.rewards: math, format, instruction, judge, ...
    weight: float = 1.0
    model: str | None = None                    # judge / reward_model: its checkpoint (HF or DCP, local or s3://)
    params: dict[str, Any] = {}                 # the reward's own options, e.g. {batch: 16}


class SFTObjective(_Strict):
    name: Literal["sft"] = "sft"


class GRPOObjective(_Strict):
    """GRPO (platform.posttrain.grpo): each field is a ``GRPO(...)`` keyword."""

    name: Literal["grpo"] = "grpo"
    group_size: int = Field(8, ge=2)            # samples per prompt (advantages are relative in a group)
    prompts_per_step: int = Field(8, gt=0)
    ppo_epochs: int = Field(2, gt=0)            # passes over one rollout batch
    minibatches: int = Field(2, gt=0)           # updates per pass
    max_new_tokens: int = Field(24, gt=0)
    temperature: float = Field(0.8, gt=0)       # sampling temperature (benchmark-validated)
    top_p: float = Field(0.95, gt=0, le=1)
    clip_low: float = Field(0.2, gt=0)
    clip_high: float = Field(0.28, gt=0)        # DAPO clip-higher
    kl_coef: float = Field(0.0, ge=0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"   # Schulman's estimator of KL(policy || reference)
    kl_in_reward: bool = False                  # kl_coef x the response's KL off its reward, not a loss term
    # token-mean (DAPO), seq-mean-token-mean (GRPO paper), seq-mean-token-sum-norm (Dr. GRPO)
    loss_agg: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"] = "token-mean"
    entropy_coef: float = Field(0.0, ge=0)      # entropy bonus in the loss
    overlong_filter: bool = False               # responses cut at max_new_tokens leave the loss
    overlong_buffer: int = Field(0, ge=0)       # DAPO soft punishment over the budget's last tokens (0: off)
    overlong_penalty: float = Field(1.0, ge=0)  # the punishment at max_new_tokens
    dynamic_sampling: bool = False              # DAPO: drop equal-reward groups, refill from further prompts
    dynamic_sampling_rounds: int = Field(2, ge=0)  # extra rollout rounds a step may take to refill
    logprob_chunk: int = Field(2048, gt=0)      # token rows per fp32 log-softmax chunk
    # the rollout engine's KV cache: the model's dtype, or fp8 (half the bytes decode attention reads)
    rollout_kv_dtype: Literal["auto", "float8_e4m3fn"] = "auto"
    rewards: list[Reward] = [Reward(name="math"), Reward(name="format", weight=0.2)]
    eval_size: int = Field(64, ge=0)


class TeacherCacheStep(_Strict):
    """A step of D's preparation job: the teacher's top-k log-probs over its own responses, cached
    (platform.posttrain.teacher_cache), so the off-policy phase's forward KL runs no teacher. Costs one
    teacher forward per response; worth it when the phase revisits its samples or the teacher is large."""

    k: int = Field(64, gt=0)                    # top-k tokens per response position (loss renormalises over them)
    dtype: Literal["float16", "float32"] = "float16"  # storage of the log-probs
    batch: int = Field(8, gt=0)                 # sequences per teacher forward


class DistillObjective(_WithOptionalSteps):
    """Strong-to-weak distillation (platform.posttrain.distill ``distill_onpolicy``): the off-policy
    phase (``offpolicy_steps`` on the teacher's responses) then on-policy reverse KL."""

    OPTIONAL_STEPS = ("teacher_cache",)

    name: Literal["distill_onpolicy"] = "distill_onpolicy"
    offpolicy_steps: int = Field(0, ge=0)
    offpolicy_mode: Literal["kl", "sft"] = "sft"
    think_ratio: float = Field(0.5, ge=0, le=1)  # share of on-policy prompts in /think
    prompts_per_step: int = Field(8, gt=0)
    max_new_tokens: int = Field(24, gt=0)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    teacher_temperature: float = Field(0.3, gt=0)  # target softmax(teacher / tau) (posttrain run 7)
    eval_size: int = Field(64, ge=0)
    rollout_kv_dtype: Literal["auto", "float8_e4m3fn"] = "auto"  # the student's rollout KV cache
    teacher_cache: TeacherCacheStep | None = None  # off-policy KL from cached top-k (None: live teacher)

    @model_validator(mode="after")
    def _cache_needs_kl(self) -> DistillObjective:
        if self.teacher_cache is not None and (self.offpolicy_mode != "kl" or not self.offpolicy_steps):
            raise ValueError("teacher_cache: caches the off-policy phase's KL target; it needs offpolicy_mode 'kl' "
                             "and offpolicy_steps > 0")
        return self


class LMObjective(_Strict):
    name: Literal["lm"] = "lm"


Objective = Annotated[LMObjective | SFTObjective | GRPOObjective | DistillObjective, Field(discriminator="name")]


class Resources(_Strict):
    """Per-pod resource overrides of one stage; unset fields come from the node pool (cluster.yaml)."""

    cpu: str | None = None
    memory: str | None = None
    shm: str | None = None


class StageSpec(_Strict):
    """Everything one stage is: model, training knobs, data, objective, layout, scale, resources."""

    stage: Literal["S1", "S2", "S3", "T1", "T2", "T3", "T4", "D"]
    flavor: str                                 # model flavor (`qtrain model list`)
    n_layers: int | None = Field(None, gt=0)    # None: the flavor's depth (benchmarks cut it)
    training: Training
    objective: Objective = LMObjective()
    pretrain_data: PretrainData | None = None   # S1-S3
    prepare: Prepare | None = None              # T1-T4, D
    layout: Layout = Layout()
    scale: Scale = Scale()
    resources: Resources = Resources()

    @model_validator(mode="after")
    def _shape(self) -> StageSpec:
        pre = self.stage.startswith("S")
        if pre and (self.pretrain_data is None or self.prepare is not None):
            raise ValueError(f"{self.stage}: pretraining stages take pretrain_data, not prepare")
        if not pre and (self.prepare is None or self.pretrain_data is not None):
            raise ValueError(f"{self.stage}: post-training stages take prepare, not pretrain_data")
        want = {"S": "lm", "T1": "sft", "T3": "sft", "T2": "grpo", "T4": "grpo", "D": "distill_onpolicy"}
        expected = want["S"] if pre else want[self.stage]
        if self.objective.name != expected:
            raise ValueError(f"{self.stage}: objective {self.objective.name!r}; this stage trains {expected!r}")
        if self.prepare is not None and self.prepare.reward_model is not None and self.stage != "T4":
            raise ValueError(f"{self.stage}: prepare.reward_model: only T4 (general RL) trains a reward model")
        return self

    @property
    def global_batch_tokens(self) -> int:
        mp = self.layout.tp * self.layout.pp * self.layout.cp
        dp = max(self.scale.world_size // mp, 1)
        return self.training.seq_len * self.training.micro_batch_size * self.training.grad_accum * dp

    def budgeted(self) -> StageSpec:
        """The spec with ``steps`` that spend its token budget at its global batch (pretraining)."""
        budget = self.pretrain_data.token_budget if self.pretrain_data else None
        if not budget:
            return self
        steps = max(int(budget // self.global_batch_tokens), 1)
        return self.model_copy(update={"training": self.training.model_copy(update={"steps": steps})})
