"""``qtrain chat``: talk to a Qwen3 checkpoint (HF directory or DCP checkpoint, local or ``s3://``).

Examples:
    qtrain chat ./Qwen3-0.6B --prompt "Why is the sky blue?"
    qtrain chat s3://bucket/runs/sft/step-2000 --no-think --prompt "2+2?" --json
    qtrain chat ./ckpt --thinking-budget 256          # interactive; /exit or Ctrl-D to leave
    qtrain chat ./ckpt --messages dialog.json         # a whole dialog (list of {role, content})

The tokenizer is the checkpoint's ``tokenizer.json`` when it has one, else the built-in Qwen3
tokenizer (``--tokenizer`` overrides). YaRN ``rope_scaling`` in the checkpoint's config.json is applied.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from qwen3_trainer.cli.output import UsageError, bad_input, console, handle_errors, print_json

app = typer.Typer(help="Chat with a Qwen3 checkpoint (thinking or not, with a thinking budget).")


def load_checkpoint(path: str, device: str = "cpu"):
    """A HF checkpoint (config.json + safetensors) or a DCP checkpoint (config.json + .metadata)."""
    from qwen3_trainer.model import storage
    from qwen3_trainer.model.dcp_io import load_model_dcp
    from qwen3_trainer.model.hf_interop import from_hf
    from qwen3_trainer.model.rope_scaling import apply_rope_scaling, rope_scaling_of

    files = storage.listdir(path)
    if not files:
        raise UsageError(f"checkpoint {path}: not found or empty")
    if ".metadata" in files:
        model = load_model_dcp(path, device=device)
        if rope_scaling_of(model) is not None:  # DCP load rebuilds plain RoPE buffers
            apply_rope_scaling(model, rope_scaling_of(model))
    elif any(f.endswith(".safetensors") for f in files):
        model = from_hf(path, device=device)
    else:
        raise UsageError(f"checkpoint {path}: neither a HF checkpoint (*.safetensors) nor DCP (.metadata)")
    return model.eval(), "tokenizer.json" in files


def check_device(device: str) -> None:
    """A one-line UsageError for a device this machine does not have (before any weights load)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r}: {str(exc).splitlines()[0]}", hint="e.g. cpu, cuda, cuda:1") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {device}: no CUDA GPU is visible to torch on this machine",
                             hint="use --device cpu (the default)")
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"--device {device}: this machine has {count} CUDA GPU(s) (cuda:0..cuda:{count - 1})")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"--device {device}: MPS is not available on this machine", hint="use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {device}: unsupported device type {dev.type!r}", hint="use cpu or cuda")


def _split(text: str) -> tuple[str, str]:
    """(thinking, answer) of a decoded reply."""
    if "</think>" in text:
        head, answer = text.split("</think>", 1)
        return head.split("<think>", 1)[-1].strip("\n"), answer.lstrip(".\n")
    return "", text


def _reply(model, tok, messages, think: bool, params) -> dict:
    from qwen3_trainer.model.chat_template import apply_chat_template
    from qwen3_trainer.model.generation import generate

    prompt = tok.encode(apply_chat_template(messages, add_generation_prompt=True, enable_thinking=think))
    context = int(model.rope_cache.shape[0])
    if len(prompt) >= context:
        raise UsageError(
            f"prompt of {len(prompt)} tokens is longer than the model's context of {context} tokens"
        )
    params.max_new_tokens = min(params.max_new_tokens, context - len(prompt))
    out = generate(model, [prompt], tok, params)
    ids = out.tokens[0]
    text = tok.decode([t for t in ids if t not in tok.stop_ids])
    thinking, answer = _split(text)
    return {
        "answer": answer,
        "thinking": thinking,
        "text": text,
        "prompt_tokens": len(prompt),
        "completion_tokens": len(ids),
        "forced_tokens": sum(out.forced[0]),
        "finish_reason": out.finish_reasons[0],
    }


def _show(reply: dict) -> None:
    if reply["thinking"]:
        console.print(f"[dim]{reply['thinking']}[/]", highlight=False, markup=True, soft_wrap=True)
    console.print(reply["answer"], highlight=False, markup=False, soft_wrap=True)


@handle_errors
def command(
    checkpoint: Annotated[
        str, typer.Argument(help="HF or DCP checkpoint directory (local path or s3://...).")
    ],
    prompt: Annotated[
        str | None, typer.Option(help="One user message; without it the chat is interactive.")
    ] = None,
    messages: Annotated[
        str | None, typer.Option(help="JSON file with a dialog: a list of {role, content} (local or s3://).")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System message.")] = None,
    think: Annotated[
        bool,
        typer.Option(
            "--think/--no-think", help="Thinking mode (/think, /no_think in a message also switch it)."
        ),
    ] = True,
    thinking_budget: Annotated[
        int | None, typer.Option(help="Thinking tokens before the model is told to answer.")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Most tokens generated per reply.")] = 1024,
    temperature: Annotated[
        float, typer.Option(help="0 = greedy. Qwen suggests 0.6 thinking, 0.7 not.")
    ] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens (0 = all).")] = 0,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(help="tokenizer.json file or directory (default: the checkpoint's, else built in)."),
    ] = None,
    device: Annotated[str, typer.Option(help="torch device.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print the reply as JSON.")] = False,
) -> None:
    """Chat with a Qwen3 checkpoint (HF or DCP, local or s3://)."""
    from qwen3_trainer.model import storage
    from qwen3_trainer.model.chat_template import validate_messages
    from qwen3_trainer.model.generation import SamplingParams
    from qwen3_trainer.model.tokenizer import load_tokenizer

    if thinking_budget is not None and thinking_budget < 0:
        raise UsageError(f"--thinking-budget must be >= 0, got {thinking_budget}")
    if prompt is not None and messages is not None:
        raise UsageError("give --prompt or --messages, not both")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                            thinking_budget=thinking_budget, seed=seed)  # fmt: skip
    with bad_input():
        params.validate()
    check_device(device)
    dialog = [{"role": "system", "content": system}] if system else []
    if messages is not None:
        try:
            loaded = json.loads(storage.read_text(messages))
        except json.JSONDecodeError as exc:
            raise UsageError(f"--messages {messages}: not JSON ({exc.msg} at line {exc.lineno})") from None
        dialog += loaded if isinstance(loaded, list) else [loaded]
        with bad_input():
            validate_messages(dialog)
    if prompt is not None:
        dialog.append({"role": "user", "content": prompt})
    model, has_tok = load_checkpoint(checkpoint, device)
    tok = load_tokenizer(tokenizer or (checkpoint if has_tok else None))

    if dialog and dialog[-1]["role"] != "assistant" and (prompt is not None or messages is not None):
        reply = _reply(model, tok, dialog, think, params)
        print_json(reply) if as_json else _show(reply)
        return
    if messages is not None or prompt is not None:
        raise UsageError("the dialog ends with an assistant turn: nothing to answer")
    console.print("[dim]chat: /exit or Ctrl-D to leave[/]")
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if line.strip() in ("/exit", "/quit"):
            break
        if not line.strip():
            continue
        dialog.append({"role": "user", "content": line})
        reply = _reply(model, tok, dialog, think, SamplingParams(**params.__dict__))
        _show(reply)
        dialog.append({"role": "assistant", "content": reply["text"]})


app.callback(invoke_without_command=True)(command)
