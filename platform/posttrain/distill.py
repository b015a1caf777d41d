"""Strong-to-weak distillation (RECIPE.md §Post-training, report §4.5): off-policy, then on-policy.

``distill_offpolicy`` (loader-driven, ``data.kind: sft``): the student learns the teacher's responses
in both modes (prepared by ``teacher_responses``). ``mode: kl`` minimises KL(teacher || student) over
the full vocabulary at every response token (the teacher's logits are computed on the fly);
``mode: sft`` is plain cross-entropy on the teacher's tokens. With ``teacher_cache`` (a cache written by
``qtrain posttrain teacher-cache``, platform/posttrain/teacher_cache.py) instead of ``teacher``, no
teacher is loaded: the objective draws its samples from the cache and minimises the top-k forward KL
to the cached log-probs (``topk_tail``: with the tail bucket); ``distill_onpolicy``'s off-policy phase
takes ``teacher_cache`` the same way (written at temperature 1, checked against ``offpolicy_data``).

``distill_onpolicy`` (drives its own loop): the student samples responses to prompts flagged
``/think`` or ``/no_think`` (``think_ratio``; ``temperature`` / ``top_p`` set the sampling), and
minimises the per-token reverse KL KL(student || teacher) over the full vocabulary at each sampled
position. ``teacher_temperature`` τ sharpens (τ < 1) the target: the teacher's distribution is
softmax(teacher logits / τ), the student's is taken at temperature 1; τ = 1 (the default) is the plain
reverse KL. A τ below 1 targets the teacher's lower-temperature policy, the one evaluated when the
student is sampled at T < 1 or greedily (as SFT on the teacher's greedy responses does).

With ``offpolicy_data`` and ``offpolicy_steps`` it first runs that many off-policy steps
on the teacher's responses (``offpolicy_mode``: ``kl`` = forward KL to the teacher's logits, ``sft`` =
cross-entropy on its tokens), so one job does the report's two phases in order.

The teacher is a frozen checkpoint (HF or DCP), built from its own config.json and placed like the
student (``Trainer.load_frozen``: the same TP/EP, FSDP over the data-parallel ranks, the compute
dtype); it may be larger than the student but must share its vocabulary (a mismatch is a one-line
error). Its forwards are collectives: the trainer gives every rank as many micro-batches.

    objective: {name: distill_onpolicy, params: {teacher: runs/T4/hf, prompts: data/prompts.jsonl,
                offpolicy_data: data/teacher.jsonl, offpolicy_steps: 20, think_ratio: 0.5}}
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import Annotated, Literal

import torch
from pydantic import ConfigDict, Field, validate_call

from qwen3_trainer.platform.posttrain import losses
from qwen3_trainer.platform.posttrain.grpo import _block, one_line_params_error
from qwen3_trainer.platform.posttrain.losses import IGNORE
from qwen3_trainer.platform.train.objectives import BatchProducer

log = logging.getLogger("qwen3_trainer.posttrain")


def _teacher_logits(ctx, path: str, student_logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The teacher's logits on ``input_ids``; loaded on first use by the trainer (``ctx.load_frozen``:
    sharded like the student, in the compute dtype; its forward is then a collective) or, outside a
    trainer, on the student's device."""
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    if ctx.reference is None:
        ctx.reference = (ctx.load_frozen(path) if ctx.load_frozen is not None
                         else frozen_model(path, student_logits.device))
        losses.check_vocab(student_logits.shape[-1], ctx.reference.model_args.vocab_size, f"teacher {path}")
    with torch.no_grad():
        return ctx.reference(input_ids)


