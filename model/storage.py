"""Paths through fsspec: a local directory or an object store URL (``s3://bucket/prefix``).

The one module that talks to storage. S3 endpoint and credentials come from the standard AWS
environment (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), so the same
code reaches AWS, MinIO or a local moto server. Writes of whole directories are staged in a local
temporary folder and published only when complete, so a failed write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec


class StorageError(OSError):
    """A path that cannot be read or written."""


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``path`` and the path stripped of its protocol."""
    path = str(path)
    kwargs = {}
    if path.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            kwargs["client_kwargs"] = {"endpoint_url": endpoint}
        kwargs["skip_instance_cache"] = True
    fs, stripped = fsspec.core.url_to_fs(path, **kwargs)
    return fs, stripped


def check_reachable(path: str) -> None:
    """Raise StorageError (one line) when the bucket of a remote ``path`` cannot be listed."""
    if not is_remote(path):
        return
    bucket = path.split("://", 1)[1].split("/", 1)[0]
    try:
        fs, _ = filesystem(path)
        fs.ls(bucket)
    except Exception as exc:  # noqa: BLE001 - any failure means unusable storage
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise StorageError(f"{path} is unreachable ({type(exc).__name__}: {first})") from None


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    return fs.exists(p)


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    try:
        return fs.cat_file(p)
    except FileNotFoundError as exc:
        raise StorageError(f"not found: {path}") from exc


def read_text(path: str) -> str:
    return read_bytes(path).decode()


def join(base: str, *parts: str) -> str:
    base = str(base).rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts]])


def listdir(path: str) -> list[str]:
    """Base names under ``path`` (empty when it does not exist)."""
    fs, p = filesystem(path)
    try:
        return sorted(os.path.basename(e.rstrip("/")) for e in fs.ls(p, detail=False))
    except FileNotFoundError:
        return []


@contextmanager
def local_copy(path: str) -> Iterator[Path]:
    """A local directory holding the files of ``path`` (downloaded if remote)."""
    if not is_remote(path):
        local = Path(str(path).removeprefix("file://"))
        if not local.exists():
            raise StorageError(f"not found: {path}")
        yield local
        return
    fs, p = filesystem(path)
    if not fs.exists(p):
        raise StorageError(f"not found: {path}")
    with tempfile.TemporaryDirectory(prefix="qwen3-dl-") as tmp:
        fs.get(p.rstrip("/") + "/", tmp, recursive=True)
        yield Path(tmp)


@contextmanager
def staged_directory(dest: str) -> Iterator[Path]:
    """Write a directory atomically: yield a local staging folder, publish it to ``dest`` on success.

    Local destinations are renamed into place (an existing ``dest`` is replaced only after the new
    content is complete); remote ones are uploaded under a temporary prefix and then moved.
    """
    dest = str(dest).rstrip("/")
    if not is_remote(dest):
        final = Path(dest.removeprefix("file://"))
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        except OSError as exc:
            raise StorageError(f"cannot write to {dest}: {exc.strerror or exc}") from exc
        try:
            yield stage
            if final.exists():
                old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
                final.rename(old)
                stage.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                stage.rename(final)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return
    fs, p = filesystem(dest)
    with tempfile.TemporaryDirectory(prefix="qwen3-up-") as tmp:
        yield Path(tmp)
        # Object stores have no rename: upload under a temporary prefix, then server-side copy each
        # object into place with the small metadata files (config, index, markers) last, so a
        # reader keyed on them never sees partial weights; the temporary prefix is then removed.
        files = sorted((f for f in Path(tmp).rglob("*") if f.is_file()),
                       key=lambda f: (f.suffix in (".json", ".txt", "") or f.name.startswith("."), str(f)))
        tmp_prefix = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            for f in files:
                fs.put_file(str(f), f"{tmp_prefix}/{f.relative_to(tmp).as_posix()}")
            if fs.exists(p):
                fs.rm(p, recursive=True)
            for f in files:
                rel = f.relative_to(tmp).as_posix()
                fs.copy(f"{tmp_prefix}/{rel}", f"{p}/{rel}")
        except Exception as exc:
            raise StorageError(f"cannot write to {dest}: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                fs.rm(tmp_prefix, recursive=True)
