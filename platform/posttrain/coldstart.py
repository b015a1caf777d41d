"""Long-CoT cold start data step (RECIPE.md §Post-training 1): query filter, then response filter.

Query filter — drop queries that are unverifiable (no reference answer a verifier can check), ask
several sub-questions, or are answerable without reasoning. Response filter — over N candidate
responses per kept query (from the records' ``candidates`` or sampled from a teacher through the
generation engine), drop wrong answers, repetition, guesswork, a summary that contradicts the
thinking, language mixing and malformed think tags; keep one (the shortest) passing sample per
query — "samples and steps minimal". The kept ``<think>…</think>answer`` dialogs are written as SFT
jsonl (``messages``), trained with the built-in ``sft`` objective (chat-template loss masks).

Judges are pluggable: a judge is a callable returning ``None`` (keep) or the reason to drop.
Rule judges are the default; ``NoCotModelJudge`` (query side: the model answers without thinking)
and ``ModelResponseJudge`` (response side: a model asked yes/no) judge through generation.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence

from qwen3_trainer.platform.posttrain import verifiers

log = logging.getLogger("qwen3_trainer.posttrain")

QueryJudge = Callable[[dict], "str | None"]
ResponseJudge = Callable[[dict, str], "str | None"]

_SUBQ = re.compile(r"(\(\s*[a-d]\s*\)|^\s*\d+[.)]\s|\b(?:also|additionally|second(?:ly)?)\b[^?]*\?)", re.I | re.M)
_GUESS = re.compile(r"\b(guess|probably|maybe|not sure|random(?:ly)?)\b", re.I)
_OTHER_SCRIPT = re.compile(r"[\u0400-\u04ff\u0590-\u06ff\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


# ---------------------------------------------------------------- query judges (rule-based)


def unverifiable(rec: dict) -> str | None:
    answer = str(rec.get("answer") or "").strip()
    if not answer or (verifiers.parse_number(answer) is None and len(answer.split()) > 3):
        return "unverifiable"
    return None


def multi_question(rec: dict) -> str | None:
    q = _question(rec)
    return "multi_question" if q.count("?") > 1 or _SUBQ.search(q) else None


def answer_in_query(rec: dict) -> str | None:
    """Answerable without reasoning: the reference answer is already written in the question."""
    answer = str(rec.get("answer") or "").strip()
    if answer and re.search(rf"(?<![\d.]){re.escape(answer)}(?!\.?\d)", _question(rec)):
        return "answerable_without_cot"
    return None


DEFAULT_QUERY_JUDGES: tuple[QueryJudge, ...] = (unverifiable, multi_question, answer_in_query)


def _question(rec: dict) -> str:
    if rec.get("question"):
        return str(rec["question"])
    return " ".join(m["content"] for m in rec.get("prompt", []) if m.get("role") == "user")


# ---------------------------------------------------------------- response judges (rule-based)


def malformed(rec: dict, response: str) -> str | None:
    if not verifiers.think_tags_balanced(response) or "</think>" not in response:
        return "malformed_think_tags"
    thought, _ = verifiers.split_thinking(response)
    return None if thought else "empty_thinking"


def wrong_answer(rec: dict, response: str) -> str | None:
    return None if verifiers.math_reward(response, str(rec["answer"])) else "wrong_answer"


def repetition(rec: dict, response: str, max_repeats: int = 2, ngram: int = 8, max_ratio: float = 0.3) -> str | None:
    """A line repeated more than ``max_repeats`` times, or too many repeated word n-grams."""
    lines = [line.strip() for line in response.splitlines() if line.strip()]
    if lines and max(Counter(lines).values()) > max_repeats:
        return "repetition"
    words = response.split()
    grams = [tuple(words[i: i + ngram]) for i in range(max(0, len(words) - ngram + 1))]
    if grams and 1 - len(set(grams)) / len(grams) > max_ratio:
        return "repetition"
    return None


def summary_mismatch(rec: dict, response: str) -> str | None:
    """The summary's final answer must be what the thinking arrived at (it appears in the thinking)."""
    thought, _ = verifiers.split_thinking(response)
    final = verifiers.final_answer(response)
    if thought is None or final is None:
        return None
    numbers = re.findall(r"-?\d+(?:\.\d+)?", thought)
    if not any(verifiers.math_equal(n, final) for n in numbers[-3:]):
        return "thinking_summary_mismatch"
    return None


def language_mixing(rec: dict, response: str) -> str | None:
    """Another script in the response than in the query (e.g. CJK inside an English answer)."""
    query_other = bool(_OTHER_SCRIPT.search(_question(rec)))
    return "language_mixing" if _OTHER_SCRIPT.search(response) and not query_other else None


def guesswork(rec: dict, response: str) -> str | None:
    return "guesswork" if _GUESS.search(response) else None


DEFAULT_RESPONSE_JUDGES: tuple[ResponseJudge, ...] = (malformed, wrong_answer, repetition, summary_mismatch,
                                                      language_mixing, guesswork)


# ---------------------------------------------------------------- model judges (through generation)


