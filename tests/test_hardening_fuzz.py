"""Issue 20, property: whatever a training config or a JobSpec holds (wrong types, out-of-range values,
unknown keys, parallel degrees that do not fit), ``qtrain train`` / ``qtrain job render`` answer with one
``error:`` line and exit code 2, or a valid result; never a traceback.

In-process (typer's CliRunner), derandomized (the same examples on every run, so CI cannot flake), and
small: 40 examples each. ``qtrain train`` gets a data path that does not exist, so a config that passes
every check stops at the data preflight instead of training.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from qwen3_trainer.cli import main as cli_main

runner = CliRunner()
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

BASE_TRAIN = {
    "model": {"flavor": "debugmodel"},
    "training": {"steps": 4, "micro_batch_size": 1, "seq_len": 64, "device": "cpu"},
    "parallelism": {"dp_shard": -1},
    "data": {"sources": [{"name": "tiny", "paths": ["no-such-dir/tiny.jsonl"]}]},
    "checkpoint": {"interval": 2},
}
TRAIN_KEYS = [
    "model", "model.flavor", "model.n_layers", "model.vocab_size", "model.attention", "model.tie_embeddings",
    "training", "training.steps", "training.seq_len", "training.micro_batch_size", "training.grad_accum",
    "training.device", "training.dtype", "training.max_norm", "optimizer.lr", "optimizer.betas", "lr.schedule",
    "lr.warmup_steps", "lr.decay_ratio", "checkpoint.dir", "checkpoint.interval", "checkpoint.keep_last",
    "checkpoint.export_hf", "tracking.log_interval", "tracking.experiment", "objective.name", "objective.params",
    "init.path", "init.format", "moe.balance", "float8", "compile", "activation_checkpointing", "dump_dir",
    "data.seq_len", "data.kind", "unknown", "training.unknown", "parallelism.unknown",
]
DEGREES = ["parallelism.dp_shard", "parallelism.dp_replicate", "parallelism.tp", "parallelism.pp",
           "parallelism.ep", "parallelism.cp"]
SPEC_KEYS = ["name", "namespace", "image", "nodes", "gpus_per_node", "nproc_per_node", "restart_policy",
             "run_id", "labels", "env", "entrypoint", "elastic", "run_policy", "resources", "scheduling", "extra"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
# --set KEY=VALUE as typed on a command line: any key, any text (YAML-parsed by the CLI)
set_args = st.lists(st.tuples(st.sampled_from([*TRAIN_KEYS, *DEGREES, "training.steps.x", "parallelism.tp.0"]),
                              st.one_of(st.sampled_from(["[1", "{a: ", "-1", "0", "1e309", "null", "x: y"]),
                                        st.text(max_size=6))), max_size=2)
train_edits = st.lists(st.one_of(st.tuples(st.sampled_from(TRAIN_KEYS), values),
                                 st.tuples(st.sampled_from(DEGREES), st.integers(-2, 9))), max_size=4)


def _apply(doc: dict, edits) -> dict:
    doc = copy.deepcopy(doc)
    for dotted, value in edits:
        node = doc
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[leaf] = value
    return doc


@pytest.fixture(scope="module")
def app():
    if not any(getattr(g, "name", None) == "job" for g in cli_main.app.registered_groups):
        cli_main._register()
    return cli_main.app


def _assert_one_line_or_ok(result, ok_codes=(0,)) -> None:
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception        # a traceback: the property fails, hypothesis shows the example
    if result.exit_code in ok_codes:
        return
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, result.stderr
    assert len(lines) == 1 or lines[1].startswith("hint: "), result.stderr


@SETTINGS
@given(edits=train_edits, sets=set_args, cut=st.one_of(st.none(), st.integers(0, 300)))
def test_fuzzed_training_configs(app, tmp_path, monkeypatch, edits, sets, cut):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    doc = _apply(BASE_TRAIN, edits)
    doc["data"] = BASE_TRAIN["data"] if not isinstance(doc.get("data"), dict) else \
        {**doc["data"], "sources": BASE_TRAIN["data"]["sources"]}   # never real data: nothing trains
    text = yaml.safe_dump(doc)
    (tmp_path / "run.yaml").write_text(text if cut is None else text[:cut] + "\n  - [\n")  # a broken file
    args = [a for key, value in sets if not key.startswith("data") for a in ("--set", f"{key}={value}")]
    _assert_one_line_or_ok(runner.invoke(app, ["train", "run.yaml", *args]), ok_codes=())


@SETTINGS
@given(spec_edits=st.lists(st.tuples(st.sampled_from(SPEC_KEYS), values), max_size=3),
       nodes=st.integers(-1, 4), nproc=st.one_of(st.none(), st.integers(-1, 4)), edits=train_edits)
def test_fuzzed_job_specs(app, tmp_path, monkeypatch, spec_edits, nodes, nproc, edits):
    monkeypatch.chdir(tmp_path)
    spec = {"name": "fuzz", "image": "ghcr.io/qwen3-trainer/qwen3-trainer:0.1.0", "nodes": nodes,
            "train": _apply(BASE_TRAIN, edits)}
    if nproc is not None:
        spec["nproc_per_node"] = nproc
    spec = _apply(spec, spec_edits)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    result = runner.invoke(app, ["job", "render", "spec.yaml"])
    _assert_one_line_or_ok(result)
    if result.exit_code == 0:
        kinds = [d["kind"] for d in yaml.safe_load_all(result.stdout)]
        assert kinds[-1] == "PyTorchJob"
        from qwen3_trainer.platform.jobs.spec import JobSpec

        job = JobSpec.model_validate(spec)
        if job.entrypoint[-2:] == ["qwen3_trainer.cli.main", "train"] and isinstance(job.train, dict):
            assert _trainer_accepts(job.train, job.world_size), "rendered a job whose trainer would refuse it"


def _trainer_accepts(train: dict, world_size: int) -> bool:
    """The oracle: what `qtrain train` checks before any process group (minus reachability)."""
    from qwen3_trainer.platform.train.config import TrainConfig
    from qwen3_trainer.platform.train.parallel import validate_layout
    from qwen3_trainer.platform.train.run import data_config

    try:
        cfg = TrainConfig.model_validate(train)
        validate_layout(cfg, world_size)
        if cfg.data is not None:
            data_config(cfg)
    except ValueError:
        return False
    return not (cfg.checkpoint.export_hf and not cfg.checkpoint.dir)
