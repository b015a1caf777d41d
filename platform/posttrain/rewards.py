"""Rewards for GRPO, built from a spec in the objective's params (general RL, RECIPE.md §Post-training 4).

    rewards: [{name: math, weight: 1.0}, {name: format, weight: 0.2},
              {name: instruction, weight: 0.5},
              {name: reward_model, weight: 1.0, params: {path: runs/rm/hf}},
              {name: judge, weight: 1.0, params: {path: runs/judge/hf}}]

Rule-based: ``math`` (boxed answer equals the record's ``answer``), ``format`` (think block and boxed
answer; empty block iff non-thinking), ``instruction`` (the fraction of the record's ``constraints``
met by the answer: ``max_words``, ``min_words``, ``include``, ``exclude``, ``lowercase``,
``ends_with``, ``starts_with``, ``json``, ``boxed``).
Model-based: ``reward_model`` (a Qwen3 backbone whose scalar head is one output row, trained with
objective ``reward_model``; no reference answer) and ``judge`` (a generative Qwen3 asked whether the
response matches the record's reference answer; the reward is p(yes) / (p(yes) + p(no))).

Every component is wrapped in ``SafeReward``: one that raises scores 0 and is counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from qwen3_trainer.platform.posttrain import verifiers
from qwen3_trainer.platform.posttrain.verifiers import SafeReward

REWARD_HEAD_ID = 151935  # the last padding row of Qwen3's 151,936-row vocabulary: never an input id


def _constraint_ok(c: dict, answer: str) -> bool:
    kind, value = c["type"], c.get("value")
    words = answer.split()
    checks: dict[str, Callable[[], bool]] = {
        "max_words": lambda: len(words) <= int(value),
        "min_words": lambda: len(words) >= int(value),
        "include": lambda: str(value).lower() in answer.lower(),
        "exclude": lambda: str(value).lower() not in answer.lower(),
        "lowercase": lambda: answer == answer.lower(),
        "ends_with": lambda: answer.rstrip().endswith(str(value)),
        "starts_with": lambda: answer.lstrip().startswith(str(value)),
        "json": lambda: isinstance(json.loads(answer), dict),
        "boxed": lambda: verifiers.extract_boxed(answer) is not None,
    }
    if kind not in checks:
        raise ValueError(f"unknown instruction constraint {kind!r}; known: {', '.join(checks)}")
    try:
        return bool(checks[kind]())
    except json.JSONDecodeError:
        return False


def instruction_reward(record: dict, response: str) -> float:
    constraints = record.get("constraints") or []
    if not constraints:
        return 0.0
    answer = verifiers.split_thinking(response)[1]
    return sum(_constraint_ok(c, answer) for c in constraints) / len(constraints)


class RewardModelScorer:
    """Scores (prompt, response) with a reward model: the head row's logit at the last token."""

    def __init__(self, path: str, tokenizer, device, vocab_size: int):
        from qwen3_trainer.platform.posttrain.losses import check_vocab
        from qwen3_trainer.platform.posttrain.rollouts import frozen_model

        self.model = frozen_model(path, device)
        check_vocab(vocab_size, self.model.model_args.vocab_size, f"reward model {path}")
        self.tokenizer, self.device = tokenizer, device

    @torch.no_grad()
    def __call__(self, records: list[dict], responses: list[str], _thinking) -> list[float]:
        seqs = [score_ids(self.tokenizer, r["prompt"], resp) for r, resp in zip(records, responses, strict=True)]
        return [float(s) for s in reward_scores(self.model, seqs, self.tokenizer.pad, self.device)]


def score_ids(tokenizer, prompt: list[dict], response: str) -> list[int]:
    """Ids the reward model reads: the dialog with the response as the final assistant turn."""
    from qwen3_trainer.model.chat_template import apply_chat_template

    return tokenizer.encode(apply_chat_template([*prompt, {"role": "assistant", "content": response}]))