class DistillOffPolicy:
    """Off-policy distillation on the teacher's responses: loader-driven with a live ``teacher``; with
    ``teacher_cache`` (``platform.posttrain.teacher_cache``) no teacher is loaded and the objective is a
    ``CachedDistillOffPolicy``, drawing its batches from the cache (which holds the samples)."""

    name = "distill_offpolicy"
    needs_reference = True

    def __new__(cls, *args, teacher_cache: str | None = None, **kwargs):
        # the cache is the data (samples + the teacher's top-k): that objective brings its own batches
        return super().__new__(CachedDistillOffPolicy if teacher_cache is not None and cls is DistillOffPolicy
                               else cls)

    @one_line_params_error("distill_offpolicy")
    @validate_call(config=ConfigDict(strict=True))
    def __init__(self, teacher: str | None = None, *, mode: Literal["kl", "sft"] = "kl",
                 temperature: Annotated[float, Field(gt=0)] = 1.0, teacher_cache: str | None = None,
                 topk_tail: bool = False, logprob_chunk: Annotated[int, Field(ge=1)] = losses.CHUNK_ROWS,
                 seed: int = 0):
        if teacher and teacher_cache:
            raise ValueError("distill_offpolicy: give params.teacher (a live teacher) or params.teacher_cache, "
                             "not both")
        if mode == "kl" and not (teacher or teacher_cache):
            raise ValueError("distill_offpolicy: mode 'kl' needs params.teacher (a checkpoint) or "
                             "params.teacher_cache (its cached top-k)")
        self.teacher, self.mode, self.temperature = teacher, mode, temperature
        self.topk_tail, self.logprob_chunk, self.seed = topk_tail, logprob_chunk, seed
        self.cache = _open_cache("distill_offpolicy", teacher_cache, temperature) if teacher_cache else None

    def loss_tokens(self, batch):
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, logits, batch, normalizer, ctx):
        labels = batch["labels"]
        mask = labels != IGNORE
        if self.mode == "sft":
            per_tok = -losses.token_logprobs(logits, labels)
        elif self.cache is not None:  # the teacher's top-k from the cache
            from qwen3_trainer.platform.posttrain.teacher_cache import topk_forward_kl

            per_tok = topk_forward_kl(logits, mask, batch["topk_ids"], batch["topk_logprobs"],
                                      temperature=self.temperature, chunk=self.logprob_chunk,
                                      tail_logprob=batch["topk_tail"] if self.topk_tail else None)
        else:
            teacher = _teacher_logits(ctx, self.teacher, logits, batch["input_ids"])
            per_tok = losses.forward_kl(logits, teacher, mask, self.temperature)
        total = per_tok.sum()
        return total / normalizer, {"kl_sum" if self.mode == "kl" else "ce_sum": float(total.detach()),
                                    "tokens": float(mask.sum())}


class CachedDistillOffPolicy(DistillOffPolicy, BatchProducer):
    """``distill_offpolicy`` from a teacher cache: each step draws ``micro_batch_size x grad_accum x dp``
    of the cache's samples (seeded by the step: resumable, layout-independent), one per row."""

    def start(self, trainer) -> None:
        from qwen3_trainer.model.tokenizer import load_tokenizer

        if trainer.cfg.data is not None:
            raise ValueError("distill_offpolicy: params.teacher_cache holds the samples; remove the data section "
                             "(it would not be read)")
        _check_cache_vocab("distill_offpolicy", self.cache, trainer.model_args.vocab_size)
        self.pad = load_tokenizer().pad

    def steps(self, trainer):
        from qwen3_trainer.platform.posttrain.teacher_cache import topk_batches

        t = trainer.cfg.training
        while True:
            rng = random.Random(self.seed * 1_000_003 + trainer.step)
            picked = [rng.randrange(len(self.cache)) for _ in range(t.micro_batch_size * t.grad_accum * trainer.dp_world)]
            yield topk_batches(self.cache, picked[trainer.dp_rank:: trainer.dp_world], micro_batch_size=t.micro_batch_size,
                               pad_id=self.pad, max_len=t.seq_len), {}

    def step_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        m = dict(metrics)
        tokens = m.get("objective/tokens", 0.0) or 1.0
        for key in ("kl", "ce"):
            if f"objective/{key}_sum" in m:
                m[key] = m[f"objective/{key}_sum"] / tokens
        return m


def _open_cache(objective: str, path: str, temperature: float):
    """The teacher cache at ``path``, its manifest checked against the loss's temperature (one line)."""
    from qwen3_trainer.platform.posttrain.teacher_cache import CacheError, TeacherCache

    try:
        cache = TeacherCache(path)
        cache.check(temperature=temperature)
    except CacheError as exc:
        raise ValueError(f"{objective}: params.teacher_cache: {exc}") from None
    return cache


def _check_cache_vocab(objective: str, cache, vocab_size: int) -> None:
    from qwen3_trainer.platform.posttrain.teacher_cache import CacheError

    try:
        cache.check(vocab_size=vocab_size)
    except CacheError as exc:
        raise ValueError(f"{objective}: params.teacher_cache: {exc}") from None


