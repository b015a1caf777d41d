"""The decode engine's own rules on CPU (eager; the GPU compiles the same functions): a prompt's G
samples share one prefill, finished rows are compacted into a smaller bucket without changing any
output, seeded sampling does not depend on the batch around a row, Gumbel sampling draws from the
softmax, bad input fails before any kernel, and models the engine cannot read fall back to the
eager path."""

from __future__ import annotations

import pytest
import torch
from test_generation import chat_prompts, random_model

from qwen3_trainer.model import load_tokenizer
from qwen3_trainer.model.decode_engine import DecodeEngine, _window
from qwen3_trainer.model.decode_step import packed_view
from qwen3_trainer.model.generation import LocalRolloutEngine, SamplingParams
from qwen3_trainer.model.generation_eager import _nucleus, generate_eager
from qwen3_trainer.model.sampling import _mix32, choose, gumbel


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def dense():
    return random_model("debugmodel")


def test_group_prefills_once_and_matches_the_eager_path(dense, tok):
    a, b = chat_prompts(tok, ["Hi", "2+2"])
    prompts = [a] * 4 + [b] * 3  # two GRPO groups
    engine = DecodeEngine(dense)
    params = SamplingParams(max_new_tokens=8, stop_ids=())
    out = engine.generate(prompts, params, tok)
    assert engine.stats["prefill_rows"] == 2 and engine.stats["bucket"] == 8
    assert out.tokens == generate_eager(dense, prompts, tok, params).tokens
    sampled = engine.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.0, seed=0), tok)
    assert len({tuple(t) for t in sampled.tokens[:4]}) == 4  # one prefill, four different samples


