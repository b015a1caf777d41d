"""Training throughput: HF transformers, torchtitan as shipped and qwen3-trainer, same GPU, same run.

Each (model, impl) row runs in its own subprocess (memory and compile caches don't leak between rows)
and every impl goes through the same timing loop (``time_steps``: synchronize, one optimizer step on a
fixed CPU batch, synchronize). The impls:

* ``hf-*``: HF transformers (bf16 weights, fused AdamW, SDPA; eager or ``torch.compile``).
* ``qwen3-trainer-*``: our ``Trainer.train_step``; ``-fsdp-mixed-`` is FSDP2 on a one-GPU mesh (fp32
  master weights, bf16 compute, fp32 reduce), as each rank of a sharded run has it.
* ``torchtitan-*``: torchtitan 0.2.2 as shipped, from its own pieces only: the qwen3 TrainSpec's model
  and model args (``30B-A3B-8L`` = its 30B-A3B with ``n_layers=8``), ``parallelize_qwen3`` (per-block
  compile; FSDP2 on a one-GPU mesh for ``-fsdp-mixed-``), its optimizer builder (fused AdamW), its
  compiled cross-entropy, and its ``Trainer.train_step`` run unchanged (``clip_grad_norm_``, the
  optimizer step) with its garbage-collection schedule. The Trainer's data loader, tokenizer,
  checkpointer and metric loggers are left out; its metrics hook takes loss and grad norm every step.

A child tunes the micro-batch: it tries the candidates in order (best first in earlier runs), with a
fresh static-shape compile for each (``torch._dynamo.reset``), skips every candidate at least as large
as one that ran out of memory, and starts another only while its share of the time budget lasts. The
best is the row. ``--budget-s`` bounds the whole sweep: rows run in priority order (``PEER_PRIORITY``)
and what no longer fits is recorded under ``skipped``; the JSON is rewritten after every row. The next
row's process is started early so that its imports overlap the current row (it waits before touching
the GPU). Model FLOPs per token (FACTS.md): 6 * active non-embedding params + 12 * layers * heads *
head_dim * seq + 6 * hidden * vocab; ``mfu`` is against the bf16 matmul ceiling measured in the same call.

    python benchmarks/train_throughput.py --peers --budget-s 420 --out 'benchmarks/results/{date}-h200-peers.json'
    python benchmarks/train_throughput.py --models 1.7B --impls hf-compile,qwen3-trainer-bf16-compile --mb 4
    python benchmarks/train_throughput.py --peers --models debugmodel --seq 64 --steps 2 --warmup 1 \\
        --mb 1 --device cpu --compile-backend eager --out /tmp/peers.json    # smoke (CPU)

The one device call that writes the peers file (nvidia-h200; ``.whl/`` is git-ignored, so it is
carried; it holds the 15 wheels FACTS.md lists, torchtitan 0.2.2 among them, and ``datasets``, ``dill``
and ``multiprocess``, which ``import torchtitan.models.qwen3`` pulls in through torchtitan's HF dataset
module). The command's limit leaves ~2 minutes for the wheel install, the ceiling and the last row::

    run(kind="nvidia-h200", carry=[".whl"], timeout_s=600, command=
        "source benchmarks/gpu_env.sh && python3 benchmarks/train_throughput.py --peers --budget-s 420 "
        "--out \\"$OUT/{date}-h200-peers.json\\" 2>&1 | grep -v Warning | tail -40")
    # then copy <files_at>/<date>-h200-peers.json into benchmarks/results/

Peers file: ``rows`` [{model, impl, micro_batch, tokens_per_s, tflops, mfu, peak_mem_gib, mfu_989,
loss, settings, micro_batches, wall_s}], ``skipped`` [{model, impl, reason}], with date, device,
torch / torchtitan / transformers versions, the matmul ceiling and the command.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
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
    "qwen3-trainer-mp-compile": {"compile": True, "dtype": "float32", "param_dtype": "bfloat16"},
    "qwen3-trainer-fsdp-mixed-compile": {"compile": True, "dtype": "float32", "param_dtype": "bfloat16",
                                         "fsdp": True},
    "qwen3-trainer-fp8-compile": {"compile": True, "dtype": "bfloat16", "float8": "tensorwise"},
    "qwen3-trainer-fp8-out-compile": {"compile": True, "dtype": "bfloat16", "float8": "tensorwise",
                                      "float8_keep_bf16": ["router.gate"]},  # the output projection in float8 too
    "qwen3-trainer-fp8-rowwise-compile": {"compile": True, "dtype": "bfloat16", "float8": "rowwise"},
    "torchtitan-bf16-compile": {"titan": True, "dtype": "bfloat16"},
    "torchtitan-fsdp-mixed-compile": {"titan": True, "dtype": "float32", "fsdp": True},
}

PEER_MODELS = ("1.7B", "8B", "30B-A3B-8L")
PEER_IMPLS = ("hf-compile", "torchtitan-bf16-compile", "torchtitan-fsdp-mixed-compile",
              "qwen3-trainer-bf16-compile", "qwen3-trainer-fsdp-mixed-compile")
_OURS_TT = ("qwen3-trainer-bf16-compile", "torchtitan-bf16-compile")
_MIXED = ("qwen3-trainer-fsdp-mixed-compile", "torchtitan-fsdp-mixed-compile")
# what a short budget keeps: ours vs torchtitan in bf16 for every shape, then the mixed-precision pairs,
# then HF compile (its whole-model compile costs ~3 rows), last the 8B mixed rows (fp32 weights + AdamW
# state alone are ~122 GiB: they may not fit)
PEER_PRIORITY = (
    [(m, i) for m in ("1.7B", "30B-A3B-8L", "8B") for i in _OURS_TT]
    + [(m, i) for m in ("1.7B", "30B-A3B-8L") for i in _MIXED]
    + [(m, "hf-compile") for m in ("1.7B", "30B-A3B-8L", "8B")]
    + [("8B", i) for i in _MIXED]
)
# micro-batch candidates, tried in this order (the first was the best that fit in earlier calls)
PEER_MBS = {"1.7B": (4, 2, 1), "8B": (2, 1, 4), "30B-A3B-8L": (2, 4, 1)}
ROW_WEIGHT = {"hf-compile": 3.0}  # share of the budget relative to a row of ours (compile time)
# our benchmark shapes in torchtitan's model args; its debugmodel cut to 2 layers and untied for CPU smoke
# runs (0.2.2's apply_fsdp refuses tied weights on torch >= 2.13, FACTS.md)
TITAN_FLAVORS = {"30B-A3B-8L": ("30B-A3B", {"n_layers": 8}),
                 "debugmodel": ("debugmodel", {"n_layers": 2, "enable_weight_tying": False}),
                 "debugmodel_moe": ("debugmodel_moe", {"n_layers": 2})}


def flops_per_token(flavor: str, seq: int) -> float:
    from qwen3_trainer.model.flavors import get_flavor
    from qwen3_trainer.platform.train.metrics import flops_per_token as f

    return f(get_flavor(flavor), seq)


def matmul_ceiling(device: str) -> float | None:
    import torch

    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    n, t0 = 20, time.perf_counter()
    for _ in range(n):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * n / (time.perf_counter() - t0)


# -- the impls: each builds a Peer whose ``step`` is one optimizer step on a CPU batch ----------------
@dataclass
class Peer:
    model: Any  # the module being trained (tests check whose class it is)
    step: Callable[[dict], Any]  # one optimizer step; returns the loss (tensor or float)
    zero_grad: Callable[[], None]  # drops gradients (after an out-of-memory step)
    settings: str
    owner: Any = None  # the trainer / optimizer behind ``step``
    vocab: int = 151_936  # token ids of the batch stay below this


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
        "optimizer": {"lr": lr},
        "lr": {"schedule": "constant", "warmup_steps": warmup_steps},
        "compile": knobs["compile"],
        "moe": {"balance": knobs.get("balance", "global_batch")},
        "float8": bool(knobs.get("float8")),
        "float8_recipe": knobs.get("float8") or "tensorwise",
        "float8_keep_bf16": knobs.get("float8_keep_bf16", ["output", "router.gate"]),
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
    parts.append("torch.compile per block" if knobs["compile"] else "eager")
    if knobs.get("float8"):
        keep = trainer.cfg.float8_keep_bf16
        parts.append(f"float8 {knobs['float8']} linears{'' if 'output' in keep else ' incl. output'}")
    clip = ", separate clip pass" if knobs.get("separate_clip") else ""
    parts += ["cuDNN SDPA first", f"AdamW ({trainer.job_config.optimizer.implementation}{clip})"]
    if knobs.get("balance") == "none":
        parts.append("no load-balancing loss")
    return Peer(trainer.model_parts[0], lambda batch: trainer.train_step([batch])["loss"],
                trainer.optimizers.zero_grad, ", ".join(parts), trainer)


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
    """Stands in for torchtitan's MetricsProcessor at ``log_freq`` 1: ``train_step`` hands it the loss and
    grad norm (reading both with ``.item()``, as our trainer does every step); peak-memory stats stay."""

    loss = grad_norm = None

    def should_log(self, step: int) -> bool:
        return True

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
    model = spec.parallelize_fn(model, dims, jc)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    model.train()
    if device == "cpu":  # gloo has no PREMUL_SUM (no-op without FSDP)
        cpu_compat.use_sum_reduction_on_gloo(model)
    optimizers = spec.build_optimizers_fn([model], jc.optimizer, dims)

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

    def step(batch):  # Trainer.train's loop body
        trainer.step += 1
        trainer.gc_handler.run(trainer.step)
        trainer.train_step(iter([({"input": batch["input_ids"]}, batch["labels"])]))
        return trainer.metrics_processor.loss

    layers = f", n_layers={shape['n_layers']}" if "n_layers" in shape else ""
    precision = ("FSDP2 on a 1-GPU mesh (bf16 params, fp32 master weights, fp32 reduce)" if knobs.get("fsdp")
                 else "pure bf16 (training.dtype bfloat16, its single-device autocast)")
    if knobs.get("fsdp") and model_args.enable_weight_tying:
        precision += " (tied weights in two FSDP groups, as 0.2.2 does: FACTS.md)"
    settings = (f"torchtitan 0.2.2 as shipped: qwen3 {name}{layers} model args, parallelize_qwen3 "
                f"(per-block compile, {backend}), {precision}, build_optimizers (AdamW "
                f"{jc.optimizer.implementation}), compiled cross-entropy, clip_grad_norm_, Trainer.train_step, "
                f"gc every {jc.training.gc_freq} steps")
    return Peer(model, step, optimizers.zero_grad, settings, trainer, vocab=model_args.vocab_size)


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


def time_steps(peer: Peer, mb: int, seq: int, steps: int, warmup: int, device: str) -> dict:
    """The one timing loop: per step synchronize, step, synchronize; ``warmup`` steps untimed."""
    import torch

    batch = {k: v % peer.vocab for k, v in batch_for(mb, seq).items()}
    cuda = device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times, loss = [], None
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = peer.step(batch)
        if cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"seconds": times, "loss": float(loss),
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _preimport(impl: str, device: str) -> None:
    """Import what the row needs before it waits for the GPU (overlaps the previous row)."""
    import torch  # noqa: F401

    if impl.startswith("hf"):
        import transformers.models.qwen3.modeling_qwen3  # noqa: F401
        import transformers.models.qwen3_moe.modeling_qwen3_moe  # noqa: F401
    if not IMPLS[impl].get("titan") or device == "cpu":
        import qwen3_trainer.platform.train.trainer  # noqa: F401  (titan rows on CUDA import no qwen3_trainer)
    if IMPLS[impl].get("titan"):
        import torchtitan.models.qwen3  # noqa: F401
        import torchtitan.train  # noqa: F401


def emit(record: dict) -> None:
    print("RESULT " + json.dumps(record), flush=True)


def child(args) -> None:
    """One row: build the impl once, then time each micro-batch candidate (one RESULT line each)."""
    import torch

    _preimport(args.impl, args.device)
    deadline = 0.0
    if args.wait_go:  # the parent's go line carries this row's soft deadline
        deadline = float((sys.stdin.readline().split() or ["go", "0"])[-1])
    peer = build_peer(args.impl, args.flavor, args.seq, args.device, mb=int(args.mb.split("/")[0]),
                      backend=args.compile_backend)
    oom_at, last_cost = None, 0.0
    for mb in (int(x) for x in args.mb.split("/")):
        if oom_at is not None and mb >= oom_at:
            emit({"mb": mb, "skipped": f"mb {oom_at} ran out of memory"})
            continue
        if last_cost and deadline and time.time() + last_cost > deadline:
            emit({"mb": mb, "skipped": "the row's share of the budget is spent"})
            continue
        t0 = time.time()
        torch._dynamo.reset()  # a fresh static-shape compile per micro-batch, as a run of that size has
        failure = None
        try:
            out = time_steps(peer, mb, args.seq, args.steps, args.warmup, args.device)
        except Exception as exc:  # noqa: BLE001 - recorded per micro-batch, then the row goes on or ends
            failure = ("oom" if _is_oom(exc) else "error", f"{type(exc).__name__}: {str(exc)[:400]}")
        if failure is None:
            last_cost = time.time() - t0
            emit({"mb": mb, **out, "settings": peer.settings, "wall_s": round(last_cost, 1)})
            continue
        peer.zero_grad()
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        emit({"mb": mb, failure[0]: failure[1]})
        if failure[0] == "oom":
            oom_at = mb if oom_at is None else min(oom_at, mb)
        else:
            break


# -- the sweep (parent) ------------------------------------------------------------------------------
class ChildRunner:
    """Each row in its own process group; the next row's process is started early and waits on stdin."""

    def __init__(self, script: str, common: list[str]):
        self.script, self.common = script, common
        self.logdir = tempfile.mkdtemp(prefix="qwen3-tp-")
        self.waiting: dict[tuple, tuple[subprocess.Popen, str]] = {}

    def _spawn(self, key: tuple, argv: list[str]) -> tuple[subprocess.Popen, str]:
        log = os.path.join(self.logdir, "-".join(map(str, key)).replace("/", "_") + ".log")
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, self.script, "--child", "--wait-go", *self.common, *argv],
                                    stdin=subprocess.PIPE, stdout=f, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True)
        return proc, log

    def prefetch(self, key: tuple, argv: list[str]) -> None:
        if key not in self.waiting:
            self.waiting[key] = self._spawn(key, argv)

    def run(self, key: tuple, argv: list[str], soft_deadline: float, timeout: float) -> tuple[list[dict], str]:
        proc, log = self.waiting.pop(key, None) or self._spawn(key, argv)
        try:
            proc.stdin.write(f"go {soft_deadline}\n")
            proc.stdin.close()
            proc.wait(timeout=max(timeout, 1))
        except (subprocess.TimeoutExpired, BrokenPipeError):
            self._kill(proc)
        text = open(log, errors="replace").read()
        results = [json.loads(x[7:]) for x in text.splitlines() if x.startswith("RESULT ")]
        if proc.returncode not in (0, None) and not any("error" in r for r in results):
            tail = [x for x in text.splitlines() if x.strip()][-3:]
            why = "timed out" if proc.returncode == -signal.SIGKILL else f"exit {proc.returncode}"
            results.append({"error": f"{why}: {' | '.join(tail)[-600:]}"})
        return results, text

    def discard(self, key: tuple) -> None:
        if key in self.waiting:
            self._kill(self.waiting.pop(key)[0])

    def close(self) -> None:
        for key in list(self.waiting):
            self.discard(key)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def parse_mbs(spec: str, models: list[str], defaults: dict | None = None) -> dict[str, list[int]]:
    """``4/2/1`` for every model, or ``1.7B:4/2/1,8B:2`` per model (others: ``defaults`` or 1)."""
    if ":" not in spec:
        return {m: [int(x) for x in spec.split("/")] for m in models}
    given = {kv.split(":")[0]: [int(x) for x in kv.split(":")[1].split("/")] for kv in spec.split(",")}
    return {m: given.get(m, list((defaults or {}).get(m, (1,)))) for m in models}


