"""Checks of the Dockerfile without a Docker engine (none here to build it): the trainer stage is the
CUDA torch 2.11 image plus this package (every folder pyproject maps to a subpackage, installed from
what the stage copies), every stage runs as the non-root uid the chart expects, and the chart's default
images name these build targets."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

import yaml
from chart_helpers import CHART, ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _stages() -> dict[str, str]:
    parts = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    return {re.search(r" AS (\w+)", p.splitlines()[0])[1]: p for p in parts}


def test_trainer_stage_is_cuda_torch_2_11_plus_the_package():
    stages = _stages()
    assert set(stages) == {"trainer", "tracking"}
    base = re.search(r"^ARG TORCH_IMAGE=(\S+)", DOCKERFILE, re.M)[1]
    assert re.fullmatch(r"pytorch/pytorch:2\.11\.0-cuda13\.\d-cudnn9-runtime", base), base
    trainer = stages["trainer"]
    assert "ARG TORCH_VERSION=2.11.0" in trainer
    # torch held at the base's build; the float8 extra so that `float8: true` runs in the image
    assert 'pip install -c /tmp/torch-constraint.txt ".[float8]"' in trainer
    # every folder of the package (pyproject's package-dir) is copied in before the install
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    folders = {d.split("/")[0] for d in package_dir.values() if d != "."}
    copied = set(re.findall(r"^COPY (\w+) \./\1$", trainer, re.M))
    assert folders <= copied, f"not copied into the trainer image: {sorted(folders - copied)}"


def test_what_the_trainer_stage_copies_installs_and_runs(tmp_path):
    """The trainer stage's COPY lines, copied as Docker would, make a package (not an editable one) whose
    CLI, recipe presets and Prefect deployment entrypoints import and run: a folder or data file left out
    of the image fails here, not on a cluster."""
    trainer = _stages()["trainer"]
    src = tmp_path / "src"
    src.mkdir()
    for line in re.findall(r"^COPY (.+)$", trainer, re.M):
        *names, dest = line.split()
        for name in names:
            target = src / (name if dest.endswith("/") else dest)
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / name, target)
    site = tmp_path / "site"
    built = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--no-compile", "--target", str(site), str(src)], capture_output=True, text=True,
                           timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    env = {**os.environ, "PYTHONPATH": str(site)}
    check = ("import qwen3_trainer, qwen3_trainer.workflows.flows, qwen3_trainer.platform.train.trainer; "
             "print(qwen3_trainer.__file__)")
    out = subprocess.run([sys.executable, "-c", check], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().startswith(str(site)), out.stdout  # the copied package, not this checkout
    cli = [sys.executable, "-c", "from qwen3_trainer.cli.main import main; main()"]
    shown = subprocess.run([*cli, "recipe", "show", "full", "--stage", "T2", "--json"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    spec = json.loads(shown.stdout)
    assert spec["stage"] == "T2" and spec["training"]["steps"] > 0
    # every Prefect deployment's entrypoint loads from the image's source tree (prefect.yaml's pull step
    # sets the working directory to the trainer stage's WORKDIR, where the COPYs put it)
    prefect = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    workdir = re.search(r"^WORKDIR (\S+)", trainer, re.M)[1]  # the first: where the COPYs land
    assert prefect["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] == workdir
    entrypoints = sorted({d["entrypoint"] for d in prefect["deployments"]})
    load = ("import sys; from prefect.flows import load_flow_from_entrypoint as load; "
            "print([load(e).name for e in sys.argv[1:]])")
    flows = subprocess.run([sys.executable, "-c", load, *entrypoints], env=env, cwd=src, capture_output=True,
                           text=True, timeout=300)
    assert flows.returncode == 0, flows.stderr[-2000:]
    assert len(entrypoints) > 1 and "qwen3-pipeline" in flows.stdout


def test_every_stage_runs_as_the_charts_uid():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    for name, stage in _stages().items():
        users = re.findall(r"^USER (\S+)", stage, re.M)
        assert users and users[-1] == str(uid), name


def test_chart_images_name_the_build_targets():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert f"-t {values['trainerImage']['repository']}:" in DOCKERFILE
    assert f"-t {values['mlflow']['image']['repository']}:{values['mlflow']['image']['tag']}" in DOCKERFILE
    assert f"mlflow=={values['mlflow']['image']['tag']}" in _stages()["tracking"]
