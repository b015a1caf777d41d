"""Fixtures of the data tests: a real moto S3 server on 127.0.0.1, the real Qwen3 tokenizer, and
small corpora written to disk."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from qwen3_trainer.model import load_tokenizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
