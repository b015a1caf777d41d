"""Rewards for GRPO, built from a spec in the objective's params (general RL, RECIPE.md §Post-training 4).

    rewards: [{name: math, weight: 1.0}, {name: format, weight: 0.2},
              {name: instruction, weight: 0.5},
              {name: reward_model, weight: 1.0, model: runs/rm/hf},
              {name: judge, weight: 1.0, model: runs/judge/hf, params: {batch: 16}}]

Rule-based: ``math`` (boxed answer equivalent to the record's ``answer``: verifiers.math_equal,
math-verify past the fast paths), ``format`` (think block and boxed answer; empty block iff
non-thinking), ``instruction`` (the fraction of the record's ``constraints`` met by the answer:
``max_words``, ``min_words``, ``include``, ``exclude``, ``lowercase``, ``ends_with``,
``starts_with``, ``json``, ``boxed``).
Model-based, each scoring a batch of responses per forward (``params.batch`` rows, default 16):
``reward_model`` (a Qwen3 backbone whose scalar head is one output row, trained with objective
``reward_model``; no reference answer) and ``judge`` (a generative Qwen3 asked whether the response
gives the record's reference ``answer``, or, for a record without one, whether it is correct; the
reward is p(yes) / (p(yes) + p(no)) at the next token). The checkpoint is ``model`` (or
``params.path``): a HF directory or DCP checkpoint, local or s3://. Inside a training job the model
is the trainer's (``load_model=Trainer.load_frozen``: sharded like the policy), so scoring is
collective: every rank runs as many forwards as the busiest one (``last_token_logits``).

``check_spec`` validates a spec without loading anything (names, keys, types), so an objective can
reject a bad one at construction. Every rule component is wrapped in ``SafeReward``: one that raises
scores 0 and is counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from qwen3_trainer.platform.posttrain import verifiers
from qwen3_trainer.platform.posttrain.verifiers import SafeReward

REWARD_HEAD_ID = 151935  # the last padding row of Qwen3's 151,936-row vocabulary: never an input id
VISION_PAD_ID = 151654   # <|vision_pad|>: a vision placeholder that text never contains


def reward_head_id(vocab_size: int) -> int:
    """The output row a reward model's scalar comes from: the last padding row of the full vocabulary,
    or ``<|vision_pad|>``'s row in a vocabulary cut to the tokenizer (the miniature's 151,669 rows)."""
    if vocab_size > REWARD_HEAD_ID:
        return REWARD_HEAD_ID
    if vocab_size <= VISION_PAD_ID:
        raise ValueError(f"reward_model: the vocabulary has {vocab_size} rows; the scalar head needs row "
                         f"{REWARD_HEAD_ID} (or {VISION_PAD_ID}); use the Qwen3 vocabulary")
    return VISION_PAD_ID


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


def _load(path: str, device, load_model):
    if load_model is not None:
        return load_model(path)
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    return frozen_model(path, device)


class RewardModelScorer:
    """Scores (prompt, response) with a reward model: the head row's logit at the last token."""

    def __init__(self, path: str, tokenizer, device, vocab_size: int, batch: int = 16, *, load_model=None,
                 seq_multiple: int = 1):
        from qwen3_trainer.platform.posttrain.losses import check_vocab

        self.model = _load(path, device, load_model)
        check_vocab(vocab_size, self.model.model_args.vocab_size, f"reward model {path}")
        self.tokenizer, self.device, self.batch, self.multiple = tokenizer, device, batch, seq_multiple

    @torch.no_grad()
    def __call__(self, records: list[dict], responses: list[str], _thinking) -> list[float]:
        seqs = [score_ids(self.tokenizer, r["prompt"], resp) for r, resp in zip(records, responses, strict=True)]
        return [float(s) for s in reward_scores(self.model, seqs, self.tokenizer.pad, self.device, self.batch,
                                                multiple_of=self.multiple)]


