"""Hugging Face checkpoints <-> the torchtitan Qwen3 model (dense ``qwen3`` and ``qwen3_moe``).

``from_hf(path)`` reads config.json to pick the shape, then the safetensors weights (single file or
sharded with an index) through torchtitan's ``Qwen3StateDictAdapter``; ``to_hf(model, path)`` writes
config.json + safetensors that ``transformers.AutoModelForCausalLM.from_pretrained`` loads. Paths are
local or any fsspec URL (``s3://``). Writes are staged and published whole (``storage``), never over
what a destination already holds unless asked to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from qwen3_trainer.model import storage
from qwen3_trainer.model.build import build_model, materialize
from qwen3_trainer.model.rope_scaling import YarnScaling, apply_rope_scaling, rope_scaling_of
from qwen3_trainer.model.titan import MoEArgs, Qwen3Model, Qwen3ModelArgs, Qwen3StateDictAdapter

SUPPORTED = ("qwen3", "qwen3_moe")
SHARD_BYTES = 5 * 1024**3  # max shard size of written safetensors, as transformers' default


class HFFormatError(ValueError):
    """A config.json or weight file that does not describe a supported Qwen3 checkpoint."""


def _require(cfg: dict[str, Any], key: str) -> Any:
    if key not in cfg:
        raise HFFormatError(f"config.json: missing field {key!r}")
    return cfg[key]


def _rope_theta(cfg: dict[str, Any]) -> float:
    if "rope_theta" in cfg:
        return float(cfg["rope_theta"])
    params = cfg.get("rope_parameters") or {}
    return float(params.get("rope_theta", 10_000.0))


def args_from_hf_config(cfg: dict[str, Any]) -> Qwen3ModelArgs:
    """Qwen3ModelArgs for a HF config.json dict; refuses what the torchtitan model cannot express."""
    model_type = cfg.get("model_type")
    if model_type not in SUPPORTED:
        raise HFFormatError(
            f"config.json: model_type {model_type!r} is not a supported architecture ({', '.join(SUPPORTED)})"
        )
    if cfg.get("attention_bias"):
        raise HFFormatError("config.json: attention_bias=true is not Qwen3 (no QKV bias)")
    if cfg.get("hidden_act", "silu") != "silu":
        raise HFFormatError(f"config.json: hidden_act {cfg['hidden_act']!r} unsupported (silu)")
    dim = int(_require(cfg, "hidden_size"))
    n_heads = int(_require(cfg, "num_attention_heads"))
    args = Qwen3ModelArgs(
        dim=dim,
        n_layers=int(_require(cfg, "num_hidden_layers")),
        n_heads=n_heads,
        n_kv_heads=int(cfg.get("num_key_value_heads") or n_heads),
        vocab_size=int(_require(cfg, "vocab_size")),
        head_dim=int(cfg.get("head_dim") or dim // n_heads),
        hidden_dim=int(cfg.get("intermediate_size") or 0),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=_rope_theta(cfg),
        qk_norm=True,
        max_seq_len=int(cfg.get("max_position_embeddings", 40_960)),
        enable_weight_tying=bool(cfg.get("tie_word_embeddings", False)),
    )
    if model_type == "qwen3_moe":
        if int(cfg.get("decoder_sparse_step", 1)) != 1 or cfg.get("mlp_only_layers"):
            raise HFFormatError("config.json: mixed dense/MoE layers (mlp_only_layers) are unsupported")
        experts = int(cfg.get("num_experts") or _require(cfg, "num_local_experts"))
        args.moe_enabled = True
        args.moe_inter_dim = int(_require(cfg, "moe_intermediate_size"))
        args.moe_args = MoEArgs(
            num_experts=experts,
            num_shared_experts=0,
            top_k=int(_require(cfg, "num_experts_per_tok")),
            score_func="softmax",
            route_norm=bool(cfg.get("norm_topk_prob", True)),
            route_scale=1.0,
            score_before_experts=False,
            load_balance_coeff=None,
        )
    try:
        args.rope_scaling = YarnScaling.from_hf(cfg)  # long-context RoPE (model.rope_scaling)
    except ValueError as exc:
        raise HFFormatError(str(exc)) from None
    return args


def hf_config_from_args(args: Qwen3ModelArgs, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """config.json fields as the official Qwen3 checkpoints write them."""
    cfg: dict[str, Any] = {
        "architectures": ["Qwen3MoeForCausalLM" if args.moe_enabled else "Qwen3ForCausalLM"],
        "model_type": "qwen3_moe" if args.moe_enabled else "qwen3",
        "hidden_size": args.dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_kv_heads,
        "head_dim": args.head_dim,
        "intermediate_size": args.hidden_dim,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "max_position_embeddings": args.max_seq_len,
        "tie_word_embeddings": args.enable_weight_tying,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if rope_scaling_of_args(args) is not None:
        cfg["rope_scaling"] = rope_scaling_of_args(args).to_hf()
    if args.moe_enabled:
        cfg.update(
            num_experts=args.moe_args.num_experts,
            num_experts_per_tok=args.moe_args.top_k,
            moe_intermediate_size=args.moe_inter_dim,
            norm_topk_prob=args.moe_args.route_norm,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            router_aux_loss_coef=0.001,
        )
    return cfg


def rope_scaling_of_args(args: Qwen3ModelArgs) -> YarnScaling | None:
    return getattr(args, "rope_scaling", None)


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
    if not files:
        raise HFFormatError(f"{folder}: no *.safetensors weight files")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return state


def load_hf_state_dict(model: Qwen3Model, hf_state: dict[str, torch.Tensor]) -> None:
    """Load HF-named weights into ``model``, naming the first missing or mis-shaped key."""
    args = model.model_args
    adapter = Qwen3StateDictAdapter(args, None)
    known = {k for k in hf_state if "rotary_emb" not in k}
    try:
        titan = adapter.from_hf({k: hf_state[k] for k in known})
    except KeyError as exc:
        raise HFFormatError(f"weights: unexpected key {exc.args[0]!r}") from None
    expected = model.state_dict()
    for key, ref in expected.items():
        if key not in titan:
            if args.enable_weight_tying and key == "output.weight":
                continue
            hf_key = next((h for t, h in _hf_names(adapter, key)), key)
            raise HFFormatError(f"weights: missing {hf_key!r}")
        if tuple(titan[key].shape) != tuple(ref.shape):
            raise HFFormatError(
                f"weights: {key!r} has shape {tuple(titan[key].shape)}, config says {tuple(ref.shape)}"
            )
    model.load_state_dict(titan, strict=False, assign=False)
    if args.enable_weight_tying:
        model.output.weight = model.tok_embeddings.weight


def _hf_names(adapter: Qwen3StateDictAdapter, titan_key: str):
    import re

    abstract = re.sub(r"(\d+)", "{}", titan_key, count=1)
    layer = re.findall(r"\d+", titan_key)[:1]
    for hf, t in adapter.from_hf_map.items():
        if t == abstract:
            yield titan_key, hf.format(*(layer + ["0"]))


def from_hf(path: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Qwen3Model:
    """Load a HF Qwen3 / Qwen3-MoE checkpoint directory (local or ``s3://``) as a torchtitan model."""
    with storage.local_copy(path) as folder:
        cfg_file = folder / "config.json"
        if not cfg_file.exists():
            raise HFFormatError(f"{path}: no config.json")
        try:
            cfg = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as exc:
            raise HFFormatError(f"{path}/config.json: not JSON ({exc.msg})") from None
        args = args_from_hf_config(cfg)
        model = build_model(args, device="meta", init=False, compute_device=device)
        model = materialize(model, device)
        if rope_scaling_of(model) is not None:
            apply_rope_scaling(model, rope_scaling_of(model))
        load_hf_state_dict(model, _read_hf_weights(folder))
    if dtype is not None:
        model.to(dtype=dtype)
    return model


def hf_state_dict(model: Qwen3Model) -> dict[str, torch.Tensor]:
    """The model's weights under HF names (experts split per expert), on CPU and contiguous."""
    adapter = Qwen3StateDictAdapter(model.model_args, None)
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith(("expert_bias", "tokens_per_expert"))}
    return {k: v.contiguous().clone() for k, v in adapter.to_hf(state).items()}


