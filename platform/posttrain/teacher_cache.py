"""A frozen teacher's top-k log-probs over the off-policy distillation data, computed once and cached.

The off-policy phase of strong-to-weak distillation trains the student on the teacher's own responses;
its forward KL needs the teacher's distribution at every response token. With a cache the training
job loads no teacher at all (``distill_offpolicy`` / ``distill_onpolicy`` param ``teacher_cache``):
the job here runs the teacher once over the SFT records (the ``messages`` records ``load_sft_samples``
reads, rendered and cut the same way) and stores, per sample, its token ids and loss mask and, at each
response position t (the positions whose next token ids[t+1] is trained), the teacher's ``k`` most
likely next tokens (int32) and their log-probs at ``temperature`` (fp16 or fp32), plus the log of the
mass outside them (``tail_logprob``, fp32).

Layout: ``shard-NNNNN.safetensors`` (``samples_per_shard`` consecutive samples each: ``ids``,
``loss_mask``, ``offsets``, ``pos_offsets``, ``topk_ids``, ``topk_logprobs``, ``tail_logprob``) and
``manifest.json`` (teacher path and flavor, k, temperature, dtype, vocabulary size, max_len, data hash,
shard list with sizes and sha256), written last: a folder without it is not a cache. Under torchrun
shard j is written by rank j % WORLD_SIZE, and each shard's batches depend only on its own samples,
so the files are byte-identical whatever the world size; every rank runs the same number of teacher
forwards (padding with dummy ones), so a teacher placed with a collective (FSDP) mesh also works.

The loss (``topk_forward_kl``): KL(q || p_student) on the teacher's top-k support, where q is the
teacher's top-k mass *renormalised* to sum to 1 (the tokens outside the top-k get no target). This is
a biased stand-in for the full forward KL (it ignores the tail, which holds 1 - sum_topk p of the
teacher's mass, and scales the head by 1 / sum_topk p), chosen because it needs nothing the cache
does not store and it equals the full-vocabulary KL when k = V. ``tail=True`` instead keeps the
unrenormalised head and adds the tail as one bucket, (1 - sum p_T) log((1 - sum p_T) / (1 - sum p_S)):
the KL between the (k + 1)-outcome coarsenings, a lower bound on the full KL that also asks the
student to keep the teacher's tail mass. The student's fp32 log-softmax lives ``chunk`` rows at a
time (each chunk checkpointed, as ``losses.token_stats``).

    qtrain posttrain teacher-cache cache.yaml                          # one process
    qtrain posttrain teacher-cache --teacher runs/T4/hf --data data/teacher.jsonl --out data/tcache --k 64
    torchrun --nproc-per-node 8 -m qwen3_trainer.cli.main posttrain teacher-cache cache.yaml   # 8 GPUs
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch.utils.checkpoint import checkpoint

from qwen3_trainer.platform.posttrain.losses import CHUNK_ROWS, IGNORE

log = logging.getLogger("qwen3_trainer.posttrain")

MANIFEST = "manifest.json"
FORMAT = "qwen3-trainer-teacher-cache"
_SHARD = re.compile(r"shard-\d{5}\.safetensors")
_NP_DTYPE = {"float16": np.float16, "float32": np.float32}


class CacheError(ValueError):
    """A teacher cache that cannot be written or used as asked (one line)."""


class TeacherCacheConfig(BaseModel):
    """One teacher-cache job (``qtrain posttrain teacher-cache``)."""

    model_config = ConfigDict(extra="forbid")

    teacher: str                                # frozen teacher: HF directory or DCP checkpoint (local or s3://)
    data: str | list[str]                       # SFT records with `messages` (the off-policy phase's data)
    out: str                                    # cache folder (local or s3://)
    k: int = Field(64, ge=1)                    # top-k tokens kept per response position
    temperature: float = Field(1.0, gt=0)       # the teacher's log-probs are of softmax(logits / temperature)
    dtype: Literal["float16", "float32"] = "float16"  # storage of the log-probs (fp32 for exact parity)
    seq_len: int = Field(gt=0)                  # samples cut to seq_len + 1 tokens (the training seq_len)
    batch: int = Field(8, ge=1)                 # sequences per teacher forward
    samples_per_shard: int = Field(1024, ge=1)  # one file per this many consecutive samples
    device: Literal["auto", "cpu", "cuda"] = "auto"
    overwrite: bool = False                     # replace a cache (or other files) already at `out`


class ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str
    first: int = Field(ge=0)                    # index of its first sample
    samples: int = Field(ge=1)
    positions: int = Field(ge=0)
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["qwen3-trainer-teacher-cache"]
    version: Literal[1]
    teacher: str
    teacher_flavor: str | None
    k: int = Field(ge=1)
    temperature: float = Field(gt=0)
    dtype: Literal["float16", "float32"]
    vocab_size: int = Field(ge=1)
    max_len: int = Field(ge=1)
    data: list[str]
    data_hash: str
    samples: int = Field(ge=1)
    positions: int = Field(ge=0)
    shards: list[ShardEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.k > self.vocab_size:
            raise ValueError(f"k {self.k} exceeds the vocabulary size {self.vocab_size}")
        first = 0
        for s in self.shards:
            if s.first != first:
                raise ValueError(f"shard {s.file} starts at sample {s.first}, expected {first}")
            first += s.samples
        if first != self.samples or sum(s.positions for s in self.shards) != self.positions:
            raise ValueError("the shards' sample / position counts do not add up to the totals")
        return self


def data_hash(samples: list[tuple[list[int], list[bool]]]) -> str:
    """sha256 of the rendered samples (ids and loss mask, in order): what the cache covers."""
    h = hashlib.sha256()
    for ids, mask in samples:
        h.update(np.int64(len(ids)).tobytes())
        h.update(np.asarray(ids, np.int32).tobytes())
        h.update(np.asarray(mask, np.uint8).tobytes())
    return h.hexdigest()


# -- the job -------------------------------------------------------------------------------------
def write_cache(cfg: TeacherCacheConfig, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Write the cache of ``cfg`` (this rank's shards; rank 0 the manifest, last). ``model``: an already
    loaded teacher (the D preparation job passes the one that wrote the responses)."""
    import torch.distributed as dist
    from safetensors.numpy import save

    from qwen3_trainer.model import storage
    from qwen3_trainer.model.tokenizer import load_tokenizer
    from qwen3_trainer.platform.posttrain.distill import load_sft_samples

    t0 = time.perf_counter()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(cfg)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    _barrier()  # every rank reads data its rank 0 may just have written (the D preparation job)
    problem = [_destination_problem(cfg.out, cfg.overwrite) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(problem, src=0)
    if problem[0]:
        err = CacheError(problem[0])
        err.hint = "choose another `out`, or set `overwrite` (--overwrite) to replace what it holds"
        raise err
    if model is None and not storage.exists(cfg.teacher):
        raise CacheError(f"teacher: checkpoint {storage.redact(cfg.teacher)} does not exist")
    tok = load_tokenizer()
    try:
        samples = load_sft_samples(cfg.data, tok, cfg.seq_len)
    except ValueError as exc:
        raise CacheError(f"data: {str(exc).splitlines()[0]}") from None
    model = model if model is not None else _load_teacher(cfg, device)
    vocab = int(model.model_args.vocab_size)
    if cfg.k > vocab:
        raise CacheError(f"k: {cfg.k} exceeds the teacher's vocabulary of {vocab} rows")
    step = cfg.samples_per_shard
    ranges = [(lo, min(lo + step, len(samples))) for lo in range(0, len(samples), step)]
    forwards = [sum(-(-(hi - lo) // cfg.batch) for j, (lo, hi) in enumerate(ranges) if j % world == r)
                for r in range(world)]
    mine = []
    for j, (lo, hi) in enumerate(ranges):
        if j % world != rank:
            continue
        arrays = _shard_arrays(model, samples[lo:hi], cfg, device, tok.pad)
        blob = save(arrays)
        name = f"shard-{j:05d}.safetensors"
        _write_bytes(storage.join(cfg.out, name), blob)
        mine.append({"file": name, "first": lo, "samples": hi - lo, "positions": int(arrays["pos_offsets"][-1]),
                     "sha256": hashlib.sha256(blob).hexdigest()})
        log.info("teacher cache: rank %d wrote %s (%d samples, %d positions)", rank, name, hi - lo,
                 mine[-1]["positions"])
    for _ in range(max(forwards) - forwards[rank]):  # lockstep: a sharded teacher's forward is collective
        with torch.no_grad():
            model(torch.full((1, 1), tok.pad, dtype=torch.long, device=device))
    parts = [mine]
    if world > 1:
        parts = [None] * world
        dist.all_gather_object(parts, mine)
    shards = sorted((s for part in parts for s in part), key=lambda s: s["first"])
    if rank == 0:
        manifest = Manifest(
            format=FORMAT, version=1, teacher=storage.redact(cfg.teacher), teacher_flavor=_flavor_of(model.model_args),
            k=cfg.k, temperature=cfg.temperature, dtype=cfg.dtype, vocab_size=vocab, max_len=cfg.seq_len,
            data=[storage.redact(p) for p in ([cfg.data] if isinstance(cfg.data, str) else cfg.data)],
            data_hash=data_hash(samples), samples=len(samples), positions=sum(s["positions"] for s in shards),
            shards=shards)
        _remove_stale(cfg.out, {s["file"] for s in shards})
        _write_bytes(storage.join(cfg.out, MANIFEST), manifest.model_dump_json(indent=1).encode())
    _barrier()  # the job ends on every rank once the cache is complete
    return {"out": cfg.out, "samples": len(samples), "shards_written": len(mine), "k": cfg.k,
            "positions": sum(s["positions"] for s in mine), "seconds": round(time.perf_counter() - t0, 2)}


def _device(cfg: TeacherCacheConfig) -> torch.device:
    name = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def _load_teacher(cfg: TeacherCacheConfig, device: torch.device) -> torch.nn.Module:
    from qwen3_trainer.model.build import init_buffers
    from qwen3_trainer.platform.posttrain.rollouts import frozen_model

    model = frozen_model(cfg.teacher, device)
    if model.model_args.max_seq_len < cfg.seq_len + 1:  # the rope cache must cover the longest sample
        model.model_args.max_seq_len = cfg.seq_len + 1
        init_buffers(model, device)
    return model


def _flavor_of(args) -> str | None:
    from qwen3_trainer.model.flavors import FLAVORS

    keys = ("dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "moe_enabled")
    return next((name for name, f in FLAVORS.items() if all(getattr(f, k) == getattr(args, k) for k in keys)), None)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


@torch.no_grad()
def _shard_arrays(model, samples: list[tuple[list[int], list[bool]]], cfg: TeacherCacheConfig,
                  device: torch.device, pad: int) -> dict[str, np.ndarray]:
    # longest first, so a batch pads little; the order depends on the shard alone (world-size independent)
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i][0]))
    per: list[Any] = [None] * len(samples)
    for lo in range(0, len(order), cfg.batch):
        group = order[lo: lo + cfg.batch]
        for i, got in zip(group, _teacher_topk(model, [samples[i] for i in group], cfg, device, pad), strict=True):
            per[i] = got
    ids = [np.asarray(s[0], np.int32) for s in samples]
    return {
        "ids": np.concatenate(ids),
        "loss_mask": np.concatenate([np.asarray(s[1], np.uint8) for s in samples]),
        "offsets": np.cumsum([0] + [len(x) for x in ids], dtype=np.int64),
        "pos_offsets": np.cumsum([0] + [len(p[0]) for p in per], dtype=np.int64),
        "topk_ids": np.concatenate([p[0] for p in per]).reshape(-1, cfg.k),
        "topk_logprobs": np.concatenate([p[1] for p in per]).reshape(-1, cfg.k).astype(_NP_DTYPE[cfg.dtype]),
        "tail_logprob": np.concatenate([p[2] for p in per]).astype(np.float32),
    }


def _teacher_topk(model, rows, cfg: TeacherCacheConfig, device: torch.device, pad: int):
    """Per sample: (top-k ids [P, k], their log-probs [P, k], log tail mass [P]) at its response positions."""
    width = max(max(len(ids) for ids, _ in rows) - 1, 1)
    inputs = torch.full((len(rows), width), pad, dtype=torch.long)
    for j, (ids, _) in enumerate(rows):
        inputs[j, : len(ids) - 1] = torch.tensor(ids[:-1])
    logits = model(inputs.to(device))
    out = []
    for j, (_, mask) in enumerate(rows):
        pos = torch.nonzero(torch.tensor(mask[1:], dtype=torch.bool)).flatten().to(device)
        ids, vals, tails = [], [], []
        for c in pos.split(CHUNK_ROWS):
            z = logits[j, c].float() / cfg.temperature
            v, i = (z - z.logsumexp(-1, keepdim=True)).topk(cfg.k, dim=-1)
            ids.append(i.to(torch.int32).cpu())
            vals.append(v.cpu())
            tails.append(_log1mexp(v.logsumexp(-1)).cpu())
        out.append((torch.cat(ids).numpy(), torch.cat(vals).numpy(), torch.cat(tails).numpy()))
    return out


def _log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 - e^a) for a <= 0, accurate at both ends (Mächler 2012); -inf at a = 0."""
    a = a.clamp(max=0.0)
    return torch.where(a > -0.6931, torch.log(-torch.expm1(a)), torch.log1p(-torch.exp(a)))


def _destination_problem(out: str, overwrite: bool) -> str | None:
    """Why ``out`` cannot take the cache (None: free, or only an unfinished earlier attempt's shards)."""
    from qwen3_trainer.model import storage

    why = storage.occupied(out)
    if why is None:
        return None
    if why not in ("is a directory that is not empty", "holds objects"):
        return f"{storage.redact(out)} {why}; a teacher cache is a folder"
    names = storage.listdir(out)
    if overwrite:
        if MANIFEST in names:  # readers stop trusting the old cache before a single shard changes
            fs, p = storage.filesystem(storage.join(out, MANIFEST))
            fs.rm(p)
        return None
    if MANIFEST not in names and all(_SHARD.fullmatch(n) or n.startswith(".shard-") for n in names):
        return None  # an earlier attempt that did not finish (no manifest): its shards are rewritten
    return f"{storage.redact(out)} {why}; refusing to replace it (set overwrite to replace it)"


def _remove_stale(out: str, keep: set[str]) -> None:
    from qwen3_trainer.model import storage

    for name in storage.listdir(out):
        if _SHARD.fullmatch(name) and name not in keep:
            fs, p = storage.filesystem(storage.join(out, name))
            fs.rm(p)


def _write_bytes(path: str, data: bytes) -> None:
    """One file, atomically: a local temporary file renamed into place; on S3 one PUT."""
    from qwen3_trainer.model import storage

    fs, p = storage.filesystem(path)
    try:
        if storage.is_remote(path):
            fs.pipe_file(p, data)
            return
        folder, name = os.path.split(p)
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, p)
    except OSError as exc:
        raise storage.StorageError(f"cannot write {storage.redact(path)} ({type(exc).__name__}: {exc})") from None


