"""Generation on the torchtitan Qwen3 (the decode engine behind ``generate``): greedy equals the eager
reference path and transformers' ``generate`` on the same weights (dense and MoE, left-padded batch,
64 new tokens), log-probs equal an uncached forward, sampling controls, stop ids, the thinking budget
on a model rigged to think forever, and the vLLM client against a fake server."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from qwen3_trainer.model import build_model, generate, load_tokenizer, to_hf
from qwen3_trainer.model.chat_template import apply_chat_template
from qwen3_trainer.model.generation import (
    STOP_THINKING_QUICKSTART,
    STOP_THINKING_REPORT,
    LocalRolloutEngine,
    RolloutEngine,
    SamplingParams,
)
from qwen3_trainer.model.generation_eager import _nucleus, generate_eager
from qwen3_trainer.model.vllm_client import VLLMRolloutEngine

QUESTIONS = ["Hi", "What is the capital of France? Explain step by step.", "2+2"]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def random_model(flavor: str, seed: int = 0):
    """A debug flavor with weights large enough that every output depends on the context
    (torchtitan's init gives near-constant greedy outputs on a 2-layer model)."""
    model = build_model(flavor, device="cpu", seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model


def chat_prompts(tok, questions=QUESTIONS, **kw):
    return [
        tok.encode(apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, **kw))
        for q in questions
    ]


@pytest.mark.parametrize("flavor", ["debugmodel", "debugmodel_moe"])
def test_greedy_equals_eager_path_and_transformers_generate(flavor, tok, tmp_path):
    model = random_model(flavor)
    to_hf(model, str(tmp_path / "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    prompts = chat_prompts(tok)
    params = SamplingParams(max_new_tokens=64, stop_ids=())
    out = generate(model, prompts, tok, params)
    eager = generate_eager(model, prompts, tok, params)

    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=64, min_new_tokens=64,
                      do_sample=False)[:, width:]  # fmt: skip
    assert out.tokens == ref.tolist() == eager.tokens
    assert out.lengths == [64, 64, 64] and out.finish_reasons == ["length"] * 3
    for a, b in zip(out.logprobs, eager.logprobs, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4
    assert len({tuple(t) for t in out.tokens}) == 3  # outputs depend on the prompt: the test has teeth


def test_logprobs_equal_uncached_forward(tok):
    model = random_model("debugmodel_moe", seed=1)
    prompts = chat_prompts(tok)
    out = generate(model, prompts, tok, max_new_tokens=12, temperature=1.0, seed=0)
    with torch.no_grad():
        for p, gen, lps in zip(prompts, out.tokens, out.logprobs, strict=True):
            full = torch.tensor([p + gen])
            logp = model(full)[0, len(p) - 1 : -1].float().log_softmax(-1)
            ref = logp.gather(-1, torch.tensor(gen)[:, None]).squeeze(-1)
            assert torch.allclose(torch.tensor(lps), ref, atol=1e-4), (lps, ref)


def test_sampling_controls(tok):
    model = random_model("debugmodel")
    prompts = chat_prompts(tok)
    greedy = generate(model, prompts, tok, max_new_tokens=8).tokens
    assert generate(model, prompts, tok, max_new_tokens=8, temperature=1.0, top_k=1, seed=3).tokens == greedy
    assert (
        generate(model, prompts, tok, max_new_tokens=8, temperature=1.0, top_p=1e-6, seed=3).tokens == greedy
    )
    a = generate(model, prompts, tok, max_new_tokens=8, temperature=1.0, seed=5).tokens
    b = generate(model, prompts, tok, max_new_tokens=8, temperature=1.0, seed=5).tokens
    c = generate(model, prompts, tok, max_new_tokens=8, temperature=1.0, seed=6).tokens
    assert a == b and a != c
    # top-k=3 only ever picks one of the 3 most likely tokens
    out = generate(model, prompts, tok, max_new_tokens=8, temperature=2.0, top_k=3, seed=1)
    with torch.no_grad():
        for p, gen in zip(prompts, out.tokens, strict=True):
            logits = model(torch.tensor([p + gen]))[0, len(p) - 1 : -1]
            top3 = logits.topk(3, dim=-1).indices
            assert all(t in top3[j].tolist() for j, t in enumerate(gen))


def test_top_p_nucleus_by_hand():
    # the smallest prefix with mass >= top_p: probs 0.5, 0.3, 0.15, 0.05 -> top_p 0.7 keeps 2, 0.8 keeps 2, 0.81 keeps 3
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()
    for top_p, kept in ((0.4, [1]), (0.7, [1, 3]), (0.8, [1, 3]), (0.81, [1, 3, 0]), (0.99, [1, 3, 0, 2])):
        vals, ids = _nucleus(logits, top_p, first=2)  # first=2 forces the full sort whenever 2 are not enough
        assert ids[0, : len(kept)].tolist() == kept and bool(vals[0, len(kept):].isinf().all()), top_p
        assert bool(vals[0, : len(kept)].isfinite().all())
    # the top-k shortcut and the full sort agree on peaked and flat rows (flat rows take the fallback)
    g = torch.Generator().manual_seed(0)
    for rows in (torch.randn(4, 3000, generator=g) * 8, torch.randn(4, 3000, generator=g) * 0.1):
        fast, slow = _nucleus(rows, 0.95, first=4), _nucleus(rows, 0.95, first=3000)
        for (fv, fi), (sv, si) in zip(zip(*fast, strict=True), zip(*slow, strict=True), strict=True):
            assert set(fi[fv.isfinite()].tolist()) == set(si[sv.isfinite()].tolist())


def test_stops_per_sequence(tok):
    model = random_model("debugmodel")
    prompts = chat_prompts(tok)
    free = generate(model, prompts, tok, max_new_tokens=16)
    stop = free.tokens[1][4]  # the 5th token of sequence 1 becomes a stop id
    out = generate(model, prompts, tok, max_new_tokens=16, stop_ids=(stop,))
    assert out.tokens[1] == free.tokens[1][:5] and out.finish_reasons[1] == "stop"
    for i in (0, 2):
        cut = free.tokens[i].index(stop) + 1 if stop in free.tokens[i] else 16
        assert out.tokens[i] == free.tokens[i][:cut]


def rigged_to_think_forever(tok):
    """Untied model whose output layer gets a bias that rules out </think> and every stop id."""
    model = random_model("debugmodel_moe", seed=2)
    out = torch.nn.Linear(model.output.in_features, model.output.out_features, bias=True)
    with torch.no_grad():
        out.weight.copy_(model.output.weight)
        out.bias.zero_()
        out.bias[[tok.end_think, *tok.stop_ids]] = -1e4
    model.output = out
    return model


def test_thinking_budget_forces_the_stop_text(tok):
    model = rigged_to_think_forever(tok)
    thinking, not_thinking = (
        chat_prompts(tok, ["Prove it."])[0],
        chat_prompts(tok, ["Hi"], enable_thinking=False)[0],
    )
    thinking = thinking + tok.encode("<think>\n")  # the model opened its thinking
    free = generate(model, [thinking], tok, max_new_tokens=60)
    assert tok.end_think not in free.tokens[0] and free.finish_reasons == ["length"]  # thinks forever

    budget, forced = 10, tok.encode(STOP_THINKING_REPORT)
    out = generate(model, [thinking, not_thinking], tok, max_new_tokens=60, thinking_budget=budget)
    seq, flags = out.tokens[0], out.forced[0]
    assert seq[:budget] == free.tokens[0][:budget] and not any(flags[:budget])
    assert seq[budget : budget + len(forced)] == forced and all(flags[budget : budget + len(forced)])
    assert not any(flags[budget + len(forced) :]) and len(seq) == 60  # then the answer goes on
    assert tok.decode(seq).count("</think>") == 1
    assert "directly now.\n</think>.\n\n" in tok.decode(seq)
    assert not any(out.forced[1])  # non-thinking prompt (empty think block): the budget never applies

    quick = generate(model, [thinking], tok, max_new_tokens=60, thinking_budget=0,
                     stop_thinking_text=STOP_THINKING_QUICKSTART)  # fmt: skip
    assert quick.tokens[0][: len(tok.encode(STOP_THINKING_QUICKSTART))] == tok.encode(
        STOP_THINKING_QUICKSTART
    )


def test_thinking_budget_counts_from_a_generated_think_tag(tok):
    model = rigged_to_think_forever(tok)
    calls = []

    def open_thinking_first(module, args, logits):  # the prefill's last position says <think>
        calls.append(1)
        if len(calls) == 1:
            logits = logits.clone()
            logits[:, -1, tok.think] = 1e4
        return logits

    model.output.register_forward_hook(open_thinking_first)
    out = generate(model, chat_prompts(tok, ["Prove it."]), tok, max_new_tokens=40, thinking_budget=5)
    seq, forced = out.tokens[0], tok.encode(STOP_THINKING_REPORT)
    assert seq[0] == tok.think and tok.think not in seq[1:6]
    assert seq[6 : 6 + len(forced)] == forced and out.forced[0][6 : 6 + len(forced)] == [True] * len(forced)


def test_rollout_engine_interface(tok):
    model = random_model("debugmodel")
    engine: RolloutEngine = LocalRolloutEngine(model, tok)
    params = SamplingParams(max_new_tokens=6)
    assert (
        engine.generate(chat_prompts(tok), params).tokens
        == generate(model, chat_prompts(tok), tok, params).tokens
    )


def test_bad_generation_input(tok):
    model = random_model("debugmodel")
    with pytest.raises(ValueError, match="exceeds the model's context of 4096"):
        generate(model, [[1] * 4090], tok, max_new_tokens=10)
    with pytest.raises(ValueError, match="thinking_budget must be >= 0"):
        generate(model, [[1]], tok, thinking_budget=-1)
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, [[]], tok)


class _CompletionsServer:
    """An OpenAI-compatible ``/v1/completions`` endpoint (the subset vLLM serves for token-id prompts)
    backed by the local engine: the stand-in for a vLLM server, which needs a GPU."""

    def __init__(self, model, tok):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        lock, requests = threading.Lock(), []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                requests.append(body)
                assert self.path == "/v1/completions" and body["return_tokens_as_token_ids"] is True
                params = SamplingParams(
                    max_new_tokens=body["max_tokens"], temperature=body["temperature"], top_p=body["top_p"],
                    top_k=max(0, body["top_k"]), stop_ids=tuple(body["stop_token_ids"]), seed=body.get("seed"),
                )  # fmt: skip
                with lock:
                    out = generate(model, [body["prompt"]] * body.get("n", 1), tok, params)
                choices = [
                    {
                        "index": i,
                        "text": tok.decode(out.tokens[i]),
                        "finish_reason": out.finish_reasons[i],
                        "logprobs": {
                            "tokens": [f"token_id:{t}" for t in out.tokens[i]],
                            "token_logprobs": out.logprobs[i],
                        },
                    }
                    for i in range(len(out.tokens))
                ][::-1]  # any order: the client sorts by index
                data = json.dumps({"object": "text_completion", "choices": choices}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.requests = requests
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_vllm_client_equals_local_engine(tok):
    model = rigged_to_think_forever(tok)
    server = _CompletionsServer(model, tok)
    try:
        engine = VLLMRolloutEngine(server.url, "qwen3-debug", tok)
        thinking = chat_prompts(tok, ["Prove it."])[0] + tok.encode("<think>\n")
        prompts = [thinking, chat_prompts(tok, ["Hi"], enable_thinking=False)[0]]
        for params, requests in (
            (SamplingParams(max_new_tokens=20), 2),  # one request per prompt
            # the thinking prompt: up to the budget, then one request to the end (was one per token)
            (SamplingParams(max_new_tokens=40, thinking_budget=7), 3),
        ):
            before = len(server.requests)
            remote, local = engine.generate(prompts, params), generate(model, prompts, tok, params)
            assert len(server.requests) - before == requests
            assert remote.tokens == local.tokens and remote.forced == local.forced
            assert remote.finish_reasons == local.finish_reasons
            for r, loc, f in zip(remote.logprobs, local.logprobs, remote.forced, strict=True):
                sampled = [(a, b) for a, b, forced in zip(r, loc, f, strict=True) if not forced]
                assert all(abs(a - b) < 1e-4 for a, b in sampled)
        assert any(f for f in remote.forced[0])  # the budget split the request
    finally:
        server.httpd.shutdown()


def test_vllm_client_sends_a_group_as_one_request_with_n(tok):
    model = random_model("debugmodel")
    server = _CompletionsServer(model, tok)
    try:
        engine = VLLMRolloutEngine(server.url, "qwen3-debug", tok)
        a, b = chat_prompts(tok, ["Hi", "2+2"])
        prompts = [a] * 4 + [b] * 3
        params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=0)
        out = engine.generate(prompts, params)
        assert sorted(r["n"] for r in server.requests) == [3, 4]
        assert out.tokens[:4] == generate(model, [a] * 4, tok, params).tokens  # rows keep their order
        assert out.tokens[4:] == generate(model, [b] * 3, tok, params).tokens
        assert len({tuple(t) for t in out.tokens[:4]}) > 1  # the n samples differ
    finally:
        server.httpd.shutdown()


def test_vllm_client_reports_server_errors(tok):
    engine = VLLMRolloutEngine("http://127.0.0.1:9", "m", tok, timeout_s=2)
    with pytest.raises(OSError):
        engine.generate([[1, 2]], SamplingParams(max_new_tokens=2))
