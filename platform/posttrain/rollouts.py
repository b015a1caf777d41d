"""From the trainer's policy to sampled sequences and back to training micro-batches.

- ``PolicyEngine``: a ``RolloutEngine`` kept in step with the policy. The local engine holds its own
  copy of the model in the trainer's compute dtype (bf16 on GPU) and decodes with
  ``model.decode_engine`` (static KV cache, CUDA graphs; its KV cache is freed after each
  ``generate`` so that training gets the memory back, and with ``free_weights`` its weights too).
  ``sync(trainer)`` gathers the policy parameter by parameter into that copy, in place
  (``weight_sync``: the shard is cast before the gather; no state dict is materialised). Only one
  rank of each tensor-parallel group decodes and holds an engine; it broadcasts the sampled tokens
  to its peers, which then train on exactly the same rollouts. Any other engine with the
  ``RolloutEngine`` interface (``model.vllm_client.VLLMRolloutEngine``) can be passed instead; it is
  then the caller's job to push weights to it (it too is called on one rank per TP group).
  ``round_metrics()``: the seconds spent syncing and generating since the last call
  (``rollout/sync_s``, ``rollout/generate_s``), logged with each rollout round.
- ``prompt_ids``: chat ``prompt`` turns -> ids of the generation prompt (the last ``/think`` or
  ``/no_think`` flag wins, as in the chat template).
- ``sequences_to_batches``: prompt + response ids -> right-padded micro-batches whose labels are the
  response tokens (tokens forced in by a thinking budget excluded), with per-token extras.
- ``frozen_model``: a checkpoint (HF or DCP) loaded frozen on one device, unsharded (data
  preparation, evaluation); the trainer's frozen models are ``Trainer.load_frozen``'s, sharded.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
import torch.distributed as dist

from qwen3_trainer.platform.posttrain.losses import IGNORE

log = logging.getLogger("qwen3_trainer.posttrain")


class PolicyEngine:
    """The policy's rollout engine: one per tensor-parallel group (see the module docstring)."""

    def __init__(self, trainer, tokenizer, engine=None, *, free_weights: bool = False,
                 engine_options: dict[str, Any] | None = None):
        from qwen3_trainer.model.build import build_model, materialize
        from qwen3_trainer.model.generation import LocalRolloutEngine
        from qwen3_trainer.platform.posttrain.weight_sync import WeightStore

        self.tokenizer = tokenizer
        self.device, self.dtype = trainer.device, trainer.compute_dtype
        self.group = trainer.pdims.get_mesh("tp").get_group() if trainer.pdims.tp_enabled else None
        self.leader = self.group is None or dist.get_rank(self.group) == 0
        self.local = engine is None
        self.model = None
        if self.local and self.leader:
            self.model = materialize(build_model(trainer.model_args, device="meta", init=False,
                                                 compute_device=trainer.device, dtype=self.dtype), trainer.device)
            self.model.eval().requires_grad_(False)
            # DecodeEngine options; it packs q/k/v and gate/up into one buffer each on CUDA
            engine = LocalRolloutEngine(self.model, tokenizer, **(engine_options or {}))
        self.engine = engine if self.leader else None
        self.store = WeightStore(self.model) if self.model is not None and free_weights else None
        self.seconds = {"sync_s": 0.0, "generate_s": 0.0}
        self.decode_calls = 0

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def sync(self, trainer) -> None:
        """The policy's current weights into the engine's model (collective under FSDP/TP/EP: every
        rank calls it; TP peers gather and keep nothing)."""
        if not self.local:
            return
        from qwen3_trainer.platform.posttrain.weight_sync import copy_weights

        t = time.perf_counter()
        if self.store is not None:
            self.store.restore()
        copy_weights(trainer.model_parts[0], self.model, self.dtype)
        self._synchronize()
        self.seconds["sync_s"] += time.perf_counter() - t

    def generate(self, prompts: list[list[int]], params):
        """The leader decodes; its TP peers receive the same ``GenerationOutput`` (collective over
        the TP group when there is one)."""
        t = time.perf_counter()
        out = None
        if self.leader:
            if self.store is not None and self.store.freed:
                raise RuntimeError("the engine's weights were released: sync before generating")
            out = self.engine.generate(prompts, params)
            self.decode_calls += 1
            if self.local:
                self.engine.release()  # the KV cache and graphs go back before the training steps
        if self.group is not None:
            out = _broadcast_output(out, len(prompts), params.max_new_tokens, self.group, self.device)
        self._synchronize()
        self.seconds["generate_s"] += time.perf_counter() - t
        return out

    def release_weights(self) -> None:
        """With ``free_weights``: free the engine's weights until the next ``sync``."""
        if self.store is not None:
            self.store.release()

    def round_metrics(self) -> dict[str, float]:
        """Seconds syncing / generating since the last call (``rollout/...``), then reset."""
        out = {f"rollout/{k}": v for k, v in self.seconds.items()}
        self.seconds = dict.fromkeys(self.seconds, 0.0)
        return out


