"""Finding and reading the records of a data source: jsonl (optionally gzipped) and parquet files, on
local disk or any fsspec URL (``s3://`` through ``qwen3_trainer.model.storage``).

A source's ``paths`` may name files, directories (searched recursively for known suffixes) or globs.
The resolved file list is sorted, so the document order before shuffling never depends on listing
order. Every error about a file is one line naming the source and the path.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.parquet as pq

from qwen3_trainer.model import storage

from .config import DataConfig, DataSource

SUFFIXES = {".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".json.gz": "jsonl", ".parquet": "parquet"}
CACHE_SUFFIX = ".qwen3-tokens"
PARQUET_BATCH_ROWS = 1024


class DataError(ValueError):
    """Bad data input (missing files, malformed records): printed as one line by the CLI."""


@dataclass(frozen=True)
class DataFile:
    """One resolved file of a source; ``identity`` changes whenever the content may have changed."""

    source: str
    url: str  # with protocol for remote files, a plain path for local ones
    format: str
    identity: str  # size + mtime (local) or size + ETag (object stores)


@functools.lru_cache(maxsize=8)
def _remote_fs(protocol: str, _env: tuple):
    return storage.filesystem(f"{protocol}://")[0]


def filesystem(url: str):
    """``storage.filesystem``, reusing one client per protocol and S3 environment: opening an s3fs
    client costs a new session (~0.2 s), and a build touches every file several times."""
    if not storage.is_remote(url):
        return storage.filesystem(url)
    env = tuple(os.environ.get(k) for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
                                             "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_MAX_ATTEMPTS"))
    fs = _remote_fs(url.split("://", 1)[0], env)
    return fs, fs._strip_protocol(url)


def _format_of(source: DataSource, url: str) -> str | None:
    if source.format:
        return source.format
    return next((fmt for suf, fmt in SUFFIXES.items() if url.endswith(suf)), None)


def _identity(info: dict) -> str:
    tag = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
    return f"{info.get('size')}:{str(tag).strip(chr(34))}"


def _expand(source: DataSource, path: str) -> list[tuple[str, dict]]:
    fs, stripped = filesystem(path)
    protocol = path.split("://", 1)[0] + "://" if storage.is_remote(path) else ""
    if any(ch in stripped for ch in "*?["):
        found = fs.glob(stripped, detail=True)
    elif fs.isdir(stripped):
        found = fs.find(stripped, detail=True)
    elif fs.exists(stripped):
        found = {stripped: fs.info(stripped)}
    else:
        found = {}
    out = []
    for name, info in sorted(found.items()):
        if info.get("type") == "directory" or CACHE_SUFFIX in name:
            continue
        if fs.isdir(name):  # globs may match directories
            out.extend(_expand(source, protocol + name))
            continue
        out.append((protocol + name, info))
    return out


def resolve_files(source: DataSource) -> list[DataFile]:
    """The data files of ``source``, sorted; raises DataError when a path matches nothing usable."""
    files: dict[str, DataFile] = {}
    for path in source.paths:
        try:
            matches = _expand(source, path)
        except Exception as exc:  # object stores raise their own (e.g. botocore) errors
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"data source {source.name!r}: cannot list {path}: {first}") from exc
        usable = [(url, info) for url, info in matches if _format_of(source, url)]
        if not usable:
            what = "no data files" if not matches else "no .jsonl/.jsonl.gz/.parquet files"
            raise DataError(f"data source {source.name!r}: {what} at {path}")
        for url, info in usable:
            files[url] = DataFile(source.name, url, _format_of(source, url), _identity(info))
    return [files[url] for url in sorted(files)]


def validate_sources(cfg: DataConfig) -> dict[str, list[DataFile]]:
    """Resolve every source's files, failing with one line on the first missing one.

    Cheap (listing only, no reads): the trainer calls it before any process group starts.
    """
    return {source.name: resolve_files(source) for source in cfg.sources}


def _open_text(file: DataFile) -> io.TextIOBase:
    fs, path = filesystem(file.url)
    raw = fs.open(path, "rb")
    if file.url.endswith(".gz"):
        raw = gzip.GzipFile(fileobj=raw)
    return io.TextIOWrapper(raw, encoding="utf-8")


def _check(file: DataFile, where: str, field: str, chat: bool, value: object) -> object:
    if chat:
        ok = isinstance(value, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) for m in value) and len(value) > 0
        want = "a non-empty list of {role, content} messages"
    else:
        ok, want = isinstance(value, str), "a string"
    if not ok:
        got = "missing" if value is None else type(value).__name__
        raise DataError(f"data source {file.source!r}: {file.url}{where}: field {field!r} must be {want} "
                        f"(got {got})")
    return value


def _jsonl_records(file: DataFile, field: str, chat: bool) -> Iterator[object]:
    with _open_text(file) as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"data source {file.source!r}: {file.url}:{lineno}: invalid JSON "
                                f"({exc.msg})") from exc
            value = record.get(field) if isinstance(record, dict) else None
            yield _check(file, f":{lineno}", field, chat, value)


def _parquet_records(file: DataFile, field: str, chat: bool) -> Iterator[object]:
    fs, path = filesystem(file.url)
    with fs.open(path, "rb") as fh:
        try:
            pf = pq.ParquetFile(fh)
        except Exception as exc:  # pyarrow raises its own ArrowInvalid for non-parquet bytes
            raise DataError(f"data source {file.source!r}: {file.url}: not a parquet file ({exc})") from exc
        if field not in pf.schema_arrow.names:
            raise DataError(f"data source {file.source!r}: {file.url}: no column {field!r} "
                            f"(columns: {', '.join(pf.schema_arrow.names)})")
        row = 0
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[field]):
            for value in batch.column(0).to_pylist():
                row += 1
                yield _check(file, f" row {row}", field, chat, value)


def read_records(file: DataFile, field: str, chat: bool = False) -> Iterator[object]:
    """The ``field`` value of every record of ``file``, in file order: a string, or (``chat``) a list
    of ``{role, content}`` messages."""
    try:
        if file.format == "parquet":
            yield from _parquet_records(file, field, chat)
        else:
            yield from _jsonl_records(file, field, chat)
    except FileNotFoundError as exc:
        raise DataError(f"data source {file.source!r}: file vanished: {file.url}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"data source {file.source!r}: {file.url}: not UTF-8 text ({exc.reason})") from exc
