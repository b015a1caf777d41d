"""helm lint --strict, the values documentation convention and the generated chart README."""

from __future__ import annotations

import importlib.util
import sys

import pytest
from chart_helpers import CHART, ROOT, VALUES_FILES, run


def _gen_readme():
    spec = importlib.util.spec_from_file_location("gen_readme", ROOT / "helm" / "gen_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("values", list(VALUES_FILES))
def test_helm_lint_strict(helm, values):
    path = VALUES_FILES[values]
    done = run([helm, "lint", "--strict", CHART, *(["-f", path] if path else [])])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout


def test_helm_is_v4(helm):
    done = run([helm, "version", "--short"])
    assert done.stdout.startswith("v4."), done.stdout


def test_every_values_key_documented():
    keys = _gen_readme().documented_keys((CHART / "values.yaml").read_text())
    documented = {k for k, _ in keys}
    assert all(description for _, description in keys)
    # spot-check the convention on each kind of key: top-level, nested leaf, documented mapping
    assert {"nameOverride", "prefect.worker.workPool", "jobs.nodePools.gpu.cpuPerGpu", "s3.auth"} <= documented
    assert "prefect" not in documented and "jobs.nodePools" not in documented


def test_undocumented_key_is_reported():
    text = "# -- fine\na: 1\nsection:\n  # -- fine too\n  b: 2\n  c: 3\n"
    with pytest.raises(ValueError, match=r"section\.c"):
        _gen_readme().documented_keys(text)


def test_readme_table_is_up_to_date():
    done = run([sys.executable, ROOT / "helm" / "gen_readme.py", "--check"])
    assert done.returncode == 0, done.stderr
    readme = (CHART / "README.md").read_text()
    assert "| prefect.worker.workPool | string | `\"qwen3-k8s\"` |" in readme


def test_readme_check_detects_a_stale_table(tmp_path):
    chart = tmp_path / "chart"
    chart.mkdir()
    (chart / "values.yaml").write_text("# -- a knob\nknob: 1\n")
    (chart / "README.md").write_text("intro\n<!-- values:start -->\nold\n<!-- values:end -->\n")
    gen = [sys.executable, ROOT / "helm" / "gen_readme.py", "--chart", chart]
    assert run([*gen, "--check"]).returncode == 1
    assert run(gen).returncode == 0
    assert run([*gen, "--check"]).returncode == 0
    assert "| knob | int | `1` | a knob |" in (chart / "README.md").read_text()
