"""Qwen3's chat template in Python, plus the SFT loss mask and the ``/think`` / ``/no_think`` soft switch.

``apply_chat_template`` renders what the official Jinja template of Qwen3 renders (the
``chat_template`` of huggingface.co/Qwen/Qwen3-8B ``tokenizer_config.json``, revision 895c8d1;
same rendering for string contents as the April 2025 original kept in llama.cpp
``models/templates/Qwen-Qwen3-0.6B.jinja``):

- every turn is ``<|im_start|>{role}\\n{content}<|im_end|>\\n``; a leading system message comes first,
  merged with the tool signatures when ``tools`` are given;
- assistant turns after the last real user query keep their reasoning as ``<think>\\n…\\n</think>\\n\\n``
  (the final one always, with an empty block when it has none); earlier ones lose it;
- ``tool_calls`` become ``<tool_call>\\n{"name": …, "arguments": …}\\n</tool_call>`` lines; consecutive
  ``tool`` messages are grouped in one user turn of ``<tool_response>`` blocks;
- ``add_generation_prompt`` appends ``<|im_start|>assistant\\n``, plus ``<think>\\n\\n</think>\\n\\n``
  when thinking is off.

Thinking mode (Qwen3 report §4.3, Qwen's "hard" and "soft" switches): ``enable_thinking=False`` is a hard
off. With ``enable_thinking=True``, the last ``/think`` or ``/no_think`` in a user or system message of
the dialog decides; the flag text stays in the message (the model was trained to read it). The official
template leaves the soft switch to the model; here ``/no_think`` also pre-fills the empty think block
of the generation prompt so the mode is guaranteed (``soft_switch=False`` renders exactly the official
output, leaving the flag to the model).

``render_for_training`` tokenises a dialog and marks the tokens the loss is computed on: what the
assistant produced after its ``<|im_start|>assistant\\n`` header, through its ``<|im_end|>``.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
NO_THINK_PREFILL = "<think>\n\n</think>\n\n"
_FLAG = re.compile(r"/(no_think|think)\b")
TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call><|im_end|>\n"
)


def _tojson(value: Any) -> str:
    # transformers' chat-template ``tojson``: plain json.dumps, non-ASCII kept
    return json.dumps(value, ensure_ascii=False)


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise ValueError(
                f"message {i} is a {type(m).__name__}, expected a dict with 'role' and 'content'"
            )
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i}: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        content = m.get("content")
        if not isinstance(content, str) and not (
            role == "assistant" and content is None and m.get("tool_calls")
        ):
            raise ValueError(f"message {i} ({role}): content must be a string, got {type(content).__name__}")
        calls = m.get("tool_calls")
        if calls is not None:
            if role != "assistant" or not isinstance(calls, Sequence) or isinstance(calls, str):
                raise ValueError(f"message {i}: tool_calls must be a list on an assistant message")
            for call in calls:
                fn = call.get("function", call) if isinstance(call, Mapping) else None
                if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
                    raise ValueError(
                        f"message {i}: each tool call needs a 'name' (or 'function': {{'name': ...}})"
                    )


def thinking_enabled(messages: Sequence[Mapping[str, Any]], enable_thinking: bool = True) -> bool:
    """The mode of the next assistant turn: off if ``enable_thinking`` is False, else the last flag wins."""
    if not enable_thinking:
        return False
    mode = True
    for m in messages:
        if m.get("role") in ("user", "system") and isinstance(m.get("content"), str):
            flags = _FLAG.findall(m["content"])
            if flags:
                mode = flags[-1] == "think"
    return mode


def _last_query_index(messages: Sequence[Mapping[str, Any]]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        c = m["content"]
        if m["role"] == "user" and not (c.startswith("<tool_response>") and c.endswith("</tool_response>")):
            return i
    return len(messages) - 1


def _split_reasoning(m: Mapping[str, Any]) -> tuple[str, str]:
    content = m["content"] if isinstance(m["content"], str) else ""
    if isinstance(m.get("reasoning_content"), str):
        return m["reasoning_content"], content
    if "</think>" in content:
        reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
        return reasoning, content.split("</think>")[-1].lstrip("\n")
    return "", content


def _tool_calls(calls: Sequence[Mapping[str, Any]], content: str) -> str:
    out = []
    for i, call in enumerate(calls):
        if i > 0 or content:
            out.append("\n")
        fn = call["function"] if call.get("function") else call
        args = fn.get("arguments", {})
        args = args if isinstance(args, str) else _tojson(args)
        out.append(f'<tool_call>\n{{"name": "{fn["name"]}", "arguments": {args}}}\n</tool_call>')
    return "".join(out)


def render_segments(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
) -> list[tuple[str, int | None]]:
    """The rendered dialog as (text, assistant message index or None) pieces, in order."""
    validate_messages(messages)
    segs: list[tuple[str, int | None]] = []
    first_system = messages[0]["role"] == "system"
    if tools:
        head = "<|im_start|>system\n" + (messages[0]["content"] + "\n\n" if first_system else "")
        segs.append((head + TOOLS_HEADER + "".join("\n" + _tojson(t) for t in tools) + TOOLS_FOOTER, None))
    elif first_system:
        segs.append(("<|im_start|>system\n" + messages[0]["content"] + "<|im_end|>\n", None))
    last_query = _last_query_index(messages)
    n = len(messages)
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "user" or (role == "system" and i > 0):
            segs.append((f"<|im_start|>{role}\n{m['content']}<|im_end|>\n", None))
        elif role == "assistant":
            reasoning, content = _split_reasoning(m)
            if i > last_query and (i == n - 1 or reasoning):
                body = "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n" + content.lstrip("\n")
            else:
                body = content
            if m.get("tool_calls"):
                body += _tool_calls(m["tool_calls"], content)
            segs.append(("<|im_start|>assistant\n", None))
            segs.append((body + "<|im_end|>", i))
            segs.append(("\n", None))
        elif role == "tool":
            opener = "<|im_start|>user" if i == 0 or messages[i - 1]["role"] != "tool" else ""
            closer = "<|im_end|>\n" if i == n - 1 or messages[i + 1]["role"] != "tool" else ""
            segs.append((f"{opener}\n<tool_response>\n{m['content']}\n</tool_response>{closer}", None))
    return segs


def apply_chat_template(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    enable_thinking: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = None,
    soft_switch: bool = True,
) -> str:
    """The dialog as Qwen3's chat template renders it (see the module docstring for the rules)."""
    text = "".join(s for s, _ in render_segments(messages, tools))
    if add_generation_prompt:
        text += "<|im_start|>assistant\n"
        thinking = thinking_enabled(messages, enable_thinking) if soft_switch else enable_thinking
        if not thinking:
            text += NO_THINK_PREFILL
    return text


