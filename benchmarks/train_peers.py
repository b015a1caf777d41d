"""The impls of benchmarks/train_throughput.py: how each row's model and optimizer step are built.

``build_peer(impl, flavor, ...)`` returns a ``Peer`` (the module trained, one optimizer step on a CPU batch,
its vocabulary) for

* ``hf-*``: HF transformers (bf16 weights, fused AdamW, SDPA; eager or ``torch.compile``);
* ``qwen3-trainer-*``: our ``Trainer.train_step`` with the knobs of ``IMPLS[impl]`` (``build_ours`` is also
  used by profile_step.py and fp8_loss_check.py); ``-fsdp-mixed-`` is FSDP2 on a one-GPU mesh;
* ``torchtitan-*``: torchtitan 0.2.2 as shipped, from its own pieces only (its qwen3 TrainSpec's model,
  ``parallelize_qwen3``, optimizer builder, compiled cross-entropy and ``Trainer.train_step``).

Timing, micro-batch tuning and the sweep stay in train_throughput.py.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

IMPLS = {
    "hf-eager": {"compile": False},
    "hf-compile": {"compile": True},
    "qwen3-trainer-bf16": {"compile": False, "dtype": "bfloat16"},
    "qwen3-trainer-bf16-compile": {"compile": True, "dtype": "bfloat16"},
    "qwen3-trainer-bf16-compile-titanmoe": {"compile": True, "dtype": "bfloat16", "titan_moe": True},
    "qwen3-trainer-bf16-compile-sepclip": {"compile": True, "dtype": "bfloat16", "separate_clip": True},
    "qwen3-trainer-bf16-compile-nolbl": {"compile": True, "dtype": "bfloat16", "balance": "none"},
    # A/B: torchtitan's compiled regions inside each MoE block (eager glue) instead of one graph a block
    "qwen3-trainer-bf16-compile-regions": {"compile": True, "dtype": "bfloat16", "compile_scope": "regions"},
    # the clip and AdamW as one compiled graph (optimizer.implementation: compiled) instead of the fused kernel
    "qwen3-trainer-bf16-compile-adamw-compiled": {"compile": True, "dtype": "bfloat16", "optimizer": "compiled"},
    "qwen3-trainer-fsdp-mixed-compile-adamw-compiled": {"compile": True, "dtype": "float32", "param_dtype": "bfloat16",
                                                        "fsdp": True, "optimizer": "compiled"},
    "qwen3-trainer-mp-compile": {"compile": True, "dtype": "float32", "param_dtype": "bfloat16"},
    "qwen3-trainer-fsdp-mixed-compile": {"compile": True, "dtype": "float32", "param_dtype": "bfloat16",
                                         "fsdp": True},
    "qwen3-trainer-fp8-compile": {"compile": True, "dtype": "bfloat16", "float8": "tensorwise"},
    "qwen3-trainer-fp8-out-compile": {"compile": True, "dtype": "bfloat16", "float8": "tensorwise",
                                      "float8_keep_bf16": ["router.gate"]},  # the output projection in float8 too
    "qwen3-trainer-fp8-rowwise-compile": {"compile": True, "dtype": "bfloat16", "float8": "rowwise"},
    "torchtitan-bf16-compile": {"titan": True, "dtype": "bfloat16"},
    "torchtitan-fsdp-mixed-compile": {"titan": True, "dtype": "float32", "fsdp": True},
    # its float8 converter (torchao tensorwise) over the linears ours converts: the same-precision peer of
    # qwen3-trainer-fp8-compile
    "torchtitan-fp8-compile": {"titan": True, "dtype": "bfloat16", "float8": "tensorwise"},
}


def float8_keep_bf16() -> list[str]:
    """The linears kept in bf16 under float8: TrainConfig's default, for our rows and torchtitan's alike."""
    from qwen3_trainer.platform.train.config import TrainConfig

    return list(TrainConfig.model_fields["float8_keep_bf16"].default)


# our benchmark shapes in torchtitan's model args; its debugmodel cut to 2 layers and untied for CPU smoke
# runs (0.2.2's apply_fsdp refuses tied weights on torch >= 2.13, FACTS.md)
TITAN_FLAVORS = {"30B-A3B-8L": ("30B-A3B", {"n_layers": 8}),
                 "debugmodel": ("debugmodel", {"n_layers": 2, "enable_weight_tying": False}),
                 "debugmodel_moe": ("debugmodel_moe", {"n_layers": 2})}


# -- the impls: each builds a Peer whose ``step`` is one optimizer step on a CPU batch ----------------
@dataclass
class Peer:
    model: Any  # the module being trained (tests check whose class it is)
    step: Callable[[dict], Any]  # one optimizer step; returns the loss (tensor or float)
    zero_grad: Callable[[], None]  # drops gradients (after an out-of-memory step)
    settings: str
    owner: Any = None  # the trainer / optimizer behind ``step``
    vocab: int = 151_936  # token ids of the batch stay below this
    # the step as the impl's own training loop runs it back to back (default: ``step``), and what ends
    # such a run of steps (reads what the loop left pending)
    loop_step: Callable[[dict], Any] | None = None
    loop_flush: Callable[[], None] | None = None


def _hf_model(flavor: str, device: str):
    import torch
    import transformers

    from qwen3_trainer.model.flavors import get_flavor
    from qwen3_trainer.model.hf_interop import hf_config_from_args

    cfg = hf_config_from_args(get_flavor(flavor))
    cls = transformers.Qwen3MoeConfig if cfg["model_type"] == "qwen3_moe" else transformers.Qwen3Config
    config = cls(**{k: v for k, v in cfg.items() if k not in ("architectures", "model_type", "torch_dtype")})
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model


def hf_peer(flavor: str, impl: str, device: str, backend: str = "inductor") -> Peer:
    import torch
    import transformers

    model = _hf_model(flavor, device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    compiled = IMPLS[impl]["compile"]
    fwd = torch.compile(model, backend=backend) if compiled else model

    def step(batch):
        ids = batch["input_ids"].to(device, non_blocking=True)
        out = fwd(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    settings = (f"HF transformers {transformers.__version__}, bf16 weights, fused AdamW, sdpa, "
                f"{'torch.compile' if compiled else 'eager'}")
    return Peer(model, step, lambda: opt.zero_grad(set_to_none=True), settings, opt)


@contextlib.contextmanager
def _trainer_overrides(*, fsdp: bool, backend: str):
    """What ``TrainConfig`` cannot say yet, for the benchmark only: FSDP2 on a one-device mesh (the
    config reads ``dp_shard`` 1 as no sharding) and a compile backend other than inductor (CPU tests)."""
    from qwen3_trainer.platform.train import parallel

    build_dims, to_job_config = parallel.build_parallel_dims, parallel.to_job_config

    def one_device_fsdp_dims(cfg, world_size):
        parallel.validate_layout(cfg, world_size)
        dims = one_device_fsdp_dims_cls()(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=1)
        dims.build_mesh()
        return dims

    def job_config_with_backend(cfg, dims):
        jc = to_job_config(cfg, dims)
        jc.compile.backend = backend
        return jc

    if fsdp:
        parallel.build_parallel_dims = one_device_fsdp_dims
    if backend != "inductor":
        parallel.to_job_config = job_config_with_backend
    try:
        yield
    finally:
        parallel.build_parallel_dims, parallel.to_job_config = build_dims, to_job_config


def build_ours(flavor: str, impl: str, seq: int, mb: int, steps: int, device: str, lr: float = 1e-5,
               warmup_steps: int = 0, compile_backend: str = "inductor"):
    """qwen3-trainer's Trainer with the knobs of ``impl`` (also used by profile_step.py, fp8_loss_check.py)."""
    import torch

    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.trainer import Trainer

    knobs = IMPLS[impl]
    cfg = TrainConfig.model_validate({
        "model": {"flavor": flavor},
        "training": {"steps": steps, "micro_batch_size": mb, "seq_len": seq, "device": device,
                     "dtype": knobs.get("dtype", "bfloat16"), "param_dtype": knobs.get("param_dtype", "bfloat16")},
        "optimizer": {"lr": lr, "implementation": knobs.get("optimizer", "auto")},
        "lr": {"schedule": "constant", "warmup_steps": warmup_steps},
        "compile": knobs["compile"],
        "moe": {"balance": knobs.get("balance", "global_batch"), "compile_scope": knobs.get("compile_scope", "block")},
        "float8": bool(knobs.get("float8")),
        "float8_recipe": knobs.get("float8") or "tensorwise",
        "float8_keep_bf16": knobs.get("float8_keep_bf16", float8_keep_bf16()),
        "dump_dir": "/tmp/qwen3-bench",
    })
    with _trainer_overrides(fsdp=bool(knobs.get("fsdp")), backend=compile_backend):
        trainer = Trainer(cfg)
    if knobs["compile"] and compile_backend != "inductor" and hasattr(trainer.objective, "_ce"):
        from qwen3_trainer.platform.train.objectives import token_cross_entropy

        trainer.objective._ce = torch.compile(token_cross_entropy, backend=compile_backend)
    if knobs.get("titan_moe"):  # A/B: torchtitan's own MoE dispatch/combine and padded experts
        from qwen3_trainer.model import moe_routing

        moe_routing.uninstall(trainer.model_parts[0])
    if knobs.get("separate_clip"):  # A/B: torchtitan's clip_grad_norm_ pass before the fused step
        from torchtitan.distributed.utils import clip_grad_norm_

        params = [p for m in trainer.model_parts for p in m.parameters()]
        trainer._clip = lambda: clip_grad_norm_(params, trainer.cfg.training.max_norm, foreach=True)
    return trainer