def to_hf(model: Qwen3Model, path: str, *, dtype: torch.dtype | None = None, overwrite: bool = False) -> str:
    """Write ``model`` as a HF checkpoint directory at ``path`` (local or ``s3://``); returns path.

    ``path`` must be new or empty unless ``overwrite``; the files are readable by all, as the official
    checkpoints' are (safetensors alone writes 0600)."""
    args = model.model_args
    hf = hf_state_dict(model)
    if dtype is not None:
        hf = {k: v.to(dtype) for k, v in hf.items()}
    out_dtype = dtype or next(iter(hf.values())).dtype
    with storage.staged_directory(path, overwrite=overwrite) as stage:
        shards: list[dict[str, torch.Tensor]] = [{}]
        size = 0
        for key in sorted(hf):
            nbytes = hf[key].numel() * hf[key].element_size()
            if shards[-1] and size + nbytes > SHARD_BYTES:
                shards.append({})
                size = 0
            shards[-1][key] = hf[key]
            size += nbytes
        if len(shards) == 1:
            save_file(shards[0], str(stage / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, str(stage / name), metadata={"format": "pt"})
                weight_map.update(dict.fromkeys(shard, name))
            total = sum(v.numel() * v.element_size() for v in hf.values())
            (stage / "model.safetensors.index.json").write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
            )
        (stage / "config.json").write_text(json.dumps(hf_config_from_args(args, out_dtype), indent=2))
        (stage / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 151643, "eos_token_id": [151645, 151643], "pad_token_id": 151643})
        )
    return path
