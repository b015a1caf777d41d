"""Issue 20, the error model: the project's own errors are one line + exit 2; anything else is a crash
with its traceback; credentials never reach an error line or an MLflow param.

All in-process (typer's CliRunner, direct calls); nothing trains.
"""

from __future__ import annotations

import http.server
import threading

import pytest
import typer
from typer.testing import CliRunner

from qwen3_trainer.cli import main as cli_main
from qwen3_trainer.cli.output import UsageError, handle_errors

runner = CliRunner()


@pytest.fixture(scope="module")
def qtrain():
    if not any(getattr(g, "name", None) == "convert" for g in cli_main.app.registered_groups):
        cli_main._register()

    def run(*args: str):
        result = runner.invoke(cli_main.app, [str(a) for a in args])
        return result.exit_code, result.stderr, result

    return run


def _one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and needle in lines[0], err
    assert len(lines) <= 2 and "Traceback" not in err, err


# -- 3. handle_errors: known errors one line, anything else a crash --------------------------------
def _app(exc: BaseException) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @handle_errors
    def boom() -> None:
        raise exc

    return app


@pytest.mark.parametrize("exc", [ValueError("a bug"), KeyError("x"), OSError(5, "I/O error"), TypeError("t")])
def test_a_crash_keeps_its_traceback(exc):
    result = runner.invoke(_app(exc), [])
    assert result.exit_code == 1
    assert result.exception is exc               # propagated: the traceback is printed, also in a pod


def test_known_errors_are_one_line_exit_2(monkeypatch):
    from qwen3_trainer.model.storage import StorageError
    from qwen3_trainer.platform.jobs.spec import SpecError
    from qwen3_trainer.platform.train.run import PreflightError

    for exc in (UsageError("bad"), SpecError("bad"), PreflightError("bad"), StorageError("bad")):
        result = runner.invoke(_app(exc), [])
        assert result.exit_code == 2 and result.stderr.startswith("error: bad"), result.stderr
    monkeypatch.setenv("QTRAIN_DEBUG", "1")
    assert runner.invoke(_app(UsageError("bad")), []).exit_code == 1


# -- 2. bad training configs ---------------------------------------------------------------------
@pytest.mark.parametrize(("text", "args", "needle"), [
    ("model: {flavor: debugmodel\ntraining: [", [], "not valid YAML"),
    ("- just\n- a list\n", [], "expected a mapping at the top level"),
    ("model: {flavor: debugmodel}\ntraining: {steps: 2}\n", ["--set", "training.steps.x=1"], "--set training.steps.x"),
    ("model: {flavor: debugmodel}\ntraining: {steps: 2}\n", ["--set", "training.steps=[1"], "value is not YAML"),
    ("model: {flavor: debugmodel}\ntraining: {steps: 0}\n", [], "training.steps: Input should be greater than 0"),
])
def test_bad_training_config_is_one_line(qtrain, tmp_path, text, args, needle):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    code, err, _ = qtrain("train", cfg, *args)
    _one_line_error(code, err, needle)


def test_bad_toml_and_json_configs(qtrain, tmp_path):
    (tmp_path / "a.toml").write_text("[model\nflavor=1")
    (tmp_path / "a.json").write_text("{")
    _one_line_error(*qtrain("train", tmp_path / "a.toml")[:2], "not valid TOML")
    _one_line_error(*qtrain("train", tmp_path / "a.json")[:2], "not valid JSON")


# -- 2. chat on a device this machine does not have ----------------------------------------------
def test_chat_on_a_missing_device_is_one_line(qtrain, tmp_path):
    import torch

    if torch.cuda.is_available():
        code, err, _ = qtrain("chat", tmp_path, "--prompt", "x", "--device", f"cuda:{torch.cuda.device_count()}")
        _one_line_error(code, err, "CUDA GPU(s)")
    else:
        code, err, _ = qtrain("chat", tmp_path, "--prompt", "x", "--device", "cuda")
        _one_line_error(code, err, "--device cuda: no CUDA GPU is visible")
    code, err, _ = qtrain("chat", tmp_path, "--prompt", "x", "--device", "gpu0")
    _one_line_error(code, err, "--device 'gpu0'")


# -- 5. secrets ----------------------------------------------------------------------------------
def test_mlflow_credentials_are_redacted_from_errors(qtrain, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model: {flavor: debugmodel}\ntraining: {steps: 1, seq_len: 64}\n"
                   f"dump_dir: {tmp_path / 'run'}\n")
    code, err, result = qtrain("train", cfg, "--set", "tracking.mlflow_uri=http://alice:s3cr3t@127.0.0.1:9")
    _one_line_error(code, err, "MLflow at http://***@127.0.0.1:9 is unreachable")
    assert "s3cr3t" not in result.output and "alice" not in result.output


def test_mlflow_credentials_go_as_basic_auth_and_params_are_redacted():
    from qwen3_trainer.platform.tracking import check_reachable, flatten

    seen = []

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_reachable(f"http://alice:s3cr3t@127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()
    assert seen == [("/health", "Basic YWxpY2U6czNjcjN0")]
    params = flatten({"tracking": {"mlflow_uri": "https://alice:s3cr3t@mlflow.example"},
                      "data": {"paths": ["https://tok@hf.co/x", "s3://b/k"]}})
    assert params == {"tracking.mlflow_uri": "https://***@mlflow.example",
                      "data.paths": '["https://***@hf.co/x", "s3://b/k"]'}


def test_a_missing_config_fails_before_the_torch_imports(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom qwen3_trainer.cli import main\nsys.argv = ['qtrain', 'train', 'nope.yaml']\n"
            "try:\n    main.main()\nexcept SystemExit as e:\n    print(e.code, 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.split() == ["2", "False"], out.stdout + out.stderr
    assert out.stderr.startswith("error: nope.yaml: no such config file")
