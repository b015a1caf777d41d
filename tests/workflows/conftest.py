"""Workflow test fixtures: Prefect's test harness (a temporary server + sqlite), once per session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_server():
    """Flows in this session report to a temporary Prefect server; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture
def qtrain_home(tmp_path, monkeypatch):
    """Local jobs, dumps and the default MLflow store of one test under its tmp dir."""
    home = tmp_path / "qtrain-home"
    monkeypatch.setenv("QTRAIN_HOME", str(home))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    return home
