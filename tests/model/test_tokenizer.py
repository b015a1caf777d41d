"""The Qwen3 tokenizer: known ids, special tokens, round trips, and the built-in (tiktoken) backend
against a HF tokenizer.json loaded with the ``tokenizers`` library (merges rebuilt by transformers)."""

from __future__ import annotations

import json

import pytest

from qwen3_trainer.model import load_tokenizer
from qwen3_trainer.model.tokenizer import TokenizerError, write_hf_tokenizer

TEXTS = [
    "Hello, world!",
    "<think>\n\n</think>\n\n",
    "<|im_start|>user\nWhat is 12345 + 678?<|im_end|>\n<|im_start|>assistant\n",
    "def f(x):\n    return x ** 2  # square\n\n\n\tindent\r\nwindows",
    "数学是科学的语言。日本語のテキスト、한국어 텍스트.",
    "emoji 🤖🚀 and accents: cafe\u0301 naïve Ångström",  # combining accent -> NFC
    "  leading spaces, trailing   ",
    "I'm sure you'll see they've DON'T 'S",
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call><tool_response>ok</tool_response>',
    "",
]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_tok")
    write_hf_tokenizer(str(d))
    return d


def test_known_ids(tok):
    assert tok.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert tok.encode("<think>\n\n</think>\n\n") == [151667, 271, 151668, 271]
    assert tok.vocab_size == 151_669


def test_special_ids(tok):
    assert (tok.endoftext, tok.pad, tok.im_start, tok.im_end, tok.eos) == (
        151643,
        151643,
        151644,
        151645,
        151645,
    )
    assert (tok.think, tok.end_think) == (151667, 151668)
    assert tok.token_id("<tool_call>") == 151657 and tok.token_id("</tool_response>") == 151666
    assert set(tok.stop_ids) == {151643, 151645}
    assert tok.encode("a<|endoftext|>b") == [64, 151643, 65]
    # as plain text, special-token text never turns into a special id
    plain = tok.encode("a<|endoftext|>b", allow_special=False)
    assert len(plain) > 3 and max(plain) < 151643


def test_round_trip_and_nfc(tok):
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text.replace("e\u0301", "é")
    assert tok.encode("cafe\u0301") == tok.encode("café")


def test_encode_batch_equals_encode(tok):
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    assert tok.encode_batch(TEXTS, allow_special=False) == [tok.encode(t, allow_special=False) for t in TEXTS]


def test_hf_tokenizer_json_matches_builtin(tok, hf_dir):
    hf = load_tokenizer(str(hf_dir))
    assert type(hf).__name__ == "HFQwen3Tokenizer"
    assert hf.vocab_size == tok.vocab_size
    assert (hf.eos, hf.pad, hf.think, hf.end_think) == (tok.eos, tok.pad, tok.think, tok.end_think)
    assert hf.encode_batch(TEXTS) == tok.encode_batch(TEXTS)
    assert hf.encode_batch(TEXTS, allow_special=False) == tok.encode_batch(TEXTS, allow_special=False)
    for text in TEXTS:
        assert hf.decode(hf.encode(text)) == tok.decode(tok.encode(text))
        assert hf.encode_with_offsets(text) == tok.encode_with_offsets(text)
    assert load_tokenizer(str(hf_dir / "tokenizer.json")).encode("Hello, world!") == [9707, 11, 1879, 0]


def test_hf_tokenizer_from_s3(hf_dir, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{host}:{port}")
        for key, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        s3 = boto3.client("s3", endpoint_url=f"http://{host}:{port}")
        s3.create_bucket(Bucket="tok")
        s3.upload_file(str(hf_dir / "tokenizer.json"), "tok", "ckpt/tokenizer.json")
        hf = load_tokenizer("s3://tok/ckpt")
    finally:
        server.stop()
    assert hf.encode("Hello, world!") == [9707, 11, 1879, 0]


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(TokenizerError, match="cannot read tokenizer file"):
        load_tokenizer(str(tmp_path / "missing"))
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not JSON"):
        load_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "nope"}}))
    with pytest.raises(TokenizerError, match="not a valid tokenizer.json"):
        load_tokenizer(str(tmp_path))
