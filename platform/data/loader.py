"""The training data loader: global order first, then each data-parallel rank's slice of it.

Step ``t`` consumes global rows ``[t*G, (t+1)*G)`` of the mixture's order, with
``G = micro_batch_size * grad_accum * dp_world``. Micro-batch ``m`` of rank ``r`` holds global rows
``t*G + m*(micro_batch_size*dp_world) + r*micro_batch_size + [0, micro_batch_size)``: concatenating
micro-batch ``m`` of every rank gives micro-batch ``m`` of one process with
``micro_batch_size * dp_world`` rows, and a step's rows over all ranks are exactly one process's
global batch. Each rank builds only its own rows.

The loader's whole state is the number of global rows consumed (plus a fingerprint of the data it
was counted against), so ``load_state_dict`` restores the exact next batches, also onto a different
``dp_world`` as long as the global order is the same data.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch

from .config import DataConfig
from .mixture import Mixture
from .packing import PretrainRows, SftRows, SourceDocs, rows_to_batch
from .sources import DataError, DataFile, validate_sources
from .token_cache import ChatRenderer, load_or_build, tokenizer_fingerprint

STATE_VERSION = 1
Batch = dict[str, torch.Tensor]  # input_ids, labels, positions, document_ids: int64 [mb, seq_len]


@dataclass
class SourceInfo:
    name: str
    files: int
    docs: int
    tokens: int
    cached: int  # files whose shard was reused
    built: int  # files tokenised by this call
    truncated: int = 0  # sft chats longer than a row


def default_chat_renderer(tokenizer, train_on: str = "final") -> ChatRenderer:
    """Qwen3's chat template as (ids, loss_mask) (``qwen3_trainer.model.chat_template``)."""
    from qwen3_trainer.model.chat_template import render_for_training

    return functools.partial(render_for_training, tokenizer=tokenizer, train_on=train_on)


def _load_docs(cfg: DataConfig, tokenizer, render_chat: ChatRenderer | None,
               files: dict[str, list[DataFile]], tok_fp: str) -> tuple[dict[str, SourceDocs], list[SourceInfo]]:
    docs, infos = {}, []
    for source in cfg.sources:
        shards = [load_or_build(f, kind=cfg.kind, field=source.field, tokenizer=tokenizer, tok_fp=tok_fp,
                                render_chat=render_chat, cache=cfg.cache, cache_dir=cfg.cache_dir,
                                batch=cfg.tokenize_batch) for f in files[source.name]]
        docs[source.name] = SourceDocs(shards)
        built = sum(s.built for s in shards)
        infos.append(SourceInfo(source.name, len(shards), len(docs[source.name]),
                                int(docs[source.name].lengths.sum()), len(shards) - built, built))
    return docs, infos


def _renderer(cfg: DataConfig, tokenizer, render_chat: ChatRenderer | None) -> ChatRenderer | None:
    if cfg.kind != "sft":
        return None
    return render_chat or default_chat_renderer(tokenizer, cfg.sft_train_on)


def prepare_cache(cfg: DataConfig, tokenizer, render_chat: ChatRenderer | None = None) -> list[SourceInfo]:
    """Tokenise and cache every file now. Call on one rank, then barrier, so ranks don't all tokenise."""
    render_chat = _renderer(cfg, tokenizer, render_chat)
    files = validate_sources(cfg)
    return _load_docs(cfg, tokenizer, render_chat, files, tokenizer_fingerprint(tokenizer, cfg.kind,
                                                                                render_chat))[1]


