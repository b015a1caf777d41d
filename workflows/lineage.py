"""MLflow lineage of a pipeline, through ``platform.tracking.MlflowStore`` (the one MLflow module).

- one parent run per pipeline (tags ``qwen3.pipeline_id``, ``qwen3.preset``), one child run per stage
  (``mlflow.parentRunId``), created here and handed to the stage's job as ``tracking.run_id`` so the
  trainer logs its params and metrics into it;
- on the child: the stage's knobs as ``knobs.*`` params, tags ``qwen3.stage``, ``qwen3.config_hash``,
  ``qwen3.init_checkpoint`` (the checkpoint it started from), ``qwen3.teacher_checkpoint``,
  ``qwen3.checkpoint_uri`` and ``qwen3.hf_uri``;
- plots (matplotlib, Agg) as PNG artifacts: each stage's loss curve, a thinking-budget curve where the
  stage logged one, and on the parent the loss over the whole pipeline;
- each stage's final HF export logged as artifacts (``hf/``) and registered as a model version:
  ``qwen3-<preset>-teacher`` for S1-T4, ``qwen3-<preset>-student`` for D, with the stage alias
  (``S3-long-context``, ``T4-general-rl``, ``distilled``, ...).

Embedded default store: ``sqlite:///$QTRAIN_HOME/mlflow.db`` when ``MLFLOW_TRACKING_URI`` is unset.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from qwen3_trainer.model import storage
from qwen3_trainer.platform.tracking import MlflowStore
from qwen3_trainer.recipe.graph import ALIASES, FLOW_NAMES

THINKING_PREFIXES = ("thinking_budget/", "eval/thinking_budget")


def default_uri() -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    home = Path(os.environ.get("QTRAIN_HOME") or Path.home() / ".qtrain")
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'mlflow.db'}"


def model_name(preset: str, stage: str) -> str:
    return f"qwen3-{preset}-{'student' if stage == 'D' else 'teacher'}"


class Lineage:
    def __init__(self, uri: str, experiment: str):
        self.uri = uri
        self.store = MlflowStore(uri)
        self.experiment_id = self.store.experiment_id(experiment)

    # -- runs ----------------------------------------------------------------------------------
    def start_pipeline(self, pipeline_id: str, preset: str, params: dict[str, Any]) -> str:
        run_id = self.store.create_run(self.experiment_id, f"qwen3-pipeline {pipeline_id}",
                                       {"qwen3.pipeline_id": pipeline_id, "qwen3.preset": preset,
                                        "qwen3.kind": "pipeline"})
        self.store.log_params(run_id, params)
        return run_id

    def start_stage(self, parent_run_id: str, pipeline_id: str, stage: str, config_hash: str,
                    spec: dict[str, Any], init_checkpoint: str | None, teacher: str | None) -> str:
        """The stage's child run; its params are the stage's recipe spec (``recipe.*``), and the trainer
        logs the training config it runs beside them (both derived from the same spec)."""
        tags = {"mlflow.parentRunId": parent_run_id, "qwen3.pipeline_id": pipeline_id, "qwen3.stage": stage,
                "qwen3.config_hash": config_hash, "qwen3.kind": "stage",
                "qwen3.init_checkpoint": init_checkpoint or "none"}
        if teacher:
            tags["qwen3.teacher_checkpoint"] = teacher
        run_id = self.store.create_run(self.experiment_id, FLOW_NAMES[stage], tags)
        self.store.log_params(run_id, {"recipe": spec})
        return run_id

    def tag(self, run_id: str, **tags: str) -> None:
        self.store.set_tags(run_id, {f"qwen3.{k}": str(v) for k, v in tags.items()})

    def end(self, run_id: str, status: str = "FINISHED") -> None:
        self.store.set_terminated(run_id, status)

    def url(self, run_id: str) -> str | None:
        if not self.uri.startswith("http"):
            return None
        return f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"

    # -- metrics -------------------------------------------------------------------------------
    def history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return self.store.metric_history(run_id, key)

    def summary(self, run_id: str) -> dict[str, float]:
        """Last value of every metric of the run, plus the first loss (to show the drop)."""
        metrics = self.store.last_metrics(run_id)
        loss = self.history(run_id, "loss")
        if loss:
            metrics["loss_first"] = loss[0][1]
            metrics["steps"] = float(loss[-1][0])
        return metrics

    # -- plots ---------------------------------------------------------------------------------
    def log_stage_plots(self, run_id: str, stage: str) -> list[str]:
        """loss.png, and thinking_budget.png when the stage logged thinking-budget metrics."""
        out = []
        loss = self.history(run_id, "loss")
        if loss:
            out.append(self._plot(run_id, "loss.png", f"{stage} loss", {"loss": loss}, "step", "loss"))
        keys = [k for k in self.store.last_metrics(run_id) if k.startswith(THINKING_PREFIXES)]
        if keys and "plots/thinking_budget.png" not in self.store.artifact_paths(run_id, "plots"):
            curves = {k: self.history(run_id, k) for k in sorted(keys)}
            out.append(self._plot(run_id, "thinking_budget.png", f"{stage} thinking budget", curves,
                                  "thinking budget (tokens)", "value"))
        return out

    def log_pipeline_plot(self, parent_run_id: str, stage_runs: dict[str, str]) -> str | None:
        """The loss of every stage, one after the other, on the parent run."""
        curves, offset = {}, 0
        for stage, run_id in stage_runs.items():
            loss = self.history(run_id, "loss")
            if loss:
                curves[stage] = [(offset + s, v) for s, v in loss]
                offset += loss[-1][0]
        if not curves:
            return None
        return self._plot(parent_run_id, "pipeline_loss.png", "loss through the pipeline", curves,
                          "step (cumulative)", "loss")

    def log_thinking_curve(self, run_id: str, curves: dict[str, list[tuple[int, float]]]) -> str:
        """Metrics ``thinking_budget/<name>`` (step = budget in tokens) and thinking_budget.png."""
        for name, points in curves.items():
            for budget, value in points:
                self.store.log_metric(run_id, f"thinking_budget/{name}", value, budget)
        shown = {k: v for k, v in curves.items() if k != "response_tokens"}
        return self._plot(run_id, "thinking_budget.png", "held-out accuracy vs thinking budget", shown,
                          "thinking budget (tokens)", "rate")

    def _plot(self, run_id: str, filename: str, title: str, curves: dict[str, list[tuple[int, float]]],
              xlabel: str, ylabel: str) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
        for label, points in curves.items():
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend(fontsize=8)
        fig.tight_layout()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            fig.savefig(path)
            plt.close(fig)
            self.store.log_artifact(run_id, str(path), "plots")
        return f"plots/{filename}"

    # -- model registry ------------------------------------------------------------------------
    def register_model(self, run_id: str, preset: str, stage: str, hf_uri: str) -> tuple[str, str]:
        """Log the HF export as ``hf/`` artifacts of the stage run and register it; returns
        (registered model name, version) with the stage alias pointing at it."""
        with storage.local_copy(hf_uri) as local:
            self.store.log_artifacts(run_id, str(local), "hf")
        name = model_name(preset, stage)
        version = self.store.register_version(
            name, description=f"Qwen3 {preset} pipeline checkpoints", source=f"{self.store.artifact_uri(run_id)}/hf",
            run_id=run_id, tags={"qwen3.stage": stage, "qwen3.hf_uri": hf_uri}, alias=ALIASES[stage])
        return name, version
