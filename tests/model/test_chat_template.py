"""Qwen3 chat template: one hand-written expected string per rule of the official template, the
/think and /no_think soft switch, SFT loss masks, and one-line errors on bad dialogs."""

from __future__ import annotations

import pytest

from qwen3_trainer.model import load_tokenizer
from qwen3_trainer.model.chat_template import apply_chat_template, render_for_training, thinking_enabled

USER = {"role": "user", "content": "What is 2+2?"}


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_turns_and_system():
    msgs = [{"role": "system", "content": "Be brief."}, USER]
    assert apply_chat_template(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
    )


def test_generation_prompt_thinking_on_and_off():
    assert apply_chat_template([USER], add_generation_prompt=True) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert apply_chat_template([USER], add_generation_prompt=True, enable_thinking=False) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_final_assistant_keeps_thinking_and_gets_empty_block_without_it():
    with_thought = [USER, {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"}]
    assert apply_chat_template(with_thought) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nadd them\n</think>\n\n4<|im_end|>\n"
    )
    plain = [USER, {"role": "assistant", "content": "4"}]
    assert apply_chat_template(plain) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n4<|im_end|>\n"
    )
    via_field = [USER, {"role": "assistant", "content": "4", "reasoning_content": "\nadd them\n"}]
    assert apply_chat_template(via_field) == apply_chat_template(with_thought)


def test_earlier_assistant_turns_lose_thinking():
    msgs = [
        USER,
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "<think>\nagain\n</think>\n\n6"},
    ]
    assert apply_chat_template(msgs) == (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4<|im_end|>\n"
        "<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\nagain\n</think>\n\n6<|im_end|>\n"
    )


def test_tools_tool_calls_and_responses():
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"a": "int"}}}]
    msgs = [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "2+2?"},
        {
            "role": "assistant",
            "content": "<think>\nuse add\n</think>\n\n",
            "tool_calls": [
                {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}},
                {"name": "add", "arguments": '{"a": 0, "b": 0}'},
            ],
        },
        {"role": "tool", "content": "4"},
        {"role": "tool", "content": "0"},
        {"role": "assistant", "content": "<think>\ngot 4\n</think>\n\n4"},
    ]
    assert apply_chat_template(msgs, tools=tools) == (
        "<|im_start|>system\nUse tools.\n\n# Tools\n\nYou may call one or more functions to assist with the "
        "user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "add", "parameters": {"a": "int"}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
        "<args-json-object>}\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        # both assistant turns come after the last user query, so both keep their thinking
        "<|im_start|>assistant\n<think>\nuse add\n</think>\n\n"
        '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 2}}\n</tool_call>\n'
        '<tool_call>\n{"name": "add", "arguments": {"a": 0, "b": 0}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n4\n</tool_response>\n<tool_response>\n0\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n<think>\ngot 4\n</think>\n\n4<|im_end|>\n"
    )


def test_tools_without_system_message():
    out = apply_chat_template([USER], tools=[{"name": "f"}])
    assert out.startswith("<|im_start|>system\n# Tools\n\n") and '<tools>\n{"name": "f"}\n</tools>' in out


def test_soft_switch_last_flag_wins():
    no_think = [{"role": "user", "content": "2+2? /no_think"}]
    assert apply_chat_template(no_think, add_generation_prompt=True) == (
        "<|im_start|>user\n2+2? /no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    # exactly the official output: the flag is left to the model
    assert apply_chat_template(no_think, add_generation_prompt=True, soft_switch=False) == (
        "<|im_start|>user\n2+2? /no_think<|im_end|>\n<|im_start|>assistant\n"
    )
    dialog = [
        {"role": "system", "content": "Answer fast /no_think"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "/no_think then /think: prove it"},
    ]
    assert thinking_enabled(dialog) is True
    assert apply_chat_template(dialog, add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    assert thinking_enabled(dialog[:3]) is False  # the system flag holds until a later one
    assert thinking_enabled(dialog, enable_thinking=False) is False  # the hard switch wins


def test_training_mask_marks_final_assistant_tokens(tok):
    msgs = [
        USER,
        {"role": "assistant", "content": "old"},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "<think>\nsure\n</think>\n\nYes"},
    ]
    ids, mask = render_for_training(msgs, tok)
    assert ids == tok.encode(apply_chat_template(msgs))
    assert (
        tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
        == "<think>\nsure\n</think>\n\nYes<|im_end|>"
    )
    _, mask_all = render_for_training(msgs, tok, train_on="all")
    assert tok.decode([i for i, m in zip(ids, mask_all, strict=True) if m]) == (
        "old<|im_end|><think>\nsure\n</think>\n\nYes<|im_end|>"
    )


def test_training_mask_covers_tool_calls_not_tool_responses(tok):
    msgs = [
        USER,
        {"role": "assistant", "content": "", "tool_calls": [{"name": "add", "arguments": {"a": 2}}]},
        {"role": "tool", "content": "4"},
        {"role": "assistant", "content": "4"},
    ]
    ids, mask = render_for_training(msgs, tok)
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    # the official template gives a non-final turn without reasoning no think block at all
    assert trained == (
        '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call><|im_end|>'
        "<think>\n\n</think>\n\n4<|im_end|>"
    )


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([], "non-empty list"),
        ("hello", "non-empty list"),
        ([{"role": "robot", "content": "x"}], "unknown role 'robot'"),
        ([{"content": "x"}], "unknown role None"),
        (["hi"], "message 0 is a str"),
        ([{"role": "user", "content": 3}], "content must be a string"),
        ([USER, {"role": "assistant", "content": "x", "tool_calls": [{"arguments": {}}]}], "needs a 'name'"),
    ],
)
def test_bad_dialogs_one_line_errors(messages, match):
    with pytest.raises(ValueError, match=match) as err:
        apply_chat_template(messages)
    assert "\n" not in str(err.value)


def test_training_needs_an_assistant_reply(tok):
    with pytest.raises(ValueError, match="no assistant turn"):
        render_for_training([USER], tok)