def best_row(model: str, impl: str, results: list[dict], seq: int, fpt: float, ceiling: float | None) -> dict | None:
    tried, best = {}, None
    for r in results:
        if "mb" not in r:
            continue
        if "seconds" not in r:
            tried[str(r["mb"])] = next(f"{k}: {r[k]}" for k in ("oom", "error", "skipped") if k in r)
            continue
        sec = sorted(r["seconds"])[len(r["seconds"]) // 2]  # median step
        tps = r["mb"] * seq / sec
        tried[str(r["mb"])] = {"tokens_per_s": round(tps, 1), "peak_mem_gib": r["peak_mem_gib"] and round(r["peak_mem_gib"], 2)}
        if best is None or tps > best[0]:
            best = (tps, r)
    if best is None:
        return None
    tps, r = best
    tflops = fpt * tps / 1e12
    return {"model": model, "impl": impl, "micro_batch": r["mb"], "tokens_per_s": round(tps, 1),
            "tflops": round(tflops, 1), "mfu": round(tflops * 1e12 / ceiling, 4) if ceiling else None,
            "peak_mem_gib": r["peak_mem_gib"] and round(r["peak_mem_gib"], 2), "mfu_989": round(tflops / 989, 4),
            "loss": r["loss"], "settings": f"{r['settings']}, seq={seq}", "micro_batches": tried}


def _write(path: str | None, result: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1)
    os.replace(path + ".tmp", path)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "torchtitan", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def sweep(args, runner=None) -> dict:
    """Every planned row in order, within ``args.budget_s``; rewrites ``args.out`` after each row."""
    t_start = time.time()
    models, impls = args.models.split(","), args.impls.split(",")
    if args.peers:
        plan = [(m, i) for m, i in PEER_PRIORITY if m in models and i in impls]
        plan += [(m, i) for m in models for i in impls if (m, i) not in plan]
    else:
        plan = [(m, i) for m in models for i in impls]
    mbs = parse_mbs(args.mb, models, PEER_MBS if args.peers else None)
    ceiling = matmul_ceiling(args.device)
    if args.device == "cuda":
        import torch

        device_name = torch.cuda.get_device_name()
        torch.cuda.empty_cache()  # the children need the whole GPU
    else:
        device_name = "cpu"
    out = args.out and args.out.replace("{date}", datetime.date.today().isoformat())
    result = {"date": datetime.date.today().isoformat(), "device": device_name, **_versions(),
              "matmul_bf16_tflops": ceiling and round(ceiling / 1e12, 1), "seq": args.seq, "steps": args.steps,
              "warmup": args.warmup, "budget_s": args.budget_s, "rows": [], "skipped": [],
              "command": " ".join(["python", "benchmarks/train_throughput.py", *sys.argv[1:]])}
    _write(out, result)
    end = t_start + args.budget_s if args.budget_s else float("inf")
    common = ["--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--device", args.device, "--compile-backend", args.compile_backend]
    runner = runner or ChildRunner(os.path.abspath(__file__), common)

    def argv(row):
        return ["--flavor", row[0], "--impl", row[1], "--mb", "/".join(map(str, mbs[row[0]]))]

    try:
        for k, (model, impl) in enumerate(plan):
            t0, left = time.time(), end - time.time()
            if left < args.min_row_s * ROW_WEIGHT.get(impl, 1.0):
                result["skipped"].append({"model": model, "impl": impl, "reason": f"budget: {left:.0f} s left"})
                runner.discard((model, impl))
                _write(out, result)
                continue
            weights = [ROW_WEIGHT.get(i, 1.0) for _, i in plan[k:]]
            share = max(args.min_row_s, left * weights[0] / sum(weights)) if args.budget_s else float("inf")
            soft = t0 + share if args.budget_s else 0.0
            if k + 1 < len(plan):
                runner.prefetch(plan[k + 1], argv(plan[k + 1]))
            results, text = runner.run((model, impl), argv((model, impl)), soft, min(args.row_cap_s, left))
            row = best_row(model, impl, results, args.seq, flops_per_token(model, args.seq), ceiling)
            if row is None:
                why = "; ".join(f"mb {r.get('mb', '?')}: {r.get('oom') or r.get('error') or r.get('skipped')}"
                                for r in results) or f"no result: {text[-600:]}"
                result["skipped"].append({"model": model, "impl": impl, "reason": why[-900:]})
                print(f"{model:12s} {impl:34s} FAILED {why[-300:]}", flush=True)
            else:
                row["wall_s"] = round(time.time() - t0, 1)
                result["rows"].append(row)
                print(f"{model:12s} {impl:34s} mb {row['micro_batch']} {row['tokens_per_s']:10.0f} tok/s "
                      f"{row['tflops']:7.1f} TFLOP/s mem {row['peak_mem_gib']} GiB ({row['wall_s']} s)", flush=True)
            result["elapsed_s"] = round(time.time() - t_start, 1)
            _write(out, result)
    finally:
        runner.close()
    return result


def row_args(description: str, *, impls: str, steps: int, timeout: int) -> argparse.ArgumentParser:
    """The options shared by the per-row benchmarks (this file, profile_step.py)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models", default="1.7B,8B,30B-A3B-8L")
    p.add_argument("--impls", default=impls)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--mb", default="1.7B:2,8B:1,30B-A3B-8L:2", help="micro-batch per model, or one int")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda")
    p.add_argument("--timeout", type=int, default=timeout)
    p.add_argument("--child", action="store_true")
    p.add_argument("--flavor")
    p.add_argument("--impl")
    return p


def run_child(cmd: list[str], timeout: int) -> tuple[dict | None, str]:
    """Run one row in its own process; returns its first ``RESULT`` JSON (None if it failed) and its output."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        text = f"TIMEOUT after {timeout}s {out}"
    line = next((x for x in text.splitlines() if x.startswith("RESULT ")), None)
    return (json.loads(line[7:]) if line else None), text


def parser() -> argparse.ArgumentParser:
    p = row_args(__doc__.splitlines()[0], impls="hf-eager,hf-compile,qwen3-trainer-bf16-compile", steps=8,
                 timeout=420)
    p.add_argument("--peers", action="store_true",
                   help="the peer sweep: PEER_MODELS x PEER_IMPLS in PEER_PRIORITY order, micro-batches PEER_MBS")
    p.add_argument("--budget-s", type=float, default=0, help="seconds for the whole sweep (0: no limit)")
    p.add_argument("--row-cap-s", type=float, default=0, help="seconds one row may take (0: --timeout)")
    p.add_argument("--min-row-s", type=float, default=35,
                   help="a row needs this much budget left to start (times ROW_WEIGHT)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager/aot_eager: CPU tests)")
    p.add_argument("--wait-go", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="JSON path; {date} becomes today's date")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options, with the peer sweep's defaults under ``--peers`` (unless given)."""
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    given = {a.split("=")[0] for a in argv}
    if args.peers:
        defaults = {"--models": ("models", ",".join(PEER_MODELS)), "--impls": ("impls", ",".join(PEER_IMPLS)),
                    "--mb": ("mb", ",".join(f"{m}:{'/'.join(map(str, v))}" for m, v in PEER_MBS.items())),
                    "--steps": ("steps", 10)}
        for flag, (name, value) in defaults.items():
            if flag not in given:
                setattr(args, name, value)
    args.row_cap_s = args.row_cap_s or args.timeout
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.child:
        child(args)
        return None
    result = sweep(args)
    print(json.dumps({k: v for k, v in result.items() if k not in ("rows", "skipped")}))
    return result


if __name__ == "__main__":
    main()
