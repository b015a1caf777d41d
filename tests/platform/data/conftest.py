"""Fixtures of the data tests: a real moto S3 server on 127.0.0.1, the real Qwen3 tokenizer, and
small corpora written to disk."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from qwen3_trainer.model import load_tokenizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server; sets AWS_ENDPOINT_URL_S3, dummy credentials and region for the session."""
    exe = shutil.which("moto_server") or str(Path(sys.executable).with_name("moto_server"))
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    env = {"AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def s3_bucket(s3_server):
    from qwen3_trainer.model import storage

    fs, _ = storage.filesystem("s3://qwen3-data-tests")
    fs.mkdir("qwen3-data-tests")
    return "s3://qwen3-data-tests"


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer()


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Fallback token caches go under the test's tmp dir, never ~/.cache."""
    monkeypatch.setenv("QWEN3_DATA_CACHE", str(tmp_path / "fallback-cache"))


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def write_jsonl():
    """``write_jsonl(path, records)``: one JSON record per line."""
    return _write_jsonl
