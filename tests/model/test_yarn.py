"""YaRN RoPE scaling: logits equal transformers' YaRN Qwen3 past the original window, config.json
round trips (``rope_scaling`` in and out), the KV-cached generation uses it, bad configs fail."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from qwen3_trainer.model import from_hf, generate, load_tokenizer, to_hf
from qwen3_trainer.model.dcp_io import load_model_dcp, save_model_dcp
from qwen3_trainer.model.hf_interop import HFFormatError
from qwen3_trainer.model.rope_scaling import YarnScaling, apply_rope_scaling, rope_scaling_of

WINDOW = 64  # original_max_position_embeddings of the tiny model; tests run at 3x past it
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": WINDOW}


def tiny_hf(rope_scaling=YARN, moe=False):
    common = dict(
        vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, max_position_embeddings=WINDOW, rope_theta=10_000.0, rms_norm_eps=1e-6,
        rope_scaling=dict(rope_scaling) if rope_scaling else None,  # transformers edits it in place
    )  # fmt: skip
    torch.manual_seed(0)
    if moe:
        cfg = transformers.Qwen3MoeConfig(**common, moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                          norm_topk_prob=True, intermediate_size=96)  # fmt: skip
        model = transformers.Qwen3MoeForCausalLM(cfg)
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common, intermediate_size=96))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
    return model.float().eval()


def tokens(n=3 * WINDOW):
    return torch.randint(0, 512, (2, n), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_logits_equal_transformers_yarn_past_the_window(moe, tmp_path):
    hf = tiny_hf(moe=moe)
    hf.save_pretrained(tmp_path / "hf")
    ours = from_hf(str(tmp_path / "hf")).eval()
    assert rope_scaling_of(ours) == YarnScaling(factor=4.0, original_max_position_embeddings=WINDOW)
    assert ours.rope_cache.shape[0] == 4 * WINDOW
    x = tokens()
    with torch.no_grad():
        ref, got = hf(x).logits, ours(x)
        assert (got - ref).abs().max().item() < 1e-4
        # plain RoPE over the same length (factor 1 = no scaling) differs: the comparison has teeth
        apply_rope_scaling(ours, YarnScaling(factor=1.0, original_max_position_embeddings=4 * WINDOW))
        assert (ours(x)[:, WINDOW:] - ref[:, WINDOW:]).abs().max().item() > 1e-2


def test_config_round_trip_and_reload_in_transformers(tmp_path):
    hf = tiny_hf()
    hf.save_pretrained(tmp_path / "hf")
    ours = from_hf(str(tmp_path / "hf")).eval()
    to_hf(ours, str(tmp_path / "out"))
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert written["rope_scaling"] == YARN
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    assert again.config.rope_parameters["rope_type"] == "yarn"
    x = tokens()
    with torch.no_grad():
        assert (again(x).logits - ours(x)).abs().max().item() < 1e-4
    # a DCP checkpoint keeps it in its config.json; re-applying restores the cache after a plain rebuild
    save_model_dcp(ours, str(tmp_path / "dcp"))
    loaded = load_model_dcp(str(tmp_path / "dcp"))
    assert rope_scaling_of(loaded) == rope_scaling_of(ours)
    apply_rope_scaling(loaded, rope_scaling_of(loaded))
    with torch.no_grad():
        assert torch.equal(loaded(x), ours(x))


def test_reinitialising_buffers_keeps_yarn(tmp_path):
    from qwen3_trainer.model.build import init_buffers

    hf = tiny_hf()
    hf.save_pretrained(tmp_path / "hf")
    ours = from_hf(str(tmp_path / "hf"))
    cache = ours.rope_cache.clone()
    init_buffers(ours, "cpu")
    assert torch.equal(ours.rope_cache, cache)


def test_cached_generation_uses_yarn(tmp_path):
    hf = tiny_hf()
    hf.save_pretrained(tmp_path / "hf")
    ours = from_hf(str(tmp_path / "hf")).eval()
    prompt = tokens(2 * WINDOW)[0].tolist()
    out = generate(ours, [prompt], load_tokenizer(), max_new_tokens=16, stop_ids=())
    ref = hf.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None)
    assert out.tokens[0] == ref[0, len(prompt) :].tolist()


def test_yarn_values_and_bad_configs():
    s = YarnScaling()
    assert s.max_positions == 131_072 and abs(s.mscale - (0.1 * __import__("math").log(4) + 1)) < 1e-12
    assert (
        YarnScaling.from_hf(
            {"rope_scaling": {"type": "yarn", "factor": 4.0}, "max_position_embeddings": 32768}
        )
        == s
    )
    assert YarnScaling.from_hf({"rope_theta": 1e6}) is None
    with pytest.raises(ValueError, match="rope type 'dynamic' is not supported"):
        YarnScaling.from_hf({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})
    with pytest.raises(ValueError, match="factor must be >= 1"):
        YarnScaling(factor=0.5)


def test_unsupported_rope_type_in_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen3", "hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4,
        "vocab_size": 512, "rope_scaling": {"rope_type": "longrope", "factor": 4.0},
    }))  # fmt: skip
    with pytest.raises(HFFormatError, match="rope type 'longrope' is not supported"):
        from_hf(str(tmp_path))
