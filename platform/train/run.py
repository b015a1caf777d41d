"""``qtrain train CONFIG``: the command every PyTorchJob pod runs, and a plain one-process CPU run.

One process:                 qtrain train configs/debug.yaml
torchrun, one node:          torchrun --nproc-per-node 2 -m qwen3_trainer.cli.main train cfg.yaml
Kubeflow PyTorchJob pod:     qtrain train /etc/qtrain/config.yaml
    The operator sets MASTER_ADDR/MASTER_PORT and PET_NNODES / PET_NPROC_PER_NODE / PET_NODE_RANK;
    when this command starts outside torchrun with PET_NPROC_PER_NODE set, it re-executes itself
    under torchrun with those values (torchrun then sets RANK/WORLD_SIZE/LOCAL_RANK per process).

Everything that can be checked before a process group starts is checked first (config, parallel
degrees against the world size, data files, S3 and MLflow reachability); a failure is one line and
exit code 2 from every rank.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from qwen3_trainer.platform.train.config import TrainConfig, load_config
from qwen3_trainer.platform.train.objectives import BatchProducer
from qwen3_trainer.platform.train.parallel import DistEnv, validate_layout


class PreflightError(ValueError):
    """A problem found before training starts (bad config, missing data, unreachable service)."""


def torchrun_argv(config_path: str, extra: list[str]) -> list[str] | None:
    """The torchrun command for a Kubeflow pod (PET_* set, not yet under torchrun), else None."""
    env = os.environ
    if "PET_NPROC_PER_NODE" not in env or "TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env:
        return None
    nproc = env["PET_NPROC_PER_NODE"]
    if nproc == "auto":
        nproc = "gpu" if _has_gpu() else "1"
    argv = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            f"--nnodes={env.get('PET_NNODES', '1')}"]
    if "PET_RDZV_ENDPOINT" in env:  # elastic policy: c10d rendezvous
        argv += [f"--rdzv-backend={env.get('PET_RDZV_BACKEND', 'c10d')}",
                 f"--rdzv-endpoint={env['PET_RDZV_ENDPOINT']}",
                 f"--rdzv-id={env.get('PET_RDZV_ID', 'qwen3')}"]
        if "PET_MAX_RESTARTS" in env:
            argv.append(f"--max-restarts={env['PET_MAX_RESTARTS']}")
    else:
        argv += [f"--node-rank={env.get('PET_NODE_RANK', env.get('RANK', '0'))}",
                 f"--master-addr={env.get('PET_MASTER_ADDR', env.get('MASTER_ADDR', '127.0.0.1'))}",
                 f"--master-port={env.get('PET_MASTER_PORT', env.get('MASTER_PORT', '23456'))}"]
    return [*argv, "-m", "qwen3_trainer.cli.main", "train", config_path, *extra]


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def data_config(cfg: TrainConfig):
    """The stage's DataConfig, with seq_len / seed defaulting to the training section's."""
    from qwen3_trainer.platform.data import DataConfig

    if cfg.data is None:
        raise PreflightError("data: no data sources configured")
    raw = dict(cfg.data)
    raw.setdefault("seq_len", cfg.training.seq_len)
    raw.setdefault("seed", cfg.training.seed)
    if raw["seq_len"] != cfg.training.seq_len:
        raise PreflightError(f"data.seq_len={raw['seq_len']} differs from training.seq_len={cfg.training.seq_len}")
    return DataConfig.model_validate(raw)


def read_config(config_path: str, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """``load_config`` with every problem of the document as one line: a PreflightError for a file that
    does not parse or a ``--set`` that does not apply, pydantic's ValidationError for a field."""
    kind = {"toml": "TOML", "json": "JSON"}.get(str(config_path).rsplit(".", 1)[-1].lower(), "YAML")
    try:
        return load_config(config_path, overrides)
    except ValidationError:
        raise
    except (yaml.YAMLError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PreflightError(f"{config_path}: not valid {kind}: {first}") from None
    except (ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        # load_config's own check (a mapping at the top level) and a --set key that crosses a scalar
        # or runs past a list: the document's problem, not the program's
        where = f" (--set {', '.join(overrides)})" if overrides and not str(exc).startswith(str(config_path)) else ""
        raise PreflightError(f"{config_path}{where}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def check_config(raw: dict[str, Any], world_size: int) -> TrainConfig:
    """The checks of ``preflight`` that need nothing outside the document: fields, parallel degrees
    against ``world_size``, objective params, the data section. ``qtrain job render/submit`` run it on
    a JobSpec's config."""
    cfg = TrainConfig.model_validate(raw)
    _layout(cfg, world_size)
    _objective(cfg)
    if cfg.data is not None:
        data_config(cfg)
    if cfg.checkpoint.export_hf and not cfg.checkpoint.dir:
        raise PreflightError("checkpoint.export_hf needs checkpoint.dir (the export reads the final checkpoint)")
    return cfg


def _objective(cfg: TrainConfig) -> None:
    try:  # objective params (types, ranges, modes, reward names): checked before any process group
        from qwen3_trainer.platform.train.objectives import build_objective

        build_objective(cfg.objective.name, cfg.objective.params)
    except (ValueError, TypeError) as exc:
        raise PreflightError(f"objective: {str(exc).splitlines()[0]}") from None


# the objectives' record files: (param, kind) -- queries/prompts are parsed as RL prompts, the rest must hold a record
_RECORD_FILES = {"grpo": (("queries", "prompts"), ("eval_queries", "prompts")),
                 "distill_onpolicy": (("prompts", "prompts"), ("offpolicy_data", "records"),
                                      ("eval_queries", "prompts")),
                 "reward_model": (("pairs", "records"), ("eval_pairs", "records"))}


def _objective_data(cfg: TrainConfig) -> None:
    """The rollout objectives' record files exist and hold a usable record (an empty or malformed query
    file fails here in one line, not after the process group and the model are up). Reads up to the
    first usable record: the objective parses the whole file itself."""
    from qwen3_trainer.platform.data.synthetic import read_records
    from qwen3_trainer.platform.posttrain.grpo import query_prompt

    for key, kind in _RECORD_FILES.get(cfg.objective.name, ()):
        paths = cfg.objective.params.get(key)
        if not paths:
            continue
        where = f"objective.params.{key}"
        try:  # files, folders, globs, lists, s3:// -- as the objectives read them (a missing one: DataError)
            usable = (lambda rec: query_prompt(rec) is not None) if kind == "prompts" else (lambda rec: True)
            if not any(usable(rec) for rec in read_records(paths)):
                raise ValueError(f"{where}: no usable records in {paths}")
        except (ValueError, OSError) as exc:
            line = str(exc).splitlines()[0]
            raise PreflightError(line if line.startswith(where) else f"{where}: {line}") from None


def _layout(cfg: TrainConfig, world_size: int) -> None:
    try:
        validate_layout(cfg, world_size)
    except ValueError as exc:  # validate_layout's one-line message about the degrees
        raise PreflightError(str(exc)) from None


def _frozen_models_share_the_vocabulary(cfg: TrainConfig) -> None:
    """A teacher / reference checkpoint must have the policy's vocabulary rows: read from its
    config.json (HF directory or DCP checkpoint), before any process group or weight load."""
    import json

    from qwen3_trainer.model import storage
    from qwen3_trainer.model.flavors import FLAVORS

    policy = cfg.model.vocab_size or FLAVORS[cfg.model.flavor].vocab_size
    for key in ("teacher", "reference"):
        path = cfg.objective.params.get(key)
        if not isinstance(path, str) or not storage.exists(storage.join(path, "config.json")):
            continue  # missing checkpoints are reported by the objective with their own message
        vocab = json.loads(storage.read_text(storage.join(path, "config.json"))).get("vocab_size")
        if vocab is not None and vocab != policy:
            raise PreflightError(f"objective.params.{key}: {storage.redact(path)} has a vocabulary of {vocab} rows "
                                 f"but the policy has {policy}: they must share the tokenizer and vocabulary size")


def preflight(cfg: TrainConfig, env: DistEnv) -> None:
    """Checks that need no process group. Raises PreflightError (or the data / storage / tracking
    module's own error) with one line."""
    from qwen3_trainer.model import storage
    from qwen3_trainer.platform.data import validate_sources
    from qwen3_trainer.platform.tracking import check_reachable

    _layout(cfg, env.world_size)
    _objective(cfg)
    _objective_data(cfg)
    _frozen_models_share_the_vocabulary(cfg)
    if cfg.data is not None:
        validate_sources(data_config(cfg))
    for label, path in (("checkpoint.dir", cfg.checkpoint.dir), ("init.path", cfg.init.path),
                        ("checkpoint.export_hf", cfg.checkpoint.export_hf)):
        if path:
            try:
                storage.check_reachable(path)
            except storage.StorageError as exc:
                raise PreflightError(f"{label}: {exc}") from None
    if cfg.init.path and not storage.exists(cfg.init.path):
        raise PreflightError(f"init.path: {cfg.init.path} does not exist")
    if cfg.checkpoint.export_hf and not cfg.checkpoint.dir:
        raise PreflightError("checkpoint.export_hf needs checkpoint.dir (the export reads the final checkpoint)")
    if cfg.checkpoint.export_hf and resume_point(cfg) is None:  # a fresh run never replaces a user's files
        held = storage.occupied(cfg.checkpoint.export_hf)
        if held:
            raise PreflightError(f"checkpoint.export_hf: {storage.redact(cfg.checkpoint.export_hf)} {held}; "
                                 "a new run does not replace it (choose another path or remove it)")
    uri = cfg.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and env.rank == 0:
        check_reachable(uri)


def resume_point(cfg: TrainConfig) -> str | None:
    """The newest complete checkpoint the run will resume from, if any."""
    if not cfg.checkpoint.dir or not cfg.checkpoint.resume:
        return None
    from qwen3_trainer.platform.train.checkpoint import Checkpointer

    return Checkpointer(cfg.checkpoint.dir, async_save=False).latest()  # no process group of its own: not collective


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a record is emitted, not the stream of the moment the
    trainer started (a run inside another program — a test's CLI runner — may swap and close it)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(rank: int, dump_dir: str) -> None:
    Path(dump_dir).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank{rank}] %(asctime)s %(name)s: %(message)s", handlers=[_StdoutHandler()],
                        force=True)


def train(cfg: TrainConfig, env: DistEnv | None = None) -> dict[str, Any]:
    """Run a whole training job in this process (one rank). Returns the trainer's summary."""
    from qwen3_trainer.platform.tracking import Tracker, TrackerStopped, TrackingError
    from qwen3_trainer.platform.train.trainer import Trainer

    env = env or DistEnv.from_env()
    preflight(cfg, env)
    _setup_logging(env.rank, cfg.dump_dir)
    t = cfg.tracking
    tracker = Tracker(enabled=env.rank == 0, uri=t.mlflow_uri, experiment=t.experiment, run_id=t.run_id,
                      parent_run_id=t.parent_run_id, run_name=t.run_name,
                      metrics_file=t.metrics_file or str(Path(cfg.dump_dir) / "metrics.jsonl"),
                      tags={"qwen3.flavor": cfg.model.flavor, "qwen3.objective": cfg.objective.name})
    status = "FAILED"
    trainer = None
    log = logging.getLogger("qwen3_trainer.train")
    started = time.monotonic()
    try:
        trainer = Trainer(cfg, env, tracker=tracker)
        if not isinstance(trainer.objective, BatchProducer):  # rollout objectives bring their own data
            trainer.loader = _build_loader(cfg, trainer, env)
        tracker.log_params({**cfg.model_dump(mode="json"), "world_size": env.world_size})
        resume = resume_point(cfg) if env.rank == 0 else None
        if resume:
            log.info("resuming from step %d of %d (%s)", _step_of(resume), cfg.training.steps, resume)
        summary = trainer.fit()
        if env.rank == 0 and trainer.loader is not None:
            mix = trainer.loader.mix_report()
            tracker.log_params({"data.realized_mix": {k: round(v["fraction"], 4) for k, v in mix.items()}})
            tracker.log_metrics(trainer.step, {"tracking/log_seconds": tracker.log_seconds})
        if env.rank == 0:
            log.info("%s", summary_line(cfg, trainer.step, summary, time.monotonic() - started))
        status = "FINISHED"
        return summary
    finally:
        try:
            if trainer is not None:
                trainer.close()
            try:
                tracker.close(status)
            except (TrackingError, TrackerStopped) as exc:
                if status == "FINISHED":
                    raise
                logging.getLogger("qwen3_trainer.train").error("%s", exc)  # the training error goes on up
        finally:
            import torch.distributed as dist

            if dist.is_initialized():
                if status == "FINISHED":
                    # every rank reaches teardown before any tears down: a rank that destroys its gloo
                    # group while a peer still logs or commits its last checkpoint aborts at exit
                    # ("terminate called without an active exception", ep2 in CI)
                    dist.barrier()
                dist.destroy_process_group()


def _step_of(checkpoint: str) -> int:
    import re

    m = re.search(r"step-(\d+)/*$", checkpoint)
    return int(m.group(1)) if m else -1


def summary_line(cfg: TrainConfig, step: int, summary: dict[str, Any], seconds: float) -> str:
    """The run's last line: steps, where it resumed, the last loss, checkpoint, export, metrics file."""
    from qwen3_trainer.model.storage import redact

    summary = summary if isinstance(summary, dict) else {}
    parts = [f"finished: step {step}/{cfg.training.steps} in {seconds:.0f} s"]
    if summary.get("resumed_from"):
        parts.append(f"resumed from step {_step_of(summary['resumed_from'])}")
    history = summary.get("history") or []
    if history and "loss" in history[-1]:
        parts.append(f"loss {history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}")
    if summary.get("final_checkpoint"):
        parts.append(f"checkpoint {summary['final_checkpoint']}")
    if cfg.checkpoint.export_hf:
        parts.append(f"HF export {cfg.checkpoint.export_hf}")
    parts.append(f"metrics {cfg.tracking.metrics_file or Path(cfg.dump_dir) / 'metrics.jsonl'}")
    return redact(" · ".join(parts))


def _build_loader(cfg: TrainConfig, trainer, env: DistEnv):
    """Tokenise (or reuse the cache) once on local rank 0, then every rank opens its slice."""
    import torch.distributed as dist

    from qwen3_trainer.model import load_tokenizer
    from qwen3_trainer.platform.data import build_loader, prepare_cache

    data_cfg, tokenizer = data_config(cfg), load_tokenizer()
    if env.local_rank == 0:
        prepare_cache(data_cfg, tokenizer)
    if dist.is_initialized():
        dist.barrier()
    return build_loader(data_cfg, tokenizer, micro_batch_size=cfg.training.micro_batch_size,
                        grad_accum=cfg.training.grad_accum, dp_rank=trainer.dp_rank, dp_world=trainer.dp_world)


def main(config_path: str, overrides: dict[str, Any] | None = None, extra_argv: list[str] | None = None) -> int:
    argv = torchrun_argv(config_path, extra_argv or [])
    cfg = read_config(config_path, overrides)
    env = DistEnv.from_env()
    if argv is not None:
        # validate once on the pod before spawning the local ranks
        world = int(os.environ.get("PET_NNODES", "1").split(":")[-1]) * _nproc(os.environ["PET_NPROC_PER_NODE"])
        preflight(cfg, DistEnv(0, 0, world, env.master_addr, env.master_port))
        return subprocess.call(argv)
    train(cfg, env)
    return 0


def _nproc(value: str) -> int:
    if value in ("auto", "gpu"):
        import torch

        return max(torch.cuda.device_count(), 1)
    return int(value)