def _offpolicy_samples(objective, tokenizer, seq_len: int, vocab_size: int):
    """``distill_onpolicy``'s off-policy samples: its teacher cache (checked against the student and, when
    ``offpolicy_data`` is given too, against exactly that data), else the rendered ``offpolicy_data``."""
    from qwen3_trainer.platform.posttrain.teacher_cache import CacheError

    if objective.cache is None:
        return load_sft_samples(objective.offpolicy_data, tokenizer, seq_len)
    _check_cache_vocab("distill_onpolicy", objective.cache, vocab_size)
    if objective.offpolicy_data:
        try:
            objective.cache.check_data(load_sft_samples(objective.offpolicy_data, tokenizer, seq_len), seq_len,
                                       "params.offpolicy_data")
        except CacheError as exc:
            raise ValueError(f"distill_onpolicy: params.teacher_cache: {exc}") from None
    return objective.cache


def with_flag(prompt: list[dict], flag: str) -> list[dict]:
    """The prompt with ``flag`` appended to its last user turn (the last flag wins)."""
    out = [dict(m) for m in prompt]
    for m in reversed(out):
        if m["role"] == "user":
            m["content"] = m["content"].rstrip() + " " + flag
            break
    return out


def load_sft_samples(paths, tokenizer, max_len: int) -> list[tuple[list[int], list[bool]]]:
    """Rendered (ids, loss mask) of chat records; malformed ones skipped with a counted warning."""
    from qwen3_trainer.model.chat_template import render_for_training
    from qwen3_trainer.platform.data.synthetic import read_records
    from qwen3_trainer.platform.posttrain.verifiers import think_tags_balanced

    out, bad = [], Counter()
    for rec in read_records(paths):
        msgs = rec.get("messages")
        try:
            last = msgs[-1]
            if last.get("role") != "assistant":
                raise ValueError("no final assistant turn")
            if not think_tags_balanced(last.get("content") or ""):
                bad["unbalanced think tags"] += 1
                continue
            ids, mask = render_for_training(msgs, tokenizer)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError):
            bad["no assistant turn / malformed"] += 1
            continue
        out.append((ids[: max_len + 1], [bool(x) for x in mask[: max_len + 1]]))
    if bad:
        log.warning("skipped %d malformed chat records (%s)", sum(bad.values()), dict(bad))
    if not out:
        raise ValueError(f"no usable chat records in {paths}")
    return out


