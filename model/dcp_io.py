"""Model weights as a torch distributed checkpoint (DCP), the trainer's checkpoint format.

Layout of a checkpoint directory (local or ``s3://``)::

    config.json      HF-style config (``hf_interop.hf_config_from_args``): the model's shape
    .metadata, *.distcp   DCP shards; the model's tensors live under the top-level key ``model``

The trainer adds ``optimizer``, ``lr_scheduler``, ``dataloader`` and ``rng`` entries to the same
DCP state; loading here reads only ``model.*``, so trainer checkpoints convert too.
"""

from __future__ import annotations

import json

import torch
import torch.distributed.checkpoint as dcp

from qwen3_trainer.model import storage
from qwen3_trainer.model.build import build_model, materialize
from qwen3_trainer.model.hf_interop import HFFormatError, args_from_hf_config, hf_config_from_args
from qwen3_trainer.model.titan import Qwen3Model, Qwen3ModelArgs

MODEL_KEY = "model"


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The persistent model tensors (MoE bias/counters excluded: they are not weights)."""
    return {k: v for k, v in model.state_dict().items() if not k.endswith("tokens_per_expert")}


# Files each rank writes to an object store at once: four uploads in flight instead of one, and
# objects a quarter the size (a 7.2 GB single-file shard failed moto's CompleteMultipartUpload;
# 1 GB to moto on 2 cores: 18.9 s with one thread, 17.0 s with four).
REMOTE_WRITE_THREADS = 4


def writer(path: str):
    if storage.is_remote(path):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        return FsspecWriter(path, sync_files=False, thread_count=REMOTE_WRITE_THREADS)
    return dcp.FileSystemWriter(path)


def reader(path: str):
    if storage.is_remote(path):
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader

        return FsspecReader(path)
    return dcp.FileSystemReader(path)


def read_args(path: str) -> Qwen3ModelArgs:
    """The model shape stored beside a DCP checkpoint."""
    try:
        cfg = json.loads(storage.read_text(storage.join(path, "config.json")))
    except storage.StorageError:
        raise HFFormatError(f"{path}: no config.json (not a qwen3-trainer checkpoint)") from None
    return args_from_hf_config(cfg)


def save_model_dcp(model: Qwen3Model, path: str) -> str:
    """Write the model's weights (+ config.json) as a DCP checkpoint, published whole."""
    with storage.staged_directory(path) as stage:
        dcp.save({MODEL_KEY: model_state(model)}, storage_writer=dcp.FileSystemWriter(str(stage)))
        (stage / "config.json").write_text(json.dumps(hf_config_from_args(model.model_args), indent=2))
    return path


def load_model_dcp(path: str, *, device: str | torch.device = "cpu") -> Qwen3Model:
    """Build the model described by ``path``'s config.json and load its DCP weights."""
    args = read_args(path)
    model = materialize(build_model(args, device="meta", init=False, compute_device=device), device)
    state = {MODEL_KEY: model_state(model)}
    dcp.load(state, storage_reader=reader(path), no_dist=True)  # one process, even inside a job
    model.load_state_dict(state[MODEL_KEY], strict=False)
    if args.enable_weight_tying:
        model.output.weight = model.tok_embeddings.weight
    return model
