"""The local metrics file needs no MLflow, and a tracker thread that dies is never silent.

(A GPU machine without mlflow installed once trained 20 steps and left an empty metrics file: the
background thread had died on ``import mlflow`` and nobody heard.)"""

import json
import sys

import pytest

from qwen3_trainer.platform.tracking import Tracker, TrackerStopped


def test_metrics_file_without_mlflow(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # any `import mlflow...` now fails
    monkeypatch.setitem(sys.modules, "mlflow.entities", None)
    path = tmp_path / "m" / "metrics.jsonl"
    tracker = Tracker(enabled=True, uri=None, experiment="x", metrics_file=str(path))
    tracker.log_params({"a": 1})
    for step in (1, 2):
        tracker.log_metrics(step, {"loss": 3.0 - step})
    tracker.set_tag("k", "v")
    tracker.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 2.0), (2, 1.0)]


def test_a_dead_tracker_thread_fails_the_next_call(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "metrics.jsonl"
    tracker = Tracker(enabled=True, uri=None, experiment="x", metrics_file=str(path))
    tracker._file.close()  # the next write in the thread raises ValueError
    tracker.log_metrics(1, {"loss": 1.0})
    tracker._thread.join(timeout=10)
    with pytest.raises(TrackerStopped, match="the tracker thread stopped: ValueError"):
        tracker.log_metrics(2, {"loss": 0.5})
    with pytest.raises(TrackerStopped):
        tracker.set_tag("k", "v")
    with pytest.raises(TrackerStopped):
        tracker.close()


def test_a_tracker_error_never_hides_the_training_error(tmp_path, monkeypatch, caplog):
    from qwen3_trainer.platform.train import run, trainer
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.parallel import DistEnv

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(run, "_setup_logging", lambda rank, dump_dir: None)  # keep pytest's handlers
    real_close = Tracker.close

    def broken_trainer(*args, **kwargs):
        raise RuntimeError("the model did not build")

    def broken_close(self, status="FINISHED"):
        real_close(self, status)  # ends the thread and the file
        raise TrackerStopped("the tracker thread stopped: OSError: disk full")

    monkeypatch.setattr(trainer, "Trainer", broken_trainer)
    monkeypatch.setattr(Tracker, "close", broken_close)
    cfg = TrainConfig.model_validate({"model": {"flavor": "debugmodel"}, "dump_dir": str(tmp_path),
                                      "training": {"steps": 1, "seq_len": 16, "device": "cpu"}})
    env = DistEnv(rank=0, local_rank=0, world_size=1, master_addr="127.0.0.1", master_port=0)
    with pytest.raises(RuntimeError, match="the model did not build"):
        run.train(cfg, env)
    assert "disk full" in caplog.text  # the tracker's own failure is logged, not lost