def _broadcast_output(out, n: int, width: int, group, device):
    """The leader's ``GenerationOutput`` to every rank of ``group``, as one float64 tensor
    [n, 3 * width + 2] (ids, log-probs, forced flags, length, stopped): exact for ids < 2^53."""
    from qwen3_trainer.model.generation import GenerationOutput

    packed = torch.zeros((n, 3 * width + 2), dtype=torch.float64)
    if out is not None:
        for i, (tok, lp, forced) in enumerate(zip(out.tokens, out.logprobs, out.forced, strict=True)):
            k = len(tok)
            packed[i, :k] = torch.tensor(tok, dtype=torch.float64)
            packed[i, width: width + k] = torch.tensor(lp, dtype=torch.float64)
            packed[i, 2 * width: 2 * width + k] = torch.tensor(forced, dtype=torch.float64)
            packed[i, -2] = k
            packed[i, -1] = float(out.finish_reasons[i] == "stop")
    packed = packed.to(device)
    dist.broadcast(packed, src=dist.get_global_rank(group, 0), group=group)
    if out is not None:
        return out
    rows = packed.cpu()
    lens = rows[:, -2].long().tolist()
    return GenerationOutput([rows[i, :k].long().tolist() for i, k in enumerate(lens)],
                            [rows[i, width: width + k].tolist() for i, k in enumerate(lens)],
                            [rows[i, 2 * width: 2 * width + k].bool().tolist() for i, k in enumerate(lens)],
                            ["stop" if s else "length" for s in rows[:, -1].tolist()])


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
                         per_seq: dict[str, list[float]] | None = None,
                         multiple_of: int = 1) -> list[dict[str, torch.Tensor]]:
    """Micro-batches of ``prompt + response`` rows (input_ids [mb, L], labels [mb, L], and each
    ``per_seq`` value broadcast per token as float [mb, L]). Rows longer than ``max_len + 1`` tokens
    are cut (their tail leaves the loss). ``multiple_of``: L is padded up to a multiple of it (the
    sequence-parallel degree, ``Trainer.seq_multiple``)."""
    rows = []
    for i, (p, r, m) in enumerate(zip(prompts, responses, loss_masks, strict=True)):
        ids = (list(p) + list(r))[: max_len + 1]
        tgt = ([False] * len(p) + list(m))[: max_len + 1]
        rows.append((i, ids, tgt))
    batches = []
    for start in range(0, len(rows), micro_batch_size):
        chunk = rows[start: start + micro_batch_size]
        width = max(len(ids) for _, ids, _ in chunk) - 1
        width += -width % multiple_of
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


def frozen_model(path: str, device, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A frozen model from a HF directory or a DCP checkpoint (local or s3://) on one device, unsharded
    (in ``dtype`` if given); inside a training job use ``Trainer.load_frozen`` (sharded)."""
    from qwen3_trainer.model import storage
    from qwen3_trainer.model.dcp_io import load_model_dcp
    from qwen3_trainer.model.hf_interop import from_hf

    if not storage.exists(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    is_dcp = storage.exists(storage.join(path, ".metadata"))
    model = load_model_dcp(path, device=device) if is_dcp else from_hf(path, device=device)
    if dtype is not None:
        for param in model.parameters():  # weights only: the RoPE cache stays fp32
            param.data = param.data.to(dtype)
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

