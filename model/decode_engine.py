"""The decode engine: static KV cache, compiled decode step, CUDA graphs per batch bucket, sampling on
the device (``generation.generate`` and ``LocalRolloutEngine`` run on it).

Scope: one process, one device, the torchtitan Qwen3 (dense and MoE) with its own parameters: no copy
of the weights is made (``pack_projections`` re-points q/k/v and gate/up as row blocks of one buffer
each, in place). Choices, after gpt-fast (static cache, Gumbel sampling without sync) and vLLM
(graphs per batch size, a batch padded to the next bucket):

* Prefill runs once per distinct prompt (the G samples of a GRPO group share it); its K/V rows are
  copied to the G cache rows. Prefill is eager (compute-bound, one call per batch).
* A decode step: ``prologue`` (embed, RoPE rows, open this step's mask column), per layer ``pre``
  (norm, one q/k/v GEMM, q/k norms, RoPE, cache write), the attention (``decode_attention``: a
  Triton flash-decoding kernel over the static cache up to a window, GQA without repeating K/V, the
  additive mask buffer opened one column a step, never rebuilt; SDPA on CPU), the wo GEMM, ``ffn``
  (residual add, norm, gate/up GEMM, silu product) and the w2 GEMM (each GEMM's residual add is the
  next compiled function's first op, fused into its norm: no ``addmm`` and its residual copy), the
  model's own ``norm``/``output`` modules, then ``choose`` (sampling, thinking budget, stop ids,
  log-probs, result writes; ``model.sampling``). ``pre``/``ffn``/``choose``/``prologue`` are
  functions of tensors, so one ``torch.compile`` graph serves every layer.
* On CUDA the step is captured as a CUDA graph per (bucket, window, sampling mode). The host looks at
  the stop flags every ``stop_check_interval`` steps: it ends the loop when every row has stopped and
  moves the live rows into the next smaller bucket when they fit (finished rows stop costing compute).
* MoE layers run torchtitan's MoE forward eagerly inside the graph (its attention is compiled).
* On CPU everything runs eagerly (no compile, no graphs) through the same functions: CPU tests cover
  the math that the GPU compiles.

Bad input raises ``ValueError`` before any kernel runs. ``release()`` frees the cache and graphs
(colocated with training: call it before the training steps need the memory).
"""

from __future__ import annotations

import logging
import time
import weakref

import torch
import torch.nn.functional as F

from qwen3_trainer.model import decode_attention, decode_step, sampling
from qwen3_trainer.model.generation import (
    GenerationOutput,
    SamplingParams,
    _restore_moe_counters,
    _save_moe_counters,
    _thinking_at_prompt_end,
)
from qwen3_trainer.model.kv_cache import (
    FORCED_CAPACITY,
    STOP_CAPACITY,
    DecodeWorkspace,
    kv_bytes,
    kv_dtype_of,
    to_kv,
)

log = logging.getLogger("qwen3_trainer.decode")

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MIN_CACHE = 256  # smallest static cache (columns); its length is a power of two
PREFILL_TOKENS = 16_384  # tokens per prefill chunk (rows are chunked; attention stays within a row)


# ---------------------------------------------------------------- the engine