def reward_scores(model, seqs: list[list[int]], pad_id: int, device, batch: int = 16) -> torch.Tensor:
    """Scalar reward per sequence: the head row's logit at each sequence's last real token."""
    out = []
    for i in range(0, len(seqs), batch):
        chunk = seqs[i: i + batch]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, : len(s)] = torch.tensor(s)
        logits = model(ids.to(device))
        last = torch.tensor([len(s) - 1 for s in chunk], device=logits.device)
        out.append(logits[torch.arange(len(chunk), device=logits.device), last, REWARD_HEAD_ID].float().cpu())
    return torch.cat(out)


JUDGE_PROMPT = ("Question: {question}\nReference answer: {reference}\nResponse: {response}\n"
                "Does the response give the reference answer? Reply yes or no. /no_think")


class JudgeScorer:
    """A generative judge with a reference answer: p(yes) among {yes, no} as the next token."""

    def __init__(self, path: str, tokenizer, device, vocab_size: int):
        from qwen3_trainer.platform.posttrain.losses import check_vocab
        from qwen3_trainer.platform.posttrain.rollouts import frozen_model

        self.model = frozen_model(path, device)
        check_vocab(vocab_size, self.model.model_args.vocab_size, f"judge model {path}")
        self.tokenizer, self.device = tokenizer, device
        self.yes, self.no = tokenizer.encode("yes")[0], tokenizer.encode("no")[0]

    @torch.no_grad()
    def __call__(self, records: list[dict], responses: list[str], _thinking) -> list[float]:
        from qwen3_trainer.model.chat_template import apply_chat_template

        scores = []
        for rec, resp in zip(records, responses, strict=True):
            question = rec.get("question") or rec["prompt"][-1]["content"]
            text = JUDGE_PROMPT.format(question=question, reference=rec["answer"],
                                       response=verifiers.split_thinking(resp)[1])
            ids = self.tokenizer.encode(apply_chat_template([{"role": "user", "content": text}],
                                                            add_generation_prompt=True))
            logits = self.model(torch.tensor([ids], device=self.device))[0, -1].float()
            pair = torch.stack([logits[self.yes], logits[self.no]]).softmax(0)
            scores.append(float(pair[0]))
        return scores


class RewardFunction:
    """The weighted sum of the spec's components; per-component means and error counts are kept."""

    def __init__(self, spec: list[dict[str, Any]], *, tokenizer=None, device="cpu", vocab_size: int | None = None):
        if not spec:
            raise ValueError("rewards: the spec lists no reward components")
        self.parts: list[tuple[str, float, Any]] = []
        for item in spec:
            name, weight, params = item["name"], float(item.get("weight", 1.0)), dict(item.get("params", {}))
            self.parts.append((name, weight, self._build(name, params, tokenizer, device, vocab_size)))
        self.last: dict[str, float] = {}

    @staticmethod
    def _build(name, params, tokenizer, device, vocab_size):
        if name == "math":
            return SafeReward(lambda rec, resp, think: verifiers.math_reward(resp, rec["answer"], **params), name)
        if name == "format":
            return SafeReward(lambda rec, resp, think: verifiers.format_reward(resp, think), name)
        if name == "instruction":
            return SafeReward(lambda rec, resp, think: instruction_reward(rec, resp), name)
        if name in ("reward_model", "judge"):
            if "path" not in params:
                raise ValueError(f"rewards: {name} needs params.path (a checkpoint)")
            cls = RewardModelScorer if name == "reward_model" else JudgeScorer
            return cls(params["path"], tokenizer, device, vocab_size)
        raise ValueError(f"rewards: unknown component {name!r}; known: math, format, instruction, "
                         f"reward_model, judge")

    def __call__(self, records: list[dict], responses: list[str], thinking: list[bool]) -> list[float]:
        total = [0.0] * len(responses)
        self.last = {}
        for name, weight, fn in self.parts:
            if isinstance(fn, SafeReward):
                values = [fn(rec, resp, th) for rec, resp, th in zip(records, responses, thinking, strict=True)]
            else:
                values = fn(records, responses, thinking)
            self.last[f"reward/{name}"] = sum(values) / max(len(values), 1)
            total = [t + weight * v for t, v in zip(total, values, strict=True)]
        return total

    @property
    def error_count(self) -> int:
        return sum(fn.error_count for _, _, fn in self.parts if isinstance(fn, SafeReward))
