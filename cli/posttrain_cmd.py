"""``qtrain posttrain``: the post-training stages' data preparation, run as a job on the stage's node.

Examples:
    qtrain posttrain prepare prep.yaml                                   # one process
    torchrun --nproc-per-node 8 -m qwen3_trainer.cli.main posttrain prepare prep.yaml   # 8 GPUs share the work
    qtrain posttrain teacher-cache cache.yaml                            # the teacher's top-k, cached
    qtrain posttrain teacher-cache --teacher runs/T4/hf --data data/teacher_responses.jsonl \
        --out data/teacher_cache --k 64 --seq-len 2048

The config (platform/posttrain/prepare.py ``PrepareConfig``) is what ``qtrain pipeline render --job prepare``
shows; the pipeline submits it through the launcher before the stage's training job. The teacher cache
(platform/posttrain/teacher_cache.py ``TeacherCacheConfig``) is written by the D stage's preparation job
when its recipe asks for one, or by ``teacher-cache`` on its own; ``distill_offpolicy`` and
``distill_onpolicy`` read it through their ``teacher_cache`` param instead of running a live teacher.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from qwen3_trainer.cli.output import UsageError, handle_errors

app = typer.Typer(help="Post-training data preparation (rejection sampling, teacher responses, RL queries, "
                       "teacher caches).",
                  no_args_is_help=True)


@app.command("prepare")
@handle_errors
def prepare_cmd(
    config: Annotated[str, typer.Argument(help="PrepareConfig: YAML or JSON (local or s3://).")],
) -> None:
    """Write a post-training stage's data files (T1 cold start, T2/T4 queries, T3 fusion, D teacher responses)."""
    from qwen3_trainer.cli.config_file import load_model
    from qwen3_trainer.platform.posttrain.prepare import PrepareConfig, RecordError, prepare

    cfg = load_model(config, PrepareConfig)
    try:
        report = prepare(cfg)
    except RecordError as exc:
        raise UsageError(str(exc)) from None
    typer.echo(f"prepared {cfg.stage}: " + json.dumps(report, default=str))


@app.command("teacher-cache")
@handle_errors
def teacher_cache_cmd(
    config: Annotated[str | None, typer.Argument(
        help="TeacherCacheConfig: YAML or JSON (local or s3://); the options below override its fields.")] = None,
    teacher: Annotated[str | None, typer.Option(help="Frozen teacher: HF directory or DCP checkpoint.")] = None,
    data: Annotated[list[str] | None, typer.Option(help="SFT records with `messages` (repeat for several files).")] = None,
    out: Annotated[str | None, typer.Option(help="Cache folder (local or s3://).")] = None,
    k: Annotated[int | None, typer.Option("--k", help="Top-k tokens kept per response position.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Log-probs of softmax(logits / temperature).")] = None,
    dtype: Annotated[str | None, typer.Option(help="Log-prob storage: float16 or float32.")] = None,
    seq_len: Annotated[int | None, typer.Option(help="Samples cut to seq_len + 1 tokens (the training seq_len).")] = None,
    batch: Annotated[int | None, typer.Option(help="Sequences per teacher forward.")] = None,
    samples_per_shard: Annotated[int | None, typer.Option(help="Samples per shard file.")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu or cuda.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace what `out` holds.")] = False,
) -> None:
    """Run a frozen teacher over SFT records and cache its top-k log-probs per response token (sharded).

    Either a complete config file (options override its fields) or every required field as options."""
    from qwen3_trainer.cli.config_file import load_model
    from qwen3_trainer.cli.output import bad_input
    from qwen3_trainer.platform.posttrain.teacher_cache import CacheError, TeacherCacheConfig, write_cache

    raw: dict[str, Any] = load_model(config, TeacherCacheConfig).model_dump() if config else {}
    given = {"teacher": teacher, "data": data, "out": out, "k": k, "temperature": temperature, "dtype": dtype,
             "seq_len": seq_len, "batch": batch, "samples_per_shard": samples_per_shard, "device": device}
    raw.update({key: value for key, value in given.items() if value is not None})
    if overwrite:
        raw["overwrite"] = True
    with bad_input():
        cfg = TeacherCacheConfig.model_validate(raw)
    try:
        report = write_cache(cfg)
    except CacheError as exc:
        raise UsageError(str(exc), hint=getattr(exc, "hint", None)) from None
    typer.echo("teacher cache: " + json.dumps(report, default=str))
