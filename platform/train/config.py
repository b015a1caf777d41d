"""The training config: one typed, validated document per run (YAML or TOML on disk).

Every field is checked here, before any process group starts; what depends on the world size
(parallel degrees) is checked by ``parallel.validate_layout``. The same document is what a
PyTorchJob delivers to its pods and what a pipeline stage builds from the previous stage.

Example (tiny CPU run)::

    model: {flavor: debugmodel}
    training: {steps: 20, micro_batch_size: 2, seq_len: 128}
    data: {sources: [{name: web, paths: [data/corpus.jsonl]}]}
    checkpoint: {dir: runs/demo/ckpt, interval: 10}
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from qwen3_trainer.model.flavors import FLAVORS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Strict):
    flavor: str  # a name from `qtrain model list`
    rope_theta: float | None = None  # None: the flavor's (1e6); S3 long-context raises the base
    tie_embeddings: bool | None = None  # None: the flavor's
    attention: Literal["sdpa", "flex"] = "sdpa"  # flex: per-document (block-causal) masks on GPU
    vocab_size: int | None = None  # None: the flavor's 151,936 rows (tests shrink it)
    n_layers: int | None = Field(None, gt=0)  # None: the flavor's; benchmarks cut a shape's depth

    @model_validator(mode="after")
    def _known(self):
        if self.flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {self.flavor!r}; known: {', '.join(FLAVORS)}")
        return self


class ParallelismSection(_Strict):
    dp_replicate: int = Field(1, ge=1)  # HSDP replicas (DDP-style across groups)
    dp_shard: int = Field(-1, ge=-1)  # FSDP degree; -1 = whatever the world size leaves
    tp: int = Field(1, ge=1)  # tensor (+ sequence) parallel
    pp: int = Field(1, ge=1)  # pipeline stages
    ep: int = Field(1, ge=1)  # expert parallel (MoE), borrowed from dp_shard x cp (x tp)
    # context parallel: not wired into the trainer (torchtitan 0.2.2's context_parallel needs the
    # attention and the loader sharded along the sequence); refused rather than silently ignored
    cp: int = Field(1, ge=1)
    pp_schedule: str = "1F1B"  # torch.distributed.pipelining schedule name

    @model_validator(mode="after")
    def _dp_shard(self):
        if self.dp_shard == 0:
            raise ValueError("parallelism.dp_shard must be >= 1 or -1 (auto)")
        if self.cp > 1:
            raise ValueError(f"parallelism.cp={self.cp}: context parallelism is not implemented in this trainer; "
                             "use cp 1 (long sequences train with activation_checkpointing)")
        return self


class TrainingSection(_Strict):
    steps: int = Field(gt=0)
    micro_batch_size: int = Field(1, gt=0)  # sequences per rank per micro-batch
    grad_accum: int = Field(1, gt=0)  # micro-batches per step (PP: pipeline micro-batches)
    seq_len: int = Field(4096, gt=0)
    seed: int = 0
    max_norm: float = Field(1.0, gt=0)  # gradient clipping
    param_dtype: Literal["float32", "bfloat16"] = "float32"  # mixed-precision compute dtype (FSDP or autocast)
    dtype: Literal["float32", "bfloat16"] = "float32"  # storage dtype of weights + optimizer ("pure bf16")
    reduce_dtype: Literal["float32"] = "float32"
    deterministic: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"


class OptimizerSection(_Strict):
    name: Literal["AdamW", "Adam"] = "AdamW"
    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1
    # auto: fused on CUDA, foreach on CPU; compiled (CUDA): the clip and the foreach update as one
    # torch.compile'd graph (platform/train/optim_step.py)
    implementation: Literal["auto", "fused", "foreach", "for-loop", "compiled"] = "auto"


class LRSection(_Strict):
    schedule: Literal["wsd", "cosine", "constant"] = "wsd"  # warmup-stable-decay, or warmup+cosine
    warmup_steps: int = Field(0, ge=0)
    decay_ratio: float | None = Field(0.1, ge=0, le=1)  # wsd: share of steps spent decaying
    decay_type: Literal["linear", "sqrt", "cosine"] = "linear"  # shape of the wsd decay
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class MoESection(_Strict):
    balance: Literal["global_batch", "aux_free", "none"] = "global_batch"
    coeff: float = Field(1e-3, gt=0)  # global-batch LBL coefficient (HF router_aux_loss_coef)
    aux_free_update_rate: float = Field(1e-3, gt=0)  # torchtitan expert-bias step size
    # with compile: each MoE block as one graph ("block"; layouts with EP, TP or activation
    # checkpointing keep torchtitan's regions), or torchtitan's compiled regions with eager glue
    compile_scope: Literal["block", "regions"] = "block"


class CheckpointSection(_Strict):
    dir: str | None = None  # local path or s3://bucket/prefix; None: no checkpoints
    interval: int = Field(0, ge=0)  # steps between saves (0: only at the end)
    keep_last: int = Field(2, ge=1)
    async_save: bool = True  # DCP async_save on a background thread where the backend allows
    resume: bool = True  # pick up the newest complete checkpoint in `dir`
    export_hf: str | None = None  # write the final model as HF safetensors here


class TrackingSection(_Strict):
    mlflow_uri: str | None = None  # None: $MLFLOW_TRACKING_URI if set, else a local metrics file
    experiment: str = "qwen3-trainer"
    run_id: str | None = None  # log into this run (a pipeline stage's child run)
    parent_run_id: str | None = None
    run_name: str | None = None
    metrics_file: str | None = None  # JSONL of every logged metric (default: <dump_dir>/metrics.jsonl)
    log_interval: int = Field(1, gt=0)


class ObjectiveSection(_Strict):
    name: str = "lm"  # lm | sft | any objective registered in platform.train.objectives
    params: dict[str, Any] = Field(default_factory=dict)


class InitSection(_Strict):
    path: str | None = None  # HF directory or DCP checkpoint (local or s3://)
    format: Literal["auto", "hf", "dcp"] = "auto"


class TrainConfig(_Strict):
    model: ModelSection
    training: TrainingSection
    data: dict[str, Any] | None = None  # platform.data.DataConfig (validated by the data module)
    parallelism: ParallelismSection = Field(default_factory=ParallelismSection)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    lr: LRSection = Field(default_factory=LRSection)
    activation_checkpointing: Literal["none", "full", "selective"] = "none"
    compile: bool = False
    float8: bool = False  # GPU only (torchao / torchtitan converter): linears in float8
    float8_recipe: Literal["tensorwise", "rowwise"] = "tensorwise"  # torchao scaling recipe
    # linears whose name contains one of these stay in bf16 under float8 (torchtitan's filter_fqns)
    float8_keep_bf16: list[str] = ["output", "router.gate"]
    moe: MoESection = Field(default_factory=MoESection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    objective: ObjectiveSection = Field(default_factory=ObjectiveSection)
    init: InitSection = Field(default_factory=InitSection)
    dump_dir: str = "runs/default"  # local folder for logs and the metrics file

    @model_validator(mode="after")
    def _cross_checks(self):
        from qwen3_trainer.model.flavors import FLAVORS as _F

        args = _F[self.model.flavor]
        tied = args.enable_weight_tying if self.model.tie_embeddings is None else self.model.tie_embeddings
        p = self.parallelism
        if p.pp > 1 and tied:
            raise ValueError("parallelism.pp > 1 needs untied embeddings (model.tie_embeddings: false)")
        for name, heads in (("n_heads", args.n_heads), ("n_kv_heads", args.n_kv_heads)):
            if heads % p.tp:
                raise ValueError(f"parallelism.tp={p.tp} does not divide the model's {name}={heads}")
        if p.ep > 1:
            if not args.moe_enabled:
                raise ValueError(f"parallelism.ep={p.ep} needs an MoE flavor, not {self.model.flavor!r}")
            if args.moe_args.num_experts % p.ep:
                raise ValueError(
                    f"parallelism.ep={p.ep} does not divide num_experts={args.moe_args.num_experts}"
                )
        n_layers = self.model.n_layers or args.n_layers
        if p.pp > 1 and n_layers < p.pp:
            raise ValueError(f"parallelism.pp={p.pp} exceeds the model's {n_layers} layers")
        if self.training.seq_len % (p.tp * 2 * p.cp if p.cp > 1 else p.tp):
            raise ValueError(f"training.seq_len={self.training.seq_len} must divide by tp (x 2cp)")
        if self.float8 and self.training.device == "cpu":
            raise ValueError("float8 needs a GPU (training.device: cpu)")
        return self


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML / TOML / JSON config file (local or s3://) into a validated TrainConfig."""
    from qwen3_trainer.model import storage

    text = storage.read_text(str(path))
    suffix = str(path).rsplit(".", 1)[-1].lower()
    if suffix == "toml":
        raw = tomllib.loads(text)
    elif suffix == "json":
        raw = json.loads(text)
    else:
        raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        node: Any = raw
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value
    return TrainConfig.model_validate(raw)
