"""``qtrain pipeline`` bad input: one line, exit code 2, and no job started (real CLI process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from qwen3_trainer.recipe import presets
from qwen3_trainer.recipe.specs import Layout


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
    """A preset whose S2 config fails TrainConfig validation (tp=3 does not divide 4 heads... on 3 processes)."""
    from typer.testing import CliRunner

    from qwen3_trainer.cli.pipeline_cmd import app

    tiny = presets.PRESETS["tiny"]
    s2 = tiny.spec("S2")
    s2 = s2.model_copy(update={"layout": Layout(tp=3), "scale": s2.scale.model_copy(update={"nproc_per_node": 3})})
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
    """The full preset is rendered, not run: S3 as the PyTorchJob it would submit, with real pod resources."""
    import yaml
    from typer.testing import CliRunner

    from qwen3_trainer.cli.pipeline_cmd import app

    out = CliRunner().invoke(app, ["render", "--preset", "full", "--stage", "S3"])
    assert out.exit_code == 0, out.output
    configmap, job = yaml.safe_load_all(out.output)
    train = yaml.safe_load(configmap["data"]["config.yaml"])
    assert train["model"] == {"flavor": "235B-A22B", "rope_theta": 1e6}
    assert train["training"]["seq_len"] == 32768 and train["parallelism"]["cp"] == 1
    assert train["activation_checkpointing"] == "full"
    assert train["init"]["path"].startswith("s3://qwen3-trainer/pipelines/stages/<S2>")
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 31)
    assert job["spec"]["nprocPerNode"] == "8"
    pod = replicas["Master"]["template"]["spec"]
    res = pod["containers"][0]["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "8"
    assert _cpus(res["requests"]["cpu"]) >= 32 and _gib(res["requests"]["memory"]) >= 256  # >= 4 CPU, 32 GiB per GPU
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert _gib(shm["emptyDir"]["sizeLimit"]) >= 64


def test_render_distillation_shows_student_teacher_and_gpus():
    import yaml
    from typer.testing import CliRunner

    from qwen3_trainer.cli.pipeline_cmd import app

    out = CliRunner().invoke(app, ["render", "--preset", "full", "--stage", "D"])
    assert out.exit_code == 0, out.output
    head = [line for line in out.output.splitlines() if line.startswith("#")][:3]
    assert "student 30B-A3B" in head[0] and "teacher 235B-A22B (T4)" in head[0] and "8 node(s) x 8 GPU(s)" in head[1]
    configmap, job = yaml.safe_load_all(out.output)
    train = yaml.safe_load(configmap["data"]["config.yaml"])
    assert train["model"]["flavor"] == "30B-A3B" and train["init"]["path"] == "<student-init>"
    assert train["objective"]["params"]["teacher"].startswith("s3://qwen3-trainer/pipelines/stages/<T4>")
    prep = CliRunner().invoke(app, ["render", "--preset", "full", "--stage", "D", "--job", "prepare"])
    assert prep.exit_code == 0, prep.output
    configmap, job = yaml.safe_load_all(prep.output)
    assert "posttrain" in job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]
    assert yaml.safe_load(configmap["data"]["config.yaml"])["dataset"] == "s3://qwen3-corpus/posttrain/distill_prompts.jsonl"
    bad = CliRunner().invoke(app, ["render", "--preset", "full", "--stage", "S1", "--job", "prepare"])
    assert bad.exit_code == 2 and "has no prepare job" in bad.output


def _cpus(q: str) -> float:
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _gib(q: str) -> float:
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10}
    return float(q[:-2]) * units[q[-2:]] if q[-2:] in units else float(q) / 2**30


def test_recipe_file_with_a_missing_dataset(tmp_path, monkeypatch):
    """A user's recipe file naming a dataset that does not exist: one line naming the key, no job."""
    from typer.testing import CliRunner

    from qwen3_trainer.cli.pipeline_cmd import app
    from qwen3_trainer.recipe.files import dump_preset

    tiny = presets.PRESETS["tiny"]
    t2 = tiny.spec("T2")
    mine = tiny.model_copy(update={"stages": {**tiny.stages, "T2": t2.model_copy(
        update={"prepare": t2.prepare.model_copy(update={"dataset": str(tmp_path / "nope.jsonl")})})}})
    path = tmp_path / "mine.yaml"
    path.write_text(dump_preset(mine))
    monkeypatch.setenv("QTRAIN_HOME", str(tmp_path / "home"))
    out = CliRunner().invoke(app, ["run", "--preset", str(path), "--stages", "T2", "--root", str(tmp_path / "r")])
    assert out.exit_code == 2
    assert f"stages.T2.prepare.dataset: dataset {tmp_path / 'nope.jsonl'} does not exist" in out.output
    assert not (tmp_path / "home" / "jobs").exists()
