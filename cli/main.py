"""``qtrain``: the qwen3-trainer command line. One sub-app per noun, one file each.

Examples:
    qtrain model list
    qtrain convert hf-to-dcp ./Qwen3-0.6B ./ckpt/step-0
    qtrain train configs/debug.yaml
    qtrain job render k8s/jobs/debugmodel-cpu.yaml
    qtrain pipeline run --preset tiny
"""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="qtrain",
    help="Train Qwen3 models through the Qwen3 recipe, locally or on Kubernetes.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

# noun -> module holding its typer sub-app (`app`), or a single command (`command`, for verbs
# that take positional arguments directly: `qtrain train CONFIG`, `qtrain chat CHECKPOINT`).
SUBCOMMANDS = {
    "model": "qwen3_trainer.cli.model_cmd",
    "convert": "qwen3_trainer.cli.convert_cmd",
    "job": "qwen3_trainer.cli.job_cmd",
    "chat": "qwen3_trainer.cli.chat_cmd",
    "train": "qwen3_trainer.cli.train_cmd",
    "pipeline": "qwen3_trainer.cli.pipeline_cmd",
    "recipe": "qwen3_trainer.cli.recipe_cmd",
    "posttrain": "qwen3_trainer.cli.posttrain_cmd",
    "eval": "qwen3_trainer.cli.eval_cmd",
}


def _register() -> None:
    for noun, module in SUBCOMMANDS.items():
        mod = importlib.import_module(module)
        if hasattr(mod, "command"):
            app.command(noun, help=(mod.command.__doc__ or "").strip().splitlines()[0])(mod.command)
        else:
            app.add_typer(mod.app, name=noun)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    main()
