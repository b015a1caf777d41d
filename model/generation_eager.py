"""The eager reference decoder: a KV-cached forward over torchtitan's modules and a per-row Python loop.

This is the original ``generation.generate`` path, kept unchanged as the reference that the compiled
engine (``decode_engine``) is tested against, and as the fallback for models whose layers the engine
does not recognise. torchtitan's ``Attention`` has no cache, so ``CachedForward`` runs the same
modules (``wq/wk/wv/wo``, ``q_norm``/``k_norm``, the model's ``rope_cache``, ``feed_forward`` or
``moe``) through a cached path: one prefill over the left-padded prompts, then one token per step,
a boolean mask rebuilt each step and a host sync per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qwen3_trainer.model.generation import (
    GenerationOutput,
    SamplingParams,
    _restore_moe_counters,
    _save_moe_counters,
    _thinking_at_prompt_end,
)

# ---------------------------------------------------------------- the cached forward


def _rope(x: torch.Tensor, rope_cache: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """torchtitan's rotary embedding (rotate-half form) at explicit positions [B, S]."""
    head_dim = x.shape[-1]
    cs = rope_cache[positions].unsqueeze(2)  # [B, S, 1, 2*head_dim]
    cos, sin = cs[..., :head_dim].to(x.dtype), cs[..., head_dim:].to(x.dtype)
    rotated = torch.cat((-x[..., head_dim // 2 :], x[..., : head_dim // 2]), dim=-1)
    return x * cos + rotated * sin


class CachedForward:
    """A KV-cached forward over a torchtitan ``Qwen3Model``'s own modules."""

    def __init__(self, model, batch: int, max_len: int):
        self.model = model
        p = next(model.parameters())
        attn = model.layers["0"].attention
        kv_heads = attn.wk.out_features // attn.head_dim
        shape = (batch, kv_heads, max_len, attn.head_dim)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.layers]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.layers]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=p.device)
        self.length = 0

    def _attention(self, i: int, attn, x, positions, mask):
        b, s, _ = x.shape
        q = attn.wq(x).view(b, s, -1, attn.head_dim)
        k = attn.wk(x).view(b, s, -1, attn.head_dim)
        v = attn.wv(x).view(b, s, -1, attn.head_dim)
        if attn.q_norm is not None:
            q, k = attn.q_norm(q), attn.k_norm(k)
        rope = self.model.rope_cache
        q, k = _rope(q, rope, positions).transpose(1, 2), _rope(k, rope, positions).transpose(1, 2)
        end = self.length + s
        self.k[i][:, :, self.length : end] = k
        self.v[i][:, :, self.length : end] = v.transpose(1, 2)
        out = F.scaled_dot_product_attention(
            q,
            self.k[i][:, :, :end],
            self.v[i][:, :, :end],
            attn_mask=mask,
            scale=attn.scaling,
            enable_gqa=True,
        )
        return attn.wo(out.transpose(1, 2).reshape(b, s, -1))

    def __call__(
        self, tokens: torch.Tensor, valid: torch.Tensor, positions: torch.Tensor, last_only: bool = False
    ) -> torch.Tensor:
        """Logits [B, S, V] of ``tokens`` [B, S] appended to the cache (``last_only``: [B, 1, V], the
        next-token logits, without the output projection of the other positions); ``valid`` marks
        real tokens."""
        b, s = tokens.shape
        start, end = self.length, self.length + s
        self.valid[:, start:end] = valid
        q_pos = torch.arange(start, end, device=tokens.device)
        k_pos = torch.arange(end, device=tokens.device)
        causal = k_pos[None, :] <= q_pos[:, None]
        mask = causal[None] & self.valid[:, None, :end]
        mask = mask | (k_pos[None, :] == q_pos[:, None])[None]  # a pad row attends to itself: no NaN
        mask = mask[:, None]  # [B, 1, S, end]
        h = self.model.tok_embeddings(tokens)
        for i, layer in enumerate(self.model.layers.values()):
            h = h + self._attention(i, layer.attention, layer.attention_norm(h), positions, mask)
            ffn = layer.moe if layer.moe_enabled else layer.feed_forward
            h = h + ffn(layer.ffn_norm(h))
        self.length = end
        if last_only:
            h = h[:, -1:]
        return self.model.output(self.model.norm(h))


# ---------------------------------------------------------------- sampling


