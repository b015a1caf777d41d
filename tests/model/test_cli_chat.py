"""``qtrain chat``: HF and DCP checkpoints (local and s3://), one-shot and interactive, the reply equal to
``generate`` on the same prompt, and one-line errors with exit code 2 on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from qwen3_trainer.cli import main as cli_main
from qwen3_trainer.model import generate, load_tokenizer, to_hf
from qwen3_trainer.model.chat_template import apply_chat_template
from qwen3_trainer.model.dcp_io import save_model_dcp
from qwen3_trainer.model.tokenizer import write_hf_tokenizer

runner = CliRunner()


def random_model(flavor: str, seed: int):
    """A debug flavor with weights large enough that replies depend on the prompt."""
    from qwen3_trainer.model import build_model

    model = build_model(flavor, device="cpu", seed=seed).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.1 if "norm" in name else 1 / p.shape[-1] ** 0.5
            p.copy_((1.0 if "norm" in name else 0.0) + scale * torch.randn(p.shape, generator=g))
    return model


@pytest.fixture(scope="module")
def app():
    if not any(getattr(g, "name", None) == "chat" for g in cli_main.app.registered_groups) and not any(
        c.name == "chat" for c in cli_main.app.registered_commands
    ):
        cli_main._register()
    return cli_main.app


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    model = random_model("debugmodel", seed=4)
    to_hf(model, str(root / "hf"))
    write_hf_tokenizer(str(root / "hf"))
    save_model_dcp(model, str(root / "dcp"))
    return model, root


def expected_reply(model, question, **kw):
    tok = load_tokenizer()
    prompt = tok.encode(
        apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True, **kw)
    )
    return generate(model, [prompt], tok, max_new_tokens=12).tokens[0]


def run(app, *args, input=None):
    result = runner.invoke(app, ["chat", *map(str, args)], input=input)
    return result.exit_code, result.output


@pytest.mark.parametrize("kind", ["hf", "dcp"])
def test_one_shot_reply_equals_generate(app, ckpts, kind):
    model, root = ckpts
    code, out = run(app, root / kind, "--prompt", "Hello there", "--max-new-tokens", 12, "--json")
    assert code == 0, out
    reply = json.loads(out)
    tok = load_tokenizer()
    want = expected_reply(model, "Hello there")
    assert reply["text"] == tok.decode([t for t in want if t not in tok.stop_ids])
    assert reply["completion_tokens"] == len(want) and reply["finish_reason"] in ("stop", "length")


def test_no_think_and_budget_flags(app, ckpts):
    model, root = ckpts
    code, out = run(app, root / "hf", "--prompt", "Hi", "--no-think", "--max-new-tokens", 12, "--json")
    assert code == 0, out
    tok = load_tokenizer()
    want = expected_reply(model, "Hi", enable_thinking=False)
    assert json.loads(out)["text"] == tok.decode([t for t in want if t not in tok.stop_ids])
    code, out = run(
        app, root / "hf", "--prompt", "Hi", "--thinking-budget", 0, "--max-new-tokens", 12, "--json"
    )
    assert code == 0, out


def test_interactive(app, ckpts):
    _, root = ckpts
    code, out = run(app, root / "hf", "--max-new-tokens", 4, input="Hello\nAnd again\n/exit\n")
    assert code == 0, out
    assert out.count("> ") == 3


def test_checkpoint_on_s3(app, ckpts, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    model, root = ckpts
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        for key, value in {"AWS_ENDPOINT_URL_S3": url, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x",
                           "AWS_DEFAULT_REGION": "us-east-1"}.items():  # fmt: skip
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=url)
        s3.create_bucket(Bucket="ckpt")
        for f in (root / "hf").iterdir():
            s3.upload_file(str(f), "ckpt", f"hf/{f.name}")
        code, out = run(app, "s3://ckpt/hf", "--prompt", "Hello there", "--max-new-tokens", 12, "--json")
    finally:
        server.stop()
    assert code == 0, out
    tok = load_tokenizer()
    want = expected_reply(model, "Hello there")
    assert json.loads(out)["text"] == tok.decode([t for t in want if t not in tok.stop_ids])


def test_bad_input_one_line_exit_2(app, ckpts, tmp_path):
    _, root = ckpts
    bad_role = tmp_path / "dialog.json"
    bad_role.write_text(json.dumps([{"role": "robot", "content": "hi"}]))
    bad_tok = tmp_path / "tokenizer.json"
    bad_tok.write_text("{broken")
    cases = {
        "unknown role 'robot'": (root / "hf", "--messages", bad_role),
        "--thinking-budget must be >= 0": (root / "hf", "--prompt", "x", "--thinking-budget", -1),
        "longer than the model's context of 4096": (root / "hf", "--prompt", "word " * 5000),
        "not JSON": (root / "hf", "--prompt", "x", "--tokenizer", bad_tok),
        "not found or empty": (tmp_path / "nope", "--prompt", "x"),
    }
    for message, args in cases.items():
        code, out = run(app, *args)
        assert code == 2, (message, out)
        assert message in out and "Traceback" not in out, out


def test_real_entry_point_exit_code(ckpts, tmp_path):
    bad = tmp_path / "d.json"
    bad.write_text(json.dumps([{"role": "robot", "content": "hi"}]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "qwen3_trainer.cli.main", "chat", str(ckpts[1] / "hf"), "--messages", str(bad)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "unknown role 'robot'" in proc.stderr and len(proc.stderr.strip().splitlines()) <= 2