def ours_peer(flavor: str, impl: str, seq: int, mb: int, device: str, backend: str = "inductor") -> Peer:
    knobs = IMPLS[impl]
    trainer = build_ours(flavor, impl, seq, mb, 1000, device, compile_backend=backend)
    parts = ["qwen3-trainer Trainer.train_step, torchtitan 0.2.2 model"]
    if knobs.get("fsdp"):
        parts.append("FSDP2 on a 1-GPU mesh (fp32 master weights, bf16 params, fp32 reduce)")
    else:
        parts.append("pure bf16" if knobs.get("dtype") == "bfloat16" else "fp32 weights + bf16 autocast")
    if knobs["compile"] and knobs.get("compile_scope") == "regions":
        parts.append("torch.compile per block (MoE blocks: torchtitan's regions)")
    else:
        parts.append("torch.compile per block" if knobs["compile"] else "eager")
    if knobs.get("float8"):
        keep = trainer.cfg.float8_keep_bf16
        parts.append(f"float8 {knobs['float8']} linears{'' if 'output' in keep else ' incl. output'}")
    clip = ", separate clip pass" if knobs.get("separate_clip") else ""
    impl_name = ("compiled foreach, clip inside" if trainer.cfg.optimizer.implementation == "compiled"
                 else trainer.job_config.optimizer.implementation)
    parts += ["cuDNN SDPA first", f"AdamW ({impl_name}{clip})"]
    if knobs.get("balance") == "none":
        parts.append("no load-balancing loss")
    loop_step, loop_flush = fit_order(trainer)
    return Peer(trainer.model_parts[0], lambda batch: trainer.train_step([batch])["loss"],
                trainer.optimizers.zero_grad, ", ".join(parts), trainer, loop_step=loop_step, loop_flush=loop_flush)