# -- the reader ----------------------------------------------------------------------------------
class CacheRow(NamedTuple):
    ids: np.ndarray            # int32 [n]: the sample's tokens
    loss_mask: np.ndarray      # bool [n]: trained tokens
    topk_ids: np.ndarray       # int32 [P, k] at the P positions t with loss_mask[t + 1]
    topk_logprobs: np.ndarray  # fp16/fp32 [P, k], descending
    tail_logprob: np.ndarray   # fp32 [P]: log of the teacher's mass outside the top-k


class TeacherCache:
    """A written cache, read by sample index (shards opened on first use; remote ones downloaded once)."""

    def __init__(self, path: str):
        from qwen3_trainer.model import storage

        self.path = path
        try:
            text = storage.read_text(storage.join(path, MANIFEST))
        except FileNotFoundError:
            raise CacheError(f"teacher cache {storage.redact(path)}: no {MANIFEST} (not a cache, or its job "
                             "did not finish)") from None
        try:
            self.manifest = Manifest.model_validate_json(text)
        except ValidationError as exc:
            from qwen3_trainer.platform.validation import describe

            raise CacheError(f"teacher cache {storage.redact(path)}: {MANIFEST}: {describe(exc)}") from None
        self._firsts = np.asarray([s.first for s in self.manifest.shards], np.int64)
        self._open: dict[int, tuple[Any, dict[str, np.ndarray]]] = {}
        self._download: tempfile.TemporaryDirectory | None = None

    def __len__(self) -> int:
        return self.manifest.samples

    def __getitem__(self, i: int) -> CacheRow:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} outside the cache's {len(self)}")
        j = int(np.searchsorted(self._firsts, i, side="right")) - 1
        handle, small = self._shard(j)
        r = i - self.manifest.shards[j].first
        a, b = int(small["offsets"][r]), int(small["offsets"][r + 1])
        p, q = int(small["pos_offsets"][r]), int(small["pos_offsets"][r + 1])
        return CacheRow(small["ids"][a:b], small["loss_mask"][a:b].astype(bool),
                        handle.get_slice("topk_ids")[p:q], handle.get_slice("topk_logprobs")[p:q],
                        handle.get_slice("tail_logprob")[p:q])

    def check(self, *, vocab_size: int | None = None, temperature: float | None = None) -> None:
        """CacheError (one line) if the cache does not fit the student / the loss it is used for."""
        m, where = self.manifest, f"teacher cache {self.path}"
        if vocab_size is not None and m.vocab_size != vocab_size:
            raise CacheError(f"{where} has a vocabulary of {m.vocab_size} rows but the policy has {vocab_size}: "
                             "they must share the tokenizer and vocabulary size")
        if temperature is not None and abs(m.temperature - temperature) > 1e-9:
            raise CacheError(f"{where} holds the teacher at temperature {m.temperature:g} but this loss "
                             f"takes it at {temperature:g}")

    def check_data(self, samples: list[tuple[list[int], list[bool]]], max_len: int, what: str) -> None:
        """CacheError (one line) unless the cache covers exactly ``samples`` (the same records, rendered and cut)."""
        m, where = self.manifest, f"teacher cache {self.path}"
        if m.max_len != max_len:
            raise CacheError(f"{where} cut its samples at seq_len {m.max_len}; training has {max_len}")
        if data_hash(samples) != m.data_hash:
            raise CacheError(f"{where} was written over other data than {what} (data hash {m.data_hash[:12]} "
                             f"!= {data_hash(samples)[:12]})")

    def _shard(self, j: int):
        if j not in self._open:
            from safetensors import safe_open

            entry = self.manifest.shards[j]
            handle = safe_open(self._local_file(entry.file), framework="numpy")
            small = {n: handle.get_tensor(n) for n in ("ids", "loss_mask", "offsets", "pos_offsets")}
            shape = handle.get_slice("topk_ids").get_shape()
            if len(small["offsets"]) != entry.samples + 1 or list(shape) != [entry.positions, self.manifest.k]:
                raise CacheError(f"teacher cache {self.path}: {entry.file} holds top-k of shape {list(shape)} for "
                                 f"{len(small['offsets']) - 1} samples; the manifest says "
                                 f"[{entry.positions}, {self.manifest.k}] for {entry.samples}")
            self._open[j] = (handle, small)
        return self._open[j]

    def _local_file(self, name: str) -> str:
        from qwen3_trainer.model import storage

        url = storage.join(self.path, name)
        if not storage.is_remote(url):
            return url.removeprefix("file://")
        if self._download is None:
            self._download = tempfile.TemporaryDirectory(prefix="qwen3-tcache-")
        local = os.path.join(self._download.name, name)
        if not os.path.exists(local):
            with open(local, "wb") as fh:
                fh.write(storage.read_bytes(url))
        return local


