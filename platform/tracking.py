"""Experiment tracking: the one module that talks to MLflow.

Two parts: ``Tracker`` logs one training run from the trainer; ``MlflowStore`` is the client-side
API the pipeline's lineage (``workflows/lineage.py``) uses for runs, tags, metric histories,
artifacts and the model registry, so no other module imports mlflow.

Rank 0 logs; other ranks get a no-op tracker. Metrics go through a queue to a background thread
(``log_batch`` every flush), so a slow tracking server never stalls a training step. Every metric
is also appended to a local JSONL file, which is the whole record when no MLflow server is set
(``MLFLOW_TRACKING_URI`` unset and no ``tracking.mlflow_uri``); that file needs no mlflow installed.
A failed MLflow request is printed and training goes on; a failure of the thread itself (the
metrics file) raises ``TrackerStopped`` at the next logging call, so a run never goes unrecorded.

Runs nest: a pipeline creates a parent run and passes a child ``run_id`` to each stage's job; the
trainer then logs into that run (params, metrics, checkpoint URIs as tags).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path
from typing import Any

MAX_PARAM_LEN = 6000


class TrackingError(RuntimeError):
    """The tracking server cannot be reached or refused a request."""


class TrackerStopped(RuntimeError):
    """The tracker's background thread died (e.g. the metrics file became unwritable): the run's
    record would silently stop, so the next logging call on the training thread raises this."""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as ``a.b.c: str``; credentials in URLs redacted (a param is public to the server's
    readers)."""
    from qwen3_trainer.model.storage import redact

    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = redact(json.dumps(v) if isinstance(v, list | dict) else str(v))
    return {k: v[:MAX_PARAM_LEN] for k, v in out.items()}


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Raise TrackingError with one line if the MLflow server at ``uri`` does not answer. Credentials in
    the URI (``https://user:password@host``) are sent as basic auth and never printed."""
    if not uri.startswith(("http://", "https://")):
        return
    import base64
    import http.client
    import urllib.parse
    import urllib.request

    from qwen3_trainer.model.storage import redact

    parts = urllib.parse.urlsplit(uri)
    headers = {}
    try:
        host = parts.hostname or ""
        netloc = host if ":" not in host else f"[{host}]"
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError as exc:  # a port that is not a number
        raise TrackingError(f"MLflow URI {redact(uri)} is not a valid URL ({exc})") from None
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        password = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    health = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(urllib.request.Request(health, headers=headers), timeout=timeout) as r:
            if r.status != 200:
                raise TrackingError(f"MLflow at {redact(uri)} answered {r.status}")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TrackingError(redact(f"MLflow at {uri} is unreachable ({reason})")) from None


class Tracker:
    """Logs one run. ``enabled=False`` (non-zero ranks) makes every call a no-op."""

    def __init__(self, *, enabled: bool, uri: str | None, experiment: str, run_id: str | None = None,
                 parent_run_id: str | None = None, run_name: str | None = None,
                 metrics_file: str | None = None, tags: dict[str, str] | None = None):
        self.enabled = enabled
        self.run_id: str | None = None
        self._file = None
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.log_seconds = 0.0  # time spent by callers on the training thread
        self._error: BaseException | None = None  # what stopped the background thread, if anything
        if not enabled:
            return
        if metrics_file:
            Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
            self._file = open(metrics_file, "a")  # noqa: SIM115 - closed in close()
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
        self._client = None
        if self.uri:
            import mlflow

            mlflow.set_tracking_uri(self.uri)
            store = MlflowStore(self.uri)
            self._client = store.client
            if run_id:
                self.run_id = run_id
                self._client.update_run(run_id, status="RUNNING")
                store.set_tags(run_id, tags or {})
            else:
                all_tags = dict(tags or {})
                if parent_run_id:
                    all_tags["mlflow.parentRunId"] = parent_run_id
                self.run_id = store.create_run(store.experiment_id(experiment), run_name, all_tags)
        self._thread = threading.Thread(target=self._drain, name="tracker", daemon=True)
        self._thread.start()

    # -- API (training thread) -----------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        if self.enabled:
            self._check()
            self._queue.put(("params", flatten(params)))

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._check()
        t0 = time.perf_counter()
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self._queue.put(("metrics", (step, clean, int(time.time() * 1000))))
        self.log_seconds += time.perf_counter() - t0

    def set_tag(self, key: str, value: str) -> None:
        if self.enabled:
            self._check()
            self._queue.put(("tag", (key, _redact(str(value)))))

    def close(self, status: str = "FINISHED") -> None:
        if not self.enabled or self._thread is None:
            return
        self._queue.put(("close", status))
        self._thread.join(timeout=120)
        if self._file:
            self._file.close()
        if self._error is not None and self._client is not None:
            try:  # the thread never got to end the run: mark it failed rather than leave it RUNNING
                self._client.set_terminated(self.run_id, status="FAILED")
            except Exception as exc:
                print(_redact(f"[tracker] MLflow set_terminated failed: {exc}"), flush=True)
        self._check()

    # -- background thread ---------------------------------------------------------------------
    def _drain(self) -> None:
        try:
            self._drain_queue()
        except BaseException as exc:  # surfaced on the training thread by the next call (_check)
            self._error = exc

    def _check(self) -> None:
        if self._error is not None:
            raise TrackerStopped(f"the tracker thread stopped: {type(self._error).__name__}: {self._error}")

    def _drain_queue(self) -> None:
        if self._client is not None:  # MLflow is needed only to talk to a server; the file needs nothing
            from mlflow.entities import Metric, Param, RunTag

        while True:
            kind, payload = self._queue.get()
            batch: list[tuple[str, Any]] = [(kind, payload)]
            while not self._queue.empty() and len(batch) < 500:
                batch.append(self._queue.get())
            metrics, params, tags, close = [], [], [], None
            for k, p in batch:
                if k == "metrics":
                    step, values, ts = p
                    if self._file:
                        self._file.write(json.dumps({"step": step, "time_ms": ts, **values}) + "\n")
                    if self._client is not None:
                        metrics += [Metric(name, val, ts, step) for name, val in values.items()]
                elif k == "params" and self._client is not None:
                    params += [Param(n, v) for n, v in p.items()]
                elif k == "tag" and self._client is not None:
                    tags.append(RunTag(*p))
                elif k == "close":
                    close = p
            if self._file:
                self._file.flush()
            if self._client is not None:
                for i in range(0, max(len(params), 1), 100):
                    chunk = params[i : i + 100]
                    if chunk or (i == 0 and (metrics or tags)):
                        try:
                            self._client.log_batch(self.run_id, metrics=metrics if i == 0 else [],
                                                   params=chunk, tags=tags if i == 0 else [])
                        except Exception as exc:  # a tracking server's failure never kills training
                            print(_redact(f"[tracker] MLflow log_batch failed: {exc}"), flush=True)
                if close is not None:
                    try:
                        self._client.set_terminated(self.run_id, status=close)
                    except Exception as exc:
                        print(_redact(f"[tracker] MLflow set_terminated failed: {exc}"), flush=True)
            if close is not None:
                return


def _redact(text: str) -> str:
    from qwen3_trainer.model.storage import redact

    return redact(text)


class MlflowStore:
    """Client-side MLflow calls (runs, tags, metric history, artifacts, model registry)."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        check_reachable(uri)
        self.uri = uri
        self.client = MlflowClient(uri)

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        return exp.experiment_id if exp else self.client.create_experiment(name)

    def create_run(self, experiment_id: str, run_name: str | None, tags: dict[str, str]) -> str:
        return self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(k, v) for k, v in flatten(params).items()]
        for i in range(0, len(flat), 100):
            self.client.log_batch(run_id, params=flat[i : i + 100])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, _redact(str(v)))

    def set_terminated(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_metric(self, run_id: str, key: str, value: float, step: int) -> None:
        self.client.log_metric(run_id, key, value, step=step)

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        return [(m.step, m.value) for m in sorted(self.client.get_metric_history(run_id, key), key=lambda m: m.step)]

    def last_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    def artifact_paths(self, run_id: str, folder: str) -> list[str]:
        return [a.path for a in self.client.list_artifacts(run_id, folder)]

    def log_artifact(self, run_id: str, path: str, folder: str) -> None:
        self.client.log_artifact(run_id, path, folder)

    def log_artifacts(self, run_id: str, local_dir: str, folder: str) -> None:
        self.client.log_artifacts(run_id, local_dir, folder)

    def artifact_uri(self, run_id: str) -> str:
        return self.client.get_run(run_id).info.artifact_uri.rstrip("/")

    def register_version(self, name: str, *, description: str, source: str, run_id: str,
                         tags: dict[str, str], alias: str) -> str:
        """Create the registered model if needed, add a version from ``source``, point ``alias`` at it."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description=description)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
        version = self.client.create_model_version(name, source, run_id=run_id, tags=tags)
        self.client.set_registered_model_alias(name, alias, version.version)
        return str(version.version)
