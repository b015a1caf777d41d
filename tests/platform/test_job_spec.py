"""JobSpec validation: every bad input is refused before any API call, naming the field."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from qwen3_trainer.platform.jobs.spec import JobSpec, SpecError, load_spec, parse_spec

BASE = {"name": "t1", "image": "ghcr.io/q/t:0.1.0", "train": {"model": {"flavor": "debugmodel"}}}


def _spec(**over) -> JobSpec:
    return JobSpec.model_validate({**BASE, **over})


def _error(**over) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, **over}, "job.yaml")
    assert isinstance(info.value.__cause__, ValidationError)
    return str(info.value)


def test_defaults():
    s = _spec()
    assert (s.nodes, s.procs_per_node, s.world_size, s.run, s.restart_policy) == (1, 1, 1, "t1", "ExitCode")
    assert _spec(nodes=4, gpus_per_node=8).world_size == 32
    assert _spec(nproc_per_node=2).world_size == 2


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({"name": "Bad_Name"}, "name: 'Bad_Name' is not a DNS-1035 label"),
        ({"name": "9lives"}, "name: '9lives' is not a DNS-1035 label"),
        ({"name": "a" * 60, "nodes": 12}, "name: 'aaaa"),
        ({"imagee": "x"}, "imagee: unknown key"),
        ({"image": "ghcr.io/q/t"}, "image: image 'ghcr.io/q/t' must be pinned"),
        ({"image": "ghcr.io/q/t:latest"}, "image: image 'ghcr.io/q/t:latest' must be pinned"),
        ({"nodes": 0}, "nodes: Input should be greater than or equal to 1"),
        ({"gpus_per_node": 8, "nproc_per_node": 4}, "nproc_per_node: 4 != gpus_per_node 8"),
        ({"restart_policy": "Always"}, "restart_policy: Input should be 'Never', 'OnFailure' or 'ExitCode'"),
        ({"resources": {"memory": "16 GB"}}, "resources.memory: '16 GB' is not a Kubernetes quantity"),
        ({"resources": {"cpus": "4"}}, "resources.cpus: unknown key"),
        ({"resources": {"extended": {"nvidia.com/gpu": 8}}}, "resources.extended: 'nvidia.com/gpu'"),
        ({"resources": {"extended": {"efa": 1}}}, "resources.extended: 'efa' is not an extended"),
        ({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}]},
         "env.0: env AWS_SECRET_ACCESS_KEY looks like a credential"),
        ({"env": [{"name": "HF_TOKEN", "value": "hf_x"}]}, "env.0: env HF_TOKEN looks like a credential"),
        ({"env": [{"name": "MLFLOW_TRACKING_PASSWORD", "value": "p"}]}, "env.0: env MLFLOW_TRACKING_PASSWORD"),
        ({"env": [{"name": "MASTER_ADDR", "value": "x"}]}, "env.0: env MASTER_ADDR is set by the training operator"),
        ({"env": [{"name": "PET_NNODES", "value": "2"}]}, "env.0: env PET_NNODES is set by the training operator"),
        ({"env": [{"name": "A", "value": "1", "secret": {"name": "s", "key": "k"}}]}, "env.0: env A: give exactly one"),
        ({"env": [{"name": "A", "secret": {"name": "s"}}]}, "env.0.secret.key: Field required"),
        ({"scheduling": {"gang": "kueue"}}, "scheduling: gang=kueue needs `queue`"),
        ({"scheduling": {"gang": "yunikorn"}}, "scheduling.gang: Input should be 'none', 'volcano'"),
        ({"run_policy": {"clean_pod_policy": "Some"}}, "run_policy.clean_pod_policy: Input should be 'None', 'Running' or 'All'"),
        ({"run_policy": {"backoff_limit": -1}}, "run_policy.backoff_limit: Input should be greater than or equal to 0"),
        ({"elastic": {"min_nodes": 2, "max_nodes": 4}}, "elastic: nodes=1 must lie in [min_nodes, max_nodes]"),
        ({"node_pool": {"tolerations": [{"key": "a", "operator": "Equals"}]}}, "node_pool.tolerations.0.operator: Input should be"),
        ({"node_pool": {"node_selector": {"bad key!": "x"}}}, "node_pool.node_selector: node_selector: 'bad key!'"),
        ({"labels": {"team": "a b"}}, "labels: labels: team='a b' is not a valid label value"),
        ({"run_id": "r" * 64}, "run_id: 'rrrr"),
        ({"train": 3}, "train: Input should be a valid dictionary (+1 more)"),
    ],
)
def test_bad_input_names_the_field(over, expected):
    line = _error(**over)
    assert "\n" not in line
    assert line.startswith("job.yaml: " + expected), line


def test_credentials_through_secret_ref_and_plain_words_allowed():
    s = _spec(env=[
        {"name": "AWS_SECRET_ACCESS_KEY", "secret": {"name": "s3", "key": "secret"}},
        {"name": "TOKENIZERS_PARALLELISM", "value": "false"},   # TOKENIZERS is not TOKEN
        {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"},
    ])
    assert [e.name for e in s.env] == ["AWS_SECRET_ACCESS_KEY", "TOKENIZERS_PARALLELISM", "MLFLOW_TRACKING_URI"]


def test_load_spec_rejects_non_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(SpecError, match="bad.yaml: a JobSpec holds a YAML mapping, got list"):
        load_spec(bad)
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(BASE))
    spec, base = load_spec(good)
    assert spec.name == "t1" and base == tmp_path
