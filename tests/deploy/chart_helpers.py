"""Constants and helpers shared by the deployment tests (a uniquely named module: importing
``conftest`` by name picks whichever conftest.py sys.path finds first)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "qwen3-trainer"
# values.yaml alone, then each CI values file on top of it (as `helm template -f` does)
VALUES_FILES = {"default": None, **{p.stem: p for p in sorted((CHART / "ci").glob("*-values.yaml"))}}
OVERLAYS = {"base": ROOT / "k8s" / "base", "dev": ROOT / "k8s" / "overlays" / "dev",
            "prod": ROOT / "k8s" / "overlays" / "prod", "dev-trainer": ROOT / "k8s" / "overlays" / "dev-trainer"}
RELEASE, NAMESPACE = "qwen3", "ml"


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


def helm_template(helm: Path, *args) -> subprocess.CompletedProcess:
    return run([helm, "template", RELEASE, CHART, "--namespace", NAMESPACE, *args])


def load_docs(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]
