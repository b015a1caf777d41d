"""``RolloutEngine`` on a vLLM server: its OpenAI-compatible ``/v1/completions`` endpoint, token ids in
and out (stdlib HTTP, no client library).

Each prompt is one request (vLLM batches concurrent requests itself); requests go out from a thread
pool. vLLM extensions used: ``top_k``, ``stop_token_ids``, ``return_tokens_as_token_ids`` (ids come
back as ``"token_id:123"`` in ``logprobs.tokens``), ``skip_special_tokens=false``. Log-probs are vLLM's
(raw model log-probs by default in vLLM V1, as ``generation.generate`` returns).

The thinking budget is applied around the server, with the same rule as the local engine: a request
generates at most up to the budget point; when the budget is reached inside ``<think>``, tokens past
it are dropped, the stop-thinking text is appended (``forced``, log-prob NaN: the server did not
score it) and a follow-up request continues from prompt + output.
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

    def _complete(self, ids: list[int], max_tokens: int, params: SamplingParams, stops: list[int]):
        body = {
            "model": self.model,
            "prompt": ids,
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
                choice = json.loads(resp.read())["choices"][0]
        except urllib.error.HTTPError as exc:
            raise VLLMError(f"{self.url}: HTTP {exc.code}: {exc.read()[:300]!r}") from None
        except (KeyError, IndexError, json.JSONDecodeError) as exc:
            raise VLLMError(f"{self.url}: not a completion response ({exc})") from None
        lp = choice.get("logprobs") or {}
        tokens = [int(str(t).removeprefix("token_id:")) for t in lp.get("tokens", [])]
        return tokens, [float(x) for x in lp.get("token_logprobs", [])], choice.get("finish_reason")

    def _one(
        self, prompt: list[int], params: SamplingParams
    ) -> tuple[list[int], list[float], list[bool], str]:
        tok = self.tokenizer
        stops = list(params.stop_ids if params.stop_ids is not None else tok.stop_ids)
        budget = params.thinking_budget
        forced_text = tok.encode(params.stop_thinking_text) if budget is not None else []
        thinking, count = _thinking_at_prompt_end(prompt, tok.think, tok.end_think, tok.im_start), 0
        out, lps, flags = [], [], []

        def force():
            out.extend(forced_text)
            lps.extend([math.nan] * len(forced_text))
            flags.extend([True] * len(forced_text))

        if thinking and budget == 0:
            force()
            thinking = False
        while len(out) < params.max_new_tokens:
            remaining = params.max_new_tokens - len(out)
            # stop the request at the earliest point the budget could be reached
            limit = remaining if budget is None else min(remaining, budget - count + (0 if thinking else 1))
            new, new_lps, reason = self._complete(prompt + out, max(1, limit), params, stops)
            hit_budget = False
            for t, lp in zip(new, new_lps, strict=True):
                out.append(t)
                lps.append(lp)
                flags.append(False)
                if t == tok.think:
                    thinking, count = True, 0
                elif t == tok.end_think:
                    thinking = False
                elif thinking:
                    count += 1
                if t in stops:
                    return out, lps, flags, "stop"
                if thinking and budget is not None and count >= budget:
                    hit_budget = True
                    break
            if hit_budget:
                force()
                thinking = False
            elif reason == "stop" or not new:
                return out, lps, flags, "stop"
        return (
            out[: params.max_new_tokens],
            lps[: params.max_new_tokens],
            flags[: params.max_new_tokens],
            "length",
        )

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> GenerationOutput:
        params.validate()
        with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(prompts)))) as pool:
            results = list(pool.map(lambda p: self._one(p, params), prompts))
        return GenerationOutput(
            [r[0] for r in results], [r[1] for r in results], [r[2] for r in results], [r[3] for r in results]
        )
