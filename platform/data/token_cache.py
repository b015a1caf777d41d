"""Pre-tokenised shards: each data file is tokenised once and cached next to it.

Layout, beside ``data/web-00.jsonl``::

    data/web-00.jsonl.qwen3-tokens/<key>.tokens.npy    uint32, all documents back to back (no separators)
    data/web-00.jsonl.qwen3-tokens/<key>.offsets.npy   int64 [n_docs + 1], document boundaries
    data/web-00.jsonl.qwen3-tokens/<key>.mask.npy      uint8 loss mask (sft only: 1 on assistant tokens)
    data/web-00.jsonl.qwen3-tokens/<key>.json          manifest, written last: a shard is complete once it exists

``key`` hashes everything the ids depend on: the tokenizer (probed, so a changed vocabulary or chat
template gives a new key), the data kind and field, and the file's identity (size + mtime or ETag), so
an edited file is never served stale ids. When the source location cannot be written (read-only
directory, bucket without write access) the shard goes to the local cache directory instead
(``cache_dir``, else ``$QWEN3_DATA_CACHE``, else ``~/.cache/qwen3-trainer/tokens``). Local shards are
memory-mapped; remote ones are read into memory.

Pretraining text is encoded with ``allow_special=False``: a literal "<|endoftext|>" in web text stays
text, so the only document separators are the ones the packer inserts.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qwen3_trainer.model import storage

from .sources import CACHE_SUFFIX, DataError, DataFile, filesystem, read_records

CACHE_VERSION = 1
PROBE_TEXT = "Qwen3 probe: Hello, world! 1234 <|endoftext|> naïve café\n\tüber"
# Two exchanges, so renderers that train on different turns probe differently.
PROBE_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
              {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"},
              {"role": "assistant", "content": "<think>\nAdd.\n</think>\n\n4"}]

# A chat renderer: messages -> (ids, loss_mask) with mask 1 on the tokens the model learns.
ChatRenderer = Callable[[list[dict]], tuple[list[int], list[int]]]


@dataclass
class TokenShard:
    """The tokens of one data file: ``tokens[offsets[i]:offsets[i+1]]`` is document i."""

    tokens: np.ndarray
    offsets: np.ndarray
    mask: np.ndarray | None  # sft only
    location: str  # where the shard lives
    built: bool  # True when this run tokenised the file, False when the cache was reused

    @property
    def num_docs(self) -> int:
        return len(self.offsets) - 1


def tokenizer_fingerprint(tokenizer, kind: str, render_chat: ChatRenderer | None) -> str:
    """A short hash of what the ids depend on, probed rather than trusted from names."""
    parts = [type(tokenizer).__name__, str(getattr(tokenizer, "vocab_size", "")),
             str(tokenizer.endoftext), _encode_plain(tokenizer, [PROBE_TEXT])[0]]
    if kind == "sft" and render_chat is not None:
        parts.append(render_chat(PROBE_CHAT))
    return hashlib.sha256(json.dumps(parts, default=list).encode()).hexdigest()[:16]


def _encode_plain(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer.encode_batch(texts, allow_special=False)


def shard_key(file: DataFile, kind: str, field: str, tok_fp: str) -> str:
    spec = {"v": CACHE_VERSION, "tok": tok_fp, "kind": kind, "field": field, "format": file.format,
            "identity": file.identity}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def default_cache_dir(configured: str | None) -> str:
    return configured or os.environ.get("QWEN3_DATA_CACHE") or str(
        Path.home() / ".cache" / "qwen3-trainer" / "tokens")


def _locations(file: DataFile, cache_dir: str) -> list[str]:
    """Candidate shard directories: next to the source first, then the local fallback."""
    fallback = os.path.join(cache_dir, hashlib.sha256(file.url.encode()).hexdigest()[:16]
                            + "-" + os.path.basename(file.url) + CACHE_SUFFIX)
    return [file.url + CACHE_SUFFIX, fallback]


def _load(location: str, key: str, sft: bool) -> TokenShard | None:
    names = ["tokens", "offsets"] + (["mask"] if sft else [])
    if not storage.is_remote(location):
        if not os.path.isfile(os.path.join(location, f"{key}.json")):
            return None
        arrays = {n: np.load(os.path.join(location, f"{key}.{n}.npy"), mmap_mode="r") for n in names}
    else:
        fs, base = filesystem(location)
        try:
            fs.cat_file(f"{base}/{key}.json")
        except (FileNotFoundError, PermissionError):
            return None
        blobs = fs.cat([f"{base}/{key}.{n}.npy" for n in names])  # one concurrent fetch
        arrays = {n: np.load(io.BytesIO(blobs[f"{base}/{key}.{n}.npy"])) for n in names}
    return TokenShard(arrays["tokens"], arrays["offsets"], arrays.get("mask"), location, built=False)


def _write(location: str, key: str, arrays: dict[str, np.ndarray], manifest: dict) -> None:
    """Write arrays then the manifest; raises OSError when the location is not writable."""
    blobs = {}
    for name, arr in arrays.items():
        buf = io.BytesIO()
        np.save(buf, arr)
        blobs[f"{key}.{name}.npy"] = buf.getvalue()
    blobs[f"{key}.json"] = json.dumps(manifest, indent=1).encode()
    if storage.is_remote(location):
        fs, base = filesystem(location)
        for name, data in blobs.items():  # manifest is last in the dict: the commit marker
            fs.pipe_file(f"{base}/{name}", data)
        return
    os.makedirs(location, exist_ok=True)
    for name, data in blobs.items():
        tmp = os.path.join(location, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, os.path.join(location, name))  # atomic: concurrent ranks may race harmlessly


def _tokenize(file: DataFile, field: str, kind: str, tokenizer, render_chat: ChatRenderer | None,
              batch: int) -> tuple[dict[str, np.ndarray], int]:
    token_parts: list[np.ndarray] = []
    mask_parts: list[np.ndarray] = []
    skipped = 0

    def add(ids, mask=None) -> None:
        nonlocal skipped
        if len(ids) == 0:
            skipped += 1
            return
        token_parts.append(np.asarray(ids, dtype=np.uint32))
        if mask is not None:
            mask_parts.append(np.asarray(mask, dtype=np.uint8))

    pending: list[str] = []
    for index, value in enumerate(read_records(file, field, chat=kind == "sft")):
        if kind == "sft":
            try:
                ids, mask = render_chat(value)
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"data source {file.source!r}: {file.url} record {index + 1}: "
                                f"cannot render chat: {exc}") from exc
            if len(mask) != len(ids):
                raise DataError(f"chat renderer returned {len(ids)} ids but {len(mask)} mask values")
            add(ids, mask)
            continue
        pending.append(value)
        if len(pending) >= batch:
            for ids in _encode_plain(tokenizer, pending):
                add(ids)
            pending.clear()
    for ids in _encode_plain(tokenizer, pending) if pending else []:
        add(ids)
    lengths = [len(t) for t in token_parts]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.concatenate(token_parts) if token_parts else np.zeros(0, np.uint32)
    arrays = {"tokens": tokens, "offsets": offsets}
    if kind == "sft":
        arrays["mask"] = np.concatenate(mask_parts) if mask_parts else np.zeros(0, np.uint8)
    return arrays, skipped


def load_or_build(file: DataFile, *, kind: str, field: str, tokenizer, tok_fp: str,
                  render_chat: ChatRenderer | None, cache: bool, cache_dir: str | None,
                  batch: int = 512) -> TokenShard:
    """The token shard of ``file``: reused from the cache when present, else tokenised (and cached)."""
    key = shard_key(file, kind, field, tok_fp)
    locations = _locations(file, default_cache_dir(cache_dir))
    sft = kind == "sft"
    if cache:
        for location in locations:
            shard = _load(location, key, sft)
            if shard is not None:
                return shard
    arrays, skipped = _tokenize(file, field, kind, tokenizer, render_chat, batch)
    shard = TokenShard(arrays["tokens"], arrays["offsets"], arrays.get("mask"), location="", built=True)
    if cache:
        manifest = {"version": CACHE_VERSION, "source": file.url, "identity": file.identity, "kind": kind,
                    "field": field, "tokenizer": tok_fp, "num_docs": shard.num_docs,
                    "num_tokens": int(len(shard.tokens)), "skipped_empty": skipped}
        errors = []
        for location in locations:
            try:
                _write(location, key, arrays, manifest)
                shard.location = location
                break
            except (OSError, PermissionError) as exc:  # s3fs raises PermissionError subclasses of OSError
                errors.append(f"{location}: {exc}")
        else:
            raise DataError(f"cannot write token cache for {file.url}: {'; '.join(errors)}")
    return shard
