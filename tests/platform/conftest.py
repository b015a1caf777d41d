"""Fixtures for the platform tests: an isolated QTRAIN_HOME, the stand-in trainer entry, and the
Kubernetes API double (kube_api_double.py) with a kubeconfig pointing at it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ASSETS = Path(__file__).parent / "assets"
ENTRY = ASSETS / "allreduce_entry.py"


@pytest.fixture
def qtrain_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "qtrain-home"
    monkeypatch.setenv("QTRAIN_HOME", str(home))
    return home


@pytest.fixture
def allreduce_spec(tmp_path):
    """A JobSpec mapping running the stand-in trainer: 2 nodes x 1 process (Master + 1 Worker)."""

    def make(name: str = "ar", **over) -> dict:
        train = {"out_dir": str(tmp_path / f"out-{name}"), **over.pop("train", {})}
        return {"name": name, "image": "ghcr.io/qwen3-trainer/qwen3-trainer:0.1.0", "nodes": 2,
                "entrypoint": [str(ENTRY)], "train": train, **over}

    return make


@pytest.fixture
def kube_api():
    """A running Kubernetes API double and a kubeconfig file for it (token auth)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from kube_api_double import KubeApiDouble

    server = KubeApiDouble(token="test-token")
    server.start()
    try:
        yield server
    finally:
        server.stop()