def test_compaction_changes_no_output(dense, tok):
    prompts = chat_prompts(tok, ["Hi", "What is 2+2?", "Name a colour.", "Hello", "Why?"])
    free = generate_eager(dense, prompts, tok, max_new_tokens=16, stop_ids=())
    stops = (free.tokens[0][2], free.tokens[1][3], free.tokens[2][1])  # three rows stop early
    params = SamplingParams(max_new_tokens=16, stop_ids=stops)
    engine = DecodeEngine(dense)
    out = engine.generate(prompts, params, tok)
    ref = generate_eager(dense, prompts, tok, params)
    assert engine.stats["compactions"] >= 1  # 8 -> 4 or 2 rows
    assert out.tokens == ref.tokens and out.finish_reasons == ref.finish_reasons
    assert out.finish_reasons.count("stop") >= 3
    for a, b in zip(out.logprobs, ref.logprobs, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


def test_seeded_sampling_ignores_the_batch_around_a_row(dense, tok):
    prompts = chat_prompts(tok, ["Hi", "2+2", "Why?"])
    params = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    small = DecodeEngine(dense).generate(prompts, params, tok)
    padded = DecodeEngine(dense, buckets=(16,)).generate(prompts, params, tok)  # 13 padding rows
    assert small.tokens == padded.tokens
    assert DecodeEngine(dense).generate(prompts, SamplingParams(**{**params.__dict__, "seed": 8}), tok).tokens != small.tokens


def test_gumbel_max_draws_from_the_softmax():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log()[None].repeat(4000, 1)
    kw = dict(vocab=4, temperature=torch.ones(1), top_p=torch.ones(1), seed=torch.tensor([1]),
              step=torch.tensor([0]), rows=torch.arange(4000))  # fmt: skip
    freq = torch.bincount(choose(logits, mode="sample", top_k=0, **kw), minlength=4) / 4000
    assert torch.allclose(freq, probs, atol=0.03), freq
    # top-p 0.7 keeps {0, 1}; top-k 3 then top-p 0.9 keeps {0, 1, 2} (the nucleus of the renormalised top 3)
    picked = choose(logits, mode="top_p", top_k=0, **{**kw, "top_p": torch.tensor([0.7])})
    assert set(picked.tolist()) == {0, 1}
    picked = choose(logits, mode="top_k", top_k=3, **{**kw, "top_p": torch.tensor([0.9])})
    assert set(picked.tolist()) == {0, 1, 2}
    # padding columns past ``vocab`` (the head's rows beyond the tokenizer) never win, whatever their logits,
    # and the nucleus over the padded row picks exactly what it picks over the real columns
    padded = torch.cat([logits, torch.full((4000, 2), 10.0)], dim=1)
    for mode, k, p in (("top_p", 0, 0.7), ("top_p", 0, 1.0), ("top_k", 3, 0.9), ("sample", 0, 1.0)):
        args = {**kw, "top_p": torch.tensor([p])}
        assert torch.equal(choose(padded, mode=mode, top_k=k, **args), choose(logits, mode=mode, top_k=k, **args))
    vals, ids = _nucleus(logits[:1], 0.9)  # the eager path's nucleus of the same row agrees
    assert set(ids[0][vals[0].isfinite()].tolist()) == {0, 1, 2}
    # noise is finite at the hash's extremes (u never rounds to 0 or 1 in fp32)
    assert gumbel(torch.tensor([0]), torch.tensor([0]), torch.arange(64), torch.arange(4096), 4096).isfinite().all()
    assert int(_mix32(torch.tensor([0xFFFFFFFF]))) <= 0xFFFFFFFF


def test_bad_input_fails_before_any_kernel(dense, tok, monkeypatch):
    engine = DecodeEngine(dense, buckets=(1, 2, 4), max_len=64)
    monkeypatch.setattr(engine, "_run", lambda *a: pytest.fail("a kernel ran"))
    prompt = chat_prompts(tok, ["Hi"])[0]
    cases = [
        ([prompt] * 5, {}, "exceeds the largest batch bucket \\(4\\)"),
        ([[1] * 60], {"max_new_tokens": 8}, "exceeds the engine's KV cache of 64"),
        ([[1] * 4090], {"max_new_tokens": 10}, "exceeds the model's context of 4096"),
        ([prompt], {"top_p": 0.0}, "top_p must be in"),
        ([prompt], {"top_p": 1.5}, "top_p must be in"),
        ([prompt], {"stop_ids": (151_936,)}, "stop id 151936 is outside the vocabulary"),
        ([prompt], {"stop_ids": (-1,)}, "non-negative"),
        ([[5, 10**7]], {}, "outside the vocabulary"),
        ([[]], {}, "non-empty"),
    ]
    for prompts, kw, match in cases:
        with pytest.raises(ValueError, match=match):
            engine.generate(prompts, SamplingParams(**{"max_new_tokens": 4, **kw}), tok)


def test_unknown_layers_fall_back_to_the_eager_path(tok):
    model = random_model("debugmodel")
    model.layers["0"].attention.wq.register_forward_hook(lambda m, a, out: out * 1.5)
    engine = DecodeEngine(model)
    assert engine.unsupported
    prompts = chat_prompts(tok)
    params = SamplingParams(max_new_tokens=6)
    assert engine.generate(prompts, params, tok).tokens == generate_eager(model, prompts, tok, params).tokens


def test_release_frees_the_cache_and_the_next_call_rebuilds_it(dense, tok):
    engine = LocalRolloutEngine(dense, tok)
    prompts = chat_prompts(tok)
    first = engine.generate(prompts, SamplingParams(max_new_tokens=5)).tokens
    assert engine.engine.ws is not None
    engine.release()
    assert engine.engine.ws is None
    assert engine.generate(prompts, SamplingParams(max_new_tokens=5)).tokens == first


def test_packed_projections_keep_parameters_and_outputs(tok):
    model = random_model("debugmodel_moe", seed=3)
    attn = model.layers["0"].attention
    params, state = list(model.parameters()), {k: v.clone() for k, v in model.state_dict().items()}
    prompts = chat_prompts(tok)
    params_s = SamplingParams(max_new_tokens=8)
    before = generate_eager(model, prompts, tok, params_s).tokens
    assert packed_view([attn.wq.weight, attn.wk.weight, attn.wv.weight]) is None
    engine = DecodeEngine(model, pack_weights=True)
    assert packed_view([attn.wq.weight, attn.wk.weight, attn.wv.weight]) is not None
    assert all(a is b for a, b in zip(params, model.parameters(), strict=True))  # optimizers see the same objects
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert engine.generate(prompts, params_s, tok).tokens == before
    model.load_state_dict(state)  # a weight sync writes through the packed views
    assert packed_view([attn.wq.weight, attn.wk.weight, attn.wv.weight]) is not None


def test_attention_windows_follow_the_live_context():
    assert [_window(s, 4096) for s in (0, 63, 64, 200, 511, 512, 1500)] == [64, 64, 128, 256, 512, 1024, 2048]
    assert _window(3000, 2048) == 2048  # never past the cache


def test_a_step_function_that_fails_to_compile_runs_uncompiled(dense, tok, monkeypatch, caplog):
    """An inductor failure for one step function (as the top-p cumsum did on an H200) falls
    back to that function uncompiled, with a warning: the same tokens, no failed rollout."""
    import logging

    from torch._inductor.exc import InductorError

    prompts = chat_prompts(tok, ["Hi", "2+2"])
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=3)
    want = DecodeEngine(dense, compile=False).generate(prompts, params, tok).tokens

    def broken(fn, **_):
        def call(*args):
            raise InductorError(TypeError("list indices must be integers or slices, not NoneType"), None)
        return call

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level(logging.WARNING, logger="qwen3_trainer.decode"):
        got = DecodeEngine(dense, compile=True).generate(prompts, params, tok).tokens
    assert got == want
    assert any("runs uncompiled" in r.message for r in caplog.records)


