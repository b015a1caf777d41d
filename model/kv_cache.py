"""The decode engine's static buffers: a KV cache preallocated for a batch capacity and a length, the
per-row decode state and the result buffers.

Scope: memory only (no model math). Every tensor here keeps its address for the workspace's life, so
a CUDA graph captured over them replays on any later call of the same shape; a batch bucket ``b``
uses the first ``b`` rows of each buffer (``rows(b)``), so compacting live rows into a smaller bucket
is a gather into the prefix, not a reallocation.

Layout: ``k[i]``/``v[i]`` [B, kv_heads, L, head_dim] per layer, each its own allocation (a compiled
step that updates two views of one allocation would go through AOTAutograd's synthetic-base path, a
copy of the whole base); ``bias`` [B, L] additive attention mask (0 where a row may attend, -inf
elsewhere: index-based causal masking, one column opened per step, never rebuilt). Cache column ``c``
holds the token written at step ``c``; a row's RoPE position counts only its own real tokens.

KV dtype: the model's (default) or ``float8_e4m3fn`` (``kv_dtype``, opt-in): half the bytes the decode
attention streams, as vLLM's ``kv_cache_dtype=fp8`` with its default unit scale (values are clamped
to e4m3's +-448; Qwen3's K comes out of an RMSNorm). Prefill attends over its own unrounded K/V;
later steps read the rounded cache. Index ops go through a uint8 view of an fp8 cache (torch has no
fp8 ``index_copy_`` on CPU), which moves the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # largest finite e4m3fn value
KV_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "float8_e4m3fn": FP8}
FORCED_CAPACITY = 256  # tokens of the stop-thinking text a workspace holds
STOP_CAPACITY = 32  # stop ids a workspace holds


@dataclass
class RowState:
    """Per-row decode state [B] (and two one-element step counters); all mutated in place by the step."""

    tok: torch.Tensor  # last chosen id (the next step's input)
    pos: torch.Tensor  # RoPE position of that input
    row: torch.Tensor  # original row index (the scratch row ``n_rows`` for padding rows)
    done: torch.Tensor  # stopped on a stop id
    thinking: torch.Tensor  # inside an open <think>
    count: torch.Tensor  # thinking tokens so far
    qpos: torch.Tensor  # next index into the forced stop-thinking text, -1 when none is queued
    slot: torch.Tensor  # [1] cache column the next step writes
    step: torch.Tensor  # [1] index of the next generated token

    def view(self, b: int) -> RowState:
        return RowState(**{f.name: (t if f.name in ("slot", "step") else t[:b])
                           for f in fields(self) for t in [getattr(self, f.name)]})

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, f.name) for f in fields(self)]


def kv_dtype_of(name: str | torch.dtype | None, model_dtype: torch.dtype) -> torch.dtype:
    """The cache dtype for ``name`` (None: the model's), or a one-line error."""
    if name is None:
        return model_dtype
    dtype = KV_DTYPES.get(name) if isinstance(name, str) else name
    if dtype not in KV_DTYPES.values():
        raise ValueError(f"kv_dtype {name!r} is not one of {', '.join(KV_DTYPES)}")
    return dtype


def to_kv(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` as the cache stores it: fp8 clamped to its finite range, then viewed as uint8 bytes."""
    if dtype != FP8:
        return x.to(dtype)
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8).view(torch.uint8)


def kv_bytes(cache: torch.Tensor) -> torch.Tensor:
    """A view of ``cache`` for index ops: its uint8 bytes when fp8, else itself."""
    return cache.view(torch.uint8) if cache.dtype == FP8 else cache


class DecodeWorkspace:
    """KV cache, row state, results and sampling settings for ``capacity`` rows and ``length`` columns."""

    def __init__(self, model, capacity: int, length: int, kv_dtype: torch.dtype | None = None):
        p = model.tok_embeddings.weight
        attn = model.layers["0"].attention
        kv_heads, hd = attn.wk.out_features // attn.head_dim, attn.head_dim
        dev, dt = p.device, p.dtype
        self.capacity, self.length, self.device, self.dtype = capacity, length, dev, dt
        self.kv_dtype = kv_dtype or dt
        shape = (capacity, kv_heads, length, hd)
        self.k = [torch.zeros(shape, dtype=self.kv_dtype, device=dev) for _ in model.layers]
        self.v = [torch.zeros(shape, dtype=self.kv_dtype, device=dev) for _ in model.layers]
        self.bias = torch.full((capacity, length), float("-inf"), dtype=dt, device=dev)

        def z(dtype=torch.long, n=capacity):
            return torch.zeros(n, dtype=dtype, device=dev)

        self.state = RowState(tok=z(), pos=z(), row=z(), done=z(torch.bool), thinking=z(torch.bool),
                              count=z(), qpos=z(), slot=z(n=1), step=z(n=1))
        # results, indexed by original row; row ``capacity`` is the scratch row of padding rows
        self.out_tok = torch.zeros((capacity + 1, length), dtype=torch.long, device=dev)
        self.out_lp = torch.zeros((capacity + 1, length), dtype=torch.float32, device=dev)
        self.out_forced = torch.zeros((capacity + 1, length), dtype=torch.bool, device=dev)
        self.out_len = z(n=capacity + 1)
        self.out_stop = z(torch.bool, capacity + 1)
        # sampling settings of the current call (tensors, so that one graph serves every value)
        self.temperature = torch.ones(1, device=dev)
        self.top_p = torch.ones(1, device=dev)
        self.seed = z(n=1)
        self.row_offset = z(n=1)  # added to a row's index in the sampling hash (its row in a larger batch)
        self.budget = z(n=1)  # thinking budget; has_budget False disables it
        self.has_budget = z(torch.bool, 1)
        self.forced_text = z(n=FORCED_CAPACITY)
        self.forced_len = z(n=1)
        self.stop_ids = torch.full((STOP_CAPACITY,), -1, dtype=torch.long, device=dev)

    @property
    def scratch_row(self) -> int:
        return self.capacity

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def small_state(self) -> list[torch.Tensor]:
        """Everything a step mutates except the KV cache and bias columns (which a repeated step
        rewrites with the same values): what a warm-up before a graph capture must put back."""
        return [*self.state.tensors(), self.out_tok, self.out_lp, self.out_forced, self.out_len, self.out_stop]

    def compact(self, keep: torch.Tensor, b: int) -> None:
        """Move rows ``keep`` (device long, ascending) to the front and pad to bucket ``b`` with done rows."""
        n = keep.numel()
        for t in (*map(kv_bytes, self.k), *map(kv_bytes, self.v), self.bias):
            t[:n] = t.index_select(0, keep)
        st = self.state
        for t in (st.tok, st.pos, st.row, st.done, st.thinking, st.count, st.qpos):
            t[:n] = t.index_select(0, keep)
        st.row[n:b] = self.scratch_row
        st.done[n:b] = True
        st.qpos[n:b] = -1
