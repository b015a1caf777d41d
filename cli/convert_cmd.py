"""``qtrain convert``: HF checkpoints <-> DCP checkpoints (the trainer's format).

Examples:
    qtrain convert hf-to-dcp ./Qwen3-0.6B ./ckpt/qwen3-0.6b
    qtrain convert dcp-to-hf s3://bucket/runs/s1/step-1000 ./export/s1
    qtrain convert dcp-to-hf ./ckpt/step-100 ./export/s1 --overwrite    # replace an earlier export

The destination must be new or an empty directory: a non-empty directory or a file there is refused
(exit code 2) unless ``--overwrite``, which replaces it only once the new checkpoint is complete.
"""

from __future__ import annotations

from typing import Annotated

import typer

from qwen3_trainer.cli.output import UsageError, console, handle_errors

app = typer.Typer(help="Convert checkpoints between HF safetensors and torch DCP.", no_args_is_help=True)

Src = Annotated[str, typer.Argument(help="Source directory (local path or s3://...).")]
Dst = Annotated[str, typer.Argument(help="Destination directory (local path or s3://...); new or empty.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace what the destination holds.")]


def _kind(path: str) -> str:
    """``hf`` or ``dcp`` by the files of ``path``; a one-line UsageError when it is neither."""
    from qwen3_trainer.model import storage

    files = storage.listdir(path)
    if not files:
        raise UsageError(f"{path}: not found or empty")
    if ".metadata" in files:
        return "dcp"
    if any(f.endswith(".safetensors") for f in files):
        return "hf"
    raise UsageError(f"{path}: neither a HF checkpoint (*.safetensors) nor a DCP checkpoint (.metadata)")


@app.command("hf-to-dcp")
@handle_errors
def hf_to_dcp(src: Src, dst: Dst, overwrite: Overwrite = False) -> None:
    """Read a HF Qwen3 checkpoint, write it as a DCP checkpoint the trainer can start from."""
    from qwen3_trainer.model import storage

    storage.check_destination(dst, overwrite)   # before the (slow) load
    if _kind(src) != "hf":
        raise UsageError(f"{src} is a DCP checkpoint, not HF", hint=f"qtrain convert dcp-to-hf {src} DST")
    from qwen3_trainer.model.dcp_io import save_model_dcp
    from qwen3_trainer.model.hf_interop import from_hf

    model = from_hf(src)
    with storage.staged_directory(dst, overwrite=overwrite) as stage:
        save_model_dcp(model, str(stage))
    console.print(f"wrote DCP checkpoint {dst}")


@app.command("dcp-to-hf")
@handle_errors
def dcp_to_hf(
    src: Src,
    dst: Dst,
    dtype: Annotated[str, typer.Option(help="Weight dtype to write: float32 or bfloat16.")] = "float32",
    overwrite: Overwrite = False,
) -> None:
    """Read a DCP checkpoint (model weights only), write HF config.json + safetensors."""
    from qwen3_trainer.model import storage

    if dtype not in ("float32", "bfloat16"):
        raise UsageError(f"--dtype {dtype!r}: choose one of float32, bfloat16")
    storage.check_destination(dst, overwrite)
    if _kind(src) != "dcp":
        raise UsageError(f"{src} is a HF checkpoint, not DCP", hint=f"qtrain convert hf-to-dcp {src} DST")
    import torch

    from qwen3_trainer.model.dcp_io import load_model_dcp
    from qwen3_trainer.model.hf_interop import to_hf

    to_hf(load_model_dcp(src), dst, dtype=getattr(torch, dtype), overwrite=overwrite)
    console.print(f"wrote HF checkpoint {dst}")