class DistillOnPolicy(BatchProducer):
    name = "distill_onpolicy"
    needs_reference = True

    @one_line_params_error("distill_onpolicy")
    @validate_call(config=ConfigDict(strict=True))
    def __init__(self, teacher: str, prompts: str | list[str], *, offpolicy_data: str | list[str] | None = None,
                 offpolicy_steps: Annotated[int, Field(ge=0)] = 0, offpolicy_mode: Literal["kl", "sft"] = "kl",
                 think_ratio: Annotated[float, Field(ge=0, le=1)] = 0.5,
                 samples_per_prompt: Annotated[int, Field(ge=1)] = 1, prompts_per_step: Annotated[int, Field(ge=1)] = 8,
                 max_new_tokens: Annotated[int, Field(ge=1)] = 64, temperature: Annotated[float, Field(gt=0)] = 1.0,
                 top_p: Annotated[float, Field(gt=0, le=1)] = 1.0, eval_queries: str | list[str] | None = None,
                 eval_size: Annotated[int, Field(ge=0)] = 64, seed: int = 0,
                 teacher_temperature: Annotated[float, Field(gt=0)] = 1.0, teacher_cache: str | None = None,
                 rollout_kv_dtype: Literal["auto", "float8_e4m3fn"] = "auto"):
        if offpolicy_steps and not (offpolicy_data or teacher_cache):
            raise ValueError("distill_onpolicy: params.offpolicy_steps needs params.offpolicy_data "
                             "(or params.teacher_cache)")
        # the off-policy phase's forward KL is at temperature 1: so must the cached teacher be
        self.cache = _open_cache("distill_onpolicy", teacher_cache, 1.0) if teacher_cache else None
        self.teacher_temperature = float(teacher_temperature)
        # the student's rollout engine: its KV cache in fp8 (model/kv_cache.py), or the model's dtype
        self.engine_options = {} if rollout_kv_dtype == "auto" else {"kv_dtype": rollout_kv_dtype}
        self.offpolicy_mode = offpolicy_mode
        self.teacher, self.prompts = teacher, prompts
        self.offpolicy_data, self.offpolicy_steps = offpolicy_data, offpolicy_steps
        self.think_ratio, self.samples_per_prompt = think_ratio, samples_per_prompt
        self.prompts_per_step, self.max_new_tokens, self.temperature = prompts_per_step, max_new_tokens, temperature
        self.top_p = top_p
        self.eval_queries, self.eval_size, self.seed = eval_queries, eval_size, seed

    def loss_tokens(self, batch):
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, logits, batch, normalizer, ctx):
        mask = batch["labels"] != IGNORE
        if batch.get("kl") == "sft":  # off-policy phase, mode sft: cross-entropy on the teacher's tokens
            per_tok = -losses.token_logprobs(logits, batch["labels"])
        elif batch.get("kl") == "forward" and self.cache is not None:  # off-policy phase from the teacher cache
            from qwen3_trainer.platform.posttrain.teacher_cache import topk_forward_kl

            per_tok = topk_forward_kl(logits, mask, batch["topk_ids"], batch["topk_logprobs"])
        else:
            teacher = _teacher_logits(ctx, self.teacher, logits, batch["input_ids"])
            if batch.get("kl") == "reverse":  # on-policy phase: the target is the teacher at temperature τ
                per_tok = losses.reverse_kl(logits, teacher.float() / self.teacher_temperature, mask)
            else:
                per_tok = losses.forward_kl(logits, teacher, mask)
        total = per_tok.sum()
        key = "ce_sum" if batch.get("kl") == "sft" else "kl_sum"
        return total / normalizer, {key: float(total.detach()), "tokens": float(mask.sum())}

    # -- the loop (Trainer.fit asks for each step's batches) -------------------------------------
    def start(self, trainer) -> None:
        from qwen3_trainer.model.tokenizer import load_tokenizer
        from qwen3_trainer.platform.posttrain import rollouts
        from qwen3_trainer.platform.posttrain.grpo import load_queries

        self.tok = load_tokenizer()
        seq_len = trainer.cfg.training.seq_len
        if self.prompts_per_step < trainer.dp_world:
            raise ValueError(f"distill_onpolicy: prompts_per_step={self.prompts_per_step} leaves some of the "
                             f"{trainer.dp_world} data-parallel ranks without a prompt")
        trainer.load_reference(self.teacher)  # sharded like the student (Trainer.load_frozen)
        losses.check_vocab(trainer.model_args.vocab_size, trainer.ctx.reference.model_args.vocab_size,
                           f"teacher {self.teacher}")
        self.train_prompts = load_queries(self.prompts, "prompts")
        self.held = load_queries(self.eval_queries, "eval_queries")[: self.eval_size] if self.eval_queries else []
        self.offline = (_offpolicy_samples(self, self.tok, seq_len, trainer.model_args.vocab_size)
                        if self.offpolicy_steps else [])
        self.policy_engine = rollouts.PolicyEngine(trainer, self.tok, engine_options=self.engine_options)
        self.evaluate(trainer)

    def steps(self, trainer):
        """The off-policy phase's steps (teacher responses), then on-policy steps (the student's samples)."""
        from qwen3_trainer.model.generation import SamplingParams
        from qwen3_trainer.platform.posttrain import rollouts

        cfg, tok = trainer.cfg, self.tok
        seq_len, mb, accum = cfg.training.seq_len, cfg.training.micro_batch_size, cfg.training.grad_accum
        while True:
            rng = random.Random(self.seed * 1_000_003 + trainer.step)  # a function of the step: resumable
            if trainer.step < self.offpolicy_steps:
                n = mb * accum * trainer.dp_world
                picked = [rng.randrange(len(self.offline)) for _ in range(n)]
                mine = picked[trainer.dp_rank:: trainer.dp_world]
                if self.cache is not None:  # the samples with the teacher's top-k
                    from qwen3_trainer.platform.posttrain.teacher_cache import topk_batches

                    batches = topk_batches(self.cache, mine, micro_batch_size=mb, pad_id=tok.pad, max_len=seq_len)
                else:
                    rows = [self.offline[i] for i in mine]
                    batches = rollouts.sequences_to_batches([[] for _ in rows], [ids for ids, _ in rows],
                                                            [m for _, m in rows], micro_batch_size=mb,
                                                            pad_id=tok.pad, max_len=seq_len)
                phase = {"phase/offpolicy": 1.0}
                for b in batches:
                    b["kl"] = "forward" if self.offpolicy_mode == "kl" else "sft"
            else:
                self.policy_engine.sync(trainer)
                picked = [self.train_prompts[rng.randrange(len(self.train_prompts))]
                          for _ in range(self.prompts_per_step)]
                modes = ["/think" if rng.random() < self.think_ratio else "/no_think" for _ in picked]
                lo, hi = _block(len(picked), trainer.dp_rank, trainer.dp_world)  # rows lo*S.. of the step
                flagged = [with_flag(q["prompt"], flag) for q, flag in zip(picked[lo:hi], modes[lo:hi], strict=True)
                           for _ in range(self.samples_per_prompt)]
                p_ids = [rollouts.prompt_ids(tok, p) for p in flagged]
                room = seq_len + 1 - max(map(len, p_ids))
                out = self.policy_engine.generate(p_ids, SamplingParams(
                    max_new_tokens=max(1, min(self.max_new_tokens, room)), temperature=self.temperature,
                    top_p=self.top_p, seed=self.seed + 7919 * trainer.step,
                    row_offset=lo * self.samples_per_prompt))  # layout-independent; TP/CP peers: same rollouts
                masks = [[not f for f in forced] for forced in out.forced]
                batches = rollouts.sequences_to_batches(p_ids, out.tokens, masks, micro_batch_size=mb,
                                                        pad_id=tok.pad, max_len=seq_len)
                for b in batches:
                    b["kl"] = "reverse"
                phase = {"phase/offpolicy": 0.0, "rollout/response_tokens": sum(out.lengths) / len(out.lengths),
                         **self.policy_engine.round_metrics()}
            yield batches, phase

    def step_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        m = dict(metrics)
        tokens = m.pop("objective/tokens", 0.0) or 1.0
        for key in ("kl", "ce"):
            if f"objective/{key}_sum" in m:
                m[key] = m.pop(f"objective/{key}_sum") / tokens
        return m

    def end(self, trainer) -> None:
        self.evaluate(trainer)

    def evaluate(self, trainer) -> None:
        """Greedy held-out accuracy in both modes (the student must keep both)."""
        if not self.held:
            return
        from qwen3_trainer.platform.posttrain.grpo import evaluate_accuracy

        self.policy_engine.sync(trainer)
        metrics: dict[str, float] = {}
        for flag in ("/think", "/no_think"):
            recs = [{**r, "prompt": with_flag(r["prompt"], flag)} for r in self.held]
            got = evaluate_accuracy(self.policy_engine, self.tok, recs, max_new_tokens=self.max_new_tokens,
                                    seq_len=trainer.cfg.training.seq_len)
            mode = flag.strip("/")
            metrics.update({f"{k}_{mode}": v for k, v in got.items()})
        metrics["eval/accuracy"] = (metrics["eval/accuracy_think"] + metrics["eval/accuracy_no_think"]) / 2
        self.policy_engine.round_metrics()  # the evaluation's seconds are not a round's
        trainer.log(metrics)