def fit_order(trainer) -> tuple[Callable[[dict], None], Callable[[], None]]:
    """Steps of ``trainer`` in ``Trainer.fit``'s order: ``step(batch)`` queues a step, then reads the
    previous one's numbers; ``flush()`` reads the last (also used by profile_step.py)."""
    pending = []

    def flush():
        while pending:
            trainer.step_metrics(pending.pop())

    def step(batch):
        launched = trainer.launch_step([batch])
        flush()
        pending.append(launched)

    return step, flush


def one_device_fsdp_dims_cls():
    """torchtitan's ParallelDims with the FSDP dim real at size 1: ``fsdp_enabled`` and a one-rank
    process group instead of the fake one that 0.2.2 gives a degree-1 dim."""
    from torchtitan.distributed import ParallelDims

    class OneDeviceFSDP(ParallelDims):
        def _mesh_exist(self, name: str, degree: int) -> bool:
            return name == "fsdp" or super()._mesh_exist(name, degree)

        @property
        def fsdp_enabled(self) -> bool:
            return True

    return OneDeviceFSDP


def _one_rank_process_group(device: str) -> None:
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return
    kwargs = {}
    if device == "cuda":
        torch.cuda.set_device(0)
        kwargs["device_id"] = torch.device("cuda", 0)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1,
                            store=dist.HashStore(), **kwargs)


