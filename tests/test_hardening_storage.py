"""Issue 20, storage: nothing a user owns is destroyed, the one publish (local and s3://) is atomic, every
storage failure is one line naming the path (and the S3 endpoint) within 10 s, exports are readable by all.

Commands run in-process (typer's CliRunner) on a debugmodel with a 512-row vocabulary (a 1 MB checkpoint).
"""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from qwen3_trainer.cli import main as cli_main
from qwen3_trainer.model import storage

runner = CliRunner()


@pytest.fixture(scope="module")
def qtrain():
    if not any(getattr(g, "name", None) == "convert" for g in cli_main.app.registered_groups):
        cli_main._register()

    def run(*args: str):
        result = runner.invoke(cli_main.app, [str(a) for a in args])
        return result.exit_code, result.stdout, result.stderr

    return run


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    from qwen3_trainer.model.build import build_model
    from qwen3_trainer.model.flavors import get_flavor
    from qwen3_trainer.model.hf_interop import to_hf

    args = get_flavor("debugmodel")
    args.vocab_size = 512
    path = tmp_path_factory.mktemp("convert") / "hf"
    to_hf(build_model(args, device="cpu", seed=0), str(path))
    return path


def _one_line_error(code: int, err: str, needle: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("error: ") and needle in lines[0], err
    assert len(lines) <= 2 and "Traceback" not in err, err


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- 1. data loss ---------------------------------------------------------------------------------
def test_convert_refuses_a_non_empty_directory_and_a_file(qtrain, hf_dir, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    code, _, err = qtrain("convert", "hf-to-dcp", hf_dir, mine)
    _one_line_error(code, err, "is a directory that is not empty; refusing to replace it")
    assert "--overwrite" in err
    a_file = tmp_path / "weights.bin"
    a_file.write_text("keep")
    code, _, err = qtrain("convert", "hf-to-dcp", hf_dir, a_file)
    _one_line_error(code, err, "is a file")
    assert (mine / "notes.txt").read_text() == "my notes" and a_file.read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "weights.bin"]  # no hidden *.old-* / *.tmp-*


def test_convert_into_an_empty_directory_and_with_overwrite(qtrain, hf_dir, tmp_path):
    empty = tmp_path / "dcp"
    empty.mkdir()
    code, out, err = qtrain("convert", "hf-to-dcp", hf_dir, empty)
    assert code == 0, err
    assert {".metadata", "config.json"} <= {p.name for p in empty.iterdir()}
    code, _, err = qtrain("convert", "dcp-to-hf", empty, tmp_path / "hf")
    assert code == 0, err
    (tmp_path / "hf" / "stale.txt").write_text("old export")
    code, _, err = qtrain("convert", "dcp-to-hf", empty, tmp_path / "hf", "--overwrite", "--dtype", "bfloat16")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["config.json", "generation_config.json",
                                                                   "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dcp", "hf"]


def test_dcp_to_hf_pointed_at_a_hf_directory_is_one_line(qtrain, hf_dir, tmp_path):
    code, _, err = qtrain("convert", "dcp-to-hf", hf_dir, tmp_path / "out")
    _one_line_error(code, err, "is a HF checkpoint, not DCP")
    code, _, err = qtrain("convert", "hf-to-dcp", tmp_path / "nothing", tmp_path / "out")
    _one_line_error(code, err, "not found or empty")


def test_local_publish_keeps_the_old_content_when_the_move_fails(tmp_path, monkeypatch):
    dest = tmp_path / "export"
    dest.mkdir()
    (dest / "model.safetensors").write_text("old")
    stage = tmp_path / "stage"
    stage.mkdir()
    (stage / "model.safetensors").write_text("new")
    real_rename = os.rename

    def failing(src, dst):
        if Path(src) == stage:
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(storage.StorageError, match="cannot write to .*No space left"):
        storage.publish_dir(stage, str(dest), overwrite=True)
    assert (dest / "model.safetensors").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "stage"]


