"""``RolloutEngine`` on a vLLM server: its OpenAI-compatible ``/v1/completions`` endpoint, token ids in
and out (stdlib HTTP, no client library).

Identical prompts (the G samples of a GRPO group) go out as one request with ``n`` = G, distinct
prompts concurrently from a thread pool (vLLM batches concurrent requests itself and prefills a
request's prompt once for its ``n`` choices). vLLM extensions used: ``top_k``, ``stop_token_ids``,
``return_tokens_as_token_ids`` (ids come back as ``"token_id:123"`` in ``logprobs.tokens``),
``skip_special_tokens=false``. Log-probs are vLLM's
(raw model log-probs by default in vLLM V1, as ``generation.generate`` returns).

The thinking budget is applied around the server, with the same rule as the local engine: inside
``<think>`` a request generates at most up to the budget point; when the budget is reached, tokens
past it are dropped, the stop-thinking text is appended (``forced``, log-prob NaN: the server did not
score it) and one follow-up request continues from prompt + output to the end (it is cut again only
if the answer opens a new ``<think>`` that reaches the budget).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from qwen3_trainer.model.generation import GenerationOutput, SamplingParams, _thinking_at_prompt_end


class VLLMError(RuntimeError):
    """The server answered with an error or something that is not a completion."""


class VLLMRolloutEngine:
    def __init__(
        self, base_url: str, model: str, tokenizer=None, timeout_s: float = 600.0, workers: int = 32
    ):
        from qwen3_trainer.model.tokenizer import load_tokenizer

        self.url = base_url.rstrip("/") + "/v1/completions"
        self.model = model
        self.tokenizer = tokenizer or load_tokenizer()
        self.timeout_s = timeout_s
        self.workers = workers

    def _complete(self, ids: list[int], max_tokens: int, params: SamplingParams, stops: list[int], n: int = 1):
        """One ``/v1/completions`` request; returns ``n`` (ids, log-probs, finish reason) choices."""
        body = {
            "model": self.model,
            "prompt": ids,
            "n": n,
            "max_tokens": max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k if params.top_k else -1,
            "stop_token_ids": stops,
            "logprobs": 1,
            "return_tokens_as_token_ids": True,
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        req = urllib.request.Request(
            self.url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                choices = sorted(json.loads(resp.read())["choices"], key=lambda c: c.get("index", 0))
        except urllib.error.HTTPError as exc:
            raise VLLMError(f"{self.url}: HTTP {exc.code}: {exc.read()[:300]!r}") from None
        except (KeyError, IndexError, TypeError, json.JSONDecodeError) as exc:
            raise VLLMError(f"{self.url}: not a completion response ({exc})") from None
        if len(choices) != n:
            raise VLLMError(f"{self.url}: asked for n={n} completions, got {len(choices)}")
        out = []
        for choice in choices:
            lp = choice.get("logprobs") or {}
            tokens = [int(str(t).removeprefix("token_id:")) for t in lp.get("tokens", [])]
            out.append((tokens, [float(x) for x in lp.get("token_logprobs", [])], choice.get("finish_reason")))
        return out

    def _group(self, prompt: list[int], n: int, params: SamplingParams) -> list[tuple]:
        """The ``n`` samples of one prompt: one request with ``n`` choices, then a follow-up request per
        sample only where the thinking budget cut it."""
        tok = self.tokenizer
        stops = list(params.stop_ids if params.stop_ids is not None else tok.stop_ids)
        forced = tok.encode(params.stop_thinking_text) if params.thinking_budget is not None else []
        thinking = _thinking_at_prompt_end(prompt, tok.think, tok.end_think, tok.im_start)
        samples = [_Sample(params, stops, forced, tok.think, tok.end_think, thinking) for _ in range(n)]
        first = samples[0].limit()
        if first:
            for s, choice in zip(samples, self._complete(prompt, first, params, stops, n), strict=True):
                s.absorb(*choice)
        for s in samples:
            while limit := s.limit():
                ((new, lps, reason),) = self._complete(prompt + s.out, limit, params, stops)
                s.absorb(new, lps, reason)
        return [s.result() for s in samples]

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationOutput:
        """Identical prompts (a GRPO group) go out as one request with ``n`` = their count."""
        params.validate()
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(tuple(p), []).append(i)
        with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(groups)))) as pool:
            done = list(pool.map(lambda kv: self._group(list(kv[0]), len(kv[1]), params), groups.items()))
        results: list[tuple] = [()] * len(prompts)
        for rows, samples in zip(groups.values(), done, strict=True):
            for i, r in zip(rows, samples, strict=True):
                results[i] = r
        return GenerationOutput(
            [r[0] for r in results], [r[1] for r in results], [r[2] for r in results], [r[3] for r in results]
        )


class _Sample:
    """One sample's tokens and thinking state across its requests (the local engine's budget rule)."""

    def __init__(self, params: SamplingParams, stops, forced, think: int, end_think: int, thinking: bool):
        self.max, self.budget, self.stops, self.forced = params.max_new_tokens, params.thinking_budget, stops, forced
        self.think, self.end_think = think, end_think
        self.thinking, self.count, self.finish = thinking, 0, None
        self.out: list[int] = []
        self.lps: list[float] = []
        self.flags: list[bool] = []
        if thinking and self.budget == 0 and forced:
            self._force()

    def _force(self) -> None:
        self.out += self.forced
        self.lps += [math.nan] * len(self.forced)
        self.flags += [True] * len(self.forced)
        self.thinking = False  # the forced text closes the think block

    def limit(self) -> int:
        """Tokens the next request may generate (0: finished). Inside ``<think>`` it stops where the
        budget is reached; outside it runs to the end (a ``<think>`` opened later is cut in ``absorb``)."""
        remaining = self.max - len(self.out)
        if self.finish is not None or remaining <= 0:
            self.finish = self.finish or "length"
            return 0
        if self.budget is not None and self.thinking and self.forced:
            return max(1, min(remaining, self.budget - self.count))
        return remaining

    def absorb(self, new: list[int], lps: list[float], reason: str | None) -> None:
        for t, lp in zip(new, lps, strict=True):
            if len(self.out) >= self.max:
                break
            self.out.append(t)
            self.lps.append(lp)
            self.flags.append(False)
            if t == self.think:
                self.thinking, self.count = True, 0
            elif t == self.end_think:
                self.thinking = False
            elif self.thinking:
                self.count += 1
            if t in self.stops:
                self.finish = "stop"
                return
            if self.thinking and self.budget is not None and self.forced and self.count >= self.budget:
                self._force()  # tokens the server generated past the budget point are dropped
                return
        if reason == "stop" or not new:
            self.finish = "stop"

    def result(self) -> tuple[list[int], list[float], list[bool], str]:
        m = self.max
        return self.out[:m], self.lps[:m], self.flags[:m], self.finish or "length"
