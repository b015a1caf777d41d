"""Objective ``grpo``: reasoning / general RL with group-relative advantages (RECIPE.md §Post-training 2, 4).

Each rollout round: sync the policy's weights into the rollout engine, sample ``group_size``
responses for each of ``prompts_per_step`` queries (split over data-parallel ranks, whole groups per
rank), score them with the reward spec (rewards.py), turn rewards into group-normalised advantages,
record the sampling policy's log-probs (``old_logprobs``, recomputed with the training forward so
the first ratio is exactly 1) and, with ``kl_coef > 0``, the reference model's. Then ``ppo_epochs``
passes over the round's sequences in ``minibatches`` optimizer steps each (off-policy reuse: later
steps see ratios != 1 and the clip acts).

Loss per response token: PPO's clipped surrogate (``clip_low`` / ``clip_high``) + ``kl_coef`` x k3
estimate of KL(policy || reference); token-level averaging: the sum over every response token of the
step divided by the trainer's normaliser (their global count), as in DAPO. Entropy, KL, clip fraction,
reward parts, response lengths and verifier errors are logged; held-out greedy accuracy
(``eval_queries``) at the start, every ``eval_interval`` rounds and at the end.

    objective:
      name: grpo
      params: {queries: data/queries.jsonl, eval_queries: data/heldout.jsonl, group_size: 8,
               prompts_per_step: 16, ppo_epochs: 2, max_new_tokens: 48, temperature: 1.0,
               kl_coef: 0.0, rewards: [{name: math}, {name: format, weight: 0.1}]}
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import Any

import torch

from qwen3_trainer.platform.posttrain import losses
from qwen3_trainer.platform.posttrain.losses import IGNORE

log = logging.getLogger("qwen3_trainer.posttrain")


def load_queries(paths, what: str = "queries") -> list[dict]:
    """RL query records (``prompt`` turns + ``answer``); malformed ones skipped with a counted warning."""
    from qwen3_trainer.model.chat_template import validate_messages
    from qwen3_trainer.platform.data.synthetic import read_records

    good, bad = [], Counter()
    for rec in read_records(paths):
        prompt = rec.get("prompt")
        if prompt is None and isinstance(rec.get("messages"), list):  # a chat record: drop its reply
            prompt = [m for m in rec["messages"] if m.get("role") != "assistant"]
        try:
            validate_messages(prompt)
            if prompt[-1]["role"] not in ("user", "system"):
                raise ValueError("the prompt must end with a user turn")
        except (ValueError, TypeError, KeyError, AttributeError):
            bad["bad prompt"] += 1
            continue
        good.append({**rec, "prompt": prompt})
    if bad:
        log.warning("%s: skipped %d malformed records (%s)", what, sum(bad.values()), dict(bad))
    if not good:
        raise ValueError(f"{what}: no usable records in {paths}")
    return good


class GRPO:
    name = "grpo"
    needs_reference = False

    def __init__(self, queries: str | list[str], *, eval_queries: str | list[str] | None = None,
                 group_size: int = 8, prompts_per_step: int = 8, ppo_epochs: int = 1, minibatches: int = 1,
                 clip_low: float = 0.2, clip_high: float = 0.28, kl_coef: float = 0.0,
                 reference: str | None = None, max_new_tokens: int = 64, temperature: float = 1.0,
                 top_p: float = 1.0, thinking_budget: int | None = None, scale_advantages: bool = True,
                 rewards: list[dict] | None = None, eval_interval: int = 0, eval_size: int = 64,
                 eval_max_new_tokens: int | None = None, seed: int = 0):
        if group_size < 2:
            raise ValueError("grpo: group_size must be >= 2 (advantages are relative within a group)")
        self.queries, self.eval_queries = queries, eval_queries
        self.group_size, self.prompts_per_step = group_size, prompts_per_step
        self.ppo_epochs, self.minibatches = ppo_epochs, minibatches
        self.clip_low, self.clip_high, self.kl_coef = clip_low, clip_high, kl_coef
        self.reference = reference
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.thinking_budget, self.scale_advantages = thinking_budget, scale_advantages
        self.reward_spec = rewards or [{"name": "math"}]
        self.eval_interval, self.eval_size = eval_interval, eval_size
        self.eval_max_new_tokens = eval_max_new_tokens or max_new_tokens
        self.seed = seed
        self.engine = None  # set by a caller to use a remote engine (vLLM) instead of the local copy

    # -- the loss --------------------------------------------------------------------------------
    def loss_tokens(self, batch):
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, logits, batch, normalizer, ctx):
        labels = batch["labels"]
        mask = labels != IGNORE
        logp = losses.token_logprobs(logits, labels)
        per_tok, ratio, clipped = losses.clipped_policy_loss(
            logp, batch["old_logprobs"], batch["advantages"], mask, self.clip_low, self.clip_high)
        metrics = {}
        if self.kl_coef > 0:
            kl = losses.k3_kl(logp, batch["ref_logprobs"]) * mask
            per_tok = per_tok + self.kl_coef * kl
            metrics["kl_sum"] = float(kl.detach().sum())
        with torch.no_grad():
            ent = losses.token_entropy(logits.detach(), mask)
        total = per_tok.sum()
        metrics.update({"entropy_sum": float(ent.sum()), "clipped": float(clipped.sum()),
                        "ratio_sum": float(ratio.detach().sum()), "tokens": float(mask.sum())})
        return total / normalizer, metrics

    # -- the loop --------------------------------------------------------------------------------
    def fit(self, trainer) -> dict[str, Any]:
        from qwen3_trainer.model.generation import SamplingParams
        from qwen3_trainer.model.tokenizer import load_tokenizer
        from qwen3_trainer.platform.posttrain import rollouts
        from qwen3_trainer.platform.posttrain.rewards import RewardFunction

        tok = load_tokenizer()
        queries = load_queries(self.queries)
        held_out = load_queries(self.eval_queries, "eval_queries")[: self.eval_size] if self.eval_queries else []
        reward = RewardFunction(self.reward_spec, tokenizer=tok, device=trainer.device,
                                vocab_size=trainer.model_args.vocab_size)
        engine = rollouts.PolicyEngine(trainer, tok, self.engine)
        if self.kl_coef > 0:
            ref = self.reference or trainer.cfg.init.path
            if not ref:
                raise ValueError("grpo: kl_coef > 0 needs params.reference or init.path (the reference model)")
            trainer.ctx.reference = rollouts.frozen_model(ref, trainer.device)
            losses.check_vocab(trainer.model_args.vocab_size, trainer.ctx.reference.model_args.vocab_size,
                               f"reference {ref}")
        if self.prompts_per_step % trainer.dp_world:
            raise ValueError(f"grpo: prompts_per_step={self.prompts_per_step} must divide by the "
                             f"{trainer.dp_world} data-parallel ranks")
        resumed = trainer.maybe_resume()
        cfg = trainer.cfg
        seq_len = cfg.training.seq_len
        history: list[dict[str, Any]] = []
        self.evaluate(trainer, engine, tok, held_out, history)
        round_ = 0
        while trainer.step < cfg.training.steps:
            round_ += 1
            engine.sync(trainer)
            rng = random.Random(self.seed * 1_000_003 + trainer.step)
            picked = [queries[i] for i in rng.sample(range(len(queries)), min(self.prompts_per_step, len(queries)))]
            mine = picked[trainer.dp_rank:: trainer.dp_world]
            records = [q for q in mine for _ in range(self.group_size)]
            p_ids = [rollouts.prompt_ids(tok, q["prompt"]) for q in records]
            thinking = [rollouts.prompt_thinking(q["prompt"]) for q in records]
            room = seq_len + 1 - max(map(len, p_ids))
            if room < 1:
                raise ValueError(f"grpo: a prompt of {seq_len + 1 - room} tokens leaves no room in seq_len {seq_len}")
            params = SamplingParams(max_new_tokens=min(self.max_new_tokens, room), temperature=self.temperature,
                                    top_p=self.top_p, thinking_budget=self.thinking_budget,
                                    seed=self.seed + 7919 * trainer.step + trainer.env.rank)
            out = engine.generate(p_ids, params)
            texts = [rollouts.response_text(tok, q["prompt"], ids) for q, ids in zip(records, out.tokens, strict=True)]
            scores = reward(records, texts, thinking)
            adv = losses.group_advantages(torch.tensor(scores), self.group_size, scale=self.scale_advantages)
            masks = [[not f for f in forced] for forced in out.forced]
            mb = cfg.training.micro_batch_size
            batches = rollouts.sequences_to_batches(p_ids, out.tokens, masks, micro_batch_size=mb, pad_id=tok.pad,
                                                    max_len=seq_len, per_seq={"advantages": adv.tolist()})
            model = trainer.model_parts[0]
            for b, old in zip(batches, rollouts.sequence_logprobs(model, batches, trainer.device), strict=True):
                b["old_logprobs"] = old
            if self.kl_coef > 0:
                refs = rollouts.sequence_logprobs(trainer.ctx.reference, batches, trainer.device)
                for b, r in zip(batches, refs, strict=True):
                    b["ref_logprobs"] = r
            rollout_metrics = {
                "reward/mean": sum(scores) / len(scores), **reward.last,
                "rollout/response_tokens": sum(out.lengths) / len(out.lengths),
                "rollout/truncated": sum(r == "length" for r in out.finish_reasons) / len(out.finish_reasons),
                "rollout/zero_std_groups": float((torch.tensor(scores).view(-1, self.group_size).std(-1) == 0)
                                                 .float().mean()),
                "rollout/verifier_errors": float(reward.error_count), "rollout/round": float(round_),
            }
            per_step = max(1, len(batches) // self.minibatches)
            for _ in range(self.ppo_epochs):
                for start in range(0, len(batches), per_step):
                    if trainer.step >= cfg.training.steps:
                        break
                    m = trainer.train_step(batches[start: start + per_step])
                    m = _per_token(m)
                    rollouts.log_step(trainer, {**m, **rollout_metrics}, history)
                    rollouts.maybe_checkpoint(trainer)
            if self.eval_interval and round_ % self.eval_interval == 0 and trainer.step < cfg.training.steps:
                self.evaluate(trainer, engine, tok, held_out, history)
        self.evaluate(trainer, engine, tok, held_out, history)
        return trainer.finish(history, resumed)

    def evaluate(self, trainer, engine, tok, held_out: list[dict], history) -> dict[str, float] | None:
        """Greedy held-out accuracy (math verifier) and format rate of the current policy."""
        if not held_out:
            return None
        from qwen3_trainer.platform.posttrain import rollouts

        engine.sync(trainer)
        metrics = evaluate_accuracy(engine, tok, held_out, max_new_tokens=self.eval_max_new_tokens,
                                    seq_len=trainer.cfg.training.seq_len, thinking_budget=self.thinking_budget)
        rollouts.log_step(trainer, metrics, history)
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