def _fingerprint(cfg: DataConfig, files: dict[str, list[DataFile]], tok_fp: str) -> str:
    spec = {"kind": cfg.kind, "seq_len": cfg.seq_len, "seed": cfg.seed, "tokenizer": tok_fp,
            "sources": [{"name": s.name, "weight": s.weight, "field": s.field,
                         "files": [[f.url, f.identity] for f in files[s.name]]} for s in cfg.sources]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


class Loader:
    """Yields this rank's micro-batches step by step; see the module docstring for the order."""

    def __init__(self, cfg: DataConfig, rows: list, infos: list[SourceInfo], fingerprint: str, *,
                 micro_batch_size: int, grad_accum: int, dp_rank: int, dp_world: int):
        self.cfg = cfg
        self.names = [s.name for s in cfg.sources]
        self.sources_info = infos
        self._rows = rows  # PretrainRows | SftRows per source, in cfg order
        self._mixture = Mixture([s.weight for s in cfg.sources], cfg.seed)
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        self.dp_rank, self.dp_world = dp_rank, dp_world
        self.fingerprint = fingerprint
        self.rows_consumed = 0

    @property
    def global_batch_rows(self) -> int:
        return self.micro_batch_size * self.grad_accum * self.dp_world

    @property
    def step(self) -> int:
        """Steps taken since row 0 at the current global batch size."""
        return self.rows_consumed // self.global_batch_rows

    def rank_row_ids(self, first_row: int) -> list[np.ndarray]:
        """Global row ids of this rank's micro-batches for a step starting at ``first_row``."""
        mb, world = self.micro_batch_size, self.dp_world
        return [first_row + m * mb * world + self.dp_rank * mb + np.arange(mb) for m in range(self.grad_accum)]

    def next_step(self) -> list[Batch]:
        """``grad_accum`` micro-batches of this rank for the next optimizer step."""
        first = self.rows_consumed
        sources, local = self._mixture.rows(first, first + self.global_batch_rows)
        batches = []
        for ids in self.rank_row_ids(first):
            built = [self._rows[sources[i - first]].row(int(local[i - first])) for i in ids]
            tokens, mask, seg_start = (np.stack(parts) for parts in zip(*built, strict=True))
            batches.append(rows_to_batch(tokens, mask, seg_start))
        self.rows_consumed = first + self.global_batch_rows
        return batches

    def __iter__(self):
        while True:
            yield self.next_step()

    def state_dict(self) -> dict:
        """Plain JSON-able state for the checkpoint."""
        return {"version": STATE_VERSION, "fingerprint": self.fingerprint, "rows_consumed": self.rows_consumed,
                "global_batch_rows": self.global_batch_rows,
                "data": {"kind": self.cfg.kind, "seq_len": self.cfg.seq_len, "seed": self.cfg.seed,
                         "weights": {s.name: s.weight for s in self.cfg.sources}}}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken; refuses state of different data."""
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise DataError(f"not a data-loader state of version {STATE_VERSION}: "
                            f"{str(state)[:80]}")
        if state.get("fingerprint") != self.fingerprint:
            now = self.state_dict()["data"]
            diff = [f"{k}: saved {state.get('data', {}).get(k)!r}, now {v!r}" for k, v in now.items()
                    if state.get("data", {}).get(k) != v] or ["the data files or tokenizer changed"]
            raise DataError("data-loader state was saved for other data (" + "; ".join(diff) + ")")
        rows = state.get("rows_consumed")
        if not isinstance(rows, int) or rows < 0:
            raise DataError(f"data-loader state: bad rows_consumed {rows!r}")
        self.rows_consumed = rows

    def mix_report(self) -> dict[str, dict]:
        """Realized mix so far: rows per source, their share vs the target weight, and the epoch."""
        counts = self._mixture.counts(self.rows_consumed)
        total = max(int(counts.sum()), 1)
        report = {}
        for i, name in enumerate(self.names):
            n = int(counts[i])
            report[name] = {"rows": n, "fraction": n / total, "target": self._mixture.weights[i],
                            "epoch": self._rows[i].epoch_of(n - 1) if n else 0}
        return report


def build_loader(cfg: DataConfig, tokenizer, *, micro_batch_size: int, grad_accum: int = 1,
                 dp_rank: int = 0, dp_world: int = 1, render_chat: ChatRenderer | None = None) -> Loader:
    """Resolve, tokenise (or reuse the cache) and pack ``cfg``'s sources into this rank's loader.

    ``tokenizer``: ``qwen3_trainer.model.load_tokenizer()``. ``render_chat`` (sft only): messages ->
    (ids, loss_mask); default Qwen3's chat template.
    """
    for label, value in (("micro_batch_size", micro_batch_size), ("grad_accum", grad_accum),
                         ("dp_world", dp_world)):
        if not isinstance(value, int) or value < 1:
            raise DataError(f"{label} must be a positive integer, got {value!r}")
    if not 0 <= dp_rank < dp_world:
        raise DataError(f"dp_rank {dp_rank} outside 0..{dp_world - 1}")
    render_chat = _renderer(cfg, tokenizer, render_chat)
    files = validate_sources(cfg)
    tok_fp = tokenizer_fingerprint(tokenizer, cfg.kind, render_chat)
    docs, infos = _load_docs(cfg, tokenizer, render_chat, files, tok_fp)
    rows = []
    for source, info in zip(cfg.sources, infos, strict=True):
        try:
            if cfg.kind == "sft":
                rows.append(SftRows(docs[source.name], source.name, cfg.seq_len, cfg.seed, tokenizer.pad))
                info.truncated = rows[-1].truncated
            else:
                rows.append(PretrainRows(docs[source.name], source.name, cfg.seq_len, cfg.seed,
                                         tokenizer.endoftext))
        except ValueError as exc:
            raise DataError(str(exc)) from exc
    return Loader(cfg, rows, infos, _fingerprint(cfg, files, tok_fp), micro_batch_size=micro_batch_size,
                  grad_accum=grad_accum, dp_rank=dp_rank, dp_world=dp_world)
