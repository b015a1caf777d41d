"""Record a finished pipeline run as a benchmark result (benchmarks/results/pipeline_*.json).

    python scripts/bench_pipeline.py --wall 512 --out benchmarks/results/pipeline_tiny_cpu.json

Reads the latest pipeline record under the run root ($QTRAIN_PIPELINE_ROOT / ~/.qtrain/pipelines):
each stage's status and wall time (registry timestamps, 1 s resolution), its final loss, plus the
machine (cores, load average before/after: the machine is shared) and the commit.
scripts/run_tiny_pipeline.sh calls it when BENCH_OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from datetime import datetime

from qwen3_trainer.workflows.plan import default_root
from qwen3_trainer.workflows.registry import Registry


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return (datetime.strptime(end, fmt) - datetime.strptime(start, fmt)).total_seconds()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wall", type=float, required=True, help="wall seconds of `qtrain pipeline run`")
    ap.add_argument("--total", type=float, help="wall seconds of the whole script (install + servers + run)")
    ap.add_argument("--load-before", type=float, help="1-min load average when the run started")
    ap.add_argument("--out", required=True)
    ap.add_argument("--root", default=None)
    args = ap.parse_args()
    reg = Registry(args.root or default_root())
    record = reg.latest()
    stages = {}
    for name, s in record.stages.items():
        done = reg.completed(name, s.config_hash) if s.config_hash else None
        stages[name] = {"status": s.status, "seconds": _seconds(s.started_at, s.finished_at),
                        "final_loss": (done.metrics.get("loss") if done else None),
                        "metrics": done.metrics if done else {}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {
        "benchmark": "tiny pipeline, all stages, one CPU process per stage (qtrain pipeline run --preset tiny)",
        "pipeline_id": record.pipeline_id, "status": record.status, "commit": commit,
        "pipeline_run_seconds": args.wall, "script_seconds": args.total,
        "machine": {"cores": os.cpu_count(), "load_avg_1m_before": args.load_before,
                    "load_avg_1m_after": os.getloadavg()[0]},
        "stages": stages,
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(json.dumps({k: result[k] for k in ("pipeline_id", "status", "pipeline_run_seconds")}))


if __name__ == "__main__":
    main()