def _window(slot: int, length: int) -> int:
    """Cache columns a step at ``slot`` attends over (one graph each): multiples of 64 up to 512, then
    powers of two, never past the cache; attention reads ~ the live context, not the whole cache."""
    need = slot + 1
    w = -(-need // 64) * 64 if need <= 512 else 1 << (need - 1).bit_length()
    return min(length, w)


def _unsupported(model) -> str | None:
    """Why the engine cannot run ``model``'s layers through its own functions (None: it can)."""
    from torch.distributed.tensor import DTensor

    if not all(hasattr(model, a) for a in ("tok_embeddings", "layers", "norm", "output", "rope_cache")):
        return "not a torchtitan Qwen3Model"
    if any(isinstance(p, DTensor) for p in model.parameters()):
        return "sharded (DTensor) parameters"
    for layer in model.layers.values():
        attn = layer.attention
        linears = [attn.wq, attn.wk, attn.wv, attn.wo]
        if not layer.moe_enabled:
            linears += [layer.feed_forward.w1, layer.feed_forward.w2, layer.feed_forward.w3]
        for m in linears:
            if type(m) is not torch.nn.Linear or m.bias is not None or m._forward_hooks or m._forward_pre_hooks:
                return f"layer linear {type(m).__name__} with a bias, hooks or a custom class"
    return None


def _triton_attention_ok(model) -> bool:
    """The Triton decode attention agrees with SDPA on this model's head shapes (else SDPA is used)."""
    attn = model.layers["0"].attention
    dev, dt = model.tok_embeddings.weight.device, model.tok_embeddings.weight.dtype
    q0 = torch.empty(0, dtype=dt, device=dev)
    if not decode_attention.usable(q0):
        return False
    kvh = attn.wk.out_features // attn.head_dim
    g = torch.Generator(device=dev).manual_seed(0)
    try:
        for batch, window, config in ((3, 256, (64, 4, 2, 1, 1)), (1, 2048, (64, 4, 2, 4, 1))):  # + split, merge
            q = torch.randn((batch, kvh, attn.n_rep, attn.head_dim), generator=g, device=dev, dtype=dt)
            k, v = (torch.randn((batch, kvh, window, attn.head_dim), generator=g, device=dev, dtype=dt)
                    for _ in range(2))  # fmt: skip
            bias = torch.zeros((batch, window), device=dev, dtype=dt)
            bias[:, window // 3 :] = float("-inf")
            bias[:, -1] = 0
            ref = decode_attention.sdpa(q.float(), k.float(), v.float(), bias.float(), window, attn.scaling)
            out = decode_attention._launch(q, k, v, bias, window, attn.scaling, config).float()
            if not (out - ref).abs().max() < 2e-2:
                log.warning("decode engine: Triton attention differs from SDPA by %.3g; using SDPA",
                            float((out - ref).abs().max()))  # fmt: skip
                return False
    except Exception as exc:  # noqa: BLE001 - any failure means: use SDPA
        log.warning("decode engine: Triton attention unavailable (%s); using SDPA", exc)
        return False
    return True


def _recompile_limit_patch(on: bool):
    """One compiled function serves many (bucket, window) shapes: raise dynamo's per-function limit."""
    import contextlib

    if not on:
        return contextlib.nullcontext()
    import torch._inductor.config

    cfg = torch._dynamo.config
    name = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"
    stack = contextlib.ExitStack()
    stack.enter_context(cfg.patch(**{name: 512}))
    inductor = torch._inductor.config
    if hasattr(inductor, "emulate_precision_casts"):  # round bf16 intermediates as eager does
        stack.enter_context(inductor.patch(emulate_precision_casts=True))
    return stack


def _compile_errors() -> tuple[type[BaseException], ...]:
    from torch._dynamo.exc import BackendCompilerFailed

    errors: list[type[BaseException]] = [BackendCompilerFailed]
    try:
        from torch._inductor.exc import InductorError

        errors.append(InductorError)
    except ImportError:  # older torch: inductor's failures arrive as BackendCompilerFailed
        pass
    return tuple(errors)


def _eager_if_compile_fails(compiled, eager, key: tuple):
    """``compiled``, or ``eager`` from the call where compiling it fails: a compiler bug for one step
    function (inductor could not generate the top-p sort at bucket 256 on an H200, torch 2.11) costs
    that function its fusion, not the rollout. Compilation happens before the graph runs, so nothing
    was written when the error comes; any other error is raised as it is."""
    state = {"fn": compiled}

    def call(*args):
        if state["fn"] is eager:
            return eager(*args)
        try:
            return compiled(*args)
        except _compile_errors() as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            log.warning("decode engine: compiling %s failed (%s: %s); it runs uncompiled", key[0],
                        type(exc).__name__, first[:200])  # fmt: skip
            state["fn"] = eager
            return eager(*args)

    return call


class DecodeEngine:
    """Batched generation on one torchtitan Qwen3 model (see the module docstring)."""

    def __init__(self, model, *, buckets: tuple[int, ...] = DEFAULT_BUCKETS, compile: bool | None = None,
                 cuda_graphs: bool | None = None, stop_check_interval: int | None = None,
                 max_len: int | None = None, compact: bool = True, pack_weights: bool | None = None,
                 attention: str | None = None, inductor_options: dict | None = None,
                 kv_dtype: str | None = None):  # fmt: skip
        self._model = weakref.ref(model)
        self.kv_dtype = kv_dtype_of(kv_dtype, model.tok_embeddings.weight.dtype)  # float8_e4m3fn: opt-in
        self.inductor_options = inductor_options  # torch.compile(options=...) of the step functions
        cuda = model.tok_embeddings.weight.device.type == "cuda"
        self.compile = cuda if compile is None else compile
        self.cuda_graphs = cuda if cuda_graphs is None else (cuda_graphs and cuda)
        self.check_every = stop_check_interval or (16 if self.cuda_graphs else 1)
        self.static = self.compile or self.cuda_graphs  # few distinct shapes: windows, lengths
        self.buckets = tuple(sorted(buckets))
        self.max_len, self.compact = max_len, compact
        self.unsupported = _unsupported(model)
        if not self.unsupported and (cuda if pack_weights is None else pack_weights):
            decode_step.pack_projections(model)
        self.attention = attention or ("triton" if cuda and _triton_attention_ok(model) else "sdpa")
        self.ws: DecodeWorkspace | None = None
        self.graphs: dict[tuple, torch.cuda.CUDAGraph] = {}
        self._eager_keys: set[tuple] = set()  # keys whose capture failed: run eagerly
        self._fns: dict[tuple, object] = {}
        self._ptrs: tuple = ()
        self._pool = None
        self.stats: dict[str, float] = {}  # of the last call
        self._last_unique = 0

    @property
    def model(self):
        model = self._model()
        if model is None:
            raise RuntimeError("the engine's model was garbage-collected")
        return model

    def _drop_graphs(self) -> None:
        # the pool goes with its graphs: capturing into a pool whose graphs are all gone trips an
        # allocator assert (use_count > 0, torch 2.11), so the next capture starts a new one
        self.graphs.clear()
        self._eager_keys.clear()
        self._pool = None

    def release(self) -> None:
        """Free the KV cache, result buffers and CUDA graphs (compiled code stays in torch's cache)."""
        self._drop_graphs()
        self.ws = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- planning (all validation happens here, before any kernel) -------------------------------
    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _plan(self, prompts: list[list[int]], params: SamplingParams, tokenizer) -> dict:
        model = self.model
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
        rows = model.tok_embeddings.num_embeddings
        if len(prompts) > self.buckets[-1]:
            raise ValueError(f"batch of {len(prompts)} prompts exceeds the largest batch bucket "
                             f"({self.buckets[-1]}): split it or give the engine larger buckets")  # fmt: skip
        if any(t < 0 or t >= rows for p in prompts for t in p):
            raise ValueError(f"a prompt holds a token id outside the vocabulary [0, {rows})")
        stops = tuple(params.stop_ids if params.stop_ids is not None else tokenizer.stop_ids)
        bad = [t for t in stops if not 0 <= t < rows]
        if bad:
            raise ValueError(f"stop id {bad[0]} is outside the vocabulary of {rows} ids")
        if len(stops) > STOP_CAPACITY:
            raise ValueError(f"{len(stops)} stop ids; at most {STOP_CAPACITY}")
        forced = tokenizer.encode(params.stop_thinking_text) if params.thinking_budget is not None else []
        if len(forced) > FORCED_CAPACITY:
            raise ValueError(f"stop_thinking_text is {len(forced)} tokens; at most {FORCED_CAPACITY}")
        plen, new = max(map(len, prompts)), params.max_new_tokens
        context = int(model.rope_cache.shape[0])
        if plen + new > context:
            raise ValueError(f"prompt of {plen} tokens + max_new_tokens {new} exceeds the model's context "
                             f"of {context} positions")  # fmt: skip
        need = plen + new - 1  # cache columns: the prompt, then every generated token but the last
        if self.max_len is not None and need > self.max_len:
            raise ValueError(f"prompt of {plen} tokens + max_new_tokens {new} exceeds the engine's KV cache "
                             f"of {self.max_len} positions")  # fmt: skip
        length = need
        if self.static:  # few distinct shapes: a power of two >= MIN_CACHE, within the limits
            length = max(need, min(max(MIN_CACHE, 1 << (need - 1).bit_length()), context, self.max_len or context))
        vocab = getattr(tokenizer, "vocab_size", None) or rows
        return {"stops": stops, "forced": forced, "plen": plen, "new": new, "length": length,
                "vocab": min(vocab, model.output.out_features),
                "mode": sampling.sampling_mode(params.temperature, params.top_k, params.top_p)}  # fmt: skip

    # -- generate ---------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams, tokenizer) -> GenerationOutput:
        params.validate()
        plan = self._plan(prompts, params, tokenizer)
        if self.unsupported:
            from qwen3_trainer.model.generation_eager import generate_eager

            log.warning("decode engine: %s; using the eager reference path", self.unsupported)
            return generate_eager(self.model, prompts, tokenizer, params)
        model = self.model
        was_training = model.training
        model.eval()
        counters = _save_moe_counters(model)
        try:
            with torch.inference_mode(), _recompile_limit_patch(self.compile):
                return self._run(prompts, params, tokenizer, plan)
        finally:
            _restore_moe_counters(model, counters)
            model.train(was_training)

    def _workspace(self, b: int, length: int) -> DecodeWorkspace:
        ws = self.ws
        if ws is None or ws.capacity < b or ws.length < length:
            self._drop_graphs()
            self.ws = None
            cap = max(b, ws.capacity if ws is not None else 0)
            self.ws = ws = DecodeWorkspace(self.model, cap, max(length, ws.length if ws is not None else 0),
                                           self.kv_dtype)
        return ws

    def _weights(self):
        """Per-layer weight tuples; graphs are dropped when any parameter moved."""
        model = self.model
        ptrs = tuple(p.data_ptr() for p in model.parameters()) + (model.rope_cache.data_ptr(),)
        if ptrs != self._ptrs:
            self._drop_graphs()
            self._ptrs = ptrs
        layers = []
        for layer in model.layers.values():
            a = layer.attention
            qn, kn = (a.q_norm.weight, a.k_norm.weight) if a.q_norm is not None else (None, None)
            qkv = decode_step.packed_view([a.wq.weight, a.wk.weight, a.wv.weight])
            aw = (layer.attention_norm.weight, qkv if qkv is not None else (a.wq.weight, a.wk.weight, a.wv.weight),
                  qn, kn)  # fmt: skip
            fw = w2 = ffn_sizes = None
            if not layer.moe_enabled:
                ff = layer.feed_forward
                w13 = decode_step.packed_view([ff.w1.weight, ff.w3.weight])
                fw = (layer.ffn_norm.weight, w13 if w13 is not None else (ff.w1.weight, ff.w3.weight))
                w2, ffn_sizes = ff.w2.weight, (ff.w1.out_features,)
            eps = (layer.attention_norm.eps, a.q_norm.eps if qn is not None else None,
                   a.k_norm.eps if kn is not None else None, layer.ffn_norm.eps)  # fmt: skip
            sizes = (a.wq.out_features, a.wk.out_features)
            pre_key = (eps, sizes, bool(layers))  # the first layer has no residual to add
            layers.append((layer, aw, a.wo.weight, fw, w2, pre_key, (eps, ffn_sizes), a.scaling))
        return layers

    def _fn(self, kind: str, *key):
        """The step function ``kind`` for static ``key``, compiled on first use when ``compile``."""
        fn = self._fns.get((kind, *key))
        if fn is None:
            fn = decode_step.make(kind, *key)
            if self.compile:
                compiled = torch.compile(fn, fullgraph=True, dynamic=False, options=self.inductor_options)
                fn = _eager_if_compile_fails(compiled, fn, (kind, *key))
            self._fns[(kind, *key)] = fn
        return fn

    def _run(self, prompts, params, tokenizer, plan) -> GenerationOutput:
        t_start = time.perf_counter()
        n, plen, new = len(prompts), plan["plen"], plan["new"]
        b = self.bucket(n)
        ws = self._workspace(b, plan["length"])
        layers = self._weights()
        dev = ws.device
        # settings of this call
        ws.temperature.fill_(params.temperature or 1.0)
        ws.top_p.fill_(params.top_p)
        ws.seed.fill_(params.seed if params.seed is not None else int(torch.randint(0, 2**31 - 1, ())))
        ws.row_offset.fill_(params.row_offset)
        ws.budget.fill_(params.thinking_budget or 0)
        ws.has_budget.fill_(params.thinking_budget is not None and len(plan["forced"]) > 0)
        ws.forced_len.fill_(len(plan["forced"]))
        if plan["forced"]:
            ws.forced_text[: len(plan["forced"])] = torch.tensor(plan["forced"], device=dev)
        ws.stop_ids.fill_(-1)
        if plan["stops"]:
            ws.stop_ids[: len(plan["stops"])] = torch.tensor(plan["stops"], device=dev)
        ws.out_len.zero_()
        ws.out_stop.zero_()
        # rows: real ones, then padding rows (done, writing to the scratch row)
        thinking = [_thinking_at_prompt_end(p, tokenizer.think, tokenizer.end_think, tokenizer.im_start)
                    for p in prompts]  # fmt: skip
        budget0 = params.thinking_budget == 0 and len(plan["forced"]) > 0
        pad = b - n
        st = ws.state

        def put(t, values):
            t[:b] = torch.tensor(values, dtype=t.dtype, device=dev)

        put(st.row, list(range(n)) + [ws.scratch_row] * pad)
        put(st.done, [False] * n + [True] * pad)
        put(st.thinking, thinking + [False] * pad)
        put(st.count, [0] * b)
        put(st.qpos, [0 if t and budget0 else -1 for t in thinking] + [-1] * pad)
        put(st.pos, [len(p) - 1 for p in prompts] + [0] * pad)
        st.slot.fill_(plen - 1)
        st.step.zero_()
        visible = torch.zeros((b, ws.length), dtype=torch.bool)
        for i, p in enumerate(prompts):
            visible[i, plen - len(p) : plen] = True
        visible[n:, 0] = True  # padding rows see one column: no row of the softmax is empty
        ws.bias[:b] = torch.where(visible, 0.0, float("-inf")).to(device=dev, dtype=ws.dtype)

        h = self._prefill(ws, prompts, plen)
        if pad:
            h = torch.cat([h, h.new_zeros(pad, h.shape[-1])])
        key = (plan["mode"], params.top_k, plan["vocab"], tokenizer.think, tokenizer.end_think)
        self._choose(ws, b, self._head(h), key)

        steps = compactions = 0
        for t in range(1, new):
            if t % self.check_every == 0:
                live = (~st.done[:b]).nonzero().squeeze(1)
                if live.numel() == 0:
                    break
                nb = self.bucket(live.numel())
                if self.compact and nb < b:
                    ws.compact(live, nb)
                    b, compactions = nb, compactions + 1
            slot = plen + t - 1
            window = slot + 1 if not self.static else _window(slot, ws.length)
            self._decode(ws, b, window, layers, key)
            steps += 1
        lens, stop = ws.out_len[:n].tolist(), ws.out_stop[:n].tolist()
        tok, lp, forced = (x[:n, :new].cpu() for x in (ws.out_tok, ws.out_lp, ws.out_forced))
        self.stats = {"batch": n, "prefill_rows": self._last_unique, "bucket": self.bucket(n),
                      "cache_len": ws.length, "steps": steps, "compactions": compactions,
                      "graphs": len(self.graphs), "eager_shapes": len(self._eager_keys),
                      "attention": self.attention, "total_s": time.perf_counter() - t_start}  # fmt: skip  # fmt: skip
        return GenerationOutput(
            [tok[i, : lens[i]].tolist() for i in range(n)],
            [lp[i, : lens[i]].tolist() for i in range(n)],
            [forced[i, : lens[i]].tolist() for i in range(n)],
            ["stop" if s else "length" for s in stop],
        )

    # -- the pieces ----------------------------------------------------------------------------
    def _head(self, h: torch.Tensor) -> torch.Tensor:
        model = self.model  # the modules themselves: their hooks and an output bias apply
        return model.output(model.norm(h[:, None]))[:, 0]

    def _choose(self, ws: DecodeWorkspace, b: int, logits: torch.Tensor, key: tuple) -> None:
        out = (ws.out_tok, ws.out_lp, ws.out_forced, ws.out_len, ws.out_stop)
        cfg = (ws.temperature, ws.top_p, ws.seed, ws.row_offset, ws.budget, ws.has_budget, ws.forced_text,
               ws.forced_len, ws.stop_ids)  # fmt: skip
        self._fn("choose", *key)(logits, tuple(ws.state.view(b).tensors()), out, cfg)

    def _prefill(self, ws: DecodeWorkspace, prompts: list[list[int]], plen: int) -> torch.Tensor:
        """Hidden state after the last prompt token, per row [n, dim]; K/V written to cache rows.
        Each distinct prompt is computed once and its K/V copied to every row that holds it."""
        model, dev = self.model, ws.device
        index: dict[tuple, int] = {}
        inverse = [index.setdefault(tuple(p), len(index)) for p in prompts]
        unique = list(index)
        self._last_unique = len(unique)
        inverse_t = torch.tensor(inverse, device=dev)
        chunk = max(1, PREFILL_TOKENS // plen)
        last = []
        for c0 in range(0, len(unique), chunk):
            rows = unique[c0 : c0 + chunk]
            u = len(rows)
            tokens = torch.zeros((u, plen), dtype=torch.long)
            valid = torch.zeros((u, plen), dtype=torch.bool)
            for i, p in enumerate(rows):
                tokens[i, plen - len(p) :] = torch.tensor(p)
                valid[i, plen - len(p) :] = True
            tokens, valid = tokens.to(dev), valid.to(dev)
            positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
            causal = torch.ones((plen, plen), dtype=torch.bool, device=dev).tril()
            mask = (causal[None] & valid[:, None, :]) | torch.eye(plen, dtype=torch.bool, device=dev)[None]
            dest = ((inverse_t >= c0) & (inverse_t < c0 + u)).nonzero().squeeze(1)
            src = inverse_t[dest] - c0
            hd = model.layers["0"].attention.head_dim
            cs = model.rope_cache[positions].unsqueeze(2)
            h = model.tok_embeddings(tokens)
            cos, sin = cs[..., :hd].to(h.dtype), cs[..., hd:].to(h.dtype)
            for i, layer in enumerate(model.layers.values()):
                a = layer.attention
                x = layer.attention_norm(h)
                q, k, v = (w(x).view(u, plen, -1, hd) for w in (a.wq, a.wk, a.wv))
                if a.q_norm is not None:
                    q, k = a.q_norm(q), a.k_norm(k)
                q, k = (decode_step.rotate(t, cos, sin).transpose(1, 2) for t in (q, k))
                v = v.transpose(1, 2)
                kv_bytes(ws.k[i])[dest, :, :plen] = to_kv(k[src], ws.kv_dtype)
                kv_bytes(ws.v[i])[dest, :, :plen] = to_kv(v[src], ws.kv_dtype)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=a.scaling,
                                                     enable_gqa=True)  # fmt: skip
                h = h + a.wo(out.transpose(1, 2).reshape(u, plen, -1))
                ffn = layer.moe if layer.moe_enabled else layer.feed_forward
                h = h + ffn(layer.ffn_norm(h))
            last.append(h[:, -1])
        return torch.cat(last)[inverse_t]

    def _step(self, ws: DecodeWorkspace, b: int, window: int, layers, key: tuple) -> None:
        model, st = self.model, ws.state.view(b)
        bias = ws.bias[:b]
        h, cos, sin = self._fn("prologue")(st.tok, st.pos, model.tok_embeddings.weight, model.rope_cache,
                                           st.slot, bias)  # fmt: skip
        attend = decode_attention.decode_attention if self.attention == "triton" else decode_attention.sdpa
        z = None  # the last GEMM's output, not yet added to h: the next function's first op adds it
        for i, (layer, aw, wo, fw, w2, pre_key, ffn_key, scale) in enumerate(layers):
            kc, vc = ws.k[i][:b], ws.v[i][:b]
            h, q = self._fn("pre", *pre_key)(h, z, aw, kv_bytes(kc), kv_bytes(vc), cos, sin, st.slot)
            y = F.linear(attend(q, kc, vc, bias, window, scale).reshape(b, -1), wo)
            if fw is None:  # MoE: torchtitan's own block, eagerly (inside the graph on CUDA)
                h = h + y
                z = layer.moe(layer.ffn_norm(h)[:, None])[:, 0]
            else:
                h, g = self._fn("ffn", *ffn_key)(h, y, fw)
                z = F.linear(g, w2)
        self._choose(ws, b, self._head(h + z), key)

    def _decode(self, ws: DecodeWorkspace, b: int, window: int, layers, key: tuple) -> None:
        if not self.cuda_graphs:
            return self._step(ws, b, window, layers, key)
        graph = self.graphs.get((b, window, key))
        if graph is None and (b, window, key) not in self._eager_keys:
            graph = self._capture(ws, b, window, layers, key)
            if graph is None:
                return self._step(ws, b, window, layers, key)
        graph.replay()

    def _capture(self, ws, b, window, layers, key):
        """Warm up (compiles on first use) and capture one step; the state is put back after each
        warm-up, so that capturing in the middle of a generation changes nothing."""
        saved = [t.clone() for t in ws.small_state()]

        def restore():
            for t, s in zip(ws.small_state(), saved, strict=True):
                t.copy_(s)

        t0 = time.perf_counter()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(ws, b, window, layers, key)
                restore()
        torch.cuda.current_stream().wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self._pool):
                self._step(ws, b, window, layers, key)
        except Exception as exc:  # an op that cannot be captured: this shape runs eagerly
            log.warning("decode engine: CUDA graph capture of bucket %d window %d failed (%s: %s); "
                        "eager steps for it", b, window, type(exc).__name__, exc)  # fmt: skip
            self._eager_keys.add((b, window, key))
            self._pool = None
            torch.cuda.synchronize()
            restore()
            return None
        restore()
        self.graphs[(b, window, key)] = graph
        log.info("decode engine: captured bucket %d window %d %s in %.1f s", b, window, key[0],
                 time.perf_counter() - t0)  # fmt: skip
        return graph


_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def engine_for(model) -> DecodeEngine:
    """The model's shared engine (created on first use; it holds the model weakly)."""
    engine = _ENGINES.get(model)
    if engine is None:
        engine = _ENGINES[model] = DecodeEngine(model)
    return engine
