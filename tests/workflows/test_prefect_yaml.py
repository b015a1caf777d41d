"""prefect.yaml: every deployment points at a real flow of workflows/flows.py, names are unique, the
pools are the local process pool and the chart's Kubernetes pool; flow parameters are pydantic forms."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def test_deployments_resolve_to_flows():
    from prefect import Flow

    from qwen3_trainer.workflows import flows

    doc = _prefect_yaml()
    names = [d["name"] for d in doc["deployments"]]
    assert len(names) == len(set(names))
    chart_pool = yaml.safe_load((ROOT / "helm/qwen3-trainer/values.yaml").read_text())["prefect"]["worker"]["workPool"]
    flow_names = set()
    for d in doc["deployments"]:
        path, attr = d["entrypoint"].split(":")
        assert path == "workflows/flows.py" and (ROOT / path).exists()
        obj = getattr(flows, attr)
        assert isinstance(obj, Flow), attr
        flow_names.add(obj.name)
        assert d["work_pool"]["name"] in ("qwen3-local", chart_pool)
    # the pipeline and every stage are deployable
    assert flow_names == {"qwen3-pipeline", *flows.FLOW_NAMES.values()}
    pools = {d["name"]: d["work_pool"]["name"] for d in doc["deployments"]}
    assert pools["qwen3-pipeline-local"] == "qwen3-local" and pools["qwen3-pipeline-k8s"] == "qwen3-k8s"
    assert doc["deployments"][0]["parameters"]["params"]["preset"] == "tiny"


def test_flow_parameters_are_pydantic_forms():
    from prefect.utilities.callables import parameter_schema

    from qwen3_trainer.workflows import flows

    schema = parameter_schema(flows.qwen3_pipeline).model_dump()
    params = schema["definitions"]["PipelineParams"]["properties"]
    assert {"preset", "root", "backend", "stages", "max_steps"} <= set(params)
    stage = parameter_schema(flows.s3_long_context).model_dump()
    assert {"pipeline", "init_checkpoint", "teacher_checkpoint"} <= set(stage["definitions"]["StageRun"]["properties"])
