"""The one training loop: torchtitan components, pluggable objectives, any parallelism.

Built from torchtitan's pieces, not its Trainer: ``ParallelDims`` for the device mesh, its
parallelize functions (via ``parallel.parallelize``), ``pipeline_llm`` for pipeline parallelism,
its optimizer / LR-scheduler builders and model converters (float8), and its gradient clipping.
Around them: global-token loss normalisation, the global-batch MoE balancing loss, DCP
checkpoints with exact resume (model, optimizer, LR, data position, RNG), and tracking.

Hooks for post-training (platform/posttrain): ``train_step(batches)`` takes externally produced
micro-batches (rollouts; ``fit`` pads a producer's micro-batches so that every rank runs the same
number of forwards, each as wide as sequence parallelism needs); objectives may weight tokens
(``batch["weights"]``), score with the policy outside a step (``scoring``) and use frozen models —
reference, teacher, reward model — built from their own checkpoints and placed like the policy
(``load_frozen``: the same TP/EP, FSDP over the data-parallel ranks, in the compute dtype).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from typing import Any

import torch
import torch.distributed as dist

from qwen3_trainer.model.build import build_model, init_buffers, retie
from qwen3_trainer.model.flavors import count_params, get_flavor
from qwen3_trainer.model.hf_interop import hf_config_from_args
from qwen3_trainer.platform.train import parallel
from qwen3_trainer.platform.train.checkpoint import Checkpointer, rng_state, set_rng_state
from qwen3_trainer.platform.train.config import TrainConfig
from qwen3_trainer.platform.train.metrics import flops_per_token, memory_gib, peak_flops
from qwen3_trainer.platform.train.objectives import (
    BatchProducer,
    ObjectiveContext,
    build_objective,
    token_cross_entropy,
)

log = logging.getLogger("qwen3_trainer.train")
FULL_INIT_MAX_PARAMS = 2_000_000_000  # below this, every rank builds the same seeded full init


@dataclasses.dataclass
class LaunchedStep:
    """An optimizer step whose kernels are queued (``Trainer.launch_step``): the numbers the host already
    has, and ``values``, the device tensor ``Trainer.step_metrics`` reads back: [loss, the objective's
    sums (``sum_keys``), grad norm, the summed counts when ``counts`` is None, the balancer's statistics
    when ``has_balance``]."""

    step: int
    started: float
    counts: list[float] | None  # [loss tokens, tokens, data checksum] of the step; None: in ``values``
    lr: float
    values: torch.Tensor  # on CUDA: a host copy, filled when ``ready`` has passed
    ready: Any  # torch.cuda.Event recorded after the copy, or None
    sum_keys: list[str]
    has_balance: bool


def _f64(value: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """A 0-d float64 device tensor of ``value`` without a blocking copy (a host number goes over
    non-blocking: ``torch.tensor(x, device=...)`` would wait for the queued work)."""
    if torch.is_tensor(value):
        return value.detach().to(device=device, dtype=torch.float64, non_blocking=True).reshape(())
    return torch.tensor(float(value), dtype=torch.float64).to(device, non_blocking=True)


def total_grad_norm(grads: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all ``grads``, bit-equal to ``torch.nn.utils.get_total_norm`` (per (device, dtype)
    group ``_foreach_norm``, then the norm of the stacked norms; DTensor grads give a DTensor) but,
    when all share a device, without its per-tensor ``.to(device)`` of every norm: one DTensor
    dispatch each, ~3 ms of host time a step at 1.7B (hidden behind the queued GPU work at mb 4: no
    measured speed-up, BENCHMARKS.md). No grads or several devices: ``get_total_norm`` itself."""
    if not grads or len({g.device for g in grads}) > 1:
        return torch.nn.utils.get_total_norm(grads, 2.0, False, True)
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault(g.dtype, []).append(g)
    norms = [n for group in groups.values() for n in torch._foreach_norm(group, 2.0)]
    return torch.linalg.vector_norm(torch.stack(norms), 2.0)