def teacher_responses(teacher, tokenizer, records: list[dict], *, max_new_tokens: int, seq_len: int,
                      seed: int = 0, verify: bool = True, batch: int = 32) -> tuple[list[dict], Counter]:
    """Off-policy distillation data: the teacher answers every query in both modes (greedy);
    with ``verify``, wrong or badly formatted answers are dropped (counted)."""
    from qwen3_trainer.model.generation import LocalRolloutEngine, SamplingParams
    from qwen3_trainer.platform.posttrain import rollouts, verifiers

    engine = LocalRolloutEngine(teacher, tokenizer)
    out, stats = [], Counter()
    jobs = [(r, flag) for r in records for flag in ("/think", "/no_think")]
    for i in range(0, len(jobs), batch):
        chunk = jobs[i: i + batch]
        prompts = [with_flag(r["prompt"], flag) for r, flag in chunk]
        ids = [rollouts.prompt_ids(tokenizer, p) for p in prompts]
        room = seq_len + 1 - max(map(len, ids))
        gen = engine.generate(ids, SamplingParams(max_new_tokens=max(1, min(max_new_tokens, room)), seed=seed))
        for (rec, flag), prompt, toks in zip(chunk, prompts, gen.tokens, strict=True):
            text = rollouts.response_text(tokenizer, prompt, toks)
            thinking = flag == "/think"
            if verify and not (verifiers.math_reward(text, str(rec["answer"]))
                               and verifiers.format_ok(text, thinking)):
                stats["rejected"] += 1
                continue
            stats["kept"] += 1
            out.append({"messages": [*prompt, {"role": "assistant", "content": text}], "answer": rec["answer"],
                        "mode": flag.strip("/")})
    return out, stats
