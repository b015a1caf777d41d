"""Small accessors over rendered Kubernetes objects (plain dicts), shared by the deploy tests."""

from __future__ import annotations

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def find(objects: list[dict], kind: str, name_suffix: str) -> dict:
    hits = [o for o in by_kind(objects, kind) if o["metadata"]["name"].endswith(name_suffix)]
    assert len(hits) == 1, f"expected one {kind} named *{name_suffix}, got {[o['metadata']['name'] for o in hits]}"
    return hits[0]


def pod_specs(objects: list[dict]) -> list[tuple[str, dict]]:
    """(\"Kind/name\", pod spec) of every workload."""
    return [(f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
            for o in objects if o["kind"] in WORKLOAD_KINDS]


def containers(spec: dict, init: bool = True) -> list[dict]:
    return list(spec.get("containers", [])) + (list(spec.get("initContainers", [])) if init else [])


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}