class Trainer:
    def __init__(self, cfg: TrainConfig, env: parallel.DistEnv | None = None, *, loader=None,
                 tracker=None):
        self.cfg = cfg
        self.env = env or parallel.DistEnv.from_env()
        self.device = parallel.resolve_device(cfg, self.env)
        self.dims = parallel.validate_layout(cfg, self.env.world_size)
        parallel.init_process_group(self.env, self.device)
        self.pdims = parallel.build_parallel_dims(cfg, self.env.world_size)
        self.job_config = parallel.to_job_config(cfg, self.dims)
        if cfg.training.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.manual_seed(cfg.training.seed)

        self.model_args = self._model_args()
        self.objective = build_objective(cfg.objective.name, cfg.objective.params)
        # compiled blocks under a producer (rollout widths change every micro-batch): widths in buckets
        # and one static graph per bucket. Dynamo's automatic dynamic shapes (its answer to the second
        # width) failed in inductor's codegen for Qwen3-1.7B GRPO (H200, torch 2.11, 'list indices must be
        # integers or slices, not NoneType'); static buckets also keep the fastest kernels.
        self._static_widths = bool(cfg.compile and self.device.type == "cuda" and isinstance(self.objective,
                                                                                              BatchProducer))
        if self._static_widths:  # RoPE rows for the widest bucket
            self.model_args.max_seq_len = -(-self.model_args.max_seq_len // COMPILE_WIDTH) * COMPILE_WIDTH
        if cfg.compile and hasattr(self.objective, "compile"):
            self.objective.compile()  # fuse the fp32 up-cast + log-softmax over the 151,936 logits
        self.ctx = ObjectiveContext(load_frozen=self.load_frozen)
        self._build_model()
        self._build_optim()
        self.balancer = None
        if self.model_args.moe_enabled and cfg.moe.balance == "global_batch":
            from qwen3_trainer.model.load_balance import GlobalBatchLoadBalancer

            self.balancer = GlobalBatchLoadBalancer(self.model_parts, cfg.moe.coeff, self._loss_group())
        self.dp_world = self.dims["dp_replicate"] * self.dims["dp_shard"]
        self.dp_rank = self.pdims.get_mesh("batch").get_local_rank() if self.dp_world > 1 else 0
        # sequence parallelism shards activations along the sequence: a micro-batch's width must divide
        self.seq_multiple = self.dims["tp"] * (2 * self.dims["cp"] if self.dims["cp"] > 1 else 1)
        if self._static_widths:
            self.seq_multiple = math.lcm(self.seq_multiple, COMPILE_WIDTH)
        self.loader = loader
        self.step = 0
        self._last_done = 0.0  # when the last step's numbers were read (step_metrics)
        self.history: list[dict[str, Any]] = []
        self.tracker = tracker
        ckpt = cfg.checkpoint
        self.checkpointer = (
            Checkpointer(ckpt.dir, keep_last=ckpt.keep_last, async_save=ckpt.async_save,
                         rank=self.env.rank, model_config=hf_config_from_args(self.model_args))
            if ckpt.dir else None
        )
        self.flops_per_token = flops_per_token(self.model_args, cfg.training.seq_len)
        self.peak = peak_flops(self.device)

    # -- construction --------------------------------------------------------------------------
    def _model_args(self):
        m = self.cfg.model
        args = get_flavor(m.flavor)
        args.max_seq_len = max(self.cfg.training.seq_len, 1)
        if m.rope_theta is not None:
            args.rope_theta = m.rope_theta
        if m.tie_embeddings is not None:
            args.enable_weight_tying = m.tie_embeddings
        if m.vocab_size is not None:
            args.vocab_size = m.vocab_size
        if m.n_layers is not None:
            args.n_layers = m.n_layers
        args.attn_type = m.attention
        args.attn_mask_type = "block_causal" if m.attention == "flex" else "causal"
        if args.moe_enabled and self.cfg.moe.balance == "aux_free":
            args.moe_args.load_balance_coeff = self.cfg.moe.aux_free_update_rate
        return args

    def _build_model(self) -> None:
        args = self.model_args
        model = build_model(args, device="meta", init=False, compute_device=self.device)
        self.converters = None
        if self.cfg.float8:
            import torchtitan.components.quantization  # noqa: F401 - registers the float8 converters
            from torchtitan.protocols.model_converter import build_model_converters

            self.converters = build_model_converters(self.job_config, self.pdims)
            self.converters.convert(model)

        def parallelize_fn(m, pdims, jc):
            return parallel.parallelize(m, pdims, jc, self.cfg)

        if self.pdims.pp_enabled:
            from torchtitan.distributed.pipeline_parallel import pipeline_llm

            if self.objective.name not in ("lm", "sft"):
                raise ValueError(f"objective {self.objective.name!r} does not support pipeline parallelism")
            self.pp_schedule, parts, self.pp_first, self.pp_last = pipeline_llm(
                model, self.pdims, self.job_config, self.device, args, parallelize_fn, self._pp_loss
            )
        else:
            parts = [parallelize_fn(model, self.pdims, self.job_config)]
            self.pp_schedule, self.pp_first, self.pp_last = None, True, True
        for part in parts:
            part.to_empty(device=self.device)
            init_buffers(part, self.device)
            retie(part)  # to_empty from meta gives each module its own Parameter
        self.model_parts = parts
        self._init_weights()
        if self.cfg.training.dtype == "bfloat16":  # pure bf16: weights and optimizer state
            for part in parts:
                part.to(torch.bfloat16)
        # without FSDP (one device / DDP / TP-only), mixed precision is autocast
        use_amp = (self.cfg.training.param_dtype == "bfloat16" and self.cfg.training.dtype == "float32"
                   and not self.pdims.fsdp_enabled)
        self.amp = (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext
        for part in parts:
            part.train()

    def _init_weights(self) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        init = self.cfg.init
        if init.path:
            self._load_weights(self.model_parts, init.path, init.format)
            return
        if count_params(self.model_args).total <= FULL_INIT_MAX_PARAMS:
            # the same seeded full init on every rank: any parallelism starts from identical weights
            full = build_model(self.model_args, device=self.device, seed=self.cfg.training.seed).state_dict()
            for part in self.model_parts:
                set_model_state_dict(part, full, options=StateDictOptions(full_state_dict=True, strict=False))
            del full
        else:
            torch.manual_seed(self.cfg.training.seed + self.env.rank)
            with torch.no_grad():
                for part in self.model_parts:
                    part.init_weights(buffer_device=self.device)

    def _load_weights(self, parts: list[torch.nn.Module], path: str, fmt: str, *, frozen: bool = False) -> None:
        """A checkpoint's weights into (sharded) ``parts``: DCP reads each rank's shards; HF is read
        whole on the host (a frozen model's at the file's dtype, not as an fp32 model) and each rank
        keeps its shards."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        from qwen3_trainer.model import storage
        from qwen3_trainer.model.dcp_io import MODEL_KEY, reader
        from qwen3_trainer.model.hf_interop import from_hf

        if fmt == "auto":
            fmt = "dcp" if storage.exists(storage.join(path, ".metadata")) else "hf"
        if fmt == "hf":
            full = _hf_titan_state(path, parts[0].model_args) if frozen else from_hf(path, device="cpu").state_dict()
            for part in parts:
                set_model_state_dict(part, full, options=StateDictOptions(full_state_dict=True, strict=False))
            return
        import torch.distributed.checkpoint as dcp
        from torchtitan.components.checkpoint import ModelWrapper

        wrapper = ModelWrapper(parts)
        dcp.load({MODEL_KEY: wrapper}, storage_reader=reader(path), checkpoint_id=path)

    def _build_optim(self) -> None:
        from torchtitan.components.lr_scheduler import build_lr_schedulers
        from torchtitan.components.optimizer import build_optimizers, build_optimizers_with_moe_load_balancing

        build = (build_optimizers_with_moe_load_balancing
                 if self.model_args.moe_enabled and self.cfg.moe.balance == "aux_free" else build_optimizers)
        self.optimizers = build(self.model_parts, self.job_config.optimizer, self.pdims)
        self.lr_schedulers = build_lr_schedulers(self.optimizers, self.job_config.lr_scheduler,
                                                 self.cfg.training.steps)
        if self.converters is not None:
            self.optimizers.register_step_post_hook(lambda *a, **k: self.converters.post_optimizer_hook(self.model_parts))
        self._compiled_step = None
        if self.cfg.optimizer.implementation == "compiled":
            from qwen3_trainer.platform.train import optim_step

            optim_step.make_capturable(self.optimizers.optimizers, self.device)
            self._compiled_step = optim_step.CompiledStep(self.optimizers, self.job_config.compile.backend,
                                                          lr_device=self.device)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the policy's forward computes in (bf16 under mixed precision or pure bf16)."""
        t = self.cfg.training
        return torch.bfloat16 if "bfloat16" in (t.param_dtype, t.dtype) else torch.float32

    def load_frozen(self, path: str) -> torch.nn.Module:
        """A frozen model (reference, teacher, reward model, judge) from a HF or DCP checkpoint (local or
        s3://), of whatever shape its config.json gives (a teacher may be larger than the policy), placed
        like the policy: its TP/EP, then FSDP over the data-parallel ranks resharded after each forward
        (``parallel.parallelize_frozen``), its weights stored in the compute dtype — never a full fp32
        copy per rank. Its forwards are then collectives: every rank must run the same number of them."""
        from qwen3_trainer.model import storage
        from qwen3_trainer.model.hf_interop import args_from_hf_config
        from qwen3_trainer.model.rope_scaling import apply_rope_scaling, rope_scaling_of

        if not storage.exists(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        args = args_from_hf_config(_read_json(storage.join(path, "config.json")))
        args.max_seq_len = max(args.max_seq_len, self.model_args.max_seq_len)  # RoPE rows for the step's widths
        model = build_model(args, device="meta", init=False, compute_device=self.device, dtype=self.compute_dtype)
        parallel.parallelize_frozen(model, self.pdims)
        model.to_empty(device=self.device)
        init_buffers(model, self.device)
        retie(model)
        if rope_scaling_of(model) is not None:
            apply_rope_scaling(model, rope_scaling_of(model))
        self._load_weights([model], path, "auto", frozen=True)
        model.eval().requires_grad_(False)
        local = sum(_local(p).numel() * p.element_size() for p in model.parameters()) / 2**30
        log.info("frozen model %s: %.3g B params, %.3g GiB on this rank (%s)", storage.redact(path),
                 sum(p.numel() for p in model.parameters()) / 1e9, local, str(self.compute_dtype).split(".")[-1])
        return model

    def load_reference(self, path: str) -> torch.nn.Module:
        """``load_frozen``, set as ``ctx.reference`` (the reference / teacher of the objective's loss)."""
        self.ctx.reference = self.load_frozen(path)
        return self.ctx.reference

    @contextlib.contextmanager
    def scoring(self):
        """The policy for forwards outside a training step (old log-probs, evaluations): no autograd, the
        step's autocast, and no trace in the MoE statistics (the balancer's per-step counts are reset by
        the next step; the experts' token counters, which aux-free balancing reads, are put back)."""
        counters = [(moe, moe.tokens_per_expert.clone()) for part in self.model_parts for moe in _moes(part)]
        if self.balancer is not None:
            self.balancer.step_begin(1)  # its hooks need a step open; train_step opens a fresh one
        try:
            with torch.no_grad(), self.amp(), self._widths():
                yield self.model_parts[0]
        finally:
            for moe, saved in counters:
                moe.tokens_per_expert.copy_(saved)

    # -- helpers -------------------------------------------------------------------------------
    def _loss_group(self):
        if self.dims["dp_replicate"] * self.dims["dp_shard"] * self.dims["cp"] == 1:
            return None
        return self.pdims.get_mesh("loss").get_group()

    def _all_reduce(self, value: torch.Tensor) -> torch.Tensor:
        group = self._loss_group()
        if group is not None:
            dist.all_reduce(value, group=group)
        return value

    def _widths(self):
        """Dynamo's settings for the bucketed widths: a static graph per bucket (no automatic dynamic
        shapes) and room for every (rows, width) the run meets in the recompile limit."""
        if not self._static_widths:
            return contextlib.nullcontext()
        cfg = torch._dynamo.config
        limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
        # each (rows, width, grad mode) is a graph: training and scoring forwards, evaluation chunks and
        # their remainders, dynamic sampling's refills -- and the blocks compile with fullgraph=True, where
        # one graph past the limit is an error, not a fallback
        total = "accumulated_recompile_limit" if hasattr(cfg, "accumulated_recompile_limit") else "accumulated_cache_size_limit"
        return cfg.patch(**{"automatic_dynamic_shapes": False, limit: max(getattr(cfg, limit), 512),
                            total: max(getattr(cfg, total), 2048)})

    def _forward(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = batch["input_ids"]
        with self._widths():
            if self.model_args.attn_type == "flex":
                masks = model.get_attention_masks(tokens, _EOS)
                return model(tokens, attention_masks=masks)
            return model(tokens)

    def _pp_loss(self, pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return token_cross_entropy(pred, labels).sum() / self._normalizer

    # -- the step ------------------------------------------------------------------------------
    def train_step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches (from the loader or a rollout) and its
        metrics: ``launch_step`` then ``step_metrics``."""
        return self.step_metrics(self.launch_step(batches))

    def launch_step(self, batches: list[dict[str, torch.Tensor]]) -> LaunchedStep:
        """Queue one optimizer step over this rank's micro-batches without waiting for the device (no host
        sync: on one rank the step's token counts and data checksum are host numbers; over several, their
        sums — the loss normaliser among them — stay device tensors until ``step_metrics``), so the host
        can fetch and queue the next step while this one runs (``fit`` reads each step's numbers after
        queueing the next). A micro-batch marked ``PAD`` (``align_micro_batches``) runs forward and
        backward with weight 0."""
        t0 = time.perf_counter()
        real = [b for b in batches if not b.get(PAD)]
        local_tokens = sum(self.objective.loss_tokens(b) for b in real)  # on the host copy
        # order-sensitive checksum of the step's global batch (resume tests compare data order),
        # taken from the host copy before the device copy
        checksum = sum(float((b["input_ids"].double() * torch.arange(1, b["input_ids"].numel() + 1,
                       dtype=torch.float64, device=b["input_ids"].device).view_as(b["input_ids"]))
                             .sum().remainder(1e9))
                       for b in real)
        local_numel = sum(b["input_ids"].numel() for b in real)
        # loss tokens, tokens and checksum of the whole step (ranks may hold micro-batches of different
        # widths): one rank's are the host numbers; over several, an all-reduce the device queues
        counts = [float(local_tokens), float(local_numel), checksum]
        summed_counts = None
        if self._loss_group() is None:
            self._normalizer = max(counts[0], 1.0) / parallel.ddp_grad_scale(self.pdims)
            step_tokens = counts[1]
        else:
            summed_counts = self._all_reduce(torch.tensor(counts, dtype=torch.float64).to(self.device,
                                                                                          non_blocking=True))
            self._normalizer = summed_counts[0].clamp(min=1.0) / parallel.ddp_grad_scale(self.pdims)
            step_tokens = summed_counts[1:2]
        batches = [{k: self._to_device(v) if torch.is_tensor(v) else v for k, v in b.items()} for b in batches]
        self.optimizers.zero_grad()
        if self.balancer is not None:
            self.balancer.step_begin(step_tokens)
        sums: dict[str, Any] = {}
        loss = torch.zeros((), device=self.device)
        if self.pp_schedule is not None:
            inputs = torch.cat([b["input_ids"] for b in batches])
            labels = torch.cat([b["labels"] for b in batches])
            losses: list[torch.Tensor] = []
            target = labels if self.pp_last else None
            with self.amp():  # without FSDP the stages compute in bf16 by autocast too, as one device does
                if self.pp_first:
                    self.pp_schedule.step(inputs, target=target, losses=losses if self.pp_last else None)
                else:
                    self.pp_schedule.step(target=target, losses=losses if self.pp_last else None)
            if self.pp_last:
                loss = torch.stack(losses).sum().detach()
            dist.all_reduce(loss, group=self.pdims.get_mesh("pp").get_group())
        else:
            model = self.model_parts[0]
            self.ctx.step = self.step
            for b in batches:
                with self.amp():
                    logits = self._forward(model, b)
                mb_loss, metrics = self.objective.loss(logits, b, self._normalizer, self.ctx)
                if b.get(PAD):  # its forwards and backward keep the ranks' collectives in step; no weight
                    (mb_loss * 0.0).backward()
                    del logits
                    continue
                mb_loss.backward()
                loss += mb_loss.detach()
                for k, v in metrics.items():  # tensors stay on the device until the step's numbers are read
                    sums[k] = sums.get(k, 0.0) + v
                del logits
        if self._compiled_step is not None:
            grad_norm, grad_scale = self._clip_scale()
            self._compiled_step(grad_scale)
        else:
            grad_norm = self._clip()
            self.optimizers.step()
        self.lr_schedulers.step()
        self.step += 1
        # what step_metrics reads back, in one device tensor: [loss, *objective sums] summed over the
        # data-parallel ranks (a device collective, queued), the grad norm, the summed counts (several
        # ranks), the balancer's statistics
        keys = sorted(sums)
        summed = self._all_reduce(torch.stack([_f64(loss, self.device)] + [_f64(sums[k], self.device) for k in keys]))
        parts = [summed, _f64(grad_norm, self.device).reshape(1)]
        if summed_counts is not None:
            parts.append(summed_counts)
        stats = self.balancer.step_stats() if self.balancer is not None else None
        if stats is not None:
            parts.append(stats)
        values, ready = torch.cat(parts), None
        if values.is_cuda:  # copied out as soon as the step's kernels end, not behind the next step's
            values, ready = values.to("cpu", non_blocking=True), torch.cuda.Event()
            ready.record()
        return LaunchedStep(step=self.step, started=t0, counts=None if summed_counts is not None else counts,
                            lr=self.lr_schedulers.schedulers[0].get_last_lr()[0], values=values, ready=ready,
                            sum_keys=keys, has_balance=stats is not None)

    def _to_device(self, value: torch.Tensor) -> torch.Tensor:
        """A copy to the device that the host does not wait for: from pinned memory (a copy out of pageable
        memory goes through a bounded staging buffer and may wait for the kernels queued before it)."""
        if self.device.type == "cuda" and value.device.type == "cpu" and not value.is_pinned():
            value = value.pin_memory()
        return value.to(self.device, non_blocking=True)

    def step_metrics(self, launched: LaunchedStep) -> dict[str, float]:
        """The numbers of a launched step (waits for that step's kernels and the copy of its numbers, queued
        at its end, not for the steps queued after it);
        its time runs from its launch, or from the previous step's end when it was queued behind it.
        Raises ``FloatingPointError`` on a non-finite loss."""
        if launched.ready is not None:
            launched.ready.synchronize()  # this step's kernels and the copy of its numbers, not the queued ones
        values = launched.values.tolist()
        done = time.perf_counter()
        dt = done - max(launched.started, self._last_done)
        self._last_done = done
        n = len(launched.sum_keys)
        loss = values[0] / parallel.ddp_grad_scale(self.pdims)
        rest = values[n + 2:]
        counts = launched.counts
        if counts is None:  # summed on the device
            counts, rest = rest[:3], rest[3:]
        loss_tokens, tokens, checksum = counts[0], int(counts[1]), counts[2]
        out = {"loss": loss, "grad_norm": values[n + 1], "lr": launched.lr,
               "step_seconds": dt, "tokens_per_s": tokens / dt, "tokens": tokens,
               "loss_tokens": loss_tokens, "data/checksum": checksum}
        out["tflops_per_device"] = self.flops_per_token * tokens / dt / self.env.world_size / 1e12
        if self.peak:
            out["mfu"] = out["tflops_per_device"] * 1e12 / self.peak
        if launched.has_balance:
            out.update(self.balancer.stats_metrics(rest))
        for k, v in zip(launched.sum_keys, values[1:n + 1], strict=True):  # the whole step's, not this rank's share
            out[f"objective/{k}"] = v
        out.update(memory_gib(self.device))
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {launched.step}")
        return out

    def _clip(self) -> torch.Tensor:
        """Clip before ``optimizers.step()``: folded into the fused kernel (``grad_scale``), or
        torchtitan's separate pass (expert parallelism's per-mesh norms, foreach, for-loop)."""
        if self.job_config.optimizer.implementation == "fused" and not self.pdims.ep_enabled:
            total, scale = self._clip_scale()
            for opt in self.optimizers.optimizers:
                opt.grad_scale = scale
            return total
        return self._clip_pass()

    def _clip_pass(self) -> torch.Tensor:
        from torchtitan.distributed.utils import clip_grad_norm_

        params = [p for m in self.model_parts for p in m.parameters()]
        pp_mesh = self.pdims.get_mesh("pp") if self.pdims.pp_enabled else None
        return clip_grad_norm_(params, self.cfg.training.max_norm, foreach=True, pp_mesh=pp_mesh,
                               ep_enabled=self.pdims.ep_enabled)

    def _clip_scale(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The total norm as torchtitan's ``clip_grad_norm_`` computes it, and instead of multiplying every
        gradient by ``min(1, max_norm / (norm + 1e-6))`` in a pass of its own, the divisor
        ``max(1, (norm + 1e-6) / max_norm)`` for the step to apply (the fused kernel's ``grad_scale``,
        the hook ``torch.amp.GradScaler`` uses for unscaling; the compiled step's division). Under
        expert parallelism: torchtitan's pass, and no divisor."""
        from torch.distributed.tensor import DTensor

        if self.pdims.ep_enabled:
            return self._clip_pass(), None
        params = [p for m in self.model_parts for p in m.parameters()]
        total = total_grad_norm([p.grad for p in params if p.grad is not None])
        if isinstance(total, DTensor):
            total = total.full_tensor()
        if self.pdims.pp_enabled:
            total = total**2
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=self.pdims.get_mesh("pp").get_group())
            total = total**0.5
        return total, torch.clamp((total.float() + 1e-6) / self.cfg.training.max_norm, min=1.0)

    # -- checkpoints ---------------------------------------------------------------------------
    def _ckpt_state(self) -> dict[str, Any]:
        from torchtitan.components.checkpoint import ModelWrapper

        return {"model": ModelWrapper(self.model_parts), "optimizer": self.optimizers,
                "lr_scheduler": self.lr_schedulers}

    def save(self, *, sync: bool = False) -> str | None:
        if self.checkpointer is None:
            return None
        extra = {"step": self.step, "data": self.loader.state_dict() if self.loader else None,
                 "rng": rng_state()}
        return self.checkpointer.save(self.step, self._ckpt_state(), extra, force_sync=sync)

    def maybe_resume(self) -> str | None:
        if self.checkpointer is None or not self.cfg.checkpoint.resume:
            return None
        path = self.checkpointer.latest()
        if path is None:
            return None
        extra = self.checkpointer.load(path, self._ckpt_state(), self.env.rank)
        self.step = int(extra["step"])
        if self.loader is not None and extra.get("data") is not None:
            self.loader.load_state_dict(extra["data"])
        set_rng_state(extra["rng"])
        return path

    # -- the loop ------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """The one training loop: resume from the newest complete checkpoint, then one optimizer step per
        batch set — from the data loader, or from the objective when it is a ``BatchProducer`` (RL
        rollouts, on-policy distillation, reward-model pairs) — logging every step, checkpointing every
        ``checkpoint.interval`` steps, and finishing with the final checkpoint and the HF export. From the
        loader, each step's numbers are read after the next step is queued (the host fetches and queues
        step N+1 while the device runs step N); a checkpoint step, the last step and a producer's steps
        are read before anything else runs. A non-finite loss stops the run when its step is read."""
        cfg = self.cfg
        resumed = self.maybe_resume()
        if resumed and self.tracker:
            self.tracker.set_tag("resumed_from", resumed)
        self.history = []
        producer = self.objective if isinstance(self.objective, BatchProducer) else None
        if producer is not None:
            producer.start(self)
            source = producer.steps(self)
        else:
            source = ((self.loader.next_step(), {}) for _ in iter(int, 1))
        ckpt_seconds = 0.0
        pending: tuple[LaunchedStep, dict[str, Any]] | None = None
        while self.step < cfg.training.steps:
            batches, extra = next(source)
            if producer is not None:
                batches = self.align_micro_batches(batches)
            launched = self.launch_step(batches)
            if pending is not None:  # the previous step's numbers, read while this step's kernels run
                self._record(*pending, producer)
            pending = (launched, extra)
            interval = cfg.checkpoint.interval
            save = bool(self.checkpointer and interval and self.step % interval == 0
                        and self.step < cfg.training.steps)
            # a producer's next rollout reads its step's numbers: no step ahead there; nor over a save
            if producer is not None or save:
                self._record(*pending, producer)
                pending = None
            if save:
                t = time.perf_counter()
                path = self.save()
                ckpt_seconds += time.perf_counter() - t
                if self.tracker:
                    self.tracker.set_tag(f"checkpoint.step-{self.step}", path)
        if pending is not None:
            self._record(*pending, producer)
        if producer is not None:
            source.close()
            producer.end(self)
        return self.finish(self.history, resumed, ckpt_seconds)

    def _record(self, launched: LaunchedStep, extra: dict[str, Any], producer: BatchProducer | None) -> None:
        metrics = self.step_metrics(launched)
        if producer is not None:
            metrics = producer.step_metrics(metrics)
        self.log({**metrics, **extra}, step_line=producer is None, step=launched.step)

    def align_micro_batches(self, batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A producer's micro-batches made safe for sharded forwards: each as wide as a multiple of the
        sequence-parallel degree (right padding: ignored labels, causal attention leaves the real tokens
        unchanged), and as many on this rank as on the busiest one — each forward of the policy, and of a
        frozen teacher inside the loss, is a collective under FSDP/TP/EP — padded with copies of the last
        one marked ``PAD`` (weight 0). A padded copy's tokens do pass the MoE routers. With the MoE
        global-batch balancer every micro-batch takes the step's widest width: its token counts assume
        that every rank's micro-batch has the same shape."""
        if self.env.world_size == 1:
            return [pad_width(b, self.seq_multiple) for b in batches]
        widest = max((b["input_ids"].shape[1] for b in batches), default=0)
        most = torch.tensor([len(batches), widest], device=self.device)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
        count, widest = most.tolist()
        multiple = self.seq_multiple
        batches = [pad_width(b, multiple if self.balancer is None else widest + -widest % multiple) for b in batches]
        missing = count - len(batches)
        if missing and not batches:
            raise ValueError(f"rank {self.env.rank} got no micro-batch this step while others did: the step's "
                             "rows must cover every data-parallel rank")
        return batches + [{**batches[-1], PAD: True} for _ in range(missing)]

    # the per-step line of rollout-driven runs: the metrics a person watches
    SHOWN = ("loss", "reward/mean", "eval/accuracy", "kl", "entropy", "objective/kl")

    def log(self, metrics: dict[str, float], *, step_line: bool = False, step: int | None = None) -> None:
        """Record ``metrics`` at ``step`` (default: the current one): the run's history, the tracker (every
        ``tracking.log_interval`` steps; evaluations always) and one line on rank 0."""
        step = self.step if step is None else step
        self.history.append({"step": step, **metrics})
        if self.tracker and (step % self.cfg.tracking.log_interval == 0 or "loss" not in metrics):
            self.tracker.log_metrics(step, metrics)
        if self.env.rank != 0:
            return
        if step_line:
            log.info("step %d loss %.4f grad_norm %.3f lr %.2e %.0f tok/s", step, metrics["loss"],
                     metrics["grad_norm"], metrics["lr"], metrics["tokens_per_s"])
        else:
            log.info("step %d %s", step, " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in self.SHOWN))

    def finish(self, history: list[dict[str, Any]], resumed: str | None, ckpt_seconds: float = 0.0) -> dict[str, Any]:
        """End a run: the final (sync) checkpoint, the commit wait, and the HF export on rank 0.
        Rollout-driven objectives end their own loops through this too."""
        final = None
        if self.checkpointer:
            final = self.save(sync=True) if not self._saved_at(self.step) else self.checkpointer.path(self.step)
            self.checkpointer.wait()
            parallel_barrier()
            if self.tracker:
                self.tracker.set_tag("checkpoint.final", final)
                self.tracker.log_metrics(self.step, {"checkpoint/stall_seconds": ckpt_seconds})
            export = self.cfg.checkpoint.export_hf
            if export and self.env.rank == 0:
                from qwen3_trainer.model.dcp_io import load_model_dcp
                from qwen3_trainer.model.hf_interop import to_hf

                to_hf(load_model_dcp(final), export, overwrite=True)  # preflight refused a fresh run onto files
                if self.tracker:
                    self.tracker.set_tag("export.hf", export)
            parallel_barrier()
        return {"history": history, "final_checkpoint": final, "resumed_from": resumed}

    def _saved_at(self, step: int) -> bool:
        return any(s == step and ok for s, ok in self.checkpointer.steps())

    def close(self) -> None:
        if self.checkpointer:
            with contextlib.suppress(Exception):
                self.checkpointer.wait()


class _EosOnly:
    eos_id = 151643  # <|endoftext|>: document separator in packed rows (flex block-causal masks)


_EOS = _EosOnly()
PAD = "pad_micro_batch"  # key of a micro-batch that only keeps the ranks' collectives in step
PAD_ID = 151643  # <|endoftext|>, Qwen3's padding token
COMPILE_WIDTH = 256  # compiled producer runs (GPU): micro-batch widths padded to a multiple (one graph each)


def pad_width(batch: dict[str, Any], multiple: int, ignore: int = -100) -> dict[str, Any]:
    """``batch`` right-padded along the sequence to the next multiple of ``multiple``: every tensor whose
    first two dims are input_ids' — input_ids with ``PAD_ID``, labels with ``ignore``, the rest with 0."""
    ids = batch["input_ids"]
    extra = -ids.shape[1] % multiple
    if not extra:
        return batch
    out = dict(batch)
    for k, v in batch.items():
        if torch.is_tensor(v) and v.dim() >= 2 and v.shape[:2] == ids.shape:
            fill = PAD_ID if k == "input_ids" else ignore if k == "labels" else 0
            pad = v.new_full((v.shape[0], extra, *v.shape[2:]), fill)
            out[k] = torch.cat([v, pad], dim=1)
    return out


def _moes(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [b.moe for b in getattr(model, "layers", {}).values() if getattr(b, "moe_enabled", False)]


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def _read_json(path: str) -> dict[str, Any]:
    import json

    from qwen3_trainer.model import storage
    from qwen3_trainer.model.hf_interop import HFFormatError

    try:
        return json.loads(storage.read_text(path))
    except storage.StorageError:
        raise HFFormatError(f"{path} does not exist (not a HF or qwen3-trainer checkpoint)") from None


def _hf_titan_state(path: str, args) -> dict[str, torch.Tensor]:
    """A HF checkpoint's weights under torchtitan names, at the files' dtype, on the host; the first
    missing or mis-shaped weight is a one-line ``HFFormatError``."""
    from safetensors.torch import load_file

    from qwen3_trainer.model import storage
    from qwen3_trainer.model.hf_interop import HFFormatError
    from qwen3_trainer.model.titan import Qwen3StateDictAdapter

    with storage.local_copy(path) as folder:
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise HFFormatError(f"{path}: no *.safetensors weight files")
        hf: dict[str, torch.Tensor] = {}
        for f in files:
            hf.update(load_file(str(f)))
    try:
        state = Qwen3StateDictAdapter(args, None).from_hf({k: v for k, v in hf.items() if "rotary_emb" not in k})
    except KeyError as exc:
        raise HFFormatError(f"{path}: unexpected weight {exc.args[0]!r}") from None
    expected = build_model(args, device="meta", init=False).state_dict()
    for key, ref in expected.items():
        if key.endswith(("tokens_per_expert", "expert_bias")) or (args.enable_weight_tying and key == "output.weight"):
            continue
        if key not in state:
            raise HFFormatError(f"{path}: weights: missing {key!r}")
        if tuple(state[key].shape) != tuple(ref.shape):
            raise HFFormatError(f"{path}: weights: {key!r} has shape {tuple(state[key].shape)}, config says "
                                f"{tuple(ref.shape)}")
    return state


def parallel_barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