def topk_batches(cache: TeacherCache, indices: list[int], *, micro_batch_size: int, pad_id: int,
                 max_len: int) -> list[dict[str, torch.Tensor]]:
    """Micro-batches of the cache's samples ``indices`` (``rollouts.sequences_to_batches`` rows) with the
    teacher's top-k at their loss positions, row-major: ``topk_ids`` [P, k], ``topk_logprobs`` [P, k],
    ``topk_tail`` [P] (P = the micro-batch's loss tokens; rows cut at ``max_len`` keep a prefix)."""
    from qwen3_trainer.platform.posttrain.rollouts import sequences_to_batches

    rows = [cache[i] for i in indices]
    batches = sequences_to_batches([[] for _ in rows], [r.ids.tolist() for r in rows],
                                   [r.loss_mask.tolist() for r in rows], micro_batch_size=micro_batch_size,
                                   pad_id=pad_id, max_len=max_len)
    for n, b in enumerate(batches):
        chunk = rows[n * micro_batch_size: (n + 1) * micro_batch_size]
        kept = (b["labels"] != IGNORE).sum(-1).tolist()
        b["topk_ids"] = torch.from_numpy(np.concatenate([r.topk_ids[:m] for r, m in zip(chunk, kept, strict=True)]))
        b["topk_logprobs"] = torch.from_numpy(np.concatenate([r.topk_logprobs[:m].astype(np.float32)
                                                              for r, m in zip(chunk, kept, strict=True)]))
        b["topk_tail"] = torch.from_numpy(np.concatenate([r.tail_logprob[:m] for r, m in zip(chunk, kept, strict=True)]))
        if b["topk_ids"].shape[0] != sum(kept):
            raise CacheError(f"teacher cache {cache.path}: a sample has fewer top-k rows than loss tokens")
    return batches