def _sample(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> torch.Tensor:
    if p.temperature == 0:
        return logits.max(-1).indices  # faster than argmax on CPU; same first-max tie rule
    logits = logits / p.temperature
    if p.top_k:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1:
        cand, ids = _nucleus(logits, p.top_p)
        pick = torch.multinomial(cand.softmax(-1), 1, generator=gen)
        return ids.gather(-1, pick).squeeze(-1)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def _nucleus(logits: torch.Tensor, top_p: float, first: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """The nucleus of each row: candidate logits sorted descending, ``-inf`` past the smallest prefix
    whose probability mass is >= ``top_p``, and their token ids. Only the ``first`` most likely tokens
    are looked at, then 16x as many, then the whole sorted rows, until every row's nucleus fits (a
    top-k is far cheaper than sorting 151,669 logits). Same distribution either way."""
    lse = logits.logsumexp(-1, keepdim=True)
    k = min(first, logits.shape[-1])
    while True:
        if k < logits.shape[-1]:
            vals, ids = torch.topk(logits, k, dim=-1)
        else:
            vals, ids = torch.sort(logits, descending=True, dim=-1)
        probs = (vals - lse).exp()
        cum = probs.cumsum(-1)
        if k >= logits.shape[-1] or bool((cum[:, -1] >= top_p).all()):
            break
        k = min(16 * k, logits.shape[-1])
    drop = cum - probs >= top_p  # keep the smallest prefix with mass >= top_p
    drop[:, 0] = False
    return vals.masked_fill(drop, float("-inf")), ids


def _mask_padding_rows(logits: torch.Tensor, vocab: int | None) -> torch.Tensor:
    """Never sample the embedding's padding rows (ids >= the tokenizer's 151,669): they have no
    text. They are the last columns, so a view without them keeps every other id. Log-probs stay
    those of the full softmax, which is what the trainer recomputes."""
    if vocab is None or logits.shape[-1] <= vocab:
        return logits
    return logits[..., :vocab]


def _context(model) -> int:
    return int(model.rope_cache.shape[0])


@torch.inference_mode()
def generate_eager(
    model,
    prompts: list[list[int]],
    tokenizer=None,
    params: SamplingParams | None = None,
    **overrides,
) -> GenerationOutput:
    """The reference decode loop: ``generation.generate`` semantics, one eager step at a time with a
    Python loop over rows (slow; kept as the parity reference and the fallback for unusual models).

    ``params`` fields may also be given as keywords: ``generate(model, ids, max_new_tokens=32,
    thinking_budget=100)``. The tokenizer (built-in Qwen3 one by default) supplies the stop ids and
    the ids of the stop-thinking text.
    """
    params = params or SamplingParams()
    if overrides:
        params = SamplingParams(**{**params.__dict__, **overrides})
    params.validate()
    if tokenizer is None:
        from qwen3_trainer.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    stop_ids = set(params.stop_ids if params.stop_ids is not None else tokenizer.stop_ids)
    forced_text = tokenizer.encode(params.stop_thinking_text) if params.thinking_budget is not None else []
    b, plen = len(prompts), max(len(p) for p in prompts)
    room = plen + params.max_new_tokens
    if room > _context(model):
        raise ValueError(
            f"prompt of {plen} tokens + max_new_tokens {params.max_new_tokens} exceeds the model's context "
            f"of {_context(model)} positions"
        )
    device = model.tok_embeddings.weight.device
    gen = torch.Generator(device=device).manual_seed(params.seed) if params.seed is not None else None

    tokens = torch.zeros((b, plen), dtype=torch.long)  # pads are masked out; 0 fits any vocab
    valid = torch.zeros((b, plen), dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, plen - len(p) :] = torch.tensor(p)
        valid[i, plen - len(p) :] = True
    tokens, valid = tokens.to(device), valid.to(device)
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)

    was_training = model.training
    model.eval()
    counters = _save_moe_counters(model)
    try:
        cache = CachedForward(model, b, room)
        logits = cache(tokens, valid, positions, last_only=True)[:, -1].float()
        next_pos = positions[:, -1] + 1

        out_tok: list[list[int]] = [[] for _ in range(b)]
        out_lp: list[list[float]] = [[] for _ in range(b)]
        out_forced: list[list[bool]] = [[] for _ in range(b)]
        finish = ["length"] * b
        done = [False] * b
        thinking = [
            _thinking_at_prompt_end(p, tokenizer.think, tokenizer.end_think, tokenizer.im_start)
            for p in prompts
        ]
        think_count = [0] * b
        vocab = getattr(tokenizer, "vocab_size", None)
        budget = params.thinking_budget
        queue = [list(forced_text) if t and budget == 0 else [] for t in thinking]
        for _ in range(params.max_new_tokens):
            sampled = _sample(_mask_padding_rows(logits, vocab), params, gen).tolist()
            queued = [q[0] if q else sampled[i] for i, q in enumerate(queue)]
            chosen = torch.tensor(queued, device=device)[:, None]
            # log-prob of the chosen id only: logit - logsumexp, without the full log_softmax
            logp = (logits.gather(-1, chosen).squeeze(-1) - logits.logsumexp(-1)).tolist()
            step = []
            for i in range(b):
                if done[i]:
                    step.append(0)
                    continue
                forced = bool(queue[i])
                tok = queue[i].pop(0) if forced else sampled[i]
                out_tok[i].append(tok)
                out_lp[i].append(logp[i])
                out_forced[i].append(forced)
                step.append(tok)
                if tok == tokenizer.think:
                    thinking[i], think_count[i] = True, 0
                elif tok == tokenizer.end_think:
                    thinking[i] = False
                elif thinking[i]:
                    think_count[i] += 1
                if (
                    thinking[i]
                    and budget is not None
                    and think_count[i] >= budget
                    and not queue[i]
                    and not forced
                ):
                    queue[i] = list(forced_text)
                if tok in stop_ids and not forced:
                    done[i], finish[i] = True, "stop"
            if all(done):
                break
            step_t = torch.tensor(step, device=device)[:, None]
            alive = torch.tensor([not d for d in done], device=device)[:, None]
            logits = cache(step_t, alive, next_pos[:, None])[:, -1].float()
            next_pos = next_pos + 1
    finally:
        _restore_moe_counters(model, counters)
        model.train(was_training)
    return GenerationOutput(out_tok, out_lp, out_forced, finish)
