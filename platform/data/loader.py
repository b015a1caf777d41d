"""The training data loader: global order first, then each data-parallel rank's slice of it.

Step ``t`` consumes global rows ``[t*G, (t+1)*G)`` of the mixture's order, with
``G = micro_batch_size * grad_accum * dp_world``. Micro-batch ``m`` of rank ``r`` holds global rows
``t*G + m*(micro_batch_size*dp_world) + r*micro_batch_size + [0, micro_batch_size)``: concatenating
micro-batch ``m`` of every rank gives micro-batch ``m`` of one process with
``micro_batch_size * dp_world`` rows, and a step's rows over all ranks are exactly one process's
global batch. Each rank builds only its own rows. ``dp_rank``/``dp_world`` are the data-parallel
coordinates: ranks that must see the same data (tensor/pipeline peers) pass the same ``dp_rank``.

A micro-batch is a dict of int64 tensors ``[micro_batch_size, seq_len]``: ``input_ids``; ``labels``
(the next token, ``-100`` where no loss is taken: prompt and padding tokens, and the first token of a
document, which is not predicted across the boundary); ``positions`` (restart at 0 at each document
and at the row start); ``document_ids`` (0, 1, 2, ... per segment within the row; attention must
not cross them). See ``packing`` for the layout of rows.

The loader's whole state is the number of global rows consumed (plus a fingerprint of the data it
was counted against), so ``load_state_dict`` restores the exact next batches, also onto a different
``dp_world`` as long as the global order is the same data.

Stages change the mix: a new stage builds a loader from its own ``DataConfig`` and calls
``continue_from(previous_stage_state)``, so a source the stages share (same name, files, kind,
seq_len and seed) continues after the rows the earlier stage used instead of replaying them.
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


def _hash(spec: object) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:20]


def _source_fingerprints(cfg: DataConfig, files: dict[str, list[DataFile]], tok_fp: str) -> list[str]:
    """Per source: everything that fixes its own row sequence (not its weight)."""
    return [_hash({"kind": cfg.kind, "seq_len": cfg.seq_len, "seed": cfg.seed, "tokenizer": tok_fp,
                   "name": s.name, "field": s.field, "files": [[f.url, f.identity] for f in files[s.name]]})
            for s in cfg.sources]


class Loader:
    """Yields this rank's micro-batches step by step; see the module docstring for the order."""

    def __init__(self, cfg: DataConfig, rows: list, infos: list[SourceInfo], source_fps: list[str], *,
                 micro_batch_size: int, grad_accum: int, dp_rank: int, dp_world: int):
        self.cfg = cfg
        self.names = [s.name for s in cfg.sources]
        self.sources_info = infos
        self._rows = rows  # PretrainRows | SftRows per source, in cfg order
        try:
            self._mixture = Mixture([s.weight for s in cfg.sources], cfg.seed)
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        self.micro_batch_size, self.grad_accum = micro_batch_size, grad_accum
        self.dp_rank, self.dp_world = dp_rank, dp_world
        self.source_fingerprints = source_fps
        self.fingerprint = _hash([source_fps, [s.weight for s in cfg.sources]])
        self.rows_consumed = 0
        self.source_offsets = [0] * len(rows)  # rows of each source used by earlier stages

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
            built = [self._source_row(int(sources[i - first]), int(local[i - first])) for i in ids]
            tokens, mask, seg_start = (np.stack(parts) for parts in zip(*built, strict=True))
            batches.append(rows_to_batch(tokens, mask, seg_start))
        self.rows_consumed = first + self.global_batch_rows
        return batches

    def _source_row(self, source: int, k: int):
        return self._rows[source].row(self.source_offsets[source] + k)

    def __iter__(self):
        while True:
            yield self.next_step()

    def state_dict(self) -> dict:
        """Plain JSON-able state for the checkpoint."""
        counts = self._mixture.counts(self.rows_consumed)
        return {"version": STATE_VERSION, "fingerprint": self.fingerprint, "rows_consumed": self.rows_consumed,
                "global_batch_rows": self.global_batch_rows,
                "source_offsets": dict(zip(self.names, self.source_offsets, strict=True)),
                # rows each source has used in total: what a later stage continues from
                "sources": {name: {"fingerprint": fp, "rows": off + int(n)} for name, fp, off, n in
                            zip(self.names, self.source_fingerprints, self.source_offsets, counts, strict=True)},
                "data": {"kind": self.cfg.kind, "seq_len": self.cfg.seq_len, "seed": self.cfg.seed,
                         "weights": {s.name: s.weight for s in self.cfg.sources}}}

    @staticmethod
    def _check_version(state: object) -> None:
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise DataError(f"not a data-loader state of version {STATE_VERSION}: {str(state)[:80]}")

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` was taken; refuses state of different data."""
        self._check_version(state)
        if state.get("fingerprint") != self.fingerprint:
            now = self.state_dict()["data"]
            diff = [f"{k}: saved {state.get('data', {}).get(k)!r}, now {v!r}" for k, v in now.items()
                    if state.get("data", {}).get(k) != v] or ["the data files or tokenizer changed"]
            raise DataError("data-loader state was saved for other data (" + "; ".join(diff) + ")")
        rows = state.get("rows_consumed")
        if not isinstance(rows, int) or rows < 0:
            raise DataError(f"data-loader state: bad rows_consumed {rows!r}")
        offsets = state.get("source_offsets", {})
        if sorted(offsets) != sorted(self.names) or not all(isinstance(v, int) and v >= 0 for v in offsets.values()):
            raise DataError(f"data-loader state: bad source_offsets {offsets!r}")
        self.rows_consumed = rows
        self.source_offsets = [offsets[name] for name in self.names]

    def continue_from(self, previous_stage: dict) -> dict[str, int]:
        """Start this stage where ``previous_stage`` (a ``state_dict`` of another config) left each source.

        Sources with the same name and data continue after the rows already used; others start at 0.
        Returns the carried offsets by source name.
        """
        self._check_version(previous_stage)
        if self.rows_consumed:
            raise DataError("continue_from must be called before the first step of a stage")
        before = previous_stage.get("sources", {})
        carried = {}
        for i, (name, fp) in enumerate(zip(self.names, self.source_fingerprints, strict=True)):
            prev = before.get(name)
            if isinstance(prev, dict) and prev.get("fingerprint") == fp and isinstance(prev.get("rows"), int):
                self.source_offsets[i] = carried[name] = prev["rows"]
        return carried

    def mix_report(self) -> dict[str, dict]:
        """Realized mix so far: rows per source, their share vs the target weight, and the epoch."""
        counts = self._mixture.counts(self.rows_consumed)
        total = max(int(counts.sum()), 1)
        report = {}
        for i, name in enumerate(self.names):
            n, used = int(counts[i]), self.source_offsets[i] + int(counts[i])
            report[name] = {"rows": n, "fraction": n / total, "target": self._mixture.weights[i],
                            "epoch": self._rows[i].epoch_of(used - 1) if used else 0}
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
    return Loader(cfg, rows, infos, _source_fingerprints(cfg, files, tok_fp), micro_batch_size=micro_batch_size,
                  grad_accum=grad_accum, dp_rank=dp_rank, dp_world=dp_world)
