"""Paths through fsspec: a local directory or an object store URL (``s3://bucket/prefix``).

The one module that talks to storage. S3 endpoint and credentials come from the standard AWS
environment (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), so the same
code reaches AWS, MinIO or a local moto server.

Every S3 call has bounded, stated limits: a 2 s connect timeout, a 60 s read timeout and 2 attempts
(botocore's "standard" retry mode, the one retry layer: s3fs's own is turned off), so an endpoint
that cannot be reached fails within 10 s (``QTRAIN_S3_CONNECT_TIMEOUT``, ``QTRAIN_S3_READ_TIMEOUT``,
``QTRAIN_S3_MAX_ATTEMPTS`` or ``AWS_MAX_ATTEMPTS`` change them). Any failure of a storage call is a
``StorageError``: one line naming the path, and for S3 the endpoint and the limits, with credentials
in URLs redacted.

Whole directories are written through one publish (``publish_dir`` / ``staged_directory``): the content is
complete in a local staging folder first, and a destination that already holds something (a non-empty
directory, a file) is refused unless ``overwrite=True``. Local publishes are renames (atomic); on an
object store the files are uploaded under a temporary prefix and then copied into place with the small
metadata files (config, index, markers) last, so a reader keyed on them never sees partial weights.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec

S3FS_RETRIES = 1  # s3fs's own rounds of retries (its default 5 would multiply botocore's attempts)

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


class StorageError(OSError):
    """A path that cannot be read or written (one line, naming the path)."""


class StorageNotFound(StorageError, FileNotFoundError):
    """A path that does not exist."""


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced: ``http://user:pw@host`` -> ``http://***@host``."""
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", str(text))


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_limits() -> dict[str, float]:
    """The S3 client's limits, read at each call: connect / read timeout (s) and attempts per request."""
    env = os.environ
    return {"connect_timeout": float(env.get("QTRAIN_S3_CONNECT_TIMEOUT") or 2),
            "read_timeout": float(env.get("QTRAIN_S3_READ_TIMEOUT") or 60),
            "max_attempts": int(env.get("QTRAIN_S3_MAX_ATTEMPTS") or env.get("AWS_MAX_ATTEMPTS") or 2)}


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``path`` and the path stripped of its protocol."""
    path = str(path)
    kwargs = {}
    if path.startswith("s3://"):
        if endpoint():
            kwargs["client_kwargs"] = {"endpoint_url": endpoint()}
        limits = s3_limits()
        kwargs["config_kwargs"] = {"connect_timeout": limits["connect_timeout"],
                                   "read_timeout": limits["read_timeout"],
                                   "retries": {"max_attempts": int(limits["max_attempts"]), "mode": "standard"}}
        kwargs["skip_instance_cache"] = True
    fs, stripped = fsspec.core.url_to_fs(path, **kwargs)
    if path.startswith("s3://"):
        fs.retries = S3FS_RETRIES
    return fs, stripped


def _failure(path: str, exc: BaseException, action: str = "cannot access") -> StorageError:
    """One line for a failed storage call: what, why, and for S3 the endpoint and the limits tried;
    credentials redacted. ``action`` "unreachable" gives ``PATH is unreachable (...)``."""
    text = str(exc).strip().splitlines()
    why = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
    if str(path).startswith("s3://"):
        limits = s3_limits()
        why += (f"; S3 endpoint {endpoint() or 'AWS default'}, {int(limits['max_attempts'])} attempts, "
                f"{limits['connect_timeout']:g} s connect timeout")
    line = f"{path} is unreachable ({why})" if action == "unreachable" else f"{action} {path} ({why})"
    return StorageError(redact(line))


def _storage_exceptions() -> tuple[type[BaseException], ...]:
    """What a filesystem call raises when storage fails (not when our code is wrong)."""
    out: list[type[BaseException]] = [OSError]
    with contextlib.suppress(ImportError):
        from botocore.exceptions import BotoCoreError, ClientError

        out += [BotoCoreError, ClientError]
    return tuple(out)


@contextmanager
def _guard(path: str, action: str = "cannot access") -> Iterator[None]:
    try:
        yield
    except StorageError:
        raise
    except _storage_exceptions() as exc:
        raise _failure(path, exc, action) from exc


def check_reachable(path: str) -> None:
    """Raise StorageError (one line) when the bucket of a remote ``path`` cannot be listed."""
    if not is_remote(path):
        return
    bucket = path.split("://", 1)[1].split("/", 1)[0]
    fs, _ = filesystem(path)
    try:
        fs.ls(bucket)
    except Exception as exc:  # noqa: BLE001 - any failure means unusable storage
        raise _failure(path, exc, "unreachable") from None


def exists(path: str) -> bool:
    fs, p = filesystem(path)
    with _guard(path):
        return fs.exists(p) if not is_remote(path) else _remote_exists(fs, p)


def _remote_exists(fs, p: str) -> bool:
    # s3fs's exists() answers False for a bucket it cannot reach (it swallows every error of its
    # bucket probes): ask for the key, or list the bucket, so only "not there" is False
    bucket, _, key = p.partition("/")
    try:
        if key:
            fs.info(p)
        else:
            fs.ls(bucket)
        return True
    except FileNotFoundError:
        return False


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    try:
        with _guard(path, "cannot read"):
            return fs.cat_file(p)
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError):
            raise StorageNotFound(f"not found: {redact(path)}") from None
        if isinstance(exc.__cause__, IsADirectoryError):
            raise StorageError(f"{redact(path)} is a directory, not a file") from None
        raise


def read_text(path: str) -> str:
    data = read_bytes(path)
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise StorageError(f"{redact(path)}: not UTF-8 text (byte {exc.start})") from None


def join(base: str, *parts: str) -> str:
    base = str(base).rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts]])


def listdir(path: str) -> list[str]:
    """Base names under ``path`` (empty when it does not exist)."""
    fs, p = filesystem(path)
    try:
        with _guard(path, "cannot list"):
            return sorted(os.path.basename(e.rstrip("/")) for e in fs.ls(p, detail=False))
    except StorageError as exc:
        if isinstance(exc.__cause__, FileNotFoundError | NotADirectoryError):
            return []
        raise


@contextmanager
def local_copy(path: str) -> Iterator[Path]:
    """A local directory holding the files of ``path`` (downloaded if remote)."""
    if not is_remote(path):
        local = Path(str(path).removeprefix("file://"))
        if not local.exists():
            raise StorageNotFound(f"not found: {path}")
        yield local
        return
    if not exists(path):
        raise StorageNotFound(f"not found: {redact(path)}")
    fs, p = filesystem(path)
    with tempfile.TemporaryDirectory(prefix="qwen3-dl-") as tmp:
        with _guard(path, "cannot download"):
            fs.get(p.rstrip("/") + "/", tmp, recursive=True)
        yield Path(tmp)


# -- publishing a directory ----------------------------------------------------------------------
def occupied(dest: str) -> str | None:
    """Why writing a directory at ``dest`` would replace something (``None`` when it is free: absent or
    an empty directory)."""
    dest = str(dest).rstrip("/")
    if not is_remote(dest):
        final = Path(dest.removeprefix("file://"))
        if final.is_symlink():
            return "is a symbolic link"
        if final.is_file():
            return "is a file"
        if final.is_dir():
            with _guard(dest):
                return "is a directory that is not empty" if any(final.iterdir()) else None
        return "exists and is not a directory" if final.exists() else None
    fs, p = filesystem(dest)
    with _guard(dest):
        try:
            if fs.info(p).get("type") == "file":
                return "is an object (a file)"
        except FileNotFoundError:
            pass
        try:
            return "holds objects" if fs.ls(p, detail=False) else None
        except FileNotFoundError:
            return None


def check_destination(dest: str, overwrite: bool = False) -> None:
    """Raise StorageError (one line) when ``dest`` holds something and ``overwrite`` is not set."""
    why = None if overwrite else occupied(dest)
    if why:
        err = StorageError(f"{redact(dest)} {why}; refusing to replace it")
        err.hint = "choose another destination, or pass --overwrite to replace what it holds"
        raise err


def publish_dir(local_dir: str | Path, uri: str, overwrite: bool = False) -> str:
    """Publish the complete local directory ``local_dir`` at ``uri`` (local or ``s3://``); returns ``uri``.

    Refuses (StorageError) a destination that holds something unless ``overwrite``; with it, the old
    content is replaced only once the new one is in place. ``local_dir`` is moved for a local
    destination, copied for a remote one.
    """
    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        raise StorageError(f"nothing to publish: {local_dir} is not a directory")
    uri = str(uri).rstrip("/")
    check_destination(uri, overwrite)
    _readable_by_all(local_dir)
    if is_remote(uri):
        _publish_remote(local_dir, uri, overwrite)
    else:
        _publish_local(local_dir, Path(uri.removeprefix("file://")), overwrite)
    return uri


def _readable_by_all(folder: Path) -> None:
    """Give the tree the modes a plain write would (mkdtemp folders are 0700, safetensors files 0600)."""
    umask = _umask()
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        want = (0o755 if path.is_dir() else 0o644) & ~umask
        mode = path.stat().st_mode & 0o777
        if mode | want != mode:
            path.chmod(mode | want)


def _umask() -> int:
    try:  # Linux: read it, since setting it to read it would race with other threads' writes
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
        return umask


def _publish_local(stage: Path, final: Path, overwrite: bool) -> None:
    with _guard(str(final), "cannot write to"):
        final.parent.mkdir(parents=True, exist_ok=True)
        old = None
        if overwrite and occupied(str(final)):
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            final.rename(old)
        try:
            _move(stage, final)
        except OSError:
            if old is not None:
                old.rename(final)
            raise
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


def _move(stage: Path, final: Path) -> None:
    """Rename ``stage`` onto ``final`` (absent or an empty directory); across filesystems, copy it next to
    ``final`` first so the last step is still a rename."""
    try:
        os.rename(stage, final)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        near = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            shutil.copytree(stage, near, dirs_exist_ok=True, symlinks=True)
            near.chmod(stage.stat().st_mode & 0o777)
            os.rename(near, final)
        except BaseException:
            shutil.rmtree(near, ignore_errors=True)
            raise
        shutil.rmtree(stage, ignore_errors=True)


def _publish_remote(stage: Path, uri: str, overwrite: bool) -> None:
    fs, p = filesystem(uri)
    files = sorted((f for f in stage.rglob("*") if f.is_file()),
                   key=lambda f: (f.suffix in (".json", ".txt", "") or f.name.startswith("."), str(f)))
    tmp_prefix = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with _guard(uri, "cannot write to"):
            for f in files:
                fs.put_file(str(f), f"{tmp_prefix}/{f.relative_to(stage).as_posix()}")
            before = set(fs.find(p)) if overwrite else set()
            written = set()
            for f in files:
                rel = f.relative_to(stage).as_posix()
                fs.copy(f"{tmp_prefix}/{rel}", f"{p}/{rel}")
                written.add(f"{p}/{rel}")
            stale = sorted(before - written)
            if stale:  # what the old content had and the new one has not
                fs.rm(stale)
    finally:
        with contextlib.suppress(Exception):
            fs.rm(tmp_prefix, recursive=True)


@contextmanager
def staged_directory(dest: str, overwrite: bool = False) -> Iterator[Path]:
    """Write a directory atomically: yield a local staging folder, ``publish_dir`` it to ``dest`` on
    success. A destination that holds something is refused before the body runs (unless ``overwrite``)."""
    dest = str(dest).rstrip("/")
    check_destination(dest, overwrite)
    if not is_remote(dest):
        final = Path(dest.removeprefix("file://"))
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        except OSError as exc:
            raise StorageError(f"cannot write to {dest}: {exc.strerror or exc}") from exc
    else:
        stage = Path(tempfile.mkdtemp(prefix="qwen3-up-"))
    try:
        yield stage
        publish_dir(stage, dest, overwrite=overwrite)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
