"""Thinking-mode fusion data (RECIPE.md §Post-training 3): one model, two modes, chosen by flags.

``rejection_sample`` draws thinking samples from the stage-2 (reasoning-RL) model through the
generation engine and keeps only those whose boxed answer verifies and whose think block is
non-empty. ``build_fusion`` mixes them with non-thinking samples by these rules:

- a non-thinking sample carries ``/no_think`` (in the user message, or in the system message) and
  its answer keeps an empty ``<think>\\n\\n</think>\\n\\n`` block;
- a thinking sample carries ``/think`` (user or system) or no flag at all: thinking is the default;
- multi-turn dialogs get a random flag (or none) per user turn; the last flag decides the final
  answer's mode (``chat_template.thinking_enabled``); earlier answers are rendered without reasoning.

Every built sample is checked by ``check_sample`` (final mode = flags; think tags balanced);
malformed inputs are skipped with a counted warning. Train on the output with objective ``sft``.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence

from qwen3_trainer.model.chat_template import NO_THINK_PREFILL, thinking_enabled
from qwen3_trainer.platform.posttrain import verifiers

log = logging.getLogger("qwen3_trainer.posttrain")
SYSTEM = "You are a helpful assistant."


def _reply(rec: dict) -> str | None:
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs or not isinstance(msgs[-1], dict):
        return None
    last = msgs[-1]
    return last.get("content") if last.get("role") == "assistant" and isinstance(last.get("content"), str) else None


def _question(rec: dict) -> str | None:
    users = [m for m in rec.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    return users[-1]["content"] if users and isinstance(users[-1].get("content"), str) else None


def check_sample(messages: list[dict]) -> str | None:
    """None if the dialog follows the fusion rules, else what is wrong."""
    if not messages or messages[-1].get("role") != "assistant":
        return "no final assistant turn"
    reply = messages[-1]["content"]
    if not verifiers.think_tags_balanced(reply) or "</think>" not in reply:
        return "unbalanced think tags"
    thought, _ = verifiers.split_thinking(reply)
    if bool(thought) != thinking_enabled(messages[:-1]):
        return "mode does not match the flags"
    return None


def _flagged(question: str, flag: str | None, where: str) -> list[dict]:
    if flag is None:
        return [{"role": "user", "content": question}]
    if where == "system":
        return [{"role": "system", "content": f"{SYSTEM} {flag}"}, {"role": "user", "content": question}]
    return [{"role": "user", "content": f"{question} {flag}"}]


def _answer_only(reply: str) -> str:
    return verifiers.split_thinking(reply)[1] if "</think>" in reply else reply


def _as_nonthinking(reply: str) -> str:
    return NO_THINK_PREFILL + _answer_only(reply).strip()


def build_fusion(thinking: Sequence[dict], nonthinking: Sequence[dict], *, seed: int = 0,
                 p_no_flag: float = 0.25, p_system: float = 0.25, p_multiturn: float = 0.2
                 ) -> tuple[list[dict], Counter]:
    """Fusion SFT records from thinking and non-thinking chat records (question + final reply)."""
    rng = random.Random(seed)
    stats: Counter = Counter()
    pool = []
    for mode, recs in (("think", thinking), ("no_think", nonthinking)):
        for rec in recs:
            q, reply = _question(rec), _reply(rec)
            if q is None or reply is None or not verifiers.think_tags_balanced(reply):
                stats["skipped_malformed"] += 1
                continue
            thought, _ = verifiers.split_thinking(reply)
            if mode == "think" and not thought:
                stats["skipped_thinking_without_thoughts"] += 1
                continue
            pool.append((mode, q, reply))
    if not pool:
        raise ValueError("fusion: no usable samples")
    out = []
    for mode, q, reply in pool:
        if rng.random() < p_multiturn:
            msgs = _multiturn(rng, pool, q, reply)
            stats["multiturn"] += 1
        elif mode == "think":
            flag = None if rng.random() < p_no_flag else "/think"
            msgs = [*_flagged(q, flag, "system" if rng.random() < p_system else "user"),
                    {"role": "assistant", "content": reply}]
            stats["think_no_flag" if flag is None else "think_flag"] += 1
        else:
            msgs = [*_flagged(q, "/no_think", "system" if rng.random() < p_system else "user"),
                    {"role": "assistant", "content": _as_nonthinking(reply)}]
            stats["no_think"] += 1
        problem = check_sample(msgs)
        if problem:  # by construction this does not happen; counted if it ever does
            stats[f"rejected: {problem}"] += 1
            continue
        out.append({"messages": msgs})
    rng.shuffle(out)
    return out, stats


def _multiturn(rng: random.Random, pool, q: str, reply: str) -> list[dict]:
    """Two or three turns with random flags; the final reply follows the last flag."""
    msgs: list[dict] = []
    if rng.random() < 0.3:
        msgs.append({"role": "system", "content": f"{SYSTEM} {rng.choice(['/think', '/no_think'])}"})
    for _ in range(rng.randint(1, 2)):
        _, q0, r0 = rng.choice(pool)
        flag = rng.choice(["/think", "/no_think", None])
        msgs += [{"role": "user", "content": q0 + (f" {flag}" if flag else "")},
                 {"role": "assistant", "content": _answer_only(r0).strip()}]
    flag = rng.choice(["/think", "/no_think", None])
    msgs.append({"role": "user", "content": q + (f" {flag}" if flag else "")})
    think = thinking_enabled(msgs)
    thought, _ = verifiers.split_thinking(reply)
    if think and not thought:  # a non-thinking source reply cannot answer a thinking turn: flip the flag
        msgs[-1]["content"] = q + " /no_think"
        think = False
    msgs.append({"role": "assistant", "content": reply if think else _as_nonthinking(reply)})
    return msgs


def rejection_sample(engine, tokenizer, queries: Sequence[dict], *, samples: int, max_new_tokens: int,
                     temperature: float = 0.8, seed: int = 0, seq_len: int | None = None, judges=None
                     ) -> tuple[list[dict], Counter]:
    """Thinking samples from the model: ``samples`` tries per query, the first that verifies (right
    boxed answer, non-empty think block) kept. Prompts go in as they are: the stage-2 model was
    trained without mode flags and thinks by default. ``judges`` (default: the cold-start response
    judges — wrong answer, repetition, thinking/summary mismatch, language mixing, guesswork, tags)
    must all pass."""
    from qwen3_trainer.model.generation import SamplingParams
    from qwen3_trainer.platform.posttrain import rollouts
    from qwen3_trainer.platform.posttrain.coldstart import DEFAULT_RESPONSE_JUDGES

    judges = DEFAULT_RESPONSE_JUDGES if judges is None else judges

    kept, stats = [], Counter()
    for i, rec in enumerate(queries):
        prompt = rec["prompt"]
        ids = rollouts.prompt_ids(tokenizer, prompt)
        budget = max_new_tokens if seq_len is None else max(1, min(max_new_tokens, seq_len + 1 - len(ids)))
        out = engine.generate([ids] * samples, SamplingParams(max_new_tokens=budget, temperature=temperature,
                                                              seed=seed + i))
        for toks in out.tokens:
            text = rollouts.response_text(tokenizer, prompt, toks)
            if verifiers.format_ok(text, thinking=True) and not any(j(rec, text) for j in judges):
                kept.append({"messages": [*rec["prompt"], {"role": "assistant", "content": text}],
                             "answer": rec["answer"]})
                stats["accepted"] += 1
                break
        else:
            stats["no_verified_sample"] += 1
    return kept, stats