@pytest.mark.parametrize("flavor", ["debugmodel", "debugmodel_moe"])
def test_fp8_kv_cache_rounds_only_the_cache(flavor, dense, tok, monkeypatch):
    """``kv_dtype="float8_e4m3fn"``: the cache is fp8 (a quarter of an fp32 model's bytes), and prefill,
    decode writes, compaction and attention through it give exactly what a full-precision cache holding
    fp8-rounded K/V gives (same tokens, log-probs to 1e-5): rounding the cache is the only change. The
    first token comes from the unrounded prefill (equal to the default engine's); anything else as
    ``kv_dtype`` fails in one line."""
    from qwen3_trainer.model import decode_engine, decode_step, kv_cache

    model = dense if flavor == "debugmodel" else random_model(flavor)
    prompts = chat_prompts(tok, ["Hi", "What is 2+2?", "Name a colour.", "Hello", "Why?"])
    free = generate_eager(model, prompts, tok, max_new_tokens=16, stop_ids=())
    params = SamplingParams(max_new_tokens=16, stop_ids=(free.tokens[0][2], free.tokens[1][3]))
    full = DecodeEngine(model).generate(prompts, params, tok)
    engine = DecodeEngine(model, kv_dtype="float8_e4m3fn")
    out = engine.generate(prompts, params, tok)
    assert engine.stats["compactions"] >= 1

    def rounded(x, dtype):  # the reference: fp8 values in a cache of the model's dtype
        return x.clamp(-kv_cache.FP8_MAX, kv_cache.FP8_MAX).to(kv_cache.FP8).to(dtype)

    with monkeypatch.context() as m:
        m.setattr(decode_step, "to_kv", rounded)
        m.setattr(decode_engine, "to_kv", rounded)
        ref = DecodeEngine(model).generate(prompts, params, tok)
    assert out.tokens == ref.tokens and out.finish_reasons == ref.finish_reasons
    for a, b, c in zip(out.logprobs, ref.logprobs, full.logprobs, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
        assert abs(a[0] - c[0]) < 1e-5
    assert out.logprobs != full.logprobs  # the rounding is real
    ws = engine._workspace(8, 64)
    assert ws.k[0].dtype == torch.float8_e4m3fn and ws.nbytes() * 4 == DecodeEngine(model)._workspace(8, 64).nbytes()
    with pytest.raises(ValueError, match="kv_dtype 'int4' is not one of"):
        DecodeEngine(model, kv_dtype="int4")
