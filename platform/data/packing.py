"""Packing one source's documents into fixed rows of ``seq_len + 1`` tokens, with random access.

Every source is an infinite sequence of rows: epoch after epoch over its documents, each epoch in a
new seeded order. Row ``k`` can be built directly (no iteration over rows before it), which is what
makes the loader's global order, rank slicing and exact resume cheap.

Pretraining (``PretrainRows``): documents are laid end to end, each followed by <|endoftext|>, and
the stream is cut every ``seq_len + 1`` tokens, so a long document continues in the next row (which
then starts a new segment at position 0) and no token is padding. Epoch boundaries fall mid-row.

SFT (``SftRows``): a chat is never split, since its answer needs its prompt. Chats are placed in
order, a new row starting when the next one does not fit; the rest of the row is <|endoftext|>
padding (its own segment, loss-masked). A chat longer than the row is cut to ``seq_len + 1`` tokens.

Each row comes with ``mask`` (1 where the token is a training target) and ``seg_start`` (True where a
segment begins; always at 0). ``rows_to_batch`` turns rows into model inputs.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

from .token_cache import TokenShard

IGNORE = -100


def _seed_words(seed: int, name: str, *more: int) -> list[int]:
    digest = hashlib.sha256(name.encode()).digest()
    return [seed, int.from_bytes(digest[:4], "little"), *more]


class SourceDocs:
    """The documents of all files of a source, indexed 0..n-1 in file order."""

    def __init__(self, shards: list[TokenShard]):
        self.shards = shards
        lengths = [np.diff(np.asarray(s.offsets)) for s in shards]
        self.lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
        self._shard_of = np.concatenate([np.full(len(x), i, np.int32) for i, x in enumerate(lengths)])
        self._first = np.cumsum([0] + [len(x) for x in lengths])
        self.has_mask = bool(shards) and shards[0].mask is not None

    def __len__(self) -> int:
        return len(self.lengths)

    def doc(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        s = int(self._shard_of[i])
        shard = self.shards[s]
        local = i - int(self._first[s])
        lo, hi = int(shard.offsets[local]), int(shard.offsets[local + 1])
        return shard.tokens[lo:hi], (shard.mask[lo:hi] if shard.mask is not None else None)


class _EpochMemo:
    """A few recently used per-epoch tables (an epoch's table is O(documents))."""

    def __init__(self, build, size: int = 4):
        self._build, self._size, self._cache = build, size, OrderedDict()

    def __call__(self, epoch: int):
        if epoch not in self._cache:
            self._cache[epoch] = self._build(epoch)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(epoch)
        return self._cache[epoch]


class PretrainRows:
    """Rows of the endless stream ``doc, EOS, doc, EOS, ...`` in per-epoch shuffled document order."""

    def __init__(self, docs: SourceDocs, name: str, seq_len: int, seed: int, eos: int):
        if len(docs) == 0:
            raise ValueError(f"data source {name!r} has no non-empty documents")
        self.docs, self.name, self.width, self.seed, self.eos = docs, name, seq_len + 1, seed, eos
        self.epoch_tokens = int(docs.lengths.sum()) + len(docs)  # +1 EOS per document
        self._epoch = _EpochMemo(self._build_epoch)

    def _build_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng(_seed_words(self.seed, self.name, epoch)).permutation(len(self.docs))
        ends = np.cumsum(self.docs.lengths[order] + 1)
        return order, ends

    def epoch_of(self, row: int) -> int:
        return (row * self.width) // self.epoch_tokens

    def row(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        tokens = np.empty(self.width, np.int64)
        seg_start = np.zeros(self.width, bool)
        pos, filled = k * self.width, 0
        while filled < self.width:
            epoch, at = divmod(pos, self.epoch_tokens)
            order, ends = self._epoch(epoch)
            j = int(np.searchsorted(ends, at, side="right"))
            doc_tokens, _ = self.docs.doc(int(order[j]))
            begin = int(ends[j]) - len(doc_tokens) - 1  # where this document starts in the epoch
            inside = at - begin
            piece = doc_tokens[inside:inside + self.width - filled]  # a view: long documents aren't copied
            tokens[filled:filled + len(piece)] = piece
            take = len(piece)
            if take < self.width - filled and inside + take == len(doc_tokens):
                tokens[filled + take] = self.eos  # the document's closing separator
                take += 1
            seg_start[filled] = True  # a document start, or a continued document at the row start
            filled += take
            pos += take
        return tokens, np.ones(self.width, bool), seg_start


class SftRows:
    """Rows of whole chats, greedily filled in per-epoch shuffled order and padded."""

    def __init__(self, docs: SourceDocs, name: str, seq_len: int, seed: int, pad: int):
        if len(docs) == 0:
            raise ValueError(f"data source {name!r} has no non-empty chats")
        if not docs.has_mask:
            raise ValueError(f"data source {name!r}: sft rows need loss masks")
        self.docs, self.name, self.width, self.seed, self.pad = docs, name, seq_len + 1, seed, pad
        self.truncated = int((docs.lengths > self.width).sum())
        self._epoch = _EpochMemo(self._build_epoch)
        self._rows_before = [0]  # cumulative rows at the start of epochs 0, 1, ...

    def _build_epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng(_seed_words(self.seed, self.name, epoch)).permutation(len(self.docs))
        sizes = np.minimum(self.docs.lengths[order], self.width).tolist()
        starts, used = [0], 0
        for i, size in enumerate(sizes):
            if used + size > self.width:
                starts.append(i)
                used = 0
            used += size
        starts.append(len(sizes))
        return order, np.asarray(starts, np.int64)  # row r holds order[starts[r]:starts[r+1]]

    def _locate(self, k: int) -> tuple[int, int]:
        while self._rows_before[-1] <= k:
            epoch = len(self._rows_before) - 1
            self._rows_before.append(self._rows_before[-1] + len(self._epoch(epoch)[1]) - 1)
        epoch = int(np.searchsorted(self._rows_before, k, side="right")) - 1
        return epoch, k - self._rows_before[epoch]

    def epoch_of(self, row: int) -> int:
        return self._locate(row)[0]

    def row(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        epoch, r = self._locate(k)
        order, starts = self._epoch(epoch)
        tokens = np.full(self.width, self.pad, np.int64)
        mask = np.zeros(self.width, bool)
        seg_start = np.zeros(self.width, bool)
        filled = 0
        for j in range(int(starts[r]), int(starts[r + 1])):
            ids, loss = self.docs.doc(int(order[j]))
            take = min(len(ids), self.width)
            tokens[filled:filled + take] = ids[:take]
            mask[filled:filled + take] = loss[:take].astype(bool)
            seg_start[filled] = True
            filled += take
        if filled < self.width:
            seg_start[filled] = True  # padding is a segment of its own
        return tokens, mask, seg_start


def rows_to_batch(tokens: np.ndarray, mask: np.ndarray, seg_start: np.ndarray) -> dict[str, torch.Tensor]:
    """Model inputs from rows [B, seq_len + 1]: inputs are tokens[:-1], labels tokens[1:] shifted.

    A label is IGNORE where its token is not a target (mask 0: prompt, padding) or starts a new
    segment: the first token of a document is not predicted from the previous document, which the
    document-masked attention would not let the model see anyway. The <|endoftext|> closing a
    document is predicted (the model learns to end documents).
    """
    width = tokens.shape[1]
    idx = np.arange(width - 1)
    starts = seg_start[:, :-1]
    labels = np.where(mask[:, 1:] & ~seg_start[:, 1:], tokens[:, 1:], IGNORE)
    positions = idx - np.maximum.accumulate(np.where(starts, idx, 0), axis=1)
    document_ids = np.cumsum(starts, axis=1) - 1
    return {
        "input_ids": torch.from_numpy(np.ascontiguousarray(tokens[:, :-1], dtype=np.int64)),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "positions": torch.from_numpy(positions.astype(np.int64)),
        "document_ids": torch.from_numpy(document_ids.astype(np.int64)),
    }
