"""Project layout: stdlib `platform` is not shadowed, and every package folder is in pyproject."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"model": "qwen3_trainer.model", "platform": "qwen3_trainer.platform",
          "workflows": "qwen3_trainer.workflows", "cli": "qwen3_trainer.cli",
          "recipe": "qwen3_trainer.recipe"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_stdlib_platform_imports_from_repo_root():
    # cwd (the repo root, holding platform/) is first on sys.path with `python -c`
    code = "import platform, sys; print(platform.__file__); print(platform.system())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    path, system = out.stdout.split()
    assert Path(path).parent == Path(sysconfig.get_paths()["stdlib"])
    assert system == "Linux"


def test_no_init_in_namespace_folders():
    for folder in ("model", "platform", "recipe", "workflows"):
        assert not (ROOT / folder / "__init__.py").exists(), folder


def test_every_package_listed():
    cfg = _pyproject()["tool"]["setuptools"]
    listed = set(cfg["packages"])
    package_dir = cfg["package-dir"]
    for folder, package in MAPPED.items():
        assert package_dir[package] == folder
        for sub in (ROOT / folder).rglob("*.py"):
            if "__pycache__" in sub.parts:
                continue
            rel = sub.parent.relative_to(ROOT / folder)
            name = ".".join([package, *rel.parts])
            assert name in listed, f"{sub.relative_to(ROOT)}: package {name} not in pyproject"


def test_public_api_resolves():
    from qwen3_trainer.model import FLAVORS, build_model, from_hf, to_hf

    assert callable(build_model) and callable(from_hf) and callable(to_hf) and "0.6B" in FLAVORS


def test_ruff_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:]


# each external system is reached from one place (STYLE.md: one module per external system)
SYSTEM_OWNERS = {
    "mlflow": ("platform/tracking.py",),
    "prefect": ("workflows/",),
    "fsspec": ("model/storage.py",),
    "kubernetes": ("platform/jobs/",),
}


def test_external_systems_have_one_owner():
    import re

    stray = []
    for folder in ("model", "platform", "recipe", "workflows", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text()
            for system, owners in SYSTEM_OWNERS.items():
                if re.search(rf"^\s*(import|from) {system}\b", text, re.M) and not rel.startswith(owners):
                    stray.append(f"{rel} imports {system}")
    assert not stray, stray
