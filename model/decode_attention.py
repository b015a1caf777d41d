"""Decode attention on CUDA: one new query per row over a static KV cache, as a Triton kernel.

Scope: the attention of ``decode_engine``'s step, bf16/fp16 on CUDA with Triton; everything else
(CPU, fp32, no Triton) uses SDPA with the same arguments. Why a kernel: a decode query is 1 token
x ``n_rep`` heads per KV head, and the library SDPA kernels tile 64-128 query rows, so they spend
most of their time on padding (cuDNN: ~20 us a layer for 32 rows x 256 keys on an H200, where the
bytes take ~4 us). Here each program holds the ``n_rep`` query heads of one (row, KV head), padded
to 16 rows for ``tl.dot``, and streams its keys once (flash-decoding, after FlashAttention's
split-KV decode): online softmax in fp32, the additive mask row read alongside the keys. When rows x
KV heads cannot fill the GPU, the keys are split over programs and a second kernel merges the parts.

``decode_attention(q, k, v, bias, window, scale)``: q [B, H_kv, n_rep, D], k/v [B, H_kv, L, D]
(first ``window`` columns used; q's dtype or float8_e4m3fn, widened to q's dtype as loaded), bias
[B, L] (0 / -inf) -> [B, H_kv, n_rep, D].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU wheel: SDPA only
    triton = None

# (keys per inner step, warps, pipeline stages, key splits, KV heads per program): the tuner times
# these per shape; splitting keys helps small grids, several heads per program large ones. The window
# and each split's key count are runtime arguments: one compiled kernel per config serves every window
# (as constants they cost a Triton compile per config per window: minutes of a rollout's first round)
_BASE = [(bn, w, st) for bn in (64, 128) for w in (4, 8) for st in (2, 3)]
CONFIGS = [(*c, sp, 1) for c in _BASE for sp in (1, 2, 4, 8)] + [(*c, 1, hg) for c in _BASE for hg in (2, 4)]
DEFAULT = (64, 4, 2, 1, 1)
_tuned: dict[tuple, tuple] = {}


def sdpa(q, k, v, bias, window: int, scale: float) -> torch.Tensor:
    k, v = (t[:, :, :window].to(q.dtype) for t in (k, v))  # an fp8 cache widens to the query's dtype
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias[:, None, None, :window], scale=scale)


def usable(q: torch.Tensor) -> bool:
    return triton is not None and q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


if triton is not None:

    @triton.jit
    def _partial(Q, K, V, Bias, Out, Acc, Ml, scale, sqb, sqh, sqr, skb, skh, skn, svb, svh, svn, sbb,
                 sob, soh, sor, H, W, CHUNK, R: tl.constexpr, RP: tl.constexpr, D: tl.constexpr,
                 BN: tl.constexpr, SPLITS: tl.constexpr, HG: tl.constexpr):  # fmt: skip
        for hh in tl.static_range(HG):
            _partial_head(tl.program_id(0) * HG + hh, tl.program_id(1), Q, K, V, Bias, Out, Acc, Ml, scale,
                          sqb, sqh, sqr, skb, skh, skn, svb, svh, svn, sbb, sob, soh, sor, H, W, CHUNK, R, RP,
                          D, BN, SPLITS)  # fmt: skip

    @triton.jit
    def _partial_head(bh, sp, Q, K, V, Bias, Out, Acc, Ml, scale, sqb, sqh, sqr, skb, skh, skn, svb, svh,
                      svn, sbb, sob, soh, sor, H, W, CHUNK, R: tl.constexpr, RP: tl.constexpr,
                      D: tl.constexpr, BN: tl.constexpr, SPLITS: tl.constexpr):  # fmt: skip
        b, h = bh // H, bh % H
        r, d, n = tl.arange(0, RP), tl.arange(0, D), tl.arange(0, BN)
        q = tl.load(Q + b * sqb + h * sqh + r[:, None] * sqr + d[None, :], mask=r[:, None] < R, other=0.0)
        m_i = tl.full([RP], -1e30, tl.float32)  # finite: a fully masked block gives p = 0, not NaN
        l_i = tl.zeros([RP], tl.float32)
        acc = tl.zeros([RP, D], tl.float32)
        start = sp * CHUNK
        end = tl.minimum(start + CHUNK, W)
        for n0 in range(0, CHUNK, BN):
            cols = start + n0 + n
            ok = cols < end
            k = tl.load(K + b * skb + h * skh + cols[:, None] * skn + d[None, :], mask=ok[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k.to(q.dtype))) * scale  # an fp8 cache widens to the query's dtype
            s += tl.load(Bias + b * sbb + cols, mask=ok, other=float("-inf")).to(tl.float32)[None, :]
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + b * svb + h * svh + cols[:, None] * svn + d[None, :], mask=ok[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype))
            m_i = m_new
        if SPLITS == 1:
            out = acc / l_i[:, None]
            tl.store(Out + b * sob + h * soh + r[:, None] * sor + d[None, :], out.to(Out.dtype.element_ty),
                     mask=r[:, None] < R)  # fmt: skip
        else:
            base = (bh * SPLITS + sp) * RP
            tl.store(Acc + (base + r[:, None]) * D + d[None, :], acc)
            tl.store(Ml + (base + r) * 2, m_i)
            tl.store(Ml + (base + r) * 2 + 1, l_i)

    @triton.jit
    def _merge(Acc, Ml, Out, sob, soh, sor, H, R: tl.constexpr, RP: tl.constexpr, D: tl.constexpr,
               SPLITS: tl.constexpr):  # fmt: skip
        bh = tl.program_id(0)
        b, h = bh // H, bh % H
        s, r, d = tl.arange(0, SPLITS), tl.arange(0, RP), tl.arange(0, D)
        base = bh * SPLITS * RP
        m = tl.load(Ml + (base + s[:, None] * RP + r[None, :]) * 2)
        lsum = tl.load(Ml + (base + s[:, None] * RP + r[None, :]) * 2 + 1)
        w = tl.exp(m - tl.max(m, 0)[None, :])
        denom = tl.sum(w * lsum, 0)
        out = tl.zeros([RP, D], tl.float32)
        for i in range(SPLITS):  # one split at a time keeps the registers to one [RP, D] block
            wi = tl.sum(tl.where(s[:, None] == i, w, 0.0), 0)
            out += tl.load(Acc + (base + i * RP + r[:, None]) * D + d[None, :]) * wi[:, None]
        out = out / denom[:, None]
        tl.store(Out + b * sob + h * soh + r[:, None] * sor + d[None, :], out.to(Out.dtype.element_ty),
                 mask=r[:, None] < R)  # fmt: skip


def _launch(q, k, v, bias, window: int, scale: float, config: tuple) -> torch.Tensor:
    bn, warps, stages, splits, hg = config
    bsz, hkv, reps, dim = q.shape
    out = torch.empty_like(q)
    chunk = math.ceil(window / splits / bn) * bn
    rp = max(16, triton.next_power_of_2(reps))
    acc = ml = out  # unused when SPLITS == 1
    if splits > 1:
        acc = torch.empty((bsz * hkv * splits * rp, dim), dtype=torch.float32, device=q.device)
        ml = torch.empty((bsz * hkv * splits * rp, 2), dtype=torch.float32, device=q.device)
    _partial[(bsz * hkv // hg, splits)](
        q, k, v, bias, out, acc, ml, scale, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
        k.stride(2), v.stride(0), v.stride(1), v.stride(2), bias.stride(0), out.stride(0), out.stride(1),
        out.stride(2), hkv, window, CHUNK=chunk, R=reps, RP=rp, D=dim, BN=bn, SPLITS=splits, HG=hg,
        num_warps=warps, num_stages=stages,
    )  # fmt: skip
    if splits > 1:
        _merge[(bsz * hkv,)](acc, ml, out, out.stride(0), out.stride(1), out.stride(2), hkv, R=reps, RP=rp,
                             D=dim, SPLITS=splits, num_warps=4)  # fmt: skip
    return out


def _tune(key: tuple, args: tuple) -> tuple:
    """The fastest config for this shape (CUDA events, a few launches each); kept for the process."""
    window, rows_heads = args[4], args[0].shape[0] * args[0].shape[1]
    best, best_t = DEFAULT, float("inf")
    ref = _launch(*args, DEFAULT).float()
    for config in CONFIGS:
        if (config[3] > 1 and window // config[3] < config[0]) or rows_heads % config[4]:
            continue  # every split gets at least one block of keys; heads divide into groups
        try:
            if not (_launch(*args, config).float() - ref).abs().max() <= 1e-2 * ref.abs().max() + 1e-3:
                continue  # a config must compute the same function
            _launch(*args, config)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                _launch(*args, config)
            end.record()
            end.synchronize()
            t = start.elapsed_time(end)
        except Exception:  # noqa: BLE001 - a config this GPU cannot run (shared memory): skip it
            continue
        if t < best_t:
            best, best_t = config, t
    _tuned[key] = best
    return best


def decode_attention(q, k, v, bias, window: int, scale: float) -> torch.Tensor:
    if not usable(q):
        return sdpa(q, k, v, bias, window, scale)
    q = q.contiguous()
    key = (*q.shape, q.dtype, k.dtype, k.stride(0), window, torch.cuda.get_device_name(q.device))
    config = _tuned.get(key)
    if config is None:  # tuned in the warm-up before a capture; never while capturing
        config = DEFAULT if torch.cuda.is_current_stream_capturing() else _tune(key, (q, k, v, bias, window, scale))
    return _launch(q, k, v, bias, window, scale, config)


def tuned() -> dict[str, str]:
    """The configs chosen so far (for benchmark reports)."""
    return {f"b{k[0]} kv{k[1]} rep{k[2]} w{k[7]}{' fp8' if k[5] != k[4] else ''}":
            "block {}, warps {}, stages {}, splits {}, heads {}".format(*v) for k, v in _tuned.items()}  # fmt: skip
