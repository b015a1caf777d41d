"""Objective ``grpo``: reasoning / general RL with group-relative advantages (RECIPE.md §Post-training 2, 4).

Each rollout round: sync the policy's weights into the rollout engine, sample ``group_size``
responses for each of ``prompts_per_step`` queries (split over data-parallel ranks, whole groups per
rank), score them with the reward spec (rewards.py), turn rewards into group-normalised advantages,
record the sampling policy's log-probs (``old_logprobs``, recomputed with the training forward so
the first ratio is exactly 1) and, with ``kl_coef > 0``, the reference model's. Then ``ppo_epochs``
passes over the round's sequences in ``minibatches`` optimizer steps each (off-policy reuse: later
steps see ratios != 1 and the clip acts).

Loss per response token: PPO's clipped surrogate (``clip_low`` / ``clip_high``) + ``kl_coef`` x a KL
estimate to the reference (``kl_estimator`` k1 / k2 / k3) - ``entropy_coef`` x entropy, reduced by
``loss_agg`` (losses.aggregate: ``token-mean`` as in DAPO, ``seq-mean-token-mean`` as in GRPO's
paper, ``seq-mean-token-sum-norm`` as in Dr. GRPO) and divided by the trainer's normaliser. The
options verl and TRL users expect:

- every log-prob (old, reference, current) is of softmax(logits / ``temperature``), the distribution
  the engine sampled from, not of T = 1;
- ``kl_in_reward``: subtract ``kl_coef`` x the response's summed KL from its reward before the
  advantages, instead of a KL loss term;
- ``overlong_filter``: responses cut at ``max_new_tokens`` leave the loss (they still count in their
  group's advantages); ``overlong_buffer`` > 0: DAPO's soft punishment, a reward penalty growing
  linearly to ``-overlong_penalty`` over the last ``overlong_buffer`` tokens of the budget;
- ``dynamic_sampling`` (DAPO): groups whose rewards are all equal are dropped and refilled from
  further prompts, at most ``dynamic_sampling_rounds`` extra rounds; every rank then trains the same
  number of groups (the minimum over ranks), so sharded forwards stay in step;
- log-prob / entropy ``logprob_chunk`` token rows at a time (losses.token_stats): the full-vocabulary
  fp32 tensor is never held;
- ``free_engine_weights``: the rollout engine's weights are freed after each round's sampling and
  re-gathered by the next sync (rollouts.PolicyEngine), for a policy whose engine copy does not fit
  beside training;
- ``rollout_kv_dtype: float8_e4m3fn``: the local rollout engine's KV cache in fp8 (half the bytes its
  attention streams; ``model/kv_cache.py``), as vLLM's ``kv_cache_dtype=fp8``; ``auto``: the model's dtype.

The reference and any reward / judge model are the trainer's frozen models (``Trainer.load_frozen``):
sharded like the policy, in the compute dtype, so every rank runs the same number of their forwards.

Entropy, KL, clip fraction, reward parts, response lengths, verifier errors and the round's weight-sync
generation and log-prob seconds (``rollout/sync_s``, ``rollout/generate_s``, ``rollout/logprob_s``: the
old and reference log-prob passes) are logged; held-out
greedy accuracy (``eval_queries``) at the start, every ``eval_interval`` rounds and at the end.
Params are checked at construction (types, ranges, modes, reward names): a bad one is a one-line
ValueError naming it, before any model loads.

    objective:
      name: grpo
      params: {queries: data/queries.jsonl, eval_queries: data/heldout.jsonl, group_size: 8,
               prompts_per_step: 16, ppo_epochs: 2, max_new_tokens: 48, temperature: 1.0,
               kl_coef: 0.0, loss_agg: token-mean, overlong_buffer: 8, dynamic_sampling: true,
               rewards: [{name: math}, {name: format, weight: 0.1}]}
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Literal

import pydantic
import torch
from pydantic import ConfigDict, Field, validate_call

from qwen3_trainer.platform.posttrain import losses
from qwen3_trainer.platform.posttrain.losses import IGNORE
from qwen3_trainer.platform.train.objectives import BatchProducer

log = logging.getLogger("qwen3_trainer.posttrain")

_Pos = Annotated[int, Field(ge=1)]
_Count = Annotated[int, Field(ge=0)]
_Positive = Annotated[float, Field(gt=0)]
_NonNeg = Annotated[float, Field(ge=0)]
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]  # losses.LOSS_AGG
KLEstimator = Literal["k1", "k2", "k3"]  # losses.KL_ESTIMATORS


def query_prompt(rec: dict) -> list[dict] | None:
    """A query record's prompt turns (a chat record's without its replies), or None if malformed."""
    from qwen3_trainer.model.chat_template import validate_messages

    prompt = rec.get("prompt")
    if prompt is None and isinstance(rec.get("messages"), list):  # a chat record: drop its reply
        prompt = [m for m in rec["messages"] if m.get("role") != "assistant"]
    try:
        validate_messages(prompt)
        if prompt[-1]["role"] not in ("user", "system"):
            raise ValueError("the prompt must end with a user turn")
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return prompt


def load_queries(paths, what: str = "queries") -> list[dict]:
    """RL query records (``prompt`` turns + ``answer``); malformed ones skipped with a counted warning."""
    from qwen3_trainer.platform.data.synthetic import read_records

    good, bad = [], Counter()
    for rec in read_records(paths):
        prompt = query_prompt(rec)
        if prompt is None:
            bad["bad prompt"] += 1
            continue
        good.append({**rec, "prompt": prompt})
    if bad:
        log.warning("%s: skipped %d malformed records (%s)", what, sum(bad.values()), dict(bad))
    if not good:
        raise ValueError(f"{what}: no usable records in {paths}")
    return good


def one_line_params_error(objective: str):
    """Turn pydantic's multi-line ValidationError of a params call into one line naming the key."""

    def wrap(fn):
        @functools.wraps(fn)
        def checked(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except pydantic.ValidationError as exc:
                err = exc.errors()[0]
                key = ".".join(str(p) for p in err["loc"])
                more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
                got = f", got {err['input']!r}" if "input" in err else ""
                raise ValueError(f"{objective}: params.{key}: {err['msg']}{got}{more}") from None
        return checked

    return wrap


@dataclass
class Rollout:
    """One rank's sampled sequences, ``group_size`` consecutive rows per prompt."""

    records: list[dict]
    prompts: list[list[int]]
    tokens: list[list[int]]
    forced: list[list[bool]]
    truncated: list[bool]     # stopped by the token budget
    scores: list[float]       # reward (+ the overlong penalty)
    group_size: int

    @property
    def n_groups(self) -> int:
        return len(self.scores) // self.group_size

    def groups(self, keep) -> Rollout:
        rows = [g * self.group_size + j for g in keep for j in range(self.group_size)]
        return Rollout(*([getattr(self, f)[i] for i in rows] for f in
                         ("records", "prompts", "tokens", "forced", "truncated", "scores")), self.group_size)

    def __add__(self, other: Rollout) -> Rollout:
        return Rollout(*(getattr(self, f) + getattr(other, f) for f in
                         ("records", "prompts", "tokens", "forced", "truncated", "scores")), self.group_size)


def _block(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share [lo, hi) of ``n`` items (the first ``n % world`` ranks get one more)."""
    return n * rank // world, n * (rank + 1) // world


def _sum_over_ranks(trainer, values: list[float]) -> list[float]:
    """``values`` summed over every rank (one all-reduce), for metrics that mean the whole step."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=trainer.device)
    dist.all_reduce(t)
    return t.tolist()


def _agree(trainer, value: int, op: str) -> int:
    """``value``'s min or max over every rank: ranks sample different groups, yet must all train the
    same number of micro-batches (each forward of a sharded model is a collective)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], device=trainer.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.MAX)
    return int(t.item())


class GRPO(BatchProducer):
    name = "grpo"
    needs_reference = False

    @one_line_params_error("grpo")
    @validate_call(config=ConfigDict(strict=True))
    def __init__(self, queries: str | list[str], *, eval_queries: str | list[str] | None = None,
                 group_size: Annotated[int, Field(ge=2)] = 8, prompts_per_step: _Pos = 8,
                 ppo_epochs: _Pos = 1, minibatches: _Pos = 1, clip_low: _Positive = 0.2,
                 clip_high: _Positive = 0.28, kl_coef: _NonNeg = 0.0, kl_estimator: KLEstimator = "k3",
                 kl_in_reward: bool = False, reference: str | None = None, max_new_tokens: _Pos = 64,
                 temperature: _Positive = 1.0, top_p: Annotated[float, Field(gt=0, le=1)] = 1.0,
                 thinking_budget: _Pos | None = None, scale_advantages: bool = True,
                 loss_agg: LossAgg = "token-mean", entropy_coef: _NonNeg = 0.0,
                 overlong_filter: bool = False, overlong_buffer: _Count = 0, overlong_penalty: _NonNeg = 1.0,
                 dynamic_sampling: bool = False, dynamic_sampling_rounds: _Count = 2,
                 logprob_chunk: _Pos = losses.CHUNK_ROWS, rewards: list[dict] | None = None,
                 eval_interval: _Count = 0, eval_size: _Count = 64, eval_max_new_tokens: _Pos | None = None,
                 free_engine_weights: bool = False, rollout_kv_dtype: Literal["auto", "float8_e4m3fn"] = "auto",
                 seed: int = 0):
        from qwen3_trainer.platform.posttrain.rewards import check_spec

        if overlong_buffer > max_new_tokens:
            raise ValueError(f"grpo: params.overlong_buffer={overlong_buffer} exceeds "
                             f"max_new_tokens={max_new_tokens}")
        if kl_in_reward and kl_coef == 0:
            raise ValueError("grpo: params.kl_in_reward needs kl_coef > 0")
        self.queries, self.eval_queries = queries, eval_queries
        self.group_size, self.prompts_per_step = group_size, prompts_per_step
        self.ppo_epochs, self.minibatches = ppo_epochs, minibatches
        self.clip_low, self.clip_high, self.kl_coef = clip_low, clip_high, kl_coef
        self.kl_estimator, self.kl_in_reward = kl_estimator, kl_in_reward
        self.reference = reference
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.thinking_budget, self.scale_advantages = thinking_budget, scale_advantages
        self.loss_agg, self.entropy_coef = loss_agg, entropy_coef
        self.overlong_filter = overlong_filter
        self.overlong_buffer, self.overlong_penalty = overlong_buffer, overlong_penalty
        self.dynamic_sampling, self.dynamic_sampling_rounds = dynamic_sampling, dynamic_sampling_rounds
        self.logprob_chunk = logprob_chunk
        self.reward_spec = rewards or [{"name": "math"}]
        check_spec(self.reward_spec, "grpo: params.rewards")
        self.eval_interval, self.eval_size = eval_interval, eval_size
        self.eval_max_new_tokens = eval_max_new_tokens or max_new_tokens
        self.seed, self.free_engine_weights = seed, free_engine_weights
        self.engine_options = {} if rollout_kv_dtype == "auto" else {"kv_dtype": rollout_kv_dtype}
        self.engine = None  # set by a caller to use a remote engine (vLLM) instead of the local copy

    # -- the loss --------------------------------------------------------------------------------
    def loss_tokens(self, batch):
        return losses.loss_units(batch["labels"] != IGNORE, self.loss_agg)

    def loss(self, logits, batch, normalizer, ctx):
        labels = batch["labels"]
        mask = labels != IGNORE
        logp, ent = losses.token_stats(logits, labels, temperature=self.temperature, chunk=self.logprob_chunk)
        ent = ent * mask
        per_tok, ratio, clipped = losses.clipped_policy_loss(
            logp, batch["old_logprobs"], batch["advantages"], mask, self.clip_low, self.clip_high)
        metrics = {}
        if self.kl_coef > 0 and not self.kl_in_reward:
            kl = losses.kl_estimate(logp, batch["ref_logprobs"], self.kl_estimator) * mask
            per_tok = per_tok + self.kl_coef * kl
            metrics["kl_sum"] = kl.detach().sum()
        if self.entropy_coef > 0:
            per_tok = per_tok - self.entropy_coef * ent
        total = losses.aggregate(per_tok, mask, self.loss_agg, self.max_new_tokens)
        metrics.update({"entropy_sum": ent.detach().sum(), "clipped": clipped.sum(),
                        "ratio_sum": ratio.detach().sum(), "tokens": mask.sum()})
        return total / normalizer, metrics

    # -- the loop (Trainer.fit asks for each step's batches) -------------------------------------
    def start(self, trainer) -> None:
        from qwen3_trainer.model.tokenizer import load_tokenizer
        from qwen3_trainer.platform.posttrain import rollouts
        from qwen3_trainer.platform.posttrain.rewards import RewardFunction

        if self.prompts_per_step % trainer.dp_world:
            raise ValueError(f"grpo: prompts_per_step={self.prompts_per_step} must divide by the "
                             f"{trainer.dp_world} data-parallel ranks")
        self.tok = load_tokenizer()
        self.train_queries = load_queries(self.queries)
        self.held_out = (load_queries(self.eval_queries, "eval_queries")[: self.eval_size]
                         if self.eval_queries else [])
        self.reward = RewardFunction(self.reward_spec, tokenizer=self.tok, device=trainer.device,
                                     vocab_size=trainer.model_args.vocab_size, load_model=trainer.load_frozen,
                                     seq_multiple=trainer.seq_multiple)
        self.policy_engine = rollouts.PolicyEngine(trainer, self.tok, self.engine,
                                                   free_weights=self.free_engine_weights,
                                                   engine_options=self.engine_options)
        if self.kl_coef > 0:
            ref = self.reference or trainer.cfg.init.path
            if not ref:
                raise ValueError("grpo: kl_coef > 0 needs params.reference or init.path (the reference model)")
            trainer.load_reference(ref)
            losses.check_vocab(trainer.model_args.vocab_size, trainer.ctx.reference.model_args.vocab_size,
                               f"reference {ref}")
        self.evaluate(trainer)

    def steps(self, trainer):
        """Rollout rounds: each yields ``ppo_epochs`` x ``minibatches`` optimizer steps' batches."""
        round_ = 0
        while True:
            round_ += 1
            self.policy_engine.sync(trainer)
            ro, rollout_metrics = self._collect(trainer, self.policy_engine, self.tok, self.train_queries,
                                                self.reward)
            self.policy_engine.release_weights()
            t = time.perf_counter()
            batches = self._batches(trainer, self.tok, ro, rollout_metrics)
            rollout_metrics.update({"rollout/verifier_errors": float(self.reward.error_count),
                                    "rollout/round": float(round_), "rollout/logprob_s": time.perf_counter() - t,
                                    **self.policy_engine.round_metrics()})
            per_step = max(1, len(batches) // self.minibatches)
            for _ in range(self.ppo_epochs):
                for start in range(0, len(batches), per_step):
                    if trainer.step >= trainer.cfg.training.steps:
                        return
                    yield batches[start: start + per_step], rollout_metrics
            if self.eval_interval and round_ % self.eval_interval == 0 and trainer.step < trainer.cfg.training.steps:
                self.evaluate(trainer)

    def step_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        return _per_token(metrics)

    def end(self, trainer) -> None:
        self.evaluate(trainer)

    def _sample(self, trainer, engine, tok, queries: list[dict], reward, k: int) -> Rollout:
        """This rank's groups of one draw of prompts; ``k`` > 0: a dynamic-sampling refill draw."""
        from qwen3_trainer.model.generation import SamplingParams
        from qwen3_trainer.platform.posttrain import rollouts

        seq_len = trainer.cfg.training.seq_len
        base = self.seed * 1_000_003 + trainer.step  # a function of the step: a resumed run draws the same
        rng = random.Random(base if k == 0 else f"{base}:{k}")
        picked = [queries[i] for i in rng.sample(range(len(queries)), min(self.prompts_per_step, len(queries)))]
        lo, hi = _block(len(picked), trainer.dp_rank, trainer.dp_world)
        mine = picked[lo:hi]  # a contiguous block: its rows are rows lo*G.. of the whole step's batch
        records = [q for q in mine for _ in range(self.group_size)]
        p_ids = [rollouts.prompt_ids(tok, q["prompt"]) for q in records]
        thinking = [rollouts.prompt_thinking(q["prompt"]) for q in records]
        room = seq_len + 1 - max(map(len, p_ids))
        if room < 1:
            raise ValueError(f"grpo: a prompt of {seq_len + 1 - room} tokens leaves no room in seq_len {seq_len}")
        budget = min(self.max_new_tokens, room)
        params = SamplingParams(max_new_tokens=budget, temperature=self.temperature, top_p=self.top_p,
                                thinking_budget=self.thinking_budget,
                                seed=self.seed + 7919 * trainer.step + 104_729 * k,
                                row_offset=lo * self.group_size)  # layout-independent; TP/CP peers: same rollouts
        out = engine.generate(p_ids, params)
        texts = [rollouts.response_text(tok, q["prompt"], ids) for q, ids in zip(records, out.tokens, strict=True)]
        scores = reward(records, texts, thinking)
        if self.overlong_buffer:
            scores = [s + losses.overlong_penalty(n, budget, self.overlong_buffer, self.overlong_penalty)
                      for s, n in zip(scores, out.lengths, strict=True)]
        return Rollout(records, p_ids, out.tokens, out.forced, [r == "length" for r in out.finish_reasons],
                       scores, self.group_size)

    def _collect(self, trainer, engine, tok, queries, reward) -> tuple[Rollout, dict[str, float]]:
        """The round's rollout (after dynamic sampling) and its metrics (of the first draw: the policy's
        own reward, not the filtered one's)."""
        first = self._sample(trainer, engine, tok, queries, reward, 0)
        flat = torch.tensor(first.scores)
        zero = losses.zero_variance_groups(flat, self.group_size)
        # means over every rank's rollouts (TP/CP peers hold copies: each DP group counts equally)
        total = _sum_over_ranks(trainer, [float(flat.sum()), float(sum(map(len, first.tokens))),
                                          float(sum(first.truncated)), float(zero.float().sum()),
                                          float(len(first.tokens)), float(first.n_groups)])
        n_rows, n_groups = max(total[4], 1.0), max(total[5], 1.0)
        metrics = {"reward/mean": total[0] / n_rows, **reward.last,
                   "rollout/response_tokens": total[1] / n_rows, "rollout/truncated": total[2] / n_rows,
                   "rollout/zero_std_groups": total[3] / n_groups}
        if not self.dynamic_sampling:
            return first, metrics
        want = first.n_groups
        kept = first.groups([g for g in range(want) if not zero[g]])
        extra = 0
        while extra < self.dynamic_sampling_rounds and _agree(trainer, want - kept.n_groups, "max") > 0:
            extra += 1
            more = self._sample(trainer, engine, tok, queries, reward, extra)
            varied = ~losses.zero_variance_groups(torch.tensor(more.scores), self.group_size)
            kept = kept + more.groups([g for g in range(more.n_groups) if varied[g]])
        n = _agree(trainer, min(kept.n_groups, want), "min")
        metrics.update({"rollout/extra_rounds": float(extra), "rollout/kept_groups": n / want})
        if n == 0:  # nothing to learn from on some rank: train the first draw (its advantages are 0)
            log.warning("grpo: dynamic sampling found no group with a reward spread after %d extra rounds",
                        extra)
            return first, metrics
        return kept.groups(range(n)), metrics

    def _batches(self, trainer, tok, ro: Rollout, metrics: dict[str, float]) -> list[dict[str, torch.Tensor]]:
        """Micro-batches with old / reference log-probs, advantages and the overlong filter applied."""
        from qwen3_trainer.platform.posttrain import rollouts

        cfg = trainer.cfg
        masks = [[not f for f in forced] for forced in ro.forced]
        batches = rollouts.sequences_to_batches(ro.prompts, ro.tokens, masks, pad_id=tok.pad,
                                                micro_batch_size=cfg.training.micro_batch_size,
                                                max_len=cfg.training.seq_len, multiple_of=trainer.seq_multiple)
        old = self.logprobs(trainer, None, batches, policy=True)
        for b, lp in zip(batches, old, strict=True):
            b["old_logprobs"] = lp
        scores = torch.tensor(ro.scores)
        if self.kl_coef > 0:
            for b, r in zip(batches, self.logprobs(trainer, trainer.ctx.reference, batches), strict=True):
                b["ref_logprobs"] = r
            if self.kl_in_reward:
                seq_kl = torch.cat([(losses.kl_estimate(b["old_logprobs"], b["ref_logprobs"], self.kl_estimator)
                                     * (b["labels"] != IGNORE)).sum(-1) for b in batches])
                scores = scores - self.kl_coef * seq_kl
                metrics["rollout/kl"] = float(seq_kl.sum()) / max(sum(int((b["labels"] != IGNORE).sum())
                                                                      for b in batches), 1)
        adv = losses.group_advantages(scores, self.group_size, scale=self.scale_advantages)
        row = 0
        for b in batches:
            n = b["labels"].shape[0]
            b["advantages"] = adv[row: row + n, None].expand(b["labels"].shape).contiguous()
            if self.overlong_filter:
                b["labels"] = b["labels"].masked_fill(torch.tensor(ro.truncated[row: row + n])[:, None], IGNORE)
            row += n
        return batches

    @torch.no_grad()
    def logprobs(self, trainer, model, batches, *, policy: bool = False) -> list[torch.Tensor]:
        """log p(label) under softmax(``model``'s logits / temperature), chunked, per micro-batch
        (0 where ignored); ``policy``: the trainer's model through ``trainer.scoring`` (its step's
        autocast, MoE statistics untouched). Sharded forwards are collectives: this rank runs as many
        as the busiest rank (the extra ones repeat its last micro-batch, their result dropped)."""
        out = []
        extra = _agree(trainer, len(batches), "max") - len(batches)
        with trainer.scoring() if policy else contextlib.nullcontext() as scoring:
            net = scoring if policy else model
            for b in batches + batches[-1:] * extra:
                logits = net(b["input_ids"].to(trainer.device))
                logp, _ = losses.token_stats(logits, b["labels"].to(trainer.device), temperature=self.temperature,
                                             chunk=self.logprob_chunk)
                out.append(logp.cpu())
        return out[: len(batches)]

    def evaluate(self, trainer) -> dict[str, float] | None:
        """Greedy held-out accuracy (math verifier) and format rate of the current policy."""
        if not self.held_out:
            return None
        self.policy_engine.sync(trainer)
        metrics = evaluate_accuracy(self.policy_engine, self.tok, self.held_out,
                                    max_new_tokens=self.eval_max_new_tokens, seq_len=trainer.cfg.training.seq_len,
                                    thinking_budget=self.thinking_budget)
        self.policy_engine.release_weights()
        self.policy_engine.round_metrics()  # the evaluation's seconds are not a round's
        trainer.log(metrics)
        return metrics


def evaluate_accuracy(engine, tok, records: list[dict], *, max_new_tokens: int, seq_len: int,
                      thinking_budget: int | None = None, batch: int = 32, soft_switch: bool = True,
                      samples: int = 1, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                      scores: list[float] | None = None) -> dict[str, float]:
    """Verifier accuracy, format rate (think block empty iff the prompt's mode is non-thinking) and
    mean length over ``records``: greedy by default; with ``temperature > 0`` the mean over ``samples``
    sampled responses per record (the Qwen3 report's thinking-mode protocol: T=0.6, top-p 0.95).
    ``soft_switch=False`` leaves the mode to the model. ``scores``, if given, receives each response's
    verifier reward (record by record, a record's samples in a row) for paired comparisons."""
    from qwen3_trainer.model.generation import SamplingParams
    from qwen3_trainer.platform.posttrain import rollouts, verifiers

    if samples < 1 or (samples > 1 and temperature == 0):
        raise ValueError(f"evaluate_accuracy: samples={samples} needs samples >= 1 and temperature > 0 if > 1")
    records = [r for r in records for _ in range(samples)]
    correct = fmt = length = 0.0
    for i in range(0, len(records), batch):
        chunk = records[i: i + batch]
        ids = [rollouts.prompt_ids(tok, r["prompt"], soft_switch) for r in chunk]
        room = seq_len + 1 - max(map(len, ids))
        out = engine.generate(ids, SamplingParams(max_new_tokens=max(1, min(max_new_tokens, room)),
                                                  temperature=temperature, top_p=top_p,
                                                  thinking_budget=thinking_budget, seed=seed + i))
        for rec, toks in zip(chunk, out.tokens, strict=True):
            text = rollouts.response_text(tok, rec["prompt"], toks, soft_switch)
            right = verifiers.SafeReward(verifiers.math_reward, "math")(text, str(rec["answer"]))
            correct += right
            if scores is not None:
                scores.append(float(right))
            fmt += verifiers.format_reward(text, rollouts.prompt_thinking(rec["prompt"]))
            length += len(toks)
    n = len(records)
    return {"eval/accuracy": correct / n, "eval/format": fmt / n, "eval/response_tokens": length / n}


def _per_token(m: dict[str, float]) -> dict[str, float]:
    """Turn the objective's summed metrics into per-token means."""
    tokens = m.pop("objective/tokens", 0.0) or 1.0
    out = dict(m)
    for key, name in (("objective/entropy_sum", "entropy"), ("objective/kl_sum", "kl"),
                      ("objective/clipped", "clip_fraction"), ("objective/ratio_sum", "ratio_mean")):
        if key in out:
            out[name] = out.pop(key) / tokens
    return out
