"""``qtrain pipeline`` bad input: one line, exit code 2, and no job started (real CLI process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qwen3_trainer.workflows import presets


def qtrain(*args, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qwen3_trainer.cli.main", *args], capture_output=True, text=True,
                          timeout=120, env=env, **kw)


@pytest.fixture
def env(tmp_path, monkeypatch):
    import os

    home = tmp_path / "home"
    return {**os.environ, "QTRAIN_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
            "QTRAIN_PIPELINE_ROOT": str(tmp_path / "root")}


def _assert_bad_input(out: subprocess.CompletedProcess, needle: str, env: dict) -> None:
    from pathlib import Path

    assert out.returncode == 2, out.stdout + out.stderr
    first = out.stderr.strip().splitlines()[0]
    assert first.startswith("error:") and needle in first, out.stderr
    assert "Traceback" not in out.stderr
    assert not (Path(env["QTRAIN_HOME"]) / "jobs").exists()  # no job was submitted


@pytest.mark.parametrize(("args", "needle"), [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--stages", "S1,S9"], "unknown stage 'S9'"),
    (["--backend", "slurm"], "--backend must be local or k8s"),
    (["--max-steps", "0"], "max_steps"),
    (["--stages", "S2"], "stage S2 starts from S1, which has no registered checkpoint"),
    (["--mlflow-uri", "http://127.0.0.1:9"], "MLflow at http://127.0.0.1:9 is unreachable"),
])
def test_run_bad_input(args, needle, env):
    _assert_bad_input(qtrain("pipeline", "run", *args, env=env), needle, env)


def test_run_unreachable_s3_root(env):
    env = {**env, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
           "AWS_SECRET_ACCESS_KEY": "x", "AWS_MAX_ATTEMPTS": "1"}
    _assert_bad_input(qtrain("pipeline", "run", "--root", "s3://nowhere/runs", "--stages", "S1", env=env),
                      "root s3://nowhere/runs is unreachable", env)


def test_invalid_stage_config_fails_before_any_job(tmp_path, monkeypatch):
    """A preset whose S2 config fails TrainConfig validation (tp=3 does not divide 4 heads)."""
    from typer.testing import CliRunner

    from qwen3_trainer.cli.pipeline_cmd import app

    tiny = presets.PRESETS["tiny"]
    s2 = tiny.knobs("S2").model_copy(update={"parallelism": {"tp": 3}})
    broken = tiny.model_copy(update={"name": "broken", "stages": {**tiny.stages, "S2": s2}})
    monkeypatch.setitem(presets.PRESETS, "broken", broken)
    monkeypatch.setenv("QTRAIN_HOME", str(tmp_path / "home"))
    out = CliRunner().invoke(app, ["run", "--preset", "broken", "--stages", "S1,S2", "--root", str(tmp_path / "r")])
    assert out.exit_code == 2
    assert "stage S2: invalid training config" in out.output and "parallelism.tp=3" in out.output
    assert not (tmp_path / "home" / "jobs").exists()


def test_show_without_runs(env):
    out = qtrain("pipeline", "show", "--latest", "--json", env=env)
    assert out.returncode == 2 and "no pipeline runs under" in out.stderr


def test_render_full_scale_stage():
    """The full preset is rendered, not run: S3 as the PyTorchJob it would submit."""
    import yaml
    from typer.testing import CliRunner

    from qwen3_trainer.cli.pipeline_cmd import app

    out = CliRunner().invoke(app, ["render", "--preset", "full", "--stage", "S3"])
    assert out.exit_code == 0, out.output
    configmap, job = yaml.safe_load_all(out.output)
    train = yaml.safe_load(configmap["data"]["config.yaml"])
    assert train["model"] == {"flavor": "235B-A22B", "rope_theta": 1e6}
    assert train["training"]["seq_len"] == 32768 and train["parallelism"]["cp"] == 4
    assert train["init"]["path"].startswith("s3://qwen3-trainer/pipelines/stages/<S2>")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 31)
    assert job["spec"]["nprocPerNode"] == "8"
    limits = replicas["Master"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"
    bad = CliRunner().invoke(app, ["render", "--preset", "full", "--stage", "T1"])
    assert bad.exit_code == 2 and "stage T1: platform.posttrain.stages" in bad.output
