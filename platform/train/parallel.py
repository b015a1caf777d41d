"""Process layout and sharding: rendezvous env, parallel degrees, and the parallelize step.

Scope: everything about *where* the model runs. The model code (model/) is written for one device;
this module applies torchtitan's parallelisms to it in torchtitan's documented order —
tensor/sequence parallel, expert parallel, activation checkpointing, compile, then FSDP2/HSDP —
using torchtitan's own functions, plus two fixes for 0.2.2:

* FSDP with tied embeddings: the shared embedding/output weight must live in one FSDP group;
  0.2.2 puts it in two, which raises on torch 2.13 and silently drops the output's gradient on
  2.11. It stays in the root group here (see ``apply_fsdp``).
* Gradient scale: FSDP's division is disabled; the objective divides by the global token count.
* MoE under tensor parallelism without EP, with the router scores applied after the experts (Qwen3):
  each TP rank holds a slice of every expert's hidden dim, so the gradient reaching the router scores
  from the combine is a partial sum per rank; 0.2.2 keeps the router replicated and never sums it, so
  each rank's router took its own partial gradient (losses left one device from the second step). The
  scores' gradient is summed over the TP group here (``sum_router_score_grads``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from qwen3_trainer.model import cpu_compat, moe_routing
from qwen3_trainer.platform.train.config import TrainConfig


@dataclass(frozen=True)
class DistEnv:
    """The rendezvous environment of this process (torchrun's, as the Kubeflow operator sets it)."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int

    @classmethod
    def from_env(cls) -> DistEnv:
        env = os.environ
        return cls(
            rank=int(env.get("RANK", 0)),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env.get("WORLD_SIZE", 1)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 0) or 0),
        )


def resolve_device(cfg: TrainConfig, env: DistEnv) -> torch.device:
    want = cfg.training.device
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("training.device: cuda requested but no GPU is visible")
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def validate_layout(cfg: TrainConfig, world_size: int) -> dict[str, int]:
    """Resolved parallel degrees for ``world_size``; raises ValueError naming the mismatch."""
    p = cfg.parallelism
    fixed = p.dp_replicate * p.cp * p.tp * p.pp
    if world_size % fixed:
        raise ValueError(
            f"parallelism: dp_replicate*cp*tp*pp = {fixed} does not divide the world size {world_size}"
        )
    dp_shard = world_size // fixed if p.dp_shard == -1 else p.dp_shard
    if dp_shard * fixed != world_size:
        raise ValueError(
            f"parallelism: dp_replicate({p.dp_replicate}) * dp_shard({dp_shard}) * cp({p.cp}) * "
            f"tp({p.tp}) * pp({p.pp}) = {dp_shard * fixed} != world size {world_size}"
        )
    if p.ep > 1 and (dp_shard * p.cp * p.tp) % p.ep:
        raise ValueError(f"parallelism.ep={p.ep} must divide dp_shard*cp*tp = {dp_shard * p.cp * p.tp}")
    return {"dp_replicate": p.dp_replicate, "dp_shard": dp_shard, "cp": p.cp, "tp": p.tp, "pp": p.pp,
            "ep": p.ep}


