"""The decode engine's step, as functions of tensors (so that one ``torch.compile`` graph serves every
layer), and the in-place packing of the projection weights that lets a step run one q/k/v GEMM and
one gate/up GEMM per layer.

``pre`` ([residual add ->] norm -> q/k/v -> q/k norms -> RoPE -> cache write), ``ffn`` (residual add
-> norm -> gate/up -> silu product: a dense layer's FFN up to its w2 GEMM), ``prologue`` (embedding,
RoPE rows, this step's mask column) and ``choose`` (sampling, thinking budget, stop ids, log-probs,
result writes) are built by ``make(kind, *static_key)``. Between them run the attention
(``decode_attention``) and the wo / w2 GEMMs, whose residual adds are the next function's first op.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qwen3_trainer.model import sampling
from qwen3_trainer.model.kv_cache import FP8, to_kv


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _prologue(tok, pos, emb, rope, slot, bias):
    bias.index_fill_(1, slot, 0.0)  # the column this step writes becomes visible to its row
    hd = rope.shape[-1] // 2
    cs = rope[pos]
    return F.embedding(tok, emb), cs[:, None, :hd].to(emb.dtype), cs[:, None, hd:].to(emb.dtype)


def _make_pre(eps: tuple, sizes: tuple[int, int], residual: bool):
    """[h + z: the previous layer's last GEMM output, added here so that the add fuses with this norm]
    -> norm -> q/k/v (one packed GEMM when the weights are packed) -> q/k norms -> RoPE -> cache write
    at ``slot``; returns h and the query heads grouped by KV head [B, H_kv, n_rep, D]."""

    def pre(h, z, aw, k_cache, v_cache, cos, sin, slot):
        if residual:
            h = h + z
        norm, wqkv, qn, kn = aw
        b, kvh, hd = h.shape[0], k_cache.shape[1], k_cache.shape[-1]
        x = F.rms_norm(h, (h.shape[-1],), norm, eps[0])
        if isinstance(wqkv, tuple):
            q, k, v = (F.linear(x, w) for w in wqkv)
        else:
            q, k, v = F.linear(x, wqkv).split(sizes[:1] + sizes[1:] * 2, dim=-1)
        q, k, v = q.reshape(b, -1, hd), k.reshape(b, kvh, hd), v.reshape(b, kvh, hd)
        if qn is not None:
            q, k = F.rms_norm(q, (hd,), qn, eps[1]), F.rms_norm(k, (hd,), kn, eps[2])
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        kv = FP8 if k_cache.dtype == torch.uint8 else k_cache.dtype  # an fp8 cache arrives as its bytes
        k_cache.index_copy_(2, slot, to_kv(k.unsqueeze(2), kv))
        v_cache.index_copy_(2, slot, to_kv(v.unsqueeze(2), kv))
        return h, q.view(b, kvh, -1, hd)

    return pre


def _make_ffn(eps: tuple, sizes: tuple[int]):
    """h + y (the attention's wo output) -> norm -> gate/up (one packed GEMM when packed) -> silu(gate)
    * up; returns h and that product, whose w2 GEMM runs outside (its residual add is the next
    ``pre``'s). A GEMM whose output is only added keeps inductor from making it an ``addmm``, which
    copies the residual into the output first (one memcpy a GEMM on CUDA)."""

    def ffn(h, y, fw):
        h = h + y
        norm, w13 = fw
        x = F.rms_norm(h, (h.shape[-1],), norm, eps[3])
        if isinstance(w13, tuple):
            gate, up = (F.linear(x, w) for w in w13)
        else:
            gate, up = F.linear(x, w13).split(sizes[0], dim=-1)
        return h, F.silu(gate) * up

    return ffn


def _make_choose(mode: str, top_k: int, vocab: int, think: int, end_think: int):
    def choose(logits, state, out, cfg):
        tok, pos, row, done, thinking, count, qpos, slot, step = state
        out_tok, out_lp, out_forced, out_len, out_stop = out
        temperature, top_p, seed, row_offset, budget, has_budget, forced_text, forced_len, stop_ids = cfg
        logits = logits.float()
        sampled = sampling.choose(logits, mode=mode, top_k=top_k, vocab=vocab, temperature=temperature,
                                  top_p=top_p, seed=seed, step=step, rows=row + row_offset)  # fmt: skip
        forced = qpos >= 0
        chosen = torch.where(forced, forced_text[qpos.clamp(min=0)], sampled)
        logp = logits.gather(-1, chosen[:, None]).squeeze(-1) - sampling.logsumexp(logits)
        cols = step.expand_as(row)
        out_tok.index_put_((row, cols), chosen)
        out_lp.index_put_((row, cols), logp)
        out_forced.index_put_((row, cols), forced)
        out_len.index_put_((row,), out_len[row] + (~done).long())
        is_think, is_end = chosen == think, chosen == end_think
        new_count = torch.where(is_think, 0, torch.where(thinking & ~is_end, count + 1, count))
        new_thinking = (thinking | is_think) & ~is_end
        nq = torch.where(forced, qpos + 1, qpos)
        nq = torch.where(nq >= forced_len, -1, nq)
        trigger = new_thinking & has_budget & (new_count >= budget) & (nq < 0) & ~forced
        nq = torch.where(trigger, 0, nq)
        new_done = done | ((chosen[:, None] == stop_ids).any(-1) & ~forced)
        out_stop.index_put_((row,), new_done)
        tok.copy_(chosen)
        done.copy_(new_done)
        thinking.copy_(new_thinking)
        count.copy_(new_count)
        qpos.copy_(nq)
        pos.add_(1)
        slot.add_(1)
        step.add_(1)

    return choose


def make(kind: str, *key):
    """The step function ``kind`` for its static ``key`` (Python constants of the compiled graph)."""
    if kind == "prologue":
        return _prologue
    return {"pre": _make_pre, "ffn": _make_ffn, "choose": _make_choose}[kind](*key)


def packed_view(weights: list[torch.Tensor]) -> torch.Tensor | None:
    """The [sum of rows, in] matrix that ``weights`` are consecutive row blocks of, if they are."""
    first = weights[0]
    ptr, cols, elem = first.data_ptr(), first.shape[1], first.element_size()
    for w in weights:
        if not w.is_contiguous() or w.shape[1] != cols or w.dtype != first.dtype or w.data_ptr() != ptr:
            return None
        ptr += w.numel() * elem
    rows = sum(w.shape[0] for w in weights)
    return first.detach().new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (rows, cols))


@torch.no_grad()
def pack_projections(model) -> int:
    """Re-point each layer's q/k/v (and dense gate/up) weights as row blocks of one buffer, in place:
    the same Parameter objects (optimizers, ``load_state_dict`` and checkpoints see no change), one
    GEMM instead of three (two) per decode step. Costs one layer's projections of memory while it
    runs; returns how many groups it packed."""
    groups = []
    for layer in model.layers.values():
        a = layer.attention
        groups.append([a.wq.weight, a.wk.weight, a.wv.weight])
        if not layer.moe_enabled:
            groups.append([layer.feed_forward.w1.weight, layer.feed_forward.w3.weight])
    n = 0
    for ws in groups:
        if packed_view(ws) is None:
            fused = torch.cat([w.detach() for w in ws])
            row = 0
            for w in ws:
                w.data = fused[row : row + w.shape[0]]
                row += w.shape[0]
            n += 1
    return n