def score_ids(tokenizer, prompt: list[dict], response: str) -> list[int]:
    """Ids the reward model reads: the dialog with the response as the final assistant turn."""
    from qwen3_trainer.model.chat_template import apply_chat_template

    return tokenizer.encode(apply_chat_template([*prompt, {"role": "assistant", "content": response}]))


def _busiest(n: int, device) -> int:
    """``n``'s maximum over every rank (``n`` itself outside a process group of several ranks)."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return n
    t = torch.tensor([n], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def last_token_logits(model, seqs: list[list[int]], pad_id: int, device, rows: list[int],
                      batch: int = 16, *, multiple_of: int = 1) -> torch.Tensor:
    """[len(seqs), len(rows)]: the logits of vocabulary ``rows`` at each sequence's last real token,
    ``batch`` right-padded sequences per forward (causal attention: the padding after a sequence's
    last token does not change it; widths padded to a multiple of ``multiple_of``, the sequence-parallel
    degree). A sharded model's forward is a collective: this rank runs as many forwards as the busiest
    rank (the extra ones on one row of padding, their logits dropped)."""
    out = []
    chunks = [seqs[i: i + batch] for i in range(0, len(seqs), batch)]
    extra = _busiest(len(chunks), device) - len(chunks)
    for chunk in chunks + [[[pad_id]]] * extra:
        width = max(map(len, chunk))
        width += -width % multiple_of
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        for j, s in enumerate(chunk):
            ids[j, : len(s)] = torch.tensor(s)
        logits = model(ids.to(device))
        last = torch.tensor([len(s) - 1 for s in chunk], device=logits.device)
        picked = logits[torch.arange(len(chunk), device=logits.device), last]
        out.append(picked[:, torch.tensor(rows, device=logits.device)].float().cpu())
    return torch.cat(out[: len(chunks)]) if chunks else torch.zeros((0, len(rows)))


def reward_scores(model, seqs: list[list[int]], pad_id: int, device, batch: int = 16, *,
                  multiple_of: int = 1) -> torch.Tensor:
    """Scalar reward per sequence: the head row's logit at each sequence's last real token."""
    row = reward_head_id(model.model_args.vocab_size)
    return last_token_logits(model, seqs, pad_id, device, [row], batch, multiple_of=multiple_of)[:, 0]


JUDGE_PROMPT = ("Question: {question}\nReference answer: {reference}\nResponse: {response}\n"
                "Does the response give the reference answer? Reply yes or no. /no_think")
JUDGE_PROMPT_NO_REFERENCE = ("Question: {question}\nResponse: {response}\n"
                             "Is the response correct? Reply yes or no. /no_think")


class JudgeScorer:
    """A generative judge: p(yes) among {yes, no} as the next token, ``batch`` responses per forward."""

    def __init__(self, path: str, tokenizer, device, vocab_size: int, batch: int = 16, *, load_model=None,
                 seq_multiple: int = 1):
        from qwen3_trainer.platform.posttrain.losses import check_vocab

        self.model = _load(path, device, load_model)
        check_vocab(vocab_size, self.model.model_args.vocab_size, f"judge model {path}")
        self.tokenizer, self.device, self.batch, self.multiple = tokenizer, device, batch, seq_multiple
        self.yes, self.no = tokenizer.encode("yes")[0], tokenizer.encode("no")[0]

    def prompt_ids(self, record: dict, response: str) -> list[int]:
        from qwen3_trainer.model.chat_template import apply_chat_template

        question = record.get("question") or record["prompt"][-1]["content"]
        answer = verifiers.split_thinking(response)[1]
        reference = record.get("answer")
        text = (JUDGE_PROMPT_NO_REFERENCE.format(question=question, response=answer) if reference is None
                else JUDGE_PROMPT.format(question=question, reference=reference, response=answer))
        return self.tokenizer.encode(apply_chat_template([{"role": "user", "content": text}],
                                                         add_generation_prompt=True))

    @torch.no_grad()
    def __call__(self, records: list[dict], responses: list[str], _thinking) -> list[float]:
        seqs = [self.prompt_ids(rec, resp) for rec, resp in zip(records, responses, strict=True)]
        pair = last_token_logits(self.model, seqs, self.tokenizer.pad, self.device, [self.yes, self.no],
                                 self.batch, multiple_of=self.multiple)
        return pair.softmax(-1)[:, 0].tolist()


RULES = ("math", "format", "instruction")
MODELS = ("reward_model", "judge")
_MODEL_PARAMS = {"path", "batch"}  # the checkpoint (or the entry's `model`), responses per forward


def check_spec(spec, where: str = "rewards") -> None:
    """One-line ValueError naming the first bad entry of a reward spec; loads nothing."""
    if not isinstance(spec, list) or not spec:
        raise ValueError(f"{where}: the spec lists no reward components")
    for i, item in enumerate(spec):
        key = f"{where}[{i}]"
        if not isinstance(item, dict) or "name" not in item:
            raise ValueError(f"{key}: a component is a mapping with a name, got {item!r}")
        name = item["name"]
        if name not in RULES + MODELS:
            raise ValueError(f"{key}.name: unknown component {name!r}; known: {', '.join(RULES + MODELS)}")
        unknown = set(item) - {"name", "weight", "params", "model"}
        if unknown:
            raise ValueError(f"{key}: unknown key {sorted(unknown)[0]!r} (name, weight, params, model)")
        weight = item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            raise ValueError(f"{key}.weight: must be a number, got {weight!r}")
        params = item.get("params", {})
        if not isinstance(params, dict):
            raise ValueError(f"{key}.params: must be a mapping, got {params!r}")
        if name in MODELS:
            if not (item.get("model") or params.get("path")):
                raise ValueError(f"{key}: {name} needs model (or params.path): a checkpoint")
            extra = set(params) - _MODEL_PARAMS
            if extra:
                raise ValueError(f"{key}.params: unknown key {sorted(extra)[0]!r} (path, batch)")
            batch = params.get("batch", 16)
            if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
                raise ValueError(f"{key}.params.batch: must be an integer >= 1, got {batch!r}")
        elif name == "math":
            extra = set(params) - {"rel_tol", "abs_tol"}
            if extra:
                raise ValueError(f"{key}.params: unknown key {sorted(extra)[0]!r} (rel_tol, abs_tol)")
        elif params:
            raise ValueError(f"{key}.params: {name} takes no params, got {sorted(params)}")


class RewardFunction:
    """The weighted sum of the spec's components; per-component means and error counts are kept."""

    def __init__(self, spec: list[dict[str, Any]], *, tokenizer=None, device="cpu", vocab_size: int | None = None,
                 load_model=None, seq_multiple: int = 1):
        """``load_model``: path -> frozen model (``Trainer.load_frozen`` in a job; default: one device,
        unsharded); ``seq_multiple``: the width multiple its forwards need (``Trainer.seq_multiple``)."""
        check_spec(spec)
        self.parts: list[tuple[str, float, Any]] = []
        placing = {"load_model": load_model, "seq_multiple": seq_multiple}
        for item in spec:
            name, weight, params = item["name"], float(item.get("weight", 1.0)), dict(item.get("params", {}))
            if item.get("model"):
                params["path"] = item["model"]
            self.parts.append((name, weight, self._build(name, params, tokenizer, device, vocab_size, placing)))
        self.last: dict[str, float] = {}

    @staticmethod
    def _build(name, params, tokenizer, device, vocab_size, placing):
        if name == "math":
            return SafeReward(lambda rec, resp, think: verifiers.math_reward(resp, rec["answer"], **params), name)
        if name == "format":
            return SafeReward(lambda rec, resp, think: verifiers.format_reward(resp, think), name)
        if name == "instruction":
            return SafeReward(lambda rec, resp, think: instruction_reward(rec, resp), name)
        cls = RewardModelScorer if name == "reward_model" else JudgeScorer
        return cls(params["path"], tokenizer, device, vocab_size, params.get("batch", 16), **placing)

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
