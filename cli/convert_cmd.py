"""``qtrain convert``: HF checkpoints <-> DCP checkpoints (the trainer's format).

Examples:
    qtrain convert hf-to-dcp ./Qwen3-0.6B ./ckpt/qwen3-0.6b
    qtrain convert dcp-to-hf s3://bucket/runs/s1/step-1000 ./export/s1
"""

from __future__ import annotations

from typing import Annotated

import typer

from qwen3_trainer.cli.output import console, handle_errors

app = typer.Typer(help="Convert checkpoints between HF safetensors and torch DCP.", no_args_is_help=True)

Src = Annotated[str, typer.Argument(help="Source directory (local path or s3://...).")]
Dst = Annotated[str, typer.Argument(help="Destination directory (local path or s3://...).")]


@app.command("hf-to-dcp")
@handle_errors
def hf_to_dcp(src: Src, dst: Dst) -> None:
    """Read a HF Qwen3 checkpoint, write it as a DCP checkpoint the trainer can start from."""
    from qwen3_trainer.model.dcp_io import save_model_dcp
    from qwen3_trainer.model.hf_interop import from_hf

    model = from_hf(src)
    save_model_dcp(model, dst)
    console.print(f"wrote DCP checkpoint {dst}")


@app.command("dcp-to-hf")
@handle_errors
def dcp_to_hf(
    src: Src,
    dst: Dst,
    dtype: Annotated[str, typer.Option(help="Weight dtype to write: float32 or bfloat16.")] = "float32",
) -> None:
    """Read a DCP checkpoint (model weights only), write HF config.json + safetensors."""
    import torch

    from qwen3_trainer.model.dcp_io import load_model_dcp
    from qwen3_trainer.model.hf_interop import to_hf

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if dtype not in dtypes:
        raise ValueError(f"--dtype {dtype!r}: choose one of {', '.join(dtypes)}")
    to_hf(load_model_dcp(src), dst, dtype=dtypes[dtype])
    console.print(f"wrote HF checkpoint {dst}")