def test_s3_publish_refuses_replaces_and_leaves_no_temporary_prefix(s3_bucket, tmp_path):
    fs, _ = storage.filesystem(s3_bucket)
    bucket = s3_bucket.removeprefix("s3://")
    first = tmp_path / "first"
    (first / "sub").mkdir(parents=True)
    (first / "model.safetensors").write_bytes(b"w1")
    (first / "sub" / "index.json").write_text("{}")
    dest = f"{s3_bucket}/runs/hf"
    storage.publish_dir(first, dest)
    assert sorted(fs.find(bucket)) == [f"{bucket}/runs/hf/model.safetensors", f"{bucket}/runs/hf/sub/index.json"]
    with pytest.raises(storage.StorageError, match="holds objects; refusing to replace it"):
        storage.publish_dir(first, dest)
    with pytest.raises(storage.StorageError, match="is an object"):
        storage.check_destination(f"{dest}/model.safetensors")
    second = tmp_path / "second"
    second.mkdir()
    (second / "model.safetensors").write_bytes(b"w2")
    storage.publish_dir(second, dest, overwrite=True)
    assert sorted(fs.find(bucket)) == [f"{bucket}/runs/hf/model.safetensors"]  # stale files gone, no .tmp-*
    assert storage.read_bytes(f"{dest}/model.safetensors") == b"w2"
    with storage.staged_directory(f"{s3_bucket}/staged") as stage:  # the context-manager form
        (stage / "config.json").write_text("{}")
    assert storage.listdir(f"{s3_bucket}/staged") == ["config.json"]


# -- 7. exported files readable by group and others ----------------------------------------------
def test_published_files_are_readable_by_all(hf_dir, tmp_path):
    old = os.umask(0o022)
    try:
        from qwen3_trainer.model.build import build_model
        from qwen3_trainer.model.flavors import get_flavor
        from qwen3_trainer.model.hf_interop import to_hf

        args = get_flavor("debugmodel")
        args.vocab_size = 512
        out = tmp_path / "export"
        to_hf(build_model(args, device="cpu", seed=0), str(out))
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {
        "config.json": 0o644, "generation_config.json": 0o644, "model.safetensors": 0o644}


# -- 2 + 6. S3 failures: one line naming the endpoint, fast ---------------------------------------
def test_unreachable_s3_is_one_line_naming_the_endpoint_within_10s(qtrain, monkeypatch, tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    for key, value in {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    cases = [("train", "s3://bucket/run.yaml"),
             ("convert", "hf-to-dcp", "s3://bucket/hf", tmp_path / "out"),
             ("chat", "s3://bucket/ckpt", "--prompt", "hi"),
             ("pipeline", "ls", "--root", "s3://bucket/runs"),
             ("pipeline", "show", "--root", "s3://bucket/runs")]
    for args in cases:
        start = time.monotonic()
        code, _, err = qtrain(*args)
        took = time.monotonic() - start
        _one_line_error(code, err, "s3://bucket/")
        assert f"S3 endpoint {endpoint}" in err and "2 attempts" in err, err
        assert took <= 10, (args, took)


def test_s3_without_credentials_is_one_line(qtrain, s3_server, monkeypatch, tmp_path):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, _, err = qtrain("train", "s3://bucket/run.yaml")
    _one_line_error(code, err, "NoCredentialsError: Unable to locate credentials")
    code, _, err = qtrain("convert", "hf-to-dcp", "s3://bucket/hf", tmp_path / "out")
    _one_line_error(code, err, "NoCredentialsError")


def test_credentials_in_an_endpoint_are_never_printed(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://admin:hunter2@127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(storage.StorageError) as err:
        storage.check_reachable("s3://bucket/x")
    assert "hunter2" not in str(err.value) and "admin" not in str(err.value)
    assert "http://***@127.0.0.1" in str(err.value)