class _StepMetrics:
    """Stands in for torchtitan's MetricsProcessor: at ``log_freq`` 1 (the per-step timing) ``train_step``
    hands it the loss and grad norm every step (reading both with ``.item()``); in a loop run
    (``Peer.loop_step``) at torchtitan's default ``metrics.log_freq`` 10, with its ``should_log``."""

    loss = grad_norm = None
    log_freq = 1

    def should_log(self, step: int) -> bool:
        return step == 1 or step % self.log_freq == 0

    def log(self, step, global_avg_loss, global_max_loss, grad_norm, extra_metrics=None) -> None:
        self.loss, self.grad_norm = global_avg_loss, grad_norm


def titan_peer(flavor: str, impl: str, seq: int, device: str, backend: str = "inductor",
               overrides: dict | None = None) -> Peer:
    """torchtitan 0.2.2 as its Trainer builds and steps a Qwen3 run (train.py ``Trainer.__init__`` /
    ``train`` / ``train_step``), from its TrainSpec's pieces; ``overrides`` edits the model args (tests)."""
    import torch

    if device == "cpu":  # triton stand-in, CPU histc, device helpers (CUDA needs none of them)
        from qwen3_trainer.model import cpu_compat

        cpu_compat.apply()
    import torchtitan.models.qwen3 as tq  # imports `datasets` (torchtitan's HF dataset module)
    from torchtitan.config import TORCH_DTYPE_MAP, JobConfig
    from torchtitan.distributed import ParallelDims
    from torchtitan.distributed import utils as dist_utils
    from torchtitan.protocols.model_converter import build_model_converters
    from torchtitan.tools import utils
    from torchtitan.train import Trainer

    knobs = IMPLS[impl]
    _one_rank_process_group(device)
    spec = tq.get_train_spec()
    jc = JobConfig()
    jc.training.seq_len = seq
    jc.training.dtype = knobs["dtype"]  # bfloat16: params, grads and AdamW state in bf16
    jc.training.mixed_precision_param, jc.training.mixed_precision_reduce = "bfloat16", "float32"
    jc.compile.enable, jc.compile.backend = True, backend  # components: model (per block) + loss
    jc.metrics.log_freq = 1
    name, shape = TITAN_FLAVORS.get(flavor, (flavor, {}))
    model_args = copy.deepcopy(spec.model_args[name])
    for key, value in {**shape, **(overrides or {})}.items():
        setattr(model_args, key, value)
    if model_args.moe_enabled and device != "cuda":
        model_args.moe_args.use_grouped_mm = False  # grouped mm is a CUDA kernel
    model_args.update_from_config(jc)
    dims = (one_device_fsdp_dims_cls() if knobs.get("fsdp") else ParallelDims)(
        dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, etp=1, world_size=1)
    dims.build_mesh()
    with torch.device("meta"), utils.set_default_dtype(TORCH_DTYPE_MAP[jc.training.dtype]):
        model = spec.model_cls(model_args)
    if knobs.get("float8"):  # its config's converter list, as a run with --model.converters sets it
        jc.model.converters = ["quantize.linear.float8"]
        jc.quantize.linear.float8.recipe_name = knobs["float8"]
        jc.quantize.linear.float8.filter_fqns = float8_keep_bf16()
    converters = build_model_converters(jc, dims)  # Trainer.__init__: no-op without converters
    converters.convert(model)
    model = spec.parallelize_fn(model, dims, jc)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    model.train()
    if device == "cpu":  # gloo has no PREMUL_SUM (no-op without FSDP)
        cpu_compat.use_sum_reduction_on_gloo(model)
    optimizers = spec.build_optimizers_fn([model], jc.optimizer, dims)
    optimizers.register_step_post_hook(lambda *args, **kwargs: converters.post_optimizer_hook([model]))

    class StepOnly(Trainer):  # Trainer.train_step / forward_backward_step unchanged, components given
        def __init__(self, **parts):
            self.__dict__.update(parts)

    trainer = StepOnly(
        job_config=jc, parallel_dims=dims, train_spec=spec, model_args=model_args, model_parts=[model],
        device=torch.device(device), tokenizer=None, optimizers=optimizers,
        lr_schedulers=spec.build_lr_schedulers_fn(optimizers, jc.lr_scheduler, jc.training.steps),
        loss_fn=spec.build_loss_fn(jc, parallel_dims=dims), gradient_accumulation_steps=1,
        train_context=dist_utils.get_train_context(False),
        maybe_enable_amp=dist_utils.maybe_enable_amp(dims, jc.training.mixed_precision_param, device),
        checkpointer=_NoStaging(), metrics_processor=_StepMetrics(), step=0, ntokens_seen=0,
        gc_handler=utils.GarbageCollection(gc_freq=jc.training.gc_freq),  # gc.disable(), collect every 50
    )

    def step(batch, log_freq=1):  # Trainer.train's loop body
        trainer.metrics_processor.log_freq = log_freq
        trainer.step += 1
        trainer.gc_handler.run(trainer.step)
        trainer.train_step(iter([({"input": batch["input_ids"]}, batch["labels"])]))
        return trainer.metrics_processor.loss

    layers = f", n_layers={shape['n_layers']}" if "n_layers" in shape else ""
    precision = ("FSDP2 on a 1-GPU mesh (bf16 params, fp32 master weights, fp32 reduce)" if knobs.get("fsdp")
                 else "pure bf16 (training.dtype bfloat16, its single-device autocast)")
    if knobs.get("float8"):
        precision += (f", float8 {knobs['float8']} linears (quantize.linear.float8, torchao; "
                      f"{', '.join(jc.quantize.linear.float8.filter_fqns)} kept bf16)")
    if knobs.get("fsdp") and model_args.enable_weight_tying:
        precision += " (tied weights in two FSDP groups, as 0.2.2 does: FACTS.md)"
    settings = (f"torchtitan 0.2.2 as shipped: qwen3 {name}{layers} model args, parallelize_qwen3 "
                f"(per-block compile, {backend}), {precision}, build_optimizers (AdamW "
                f"{jc.optimizer.implementation}), compiled cross-entropy, clip_grad_norm_, Trainer.train_step, "
                f"gc every {jc.training.gc_freq} steps")
    return Peer(model, step, optimizers.zero_grad, settings, trainer, vocab=model_args.vocab_size,
                loop_step=lambda batch: step(batch, log_freq=10))


class _NoStaging:
    """torchtitan's CheckpointManager with checkpointing off: nothing to wait for."""

    def maybe_wait_for_staging(self) -> None:
        return None


def build_peer(impl: str, flavor: str, seq: int, device: str, *, mb: int = 1, backend: str = "inductor",
               titan_overrides: dict | None = None) -> Peer:
    if impl.startswith("hf"):
        return hf_peer(flavor, impl, device, backend)
    if IMPLS[impl].get("titan"):
        return titan_peer(flavor, impl, seq, device, backend, titan_overrides)
    return ours_peer(flavor, impl, seq, mb, device, backend)


def batch_for(mb: int, seq: int, seed: int = 0) -> dict:
    import torch

    tokens = torch.randint(0, 151_000, (mb, seq + 1), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": tokens[:, :-1].contiguous(), "labels": tokens[:, 1:].contiguous()}
