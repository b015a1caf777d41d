"""From the trainer's policy to sampled sequences and back to training micro-batches.

- ``PolicyEngine``: a ``RolloutEngine`` kept in step with the policy. The local engine holds a plain
  (unsharded) copy of the model and decodes with ``model.decode_engine`` (static KV cache, CUDA
  graphs; its KV cache is freed after each ``generate`` so that training gets the memory back);
  ``sync(trainer)`` gathers the full state dict from the trainer's model parts (FSDP/TP shards
  included, every rank takes part) into that copy, in place (the engine's packed weight views stay
  valid). Any other engine with the ``RolloutEngine`` interface (``model.vllm_client.VLLMRolloutEngine``)
  can be passed instead; it is then the caller's job to push weights to it.
- ``prompt_ids``: chat ``prompt`` turns -> ids of the generation prompt (the last ``/think`` or
  ``/no_think`` flag wins, as in the chat template).
- ``sequences_to_batches``: prompt + response ids -> right-padded micro-batches whose labels are the
  response tokens (tokens forced in by a thinking budget excluded), with per-token extras.
- ``frozen_model``: a reference/teacher checkpoint (HF or DCP) loaded frozen on a device.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from qwen3_trainer.platform.posttrain.losses import IGNORE

log = logging.getLogger("qwen3_trainer.posttrain")


class PolicyEngine:
    """The policy's rollout engine; the local one holds its own full copy of the weights."""

    def __init__(self, trainer, tokenizer, engine=None):
        from qwen3_trainer.model.build import build_model, materialize
        from qwen3_trainer.model.generation import LocalRolloutEngine

        self.tokenizer = tokenizer
        self.local = engine is None
        if self.local:
            self.model = materialize(build_model(trainer.model_args, device="meta", init=False,
                                                 compute_device=trainer.device), trainer.device)
            self.model.eval().requires_grad_(False)
            engine = LocalRolloutEngine(self.model, tokenizer)
        self.engine = engine
        self.sync_seconds = 0.0

    def sync(self, trainer) -> None:
        """Copy the policy's current weights into the engine's model (collective under FSDP/TP)."""
        if not self.local:
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        t = time.perf_counter()
        full = get_model_state_dict(trainer.model_parts[0], options=StateDictOptions(full_state_dict=True))
        self.model.load_state_dict(full, strict=False)
        self.sync_seconds += time.perf_counter() - t

    def generate(self, prompts: list[list[int]], params):
        out = self.engine.generate(prompts, params)
        if self.local:
            self.engine.release()  # the KV cache and graphs go back before the training steps
        return out


def prompt_ids(tokenizer, prompt: list[dict], soft_switch: bool = True) -> list[int]:
    """Ids of the generation prompt. ``soft_switch`` (default) pre-fills the empty think block when the
    last flag is ``/no_think``; ``False`` renders the official template and leaves the mode to the model."""
    from qwen3_trainer.model.chat_template import apply_chat_template

    return tokenizer.encode(apply_chat_template(prompt, add_generation_prompt=True, soft_switch=soft_switch))


def response_text(tokenizer, prompt: list[dict], tokens: list[int], soft_switch: bool = True) -> str:
    """The assistant's whole reply: the pre-filled empty think block (if the prompt had one) + the
    generated text, stop ids dropped. Sampling can reach the vocabulary's padding rows (ids past the
    tokenizer's last one): they have no text and are dropped here (they stay in the trained tokens)."""
    from qwen3_trainer.model.chat_template import NO_THINK_PREFILL

    text = tokenizer.decode([t for t in tokens if t not in tokenizer.stop_ids and t < tokenizer.vocab_size])
    return (NO_THINK_PREFILL + text) if soft_switch and not prompt_thinking(prompt) else text


def prompt_thinking(prompt: list[dict]) -> bool:
    from qwen3_trainer.model.chat_template import thinking_enabled

    return thinking_enabled(prompt)


def sequences_to_batches(prompts: list[list[int]], responses: list[list[int]], loss_masks: list[list[bool]],
                         *, micro_batch_size: int, pad_id: int, max_len: int,
                         per_seq: dict[str, list[float]] | None = None) -> list[dict[str, torch.Tensor]]:
    """Micro-batches of ``prompt + response`` rows (input_ids [mb, L], labels [mb, L], and each
    ``per_seq`` value broadcast per token as float [mb, L]). Rows longer than ``max_len + 1`` tokens
    are cut (their tail leaves the loss)."""
    rows = []
    for i, (p, r, m) in enumerate(zip(prompts, responses, loss_masks, strict=True)):
        ids = (list(p) + list(r))[: max_len + 1]
        tgt = ([False] * len(p) + list(m))[: max_len + 1]
        rows.append((i, ids, tgt))
    batches = []
    for start in range(0, len(rows), micro_batch_size):
        chunk = rows[start: start + micro_batch_size]
        width = max(len(ids) for _, ids, _ in chunk) - 1
        inputs = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), IGNORE, dtype=torch.long)
        extras = {k: torch.zeros((len(chunk), width)) for k in (per_seq or {})}
        for j, (i, ids, tgt) in enumerate(chunk):
            t = torch.tensor(ids)
            inputs[j, : len(ids) - 1] = t[:-1]
            lab = torch.where(torch.tensor(tgt[1:]), t[1:], torch.full_like(t[1:], IGNORE))
            labels[j, : len(ids) - 1] = lab
            for k, values in (per_seq or {}).items():
                extras[k][j] = float(values[i])
        batches.append({"input_ids": inputs, "labels": labels, **extras})
    return batches


@torch.no_grad()
def sequence_logprobs(model, batches: list[dict[str, torch.Tensor]], device) -> list[torch.Tensor]:
    """log p(label) per token under ``model`` for each micro-batch (0 at ignored positions)."""
    from qwen3_trainer.platform.posttrain.losses import token_logprobs

    out = []
    for b in batches:
        logits = model(b["input_ids"].to(device))
        out.append(token_logprobs(logits, b["labels"].to(device)).cpu())
    return out


def frozen_model(path: str, device) -> torch.nn.Module:
    """A frozen model from a HF directory or a DCP checkpoint (local or s3://)."""
    from qwen3_trainer.model import storage
    from qwen3_trainer.model.dcp_io import load_model_dcp
    from qwen3_trainer.model.hf_interop import from_hf

    if not storage.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    is_dcp = storage.exists(storage.join(path, ".metadata"))
    model = load_model_dcp(path, device=device) if is_dcp else from_hf(path, device=device)
    return model.eval().requires_grad_(False)


def log_step(trainer, metrics: dict[str, float], history: list[dict[str, Any]]) -> None:
    history.append({"step": trainer.step, **metrics})
    if trainer.tracker:
        trainer.tracker.log_metrics(trainer.step, metrics)
    if trainer.env.rank == 0:
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                         if k in ("loss", "reward/mean", "eval/accuracy", "kl", "entropy", "objective/kl"))
        log.info("step %d %s", trainer.step, shown)


def maybe_checkpoint(trainer) -> None:
    interval = trainer.cfg.checkpoint.interval
    if trainer.checkpointer and interval and trainer.step % interval == 0 and trainer.step < trainer.cfg.training.steps:
        path = trainer.save()
        if trainer.tracker:
            trainer.tracker.set_tag(f"checkpoint.step-{trainer.step}", path)

