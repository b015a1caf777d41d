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

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from qwen3_trainer.platform.train.config import TrainConfig, load_config
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


def preflight(cfg: TrainConfig, env: DistEnv) -> None:
    """Checks that need no process group. Raises PreflightError / ValueError with one line."""
    from qwen3_trainer.model import storage
    from qwen3_trainer.platform.data import validate_sources
    from qwen3_trainer.platform.tracking import check_reachable

    validate_layout(cfg, env.world_size)
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
    uri = cfg.tracking.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and env.rank == 0:
        check_reachable(uri)


def _setup_logging(rank: int, dump_dir: str) -> None:
    Path(dump_dir).mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[rank{rank}] %(asctime)s %(name)s: %(message)s", stream=sys.stdout, force=True)


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
    try:
        trainer = Trainer(cfg, env, tracker=tracker)
        if not hasattr(trainer.objective, "fit"):  # rollout objectives bring their own data
            trainer.loader = _build_loader(cfg, trainer, env)
        tracker.log_params({**cfg.model_dump(mode="json"), "world_size": env.world_size})
        summary = trainer.fit()
        if env.rank == 0 and trainer.loader is not None:
            mix = trainer.loader.mix_report()
            tracker.log_params({"data.realized_mix": {k: round(v["fraction"], 4) for k, v in mix.items()}})
            tracker.log_metrics(trainer.step, {"tracking/log_seconds": tracker.log_seconds})
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
                dist.destroy_process_group()


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
    cfg = load_config(config_path, overrides)
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
