"""Weighted interleaving of sources into one global order of rows, as a pure function of the row index.

The first ``n`` global rows hold ``alloc(n)`` rows of each source: the largest-remainder
apportionment of ``n`` by the weights (exact integer arithmetic), so every source's count is within
one row of ``weight * n`` at each block boundary. Rows are taken in blocks of ``block`` rows; a block
holds ``alloc(end) - alloc(start)`` rows of each source, in an order shuffled by an RNG seeded with
``(seed, block index)``. Blocks are large enough (``weight * block >= 1`` for every source) that
``alloc`` never decreases, so each source's rows are consumed in order 0, 1, 2, ...

Nothing here has state: where global row ``g`` comes from depends only on ``g``, the weights and the
seed, so resuming is setting a counter and every rank can compute the order without talking.
"""

from __future__ import annotations

import math

import numpy as np

SCALE = 10**9  # weights become integers so the apportionment is exact and platform independent
MAX_BLOCK = 2**20  # a block is materialised as arrays of this many rows


class Mixture:
    def __init__(self, weights: list[float], seed: int, min_block: int = 256):
        total = sum(weights)
        self.weights = [w / total for w in weights]
        ints = [max(1, round(w / total * SCALE)) for w in weights]
        self._w, self._total = ints, sum(ints)
        self.block = max(min_block, math.ceil(self._total / min(ints)))
        if self.block > MAX_BLOCK:
            raise ValueError(f"mixture weights too uneven: the smallest share is {min(ints) / self._total:.2e} "
                             f"(at least {1 / MAX_BLOCK:.0e} needed)")
        self.seed = seed
        self._memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def alloc(self, n: int) -> np.ndarray:
        """Rows of each source among the first ``n`` rows, for ``n`` a multiple of ``block``."""
        quotas = [w * n for w in self._w]
        base = [q // self._total for q in quotas]
        left = n - sum(base)
        by_remainder = sorted(range(len(quotas)), key=lambda s: (-(quotas[s] % self._total), s))
        for s in by_remainder[:left]:
            base[s] += 1
        return np.asarray(base, np.int64)

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Source and source-local row index of each row of block ``b``."""
        if b not in self._memo:
            if len(self._memo) > 4:
                self._memo.pop(min(self._memo))
            self._memo[b] = self._build_block(b)
        return self._memo[b]

    def _build_block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.alloc(b * self.block), self.alloc((b + 1) * self.block)
        counts = end - start
        assert (counts >= 0).all(), "block too small for the weights"
        sources = np.repeat(np.arange(len(counts)), counts)
        sources = sources[np.random.default_rng([self.seed, 0x6D6978, b]).permutation(len(sources))]
        local = np.empty(len(sources), np.int64)
        for s in range(len(counts)):
            where = np.flatnonzero(sources == s)
            local[where] = start[s] + np.arange(len(where))
        return sources, local

    def rows(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(source index, source-local row) for global rows ``start .. stop-1``."""
        parts_s, parts_l = [], []
        for b in range(start // self.block, (stop - 1) // self.block + 1 if stop > start else 0):
            sources, local = self._block(b)
            lo = max(start - b * self.block, 0)
            hi = min(stop - b * self.block, self.block)
            parts_s.append(sources[lo:hi])
            parts_l.append(local[lo:hi])
        if not parts_s:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return np.concatenate(parts_s), np.concatenate(parts_l)

    def counts(self, n: int) -> np.ndarray:
        """Rows of each source among the first ``n`` global rows (any ``n``)."""
        b, extra = divmod(n, self.block)
        counts = self.alloc(b * self.block)
        if extra:
            sources, _ = self._block(b)
            counts = counts + np.bincount(sources[:extra], minlength=len(counts))
        return counts