def init_process_group(env: DistEnv, device: torch.device) -> None:
    """gloo on CPU, nccl on GPU; a one-process run outside torchrun uses an in-process store (no
    port to bind, so parallel test runs and pods cannot collide)."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    if env.world_size == 1 and "MASTER_PORT" not in os.environ:
        kwargs["store"] = dist.HashStore()
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size, **kwargs)


def build_parallel_dims(cfg: TrainConfig, world_size: int):
    from torchtitan.distributed import ParallelDims

    d = validate_layout(cfg, world_size)
    dims = ParallelDims(dp_replicate=d["dp_replicate"], dp_shard=d["dp_shard"], cp=d["cp"], tp=d["tp"],
                        pp=d["pp"], ep=d["ep"], etp=1, world_size=world_size)
    dims.build_mesh()
    return dims


def apply_fsdp(model: nn.Module, parallel_dims, param_dtype: torch.dtype | None, pp_enabled: bool, *,
               frozen: bool = False) -> None:
    """FSDP2 / HSDP on a (TP/EP-sharded) Qwen3 model, tied-embedding aware. ``frozen`` (a model that
    only runs forwards): every group reshards after its forward, the root's too (FSDP keeps the root
    gathered after forward by default, since training's backward needs it at once), and a layout
    without dp_shard shards over dp_replicate instead of replicating."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import Shard

    if frozen and not parallel_dims.fsdp_enabled:
        names = ["dp_replicate"]
    else:
        names = ["dp_replicate", "fsdp"] if parallel_dims.dp_replicate_enabled else ["fsdp"]
    mesh = parallel_dims.get_mesh(names)
    cfg = {"mesh": mesh, "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)}
    reshard = frozen or not pp_enabled
    tied = getattr(model, "enable_weight_tying", False) and model.tok_embeddings is not None
    if model.tok_embeddings is not None and not tied:
        fully_shard(model.tok_embeddings, **cfg, reshard_after_forward=reshard)
    for block in model.layers.values():
        if getattr(block, "moe_enabled", False) and parallel_dims.ep_enabled:
            emesh_names = ["dp_replicate", "efsdp"] if parallel_dims.dp_replicate_enabled else ["efsdp"]
            emesh = parallel_dims.get_mesh(emesh_names)
            placement = None
            if emesh["efsdp"].size() * parallel_dims.ep > block.moe.experts.num_experts:
                placement = lambda _p: Shard(1)  # noqa: E731 - torchtitan's rule: shard experts on dim 1
            fully_shard(block.moe.experts, **{**cfg, "mesh": emesh}, reshard_after_forward=reshard,
                        shard_placement_fn=placement)
        fully_shard(block, **cfg, reshard_after_forward=reshard)
    if not tied and model.norm is not None and model.output is not None:
        fully_shard([model.norm, model.output], **cfg, reshard_after_forward=frozen)
    # Tied: the shared embedding/output weight (and the final norm) stay in the root group, so the
    # one parameter is managed by exactly one FSDP group and reduced once after the whole backward.
    fully_shard(model, **cfg, reshard_after_forward=True if frozen else None)
    if frozen:
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)  # the loss is normalised by global tokens
    cpu_compat.use_sum_reduction_on_gloo(model)


def apply_tp_ep(model: nn.Module, parallel_dims) -> None:
    """Tensor / sequence parallelism and expert parallelism, torchtitan's (full logits on every TP rank:
    no loss parallelism)."""
    from torchtitan.models.llama4.infra.parallelize import apply_moe_ep_tp
    from torchtitan.models.qwen3.infra.parallelize import apply_non_moe_tp

    if parallel_dims.tp_enabled:
        apply_non_moe_tp(model, parallel_dims.get_mesh("tp"), loss_parallel=False,
                         enable_float8_tensorwise_tp=False, enable_async_tp=False, cp_enabled=False)
    if parallel_dims.tp_enabled and parallel_dims.ep_enabled:
        moe_routing.uninstall(model)  # TP+EP splits each layer's routed slots over TP ranks
    if parallel_dims.tp_enabled or parallel_dims.ep_enabled:
        apply_moe_ep_tp(model, tp_mesh=parallel_dims.get_optional_mesh("tp"),
                        ep_mesh=parallel_dims.get_optional_mesh("ep"),
                        etp_mesh=parallel_dims.get_optional_mesh("etp"),
                        ep_etp_mesh=parallel_dims.get_optional_mesh(["ep", "etp"]), dual_pipe_v=False)


