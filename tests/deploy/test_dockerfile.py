"""Static checks of the Dockerfile (no Docker engine here to build it): the trainer stage is the
CUDA torch 2.11 image plus this package, every stage runs as the non-root uid the chart expects, and
the chart's default images name these build targets."""

from __future__ import annotations

import re

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
    assert "pip install -c /tmp/torch-constraint.txt ." in trainer  # torch held at the base's build
    for folder in ("model", "platform", "workflows", "cli"):
        assert f"COPY {folder} ./{folder}" in trainer


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
