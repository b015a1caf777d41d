"""Token choice on the device: greedy, temperature, top-k, top-p, with no host sync (decode engine).

Scope: from one step's logits [B, V] to the chosen ids, as ``generation_eager._sample`` picks them
(logits / T, then top-k, then the nucleus: the smallest prefix of the sorted candidates whose mass
is >= top_p; ties keep sort order), in a form that ``torch.compile`` fuses and CUDA graphs replay:

* Sampling is Gumbel-max: ``argmax(logits / T + g)`` with ``g = -log(-log(u))`` draws from
  ``softmax(logits / T)`` exactly, with no ``multinomial`` (which syncs and keeps a generator state).
* ``u`` comes from a counter-based hash of (seed, step, original row, token id), not from a torch
  generator: every value is a pure function of its coordinates, so a graph replays it, a compacted
  batch draws the same numbers, and a seed reproduces a run on any batch composition.
* The mode is static (one compiled graph each): ``greedy``, ``sample`` (full vocabulary),
  ``top_k`` (top-k candidates, then the nucleus within them), ``top_p`` (nucleus over the whole
  vocabulary: a full sort per step, the only mode that costs more than one pass over the logits; with
  Qwen's suggested top_k=20 the cheap ``top_k`` mode applies instead).
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def sampling_mode(temperature: float, top_k: int, top_p: float) -> str:
    if temperature == 0:
        return "greedy"
    if top_k:
        return "top_k"
    return "top_p" if top_p < 1 else "sample"


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The lowbias32 integer hash on int64 holding 32-bit values (products wrap; the mask keeps 32 bits)."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def gumbel(seed: torch.Tensor, step: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """Gumbel(0, 1) noise [B, K] for token ``ids`` [B, K] (or [K]) of original rows ``rows`` [B] at
    ``step``; ``seed`` and ``step`` are int64 tensors of one element."""
    key = _mix32(_mix32(seed & _MASK32) ^ (step & _MASK32))
    idx = (rows[:, None] * vocab + ids) & _MASK32
    h = _mix32(idx ^ key)
    u = ((h >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))  # 23 bits + 0.5: exact in fp32, never 0 or 1
    return -torch.log(-torch.log(u))


def _chunks(b: int, v: int) -> int:
    # enough (row, chunk) reductions to fill a GPU; from 128 rows on, the rows alone do
    return 1 if b >= 128 else next(c for c in (64, 32, 16, 8, 4, 2, 1) if v % c == 0)


def argmax(x: torch.Tensor) -> torch.Tensor:
    """``x.argmax(-1)`` (first maximum) in two stages: a reduction over 151,936 columns of a few rows
    is one program per row, which leaves most of the GPU idle (40-70 us at 32-256 rows on an H200)."""
    b, v = x.shape
    c = _chunks(b, v)
    vals, idx = x.view(b, c, v // c).max(-1)
    j = vals.argmax(-1, keepdim=True)
    return (j * (v // c) + idx.gather(-1, j)).squeeze(-1)


def logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``x.logsumexp(-1)`` in two stages (as ``argmax``)."""
    b, v = x.shape
    return x.view(b, _chunks(b, v), -1).logsumexp(-1).logsumexp(-1)


def cumsum(x: torch.Tensor) -> torch.Tensor:
    """``x.cumsum(-1)`` of [B, V] in two levels (within 128 chunks of the row, then over the chunks):
    inductor's split scan, which it picks for a few long rows, fails to generate code (torch 2.11,
    H200: "list indices must be integers or slices, not NoneType" at [32..256, 151,936])."""
    b, v = x.shape
    c = next(c for c in (128, 64, 32, 16, 8, 4, 2, 1) if v % c == 0)
    y = x.view(b, c, v // c).cumsum(-1)
    total = y[..., -1]
    return (y + (total.cumsum(-1) - total)[..., None]).view(b, v)


def _outside_nucleus(probs: torch.Tensor, cum: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Of candidates sorted by ``probs`` (descending) with running mass ``cum``: those past the smallest
    prefix whose mass is >= ``top_p`` (none when top_p is 1; the first candidate always stays)."""
    first = torch.arange(probs.shape[-1], device=probs.device) == 0
    return (cum - probs >= top_p) & (top_p < 1) & ~first


def choose(
    logits: torch.Tensor,
    *,
    mode: str,
    top_k: int,
    vocab: int,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    seed: torch.Tensor,
    step: torch.Tensor,
    rows: torch.Tensor,
) -> torch.Tensor:
    """Chosen ids [B] from float ``logits`` [B, V]; only the first ``vocab`` columns can be chosen
    (the embedding's padding rows have no text)."""
    if mode in ("greedy", "sample"):  # over all columns, the padding ones at -inf (a view, no copy)
        ids = torch.arange(logits.shape[-1], device=logits.device)
        score = logits if mode == "greedy" else logits / temperature + gumbel(seed, step, rows, ids, vocab)
        return argmax(torch.where(ids < vocab, score, float("-inf")))
    if mode == "top_k":
        vals, ids = torch.topk(logits[:, :vocab], min(top_k, vocab), dim=-1)
        vals = vals / temperature
        probs = vals.softmax(-1)
        drop = _outside_nucleus(probs, probs.cumsum(-1), top_p)
        scores = torch.where(drop, float("-inf"), vals + gumbel(seed, step, rows, ids, vocab))
        return ids.gather(-1, scores.argmax(-1, keepdim=True)).squeeze(-1)
    # top_p: the nucleus is found on the sorted row (padding columns at -inf sort last, with no mass), then
    # scattered back as a mask over the original columns, where the noise and the argmax run as in "sample".
    cols = torch.arange(logits.shape[-1], device=logits.device)
    scaled = torch.where(cols < vocab, logits / temperature, float("-inf"))
    vals, ids = torch.sort(scaled, dim=-1, descending=True)
    probs = vals.softmax(-1)
    drop = torch.zeros_like(ids, dtype=torch.bool).scatter(-1, ids, _outside_nucleus(probs, cumsum(probs), top_p))
    return argmax(torch.where(drop, float("-inf"), scaled + gumbel(seed, step, rows, cols, vocab)))
