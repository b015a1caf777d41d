"""Objective ``reward_model``: a Qwen3 backbone + scalar head trained on preference pairs (Bradley–Terry).

The scalar head is one row of the output projection: row ``REWARD_HEAD_ID`` (151935, the last of the
vocabulary's padding rows, which no tokenizer id reaches; ``<|vision_pad|>``'s row in a vocabulary cut
to the tokenizer, rewards.reward_head_id) maps the final normed hidden state of the
last token to the reward. It is a plain linear head on the backbone that needs no new module, so
the reward model saves, loads, shards and exports (HF / DCP) exactly like the policy.

Loss per pair: -log sigmoid(r(chosen) - r(rejected)), summed and divided by the trainer's normaliser
(the global number of pairs in the step). Records: ``{"prompt": [turns], "chosen": [assistant turn]
or "text", "rejected": ...}`` (platform.data.synthetic.preference_record writes them); malformed
pairs are skipped with a counted warning.

    objective: {name: reward_model, params: {pairs: data/prefs.jsonl, eval_pairs: data/prefs_eval.jsonl}}
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import torch
from pydantic import ConfigDict, validate_call

from qwen3_trainer.platform.posttrain import losses
from qwen3_trainer.platform.posttrain.grpo import one_line_params_error
from qwen3_trainer.platform.posttrain.rewards import reward_head_id, reward_scores, score_ids
from qwen3_trainer.platform.train.objectives import BatchProducer

log = logging.getLogger("qwen3_trainer.posttrain")


def _reply(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and value[-1].get("role") == "assistant":
        content = value[-1].get("content")
        if isinstance(content, str):
            return content
    raise ValueError("a reply must be a string or a list ending with an assistant turn")


def load_pairs(paths, tokenizer, max_len: int) -> list[tuple[list[int], list[int]]]:
    """(chosen ids, rejected ids) per usable record; the rest skipped with a counted warning."""
    from qwen3_trainer.model.chat_template import validate_messages
    from qwen3_trainer.platform.data.synthetic import read_records

    pairs, bad = [], Counter()
    for rec in read_records(paths):
        try:
            validate_messages(rec["prompt"])
            c = score_ids(tokenizer, rec["prompt"], _reply(rec["chosen"]))
            r = score_ids(tokenizer, rec["prompt"], _reply(rec["rejected"]))
        except (KeyError, ValueError, TypeError):
            bad["malformed"] += 1
            continue
        if max(len(c), len(r)) > max_len:
            bad["too long"] += 1
            continue
        pairs.append((c, r))
    if bad:
        log.warning("reward_model: skipped %d preference records (%s)", sum(bad.values()), dict(bad))
    if not pairs:
        raise ValueError(f"reward_model: no usable preference pairs in {paths}")
    return pairs


def pair_batch(pairs: list[tuple[list[int], list[int]]], pad_id: int, multiple_of: int = 1) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, right-padded to a multiple of ``multiple_of`` (sequence parallelism);
    ``last``: each row's last real token."""
    seqs = [c for c, _ in pairs] + [r for _, r in pairs]
    width = max(map(len, seqs))
    width += -width % multiple_of
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    for j, s in enumerate(seqs):
        ids[j, : len(s)] = torch.tensor(s)
    return {"input_ids": ids, "last": torch.tensor([len(s) - 1 for s in seqs])}


class RewardModelObjective(BatchProducer):
    name = "reward_model"
    needs_reference = False

    @one_line_params_error("reward_model")
    @validate_call(config=ConfigDict(strict=True))
    def __init__(self, pairs: str | list[str], *, eval_pairs: str | list[str] | None = None, seed: int = 0):
        self.pairs, self.eval_pairs, self.seed = pairs, eval_pairs, seed

    def loss_tokens(self, batch):
        return int(batch["input_ids"].shape[0] // 2)  # pairs

    def loss(self, logits, batch, normalizer, ctx):
        head = reward_head_id(logits.shape[-1])
        n = logits.shape[0] // 2
        rows = torch.arange(logits.shape[0], device=logits.device)
        r = logits[rows, batch["last"], head].float()
        bt = losses.bradley_terry(r[:n], r[n:])
        margin = (r[:n] - r[n:]).detach()
        return bt.sum() / normalizer, {"pairs": float(n), "correct": float((margin > 0).sum()),
                                       "margin_sum": float(margin.sum())}

    # -- the loop (Trainer.fit asks for each step's batches) -------------------------------------
    def start(self, trainer) -> None:
        from qwen3_trainer.model.tokenizer import load_tokenizer

        self.tok = load_tokenizer()
        seq_len = trainer.cfg.training.seq_len
        self.train_pairs = load_pairs(self.pairs, self.tok, seq_len)
        self.held = load_pairs(self.eval_pairs, self.tok, seq_len) if self.eval_pairs else []
        self.evaluate(trainer)

    def steps(self, trainer):
        cfg = trainer.cfg
        mb, accum = cfg.training.micro_batch_size, cfg.training.grad_accum
        per_step = mb * accum * trainer.dp_world
        train = self.train_pairs
        while True:
            order = random.Random(self.seed * 1_000_003 + trainer.step).sample(range(len(train)), len(train))
            picked = [train[order[i % len(order)]] for i in range(per_step)]
            mine = picked[trainer.dp_rank * mb * accum: (trainer.dp_rank + 1) * mb * accum]
            yield [pair_batch(mine[i: i + mb], self.tok.pad, trainer.seq_multiple)
                   for i in range(0, len(mine), mb)], {}

    def step_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        m = dict(metrics)
        pairs = m.pop("objective/pairs", 1.0) or 1.0
        m["pair_accuracy"] = m.pop("objective/correct", 0.0) / pairs
        m["margin"] = m.pop("objective/margin_sum", 0.0) / pairs
        return m

    def end(self, trainer) -> None:
        self.evaluate(trainer)

    @torch.no_grad()
    def evaluate(self, trainer) -> None:
        if not self.held:
            return
        with trainer.scoring() as model:  # every rank scores the whole held-out set: the same forwards
            chosen = reward_scores(model, [c for c, _ in self.held], self.tok.pad, trainer.device,
                                   multiple_of=trainer.seq_multiple)
            rejected = reward_scores(model, [r for _, r in self.held], self.tok.pad, trainer.device,
                                     multiple_of=trainer.seq_multiple)
        trainer.log({"eval/pair_accuracy": float((chosen > rejected).float().mean())})
