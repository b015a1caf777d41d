"""Write the `jobs` block of helm/qwen3-trainer/values.schema.json from the cluster contract's models.

The chart's `jobs` values and the `cluster.yaml` it writes share one shape, recipe/cluster.py's
``JobsValues`` (node pools, scheduling, run policy); its JSON schema (``cluster_values_schema``) is the
chart's, so `helm template` refuses what a flow run would refuse. The rest of values.schema.json is
written by hand.

    python helm/gen_schema.py             # rewrite the schema's `jobs` block
    python helm/gen_schema.py --check     # exit 1 when the committed schema is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SCHEMA = Path(__file__).resolve().parent / "qwen3-trainer" / "values.schema.json"


def render(current: str) -> str:
    from qwen3_trainer.recipe.cluster import cluster_values_schema

    schema = json.loads(current)
    schema["properties"]["jobs"] = cluster_values_schema()
    return json.dumps(schema, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if values.schema.json is not up to date")
    args = parser.parse_args(argv)
    current = SCHEMA.read_text()
    wanted = render(current)
    if args.check:
        if wanted != current:
            print(f"{SCHEMA} is stale: run python helm/gen_schema.py", file=sys.stderr)
            return 1
        return 0
    SCHEMA.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