def parallelize_frozen(model: nn.Module, parallel_dims) -> nn.Module:
    """A frozen model (reference, teacher, reward model: forwards only, no optimizer) placed like the
    policy: the same TP / EP, then FSDP over the data-parallel ranks, resharded after every forward,
    in the dtype it was built in (no mixed-precision cast: build it in the compute dtype). A rank
    holds its shard between forwards and one block's full weights during one."""
    if parallel_dims.pp_enabled:
        raise ValueError("frozen models are not placed under pipeline parallelism")
    apply_tp_ep(model, parallel_dims)
    if parallel_dims.fsdp_enabled or parallel_dims.dp_replicate_enabled:
        apply_fsdp(model, parallel_dims, None, False, frozen=True)
    return model


def parallelize(model: nn.Module, parallel_dims, job_config, cfg: TrainConfig) -> nn.Module:
    """TP -> EP -> activation checkpointing -> compile -> FSDP, each from torchtitan."""
    from torchtitan.distributed.activation_checkpoint import apply_ac
    from torchtitan.models.llama4.infra.parallelize import apply_compile
    from torchtitan.models.qwen3.infra.parallelize import _op_sac_save_list

    apply_tp_ep(model, parallel_dims)
    if parallel_dims.tp_enabled and not parallel_dims.ep_enabled:
        sum_router_score_grads(model, parallel_dims.get_mesh("tp").get_group())
    if cfg.activation_checkpointing != "none":
        apply_ac(model, job_config.activation_checkpoint, model_compile_enabled=cfg.compile,
                 op_sac_save_list=_op_sac_save_list)
    if cfg.compile:
        apply_compile(model, job_config.compile, parallel_dims.ep_enabled)
        moe_routing.compile_routing(job_config.compile.backend)
        if cfg.moe.compile_scope == "block" and whole_moe_blocks_allowed(parallel_dims, cfg):
            compile_moe_blocks_whole(model, job_config.compile.backend)
    if parallel_dims.fsdp_enabled:
        dtype = torch.bfloat16 if cfg.training.param_dtype == "bfloat16" else torch.float32
        apply_fsdp(model, parallel_dims, dtype, parallel_dims.pp_enabled)
    elif parallel_dims.dp_replicate_enabled:
        # pure replication (dp_shard == 1): DDP. It averages gradients over its replicas; the
        # trainer compensates (``ddp_grad_scale``) so the step still uses the global token mean.
        from torchtitan.models.llama3.infra.parallelize import apply_ddp

        apply_ddp(model, parallel_dims.get_mesh("dp_replicate"), enable_compile=cfg.compile)
    return model


def whole_moe_blocks_allowed(parallel_dims, cfg: TrainConfig) -> bool:
    """Whether an MoE block can compile as one graph: no FSDP group of its own around the experts (EP),
    no TP hooks inside it, no activation checkpointing around it (a checkpointed region may not mutate
    the balancer's statistics in the traced graph)."""
    return not (parallel_dims.ep_enabled or parallel_dims.tp_enabled or cfg.activation_checkpointing != "none")


def compile_moe_blocks_whole(model: nn.Module, backend: str) -> int:
    """After torchtitan's ``apply_compile`` (one compiled region per MoE child, eager glue between them):
    each MoE block with this project's routing (``moe_routing``) becomes one ``fullgraph`` compile — the
    residual adds, the routing glue and the load-balancing hooks fuse with their neighbours instead of
    launching eager kernels between compiled regions. Returns how many blocks were compiled whole."""
    from torch._dynamo.eval_frame import OptimizedModule

    from qwen3_trainer.model.titan import MoE

    def orig(module: nn.Module) -> nn.Module:
        return module._orig_mod if isinstance(module, OptimizedModule) else module

    n = 0
    for name, block in list(model.layers.named_children()):
        moe = getattr(block, "moe", None)
        if (isinstance(block, OptimizedModule) or not getattr(block, "moe_enabled", False)
                or not isinstance(moe, MoE) or "forward" not in moe.__dict__):
            continue  # already whole, dense, or torchtitan's own MoE forward (TP+EP)
        for parent in (block, moe):
            for attr, child in list(parent.named_children()):
                parent.register_module(attr, orig(child))
        model.layers.register_module(name, torch.compile(block, backend=backend, fullgraph=True))
        n += 1
    return n