class NoCotModelJudge:
    """Query judge: drop queries the model already answers correctly without thinking in
    ``threshold`` of ``samples`` tries (the report drops queries answerable without CoT)."""

    def __init__(self, engine, tokenizer, *, samples: int = 4, threshold: float = 1.0, max_new_tokens: int = 16,
                 temperature: float = 0.7, seed: int = 0):
        self.engine, self.tok = engine, tokenizer
        self.samples, self.threshold, self.max_new_tokens = samples, threshold, max_new_tokens
        self.temperature, self.seed = temperature, seed

    def __call__(self, rec: dict) -> str | None:
        from qwen3_trainer.model.generation import SamplingParams
        from qwen3_trainer.platform.posttrain import rollouts
        from qwen3_trainer.platform.posttrain.distill import with_flag

        prompt = with_flag(rec["prompt"], "/no_think")
        ids = [rollouts.prompt_ids(self.tok, prompt)] * self.samples
        out = self.engine.generate(ids, SamplingParams(max_new_tokens=self.max_new_tokens,
                                                       temperature=self.temperature, seed=self.seed))
        hits = sum(verifiers.math_reward(rollouts.response_text(self.tok, prompt, t), str(rec["answer"]))
                   for t in out.tokens)
        return "answerable_without_cot" if hits / self.samples >= self.threshold else None


JUDGE_TEMPLATE = ("Question: {question}\nResponse: {response}\nIs the reasoning in the response correct, "
                  "consistent and in one language? Reply yes or no. /no_think")


class ModelResponseJudge:
    """Response judge: a generative model asked yes/no about the candidate; "no" drops it."""

    def __init__(self, engine, tokenizer, max_new_tokens: int = 4):
        self.engine, self.tok, self.max_new_tokens = engine, tokenizer, max_new_tokens

    def __call__(self, rec: dict, response: str) -> str | None:
        from qwen3_trainer.model.generation import SamplingParams
        from qwen3_trainer.platform.posttrain import rollouts

        prompt = [{"role": "user", "content": JUDGE_TEMPLATE.format(question=_question(rec), response=response)}]
        out = self.engine.generate([rollouts.prompt_ids(self.tok, prompt)],
                                   SamplingParams(max_new_tokens=self.max_new_tokens))
        verdict = rollouts.response_text(self.tok, prompt, out.tokens[0]).split("</think>")[-1].strip().lower()
        return None if verdict.startswith("yes") else "model_judge"


# ---------------------------------------------------------------- the data step


def filter_queries(records: Sequence[dict], judges: Sequence[QueryJudge] = DEFAULT_QUERY_JUDGES
                   ) -> tuple[list[dict], Counter]:
    kept, dropped = [], Counter()
    for rec in records:
        reason = next((r for j in judges if (r := j(rec))), None)
        if reason:
            dropped[reason] += 1
        else:
            kept.append(rec)
    return kept, dropped


def _candidates(rec: dict) -> list[str]:
    out = []
    for c in rec.get("candidates") or []:
        text = c.get("response") if isinstance(c, dict) else c
        if isinstance(text, str):
            out.append(text)
    return out


def filter_responses(records: Sequence[dict], judges: Sequence[ResponseJudge] = DEFAULT_RESPONSE_JUDGES,
                     per_query: int = 1) -> tuple[list[dict], Counter]:
    """SFT records from the passing candidates (the ``per_query`` shortest per query)."""
    samples, dropped = [], Counter()
    for rec in records:
        passing = []
        for resp in _candidates(rec):
            reason = next((r for j in judges if (r := j(rec, resp))), None)
            if reason:
                dropped[reason] += 1
            else:
                passing.append(resp)
        if not passing:
            dropped["query_without_passing_response"] += 1
        for resp in sorted(passing, key=len)[:per_query]:
            samples.append({"messages": [*rec["prompt"], {"role": "assistant", "content": resp}],
                            "answer": rec["answer"]})
    return samples, dropped


def sample_candidates(engine, tokenizer, records: list[dict], *, n: int, max_new_tokens: int,
                      temperature: float = 0.8, seed: int = 0) -> list[dict]:
    """Attach ``n`` teacher responses (thinking mode) to each record through the generation engine."""
    from qwen3_trainer.model.generation import SamplingParams
    from qwen3_trainer.platform.posttrain import rollouts

    out = []
    for i, rec in enumerate(records):
        ids = [rollouts.prompt_ids(tokenizer, rec["prompt"])] * n
        gen = engine.generate(ids, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                  seed=seed + i))
        texts = [rollouts.response_text(tokenizer, rec["prompt"], t) for t in gen.tokens]
        out.append({**rec, "candidates": _candidates(rec) + texts})
    return out


def run_coldstart(records: Sequence[dict], out_path: str, *, query_judges=DEFAULT_QUERY_JUDGES,
                  response_judges=DEFAULT_RESPONSE_JUDGES, per_query: int = 1) -> dict:
    """Both filters, the kept samples written to ``out_path`` (jsonl); returns the counts."""
    from qwen3_trainer.platform.data.synthetic import write_jsonl

    kept_q, q_dropped = filter_queries(records, query_judges)
    samples, r_dropped = filter_responses(kept_q, response_judges, per_query)
    if not samples:
        raise ValueError("cold start: no sample passed the filters")
    write_jsonl(out_path, samples)
    report = {"queries": len(records), "queries_kept": len(kept_q), "samples": len(samples),
              "query_dropped": dict(q_dropped), "response_dropped": dict(r_dropped), "path": out_path}
    log.info("cold start: %s", report)
    return report
