"""HF parity: the torchtitan-based Qwen3 equals transformers' Qwen3 / Qwen3-MoE on tiny random
configs, in both directions (HF -> ours with ``from_hf``, ours -> HF with ``to_hf``), fp32."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from qwen3_trainer.model import build_model, from_hf, get_flavor, to_hf
from qwen3_trainer.model.hf_interop import HFFormatError

TOL = 1e-4


def _tiny_hf(kind: str):
    common = dict(
        vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rope_theta=1_000_000.0,
        rms_norm_eps=1e-6,
    )
    torch.manual_seed(0)
    if kind == "moe":
        cfg = transformers.Qwen3MoeConfig(
            **common, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
            norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], intermediate_size=96,
        )
        model = transformers.Qwen3MoeForCausalLM(cfg)
    else:
        cfg = transformers.Qwen3Config(**common, intermediate_size=96, tie_word_embeddings=kind == "tied")
        model = transformers.Qwen3ForCausalLM(cfg)
    # random (not the HF init's ones) norms, so QK-norm and RMSNorm weights are really checked
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model.float().eval()


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["tied", "untied", "moe"])
def test_hf_to_ours(kind, tmp_path):
    hf = _tiny_hf(kind)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_hf(str(tmp_path / "hf")).eval()
    tokens = _tokens(512)
    with torch.no_grad():
        ref = hf(tokens).logits
        got = ours(tokens)
    assert got.shape == ref.shape == (2, 24, 512)
    assert (got - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("flavor", ["debugmodel", "debugmodel_moe"])
def test_ours_to_hf(flavor, tmp_path):
    args = get_flavor(flavor)
    args.vocab_size = 1024  # a small vocabulary keeps the test fast; shapes otherwise the flavor's
    ours = build_model(args, device="cpu", seed=3).eval()
    to_hf(ours, str(tmp_path / "out"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    tokens = _tokens(1024)
    with torch.no_grad():
        diff = (hf(tokens).logits - ours(tokens)).abs().max().item()
    assert diff <= TOL
    # and the round trip back is exact
    again = from_hf(str(tmp_path / "out")).eval()
    with torch.no_grad():
        assert torch.equal(again(tokens), ours(tokens))


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(HFFormatError, match="model_type 'llama' is not a supported architecture"):
        from_hf(str(tmp_path))


def test_misshaped_and_missing_weights(tmp_path):
    hf = _tiny_hf("untied")
    hf.save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(HFFormatError, match=r"feed_forward\.w1\.weight' has shape \(96, 64\)"):
        from_hf(str(tmp_path / "hf"))
    from safetensors.torch import load_file, save_file

    cfg["intermediate_size"] = 96
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(tmp_path / "hf" / "model.safetensors"))
    del state["model.norm.weight"]
    save_file(state, str(tmp_path / "hf" / "model.safetensors"))
    with pytest.raises(HFFormatError, match="missing 'model.norm.weight'"):
        from_hf(str(tmp_path / "hf"))


def test_unwritable_destination_leaves_nothing(tmp_path):
    from qwen3_trainer.model.storage import StorageError

    ours = build_model("debugmodel", device="cpu", seed=0)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StorageError):
        to_hf(ours, str(blocker / "sub"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