# -- the loss ------------------------------------------------------------------------------------
def _topk_kl_chunk(x: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, t_logp: torch.Tensor,
                   tail: torch.Tensor | None, temperature: float) -> torch.Tensor:
    z = x[mask].float() / temperature
    s = z.gather(-1, ids.long()) - z.logsumexp(-1, keepdim=True)  # the student's log p on the support
    t = t_logp.float()
    if tail is None:
        t = t - t.logsumexp(-1, keepdim=True)  # renormalised over the top-k
        kl = (t.exp() * (t - s)).sum(-1)
    else:
        s_tail = _log1mexp(s.logsumexp(-1).clamp(max=-1e-6))  # the student keeps some tail: finite log
        has = tail > float("-inf")
        safe = torch.where(has, tail, torch.zeros_like(tail))
        kl = (t.exp() * (t - s)).sum(-1) + torch.where(has, safe.exp() * (safe - s_tail), torch.zeros_like(safe))
    return torch.zeros(mask.shape, dtype=kl.dtype, device=kl.device).masked_scatter(mask, kl)


def topk_forward_kl(student_logits: torch.Tensor, mask: torch.Tensor, topk_ids: torch.Tensor,
                    topk_logprobs: torch.Tensor, *, temperature: float = 1.0, tail_logprob: torch.Tensor | None = None,
                    chunk: int = CHUNK_ROWS) -> torch.Tensor:
    """KL(teacher_topk || student) per position [B, S] (0 outside ``mask``), from the teacher's top-k
    ``topk_ids`` / ``topk_logprobs`` [P, k] at the P positions of ``mask`` in row-major order (see the
    module docstring for the renormalisation; ``tail_logprob`` [P] switches to the tail bucket). The
    student is softmax(logits / temperature) in fp32, ``chunk`` token rows at a time."""
    if chunk < 1:
        raise ValueError(f"logprob_chunk must be >= 1, got {chunk}")
    flat, m = student_logits.flatten(0, -2), mask.flatten().bool()
    if topk_ids.shape[0] != int(m.sum()):
        raise ValueError(f"{topk_ids.shape[0]} top-k rows for {int(m.sum())} loss positions")
    masks = m.split(chunk)
    counts = [int(c.sum()) for c in masks]
    tails = tail_logprob.split(counts) if tail_logprob is not None else [None] * len(masks)
    grad = torch.is_grad_enabled() and flat.requires_grad
    out = []
    for x, mm, ids, lp, tl in zip(flat.split(chunk), masks, topk_ids.split(counts), topk_logprobs.split(counts),
                                  tails, strict=True):
        if not int(mm.sum()):
            out.append(torch.zeros(mm.shape, dtype=torch.float32, device=flat.device))
            continue
        out.append(checkpoint(_topk_kl_chunk, x, mm, ids, lp, tl, temperature, use_reentrant=False) if grad
                   else _topk_kl_chunk(x, mm, ids, lp, tl, temperature))
    return torch.cat(out).view(mask.shape)