def render_for_training(
    messages: Sequence[Mapping[str, Any]],
    tokenizer=None,
    tools: Sequence[Mapping[str, Any]] | None = None,
    train_on: str = "final",
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered dialog and a 0/1 loss mask of the same length (1 = assistant token).

    ``train_on="final"`` (default) trains the assistant turns after the last user query: the ones the
    template renders with their reasoning, as the model produces them at inference. ``"all"`` also
    trains earlier turns, which the template renders without reasoning. Next-token labels are the ids
    shifted left by one; the mask marks the tokens to predict.
    """
    if train_on not in ("final", "all"):
        raise ValueError(f"train_on must be 'final' or 'all', got {train_on!r}")
    if tokenizer is None:
        from qwen3_trainer.model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer()
    segments = render_segments(messages, tools)
    last_query = _last_query_index(messages)
    spans, pos, pieces = [], 0, []
    for text, turn in segments:
        text = unicodedata.normalize("NFC", text)
        if turn is not None and (train_on == "all" or turn > last_query):
            spans.append((pos, pos + len(text)))
        pieces.append(text)
        pos += len(text)
    if not spans:
        raise ValueError(
            "no assistant turn to train on (the dialog needs an assistant reply after the last user turn)"
        )
    ids, starts = tokenizer.encode_with_offsets("".join(pieces))
    mask = [int(any(a <= s < b for a, b in spans)) for s in starts]
    return ids, mask
