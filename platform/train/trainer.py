"""The one training loop: torchtitan components, pluggable objectives, any parallelism.

Built from torchtitan's pieces, not its Trainer: ``ParallelDims`` for the device mesh, its
parallelize functions (via ``parallel.parallelize``), ``pipeline_llm`` for pipeline parallelism,
its optimizer / LR-scheduler builders and model converters (float8), and its gradient clipping.
Around them: global-token loss normalisation, the global-batch MoE balancing loss, DCP
checkpoints with exact resume (model, optimizer, LR, data position, RNG), and tracking.

Hooks for post-training (platform/posttrain): ``train_step(batches)`` takes externally produced
micro-batches (rollouts); objectives may weight tokens (``batch["weights"]``) and use a frozen
reference/teacher model placed with its own parallelism (``load_reference``).
"""

from __future__ import annotations

import contextlib
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
        if cfg.compile and hasattr(self.objective, "compile"):
            self.objective.compile()  # fuse the fp32 up-cast + log-softmax over the 151,936 logits
        self.ctx = ObjectiveContext()
        self._build_model()
        self._build_optim()
        self.balancer = None
        if self.model_args.moe_enabled and cfg.moe.balance == "global_batch":
            from qwen3_trainer.model.load_balance import GlobalBatchLoadBalancer

            self.balancer = GlobalBatchLoadBalancer(self.model_parts, cfg.moe.coeff, self._loss_group())
        self.dp_world = self.dims["dp_replicate"] * self.dims["dp_shard"]
        self.dp_rank = self.pdims.get_mesh("batch").get_local_rank() if self.dp_world > 1 else 0
        self.loader = loader
        self.step = 0
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
            self._load_init_checkpoint(init.path, init.format)
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

    def _load_init_checkpoint(self, path: str, fmt: str) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        from qwen3_trainer.model import storage
        from qwen3_trainer.model.dcp_io import MODEL_KEY, reader
        from qwen3_trainer.model.hf_interop import from_hf

        if fmt == "auto":
            fmt = "dcp" if storage.exists(storage.join(path, ".metadata")) else "hf"
        if fmt == "hf":
            full = from_hf(path, device="cpu").state_dict()
            for part in self.model_parts:
                set_model_state_dict(part, full, options=StateDictOptions(full_state_dict=True, strict=False))
            return
        import torch.distributed.checkpoint as dcp
        from torchtitan.components.checkpoint import ModelWrapper

        wrapper = ModelWrapper(self.model_parts)
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

    def load_reference(self, path: str) -> torch.nn.Module:
        """A frozen reference/teacher model from a HF or DCP checkpoint, placed on this device
        (replicated; teachers larger than one device shard with their own FSDP mesh in
        ``posttrain``). Set as ``ctx.reference`` for objectives that need it."""
        from qwen3_trainer.model import storage
        from qwen3_trainer.model.dcp_io import load_model_dcp
        from qwen3_trainer.model.hf_interop import from_hf

        is_dcp = storage.exists(storage.join(path, ".metadata"))
        ref = load_model_dcp(path, device=self.device) if is_dcp else from_hf(path, device=self.device)
        ref.eval().requires_grad_(False)
        self.ctx.reference = ref
        return ref

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

    def _forward(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = batch["input_ids"]
        if self.model_args.attn_type == "flex":
            masks = model.get_attention_masks(tokens, _EOS)
            return model(tokens, attention_masks=masks)
        return model(tokens)

    def _pp_loss(self, pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return token_cross_entropy(pred, labels).sum() / self._normalizer

    # -- the step ------------------------------------------------------------------------------
    def train_step(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches (from the loader or a rollout)."""
        t0 = time.perf_counter()
        local_tokens = sum(self.objective.loss_tokens(b) for b in batches)  # on the host copy: no sync
        # order-sensitive checksum of the step's global batch (resume tests compare data order),
        # taken from the host copy before the device copy (no sync per micro-batch)
        checksum = sum(float((b["input_ids"].double() * torch.arange(1, b["input_ids"].numel() + 1,
                       dtype=torch.float64, device=b["input_ids"].device).view_as(b["input_ids"]))
                             .sum().remainder(1e9))
                       for b in batches)
        batches = [{k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items()}
                   for b in batches]
        self.optimizers.zero_grad()
        normalizer = self._all_reduce(torch.tensor([float(local_tokens)], device=self.device))
        self._normalizer = float(normalizer.clamp(min=1.0)) / parallel.ddp_grad_scale(self.pdims)
        step_tokens = sum(b["input_ids"].numel() for b in batches) * self.dp_world
        if self.balancer is not None:
            self.balancer.step_begin(step_tokens)
        sums: dict[str, float] = {}
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
                mb_loss.backward()
                loss += mb_loss.detach()
                for k, v in metrics.items():  # tensors stay on the device until the step ends
                    sums[k] = sums.get(k, 0.0) + v
                del logits
        grad_norm = self._clip()
        self.optimizers.step()
        self.lr_schedulers.step()
        self.step += 1
        loss = self._all_reduce(loss.reshape(1)).item() / parallel.ddp_grad_scale(self.pdims)
        checksum = self._all_reduce(torch.tensor([checksum], device=self.device, dtype=torch.float64)).item()
        dt = time.perf_counter() - t0
        tokens = step_tokens
        out = {"loss": loss, "grad_norm": float(grad_norm), "lr": self.lr_schedulers.schedulers[0].get_last_lr()[0],
               "step_seconds": dt, "tokens_per_s": tokens / dt, "tokens": tokens,
               "loss_tokens": float(normalizer.item()), "data/checksum": checksum}
        out["tflops_per_device"] = self.flops_per_token * tokens / dt / self.env.world_size / 1e12
        if self.peak:
            out["mfu"] = out["tflops_per_device"] * 1e12 / self.peak
        if self.balancer is not None:
            out.update(self.balancer.step_end())
        for k, v in sums.items():
            out[f"objective/{k}"] = float(v)
        out.update(memory_gib(self.device))
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {self.step}")
        return out

    def _clip(self) -> torch.Tensor:
        from torchtitan.distributed.utils import clip_grad_norm_

        params = [p for m in self.model_parts for p in m.parameters()]
        pp_mesh = self.pdims.get_mesh("pp") if self.pdims.pp_enabled else None
        if self.job_config.optimizer.implementation == "fused" and not self.pdims.ep_enabled:
            return self._clip_in_fused_step(params, pp_mesh)
        return clip_grad_norm_(params, self.cfg.training.max_norm, foreach=True, pp_mesh=pp_mesh,
                               ep_enabled=self.pdims.ep_enabled)

    def _clip_in_fused_step(self, params: list[torch.Tensor], pp_mesh) -> torch.Tensor:
        """Gradient clipping folded into the fused AdamW kernel: the total norm is computed as
        torchtitan's ``clip_grad_norm_`` does, and instead of a separate pass multiplying every
        gradient by ``min(1, max_norm / (norm + 1e-6))`` the fused step divides them by its
        inverse (``grad_scale``, the hook ``torch.amp.GradScaler`` uses for unscaling)."""
        from torch.distributed.tensor import DTensor

        grads = [p.grad for p in params if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads, 2.0, False, True)
        if isinstance(total, DTensor):
            total = total.full_tensor()
        if pp_mesh is not None:
            total = total**2
            dist.all_reduce(total, op=dist.ReduceOp.SUM, group=pp_mesh.get_group())
            total = total**0.5
        scale = torch.clamp((total.float() + 1e-6) / self.cfg.training.max_norm, min=1.0)
        for opt in self.optimizers.optimizers:
            opt.grad_scale = scale
        return total

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
        ``checkpoint.interval`` steps, and finishing with the final checkpoint and the HF export."""
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
        while self.step < cfg.training.steps:
            batches, extra = next(source)
            metrics = self.train_step(batches)
            if producer is not None:
                metrics = producer.step_metrics(metrics)
            self.log({**metrics, **extra}, step_line=producer is None)
            interval = cfg.checkpoint.interval
            if self.checkpointer and interval and self.step % interval == 0 and self.step < cfg.training.steps:
                t = time.perf_counter()
                path = self.save()
                ckpt_seconds += time.perf_counter() - t
                if self.tracker:
                    self.tracker.set_tag(f"checkpoint.step-{self.step}", path)
        if producer is not None:
            source.close()
            producer.end(self)
        return self.finish(self.history, resumed, ckpt_seconds)

    # the per-step line of rollout-driven runs: the metrics a person watches
    SHOWN = ("loss", "reward/mean", "eval/accuracy", "kl", "entropy", "objective/kl")

    def log(self, metrics: dict[str, float], *, step_line: bool = False) -> None:
        """Record ``metrics`` at the current step: the run's history, the tracker (every
        ``tracking.log_interval`` steps; evaluations always) and one line on rank 0."""
        self.history.append({"step": self.step, **metrics})
        if self.tracker and (self.step % self.cfg.tracking.log_interval == 0 or "loss" not in metrics):
            self.tracker.log_metrics(self.step, metrics)
        if self.env.rank != 0:
            return
        if step_line:
            log.info("step %d loss %.4f grad_norm %.3f lr %.2e %.0f tok/s", self.step, metrics["loss"],
                     metrics["grad_norm"], metrics["lr"], metrics["tokens_per_s"])
        else:
            log.info("step %d %s", self.step, " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in self.SHOWN))

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


def parallel_barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