class _SumGradOverGroup(torch.autograd.Function):
    """Identity forward; backward sums the gradient over ``group`` (each rank holds a partial sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def sum_router_score_grads(model: nn.Module, tp_group) -> int:
    """TP without EP, scores after the experts: sum the router scores' gradient over the TP group (see the
    module docstring). Returns how many MoE layers got the hook."""
    n = 0
    for block in getattr(model, "layers", {}).values():
        moe = getattr(block, "moe", None) if getattr(block, "moe_enabled", False) else None
        if moe is None or moe.score_before_experts:
            continue

        def hook(_module, _inputs, out):
            return (_SumGradOverGroup.apply(out[0], tp_group), *out[1:])

        moe.router.register_forward_hook(hook)
        n += 1
    return n


def ddp_grad_scale(parallel_dims) -> float:
    """Factor undoing DDP's gradient averaging (1 when FSDP, which sums, is in charge)."""
    if parallel_dims.dp_replicate_enabled and not parallel_dims.fsdp_enabled:
        return float(parallel_dims.dp_replicate)
    return 1.0


def to_job_config(cfg: TrainConfig, dims: dict[str, int]):
    """The torchtitan JobConfig view of our config, for torchtitan's builders (optimizer, LR,
    activation checkpointing, compile, pipeline schedule, float8 converter)."""
    from torchtitan.config import JobConfig

    jc = JobConfig()
    t, o, lr, p = cfg.training, cfg.optimizer, cfg.lr, cfg.parallelism
    jc.training.seq_len = t.seq_len
    jc.training.steps = t.steps
    jc.training.max_norm = t.max_norm
    jc.training.local_batch_size = t.micro_batch_size * t.grad_accum
    jc.training.mixed_precision_param = t.param_dtype
    jc.optimizer.name = o.name
    jc.optimizer.lr = o.lr
    jc.optimizer.beta1, jc.optimizer.beta2 = o.betas
    jc.optimizer.eps = o.eps
    jc.optimizer.weight_decay = o.weight_decay
    impl = o.implementation
    if impl == "auto":
        impl = "fused" if torch.cuda.is_available() else "foreach"
    jc.optimizer.implementation = "foreach" if impl == "compiled" else impl  # compiled: foreach, traced
    jc.lr_scheduler.warmup_steps = lr.warmup_steps
    jc.lr_scheduler.min_lr_factor = lr.min_lr_ratio
    if lr.schedule == "wsd":
        jc.lr_scheduler.decay_ratio = lr.decay_ratio
        jc.lr_scheduler.decay_type = lr.decay_type
    elif lr.schedule == "cosine":
        jc.lr_scheduler.decay_ratio = None
        jc.lr_scheduler.decay_type = "cosine"
    else:  # constant: no decay phase
        jc.lr_scheduler.decay_ratio = 0.0
    jc.activation_checkpoint.mode = cfg.activation_checkpointing
    jc.compile.enable = cfg.compile
    jc.compile.components = ["model"]
    jc.parallelism.data_parallel_replicate_degree = dims["dp_replicate"]
    jc.parallelism.data_parallel_shard_degree = dims["dp_shard"]
    jc.parallelism.tensor_parallel_degree = dims["tp"]
    jc.parallelism.pipeline_parallel_degree = dims["pp"]
    jc.parallelism.expert_parallel_degree = dims["ep"]
    jc.parallelism.context_parallel_degree = dims["cp"]
    jc.parallelism.pipeline_parallel_schedule = p.pp_schedule
    jc.parallelism.pipeline_parallel_microbatch_size = t.micro_batch_size
    jc.parallelism.disable_loss_parallel = True
    if cfg.float8:
        jc.model.converters = ["quantize.linear.float8"]
        jc.quantize.linear.float8.recipe_name = cfg.float8_recipe
        jc.quantize.linear.float8.filter_fqns = list(cfg.float8_keep_bf16)
    return jc
