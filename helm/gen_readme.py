"""Generate the values table of a chart's README.md from the `# --` comments in its values.yaml.

The helm-docs convention: a `# -- text` comment (continued by following `#` lines) documents the key
below it, which becomes one table row with its type and default; a documented mapping is one row
(its children are not listed); an undocumented mapping is descended into; an undocumented leaf is an
error. The table replaces what sits between the `<!-- values:start -->` and `<!-- values:end -->`
markers of README.md; the rest of the README is written by hand.

    python helm/gen_readme.py             # rewrite helm/qwen3-trainer/README.md
    python helm/gen_readme.py --check     # exit 1 when the committed README is stale
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "qwen3-trainer"
START, END = "<!-- values:start -->", "<!-- values:end -->"
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z0-9_.-]+):(?P<rest>.*)$")


class UndocumentedKey(ValueError):
    pass


def documented_keys(values_text: str) -> list[tuple[str, str]]:
    """(dotted key, description) in file order; raises UndocumentedKey for a bare leaf."""
    rows: list[tuple[str, str]] = []
    missing: list[str] = []
    stack: list[tuple[int, str]] = []   # (indent, key) of the open undocumented mappings
    pending: list[str] | None = None
    skip_deeper_than: int | None = None  # inside a documented mapping's body
    for line in values_text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None and stripped.startswith("# "):
                pending.append(stripped[2:].strip())
            else:
                pending = None
            continue
        match = KEY.match(line)
        if not match:  # blank line or a list item of an undocumented list
            pending = None if not stripped else pending
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([k for _, k in stack] + [match["key"]])
        rest = match["rest"].split(" #")[0].strip()
        if pending is not None:
            rows.append((path, " ".join(pending)))
            pending = None
            if not rest:
                skip_deeper_than = indent
        elif not rest:
            stack.append((indent, match["key"]))
        else:
            missing.append(path)
    if missing:
        raise UndocumentedKey("values keys without a `# --` comment: " + ", ".join(missing))
    return rows


def _lookup(values: dict, dotted: str):
    node = values
    for part in dotted.split("."):
        node = node[part]
    return node


def _type(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def values_table(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    lines = ["| Key | Type | Default | Description |", "|-----|------|---------|-------------|"]
    for key, description in documented_keys(values_text):
        value = _lookup(values, key)
        default = json.dumps(value, separators=(",", ":")).replace("|", r"\|")
        text = description.replace("|", r"\|")
        lines.append(f"| {key} | {_type(value)} | `{default}` | {text} |")
    return "\n".join(lines)


def render(readme: str, values_text: str) -> str:
    head, sep, tail = readme.partition(START)
    _, sep2, tail = tail.partition(END)
    if not sep or not sep2:
        raise ValueError(f"README.md lacks the {START} / {END} markers")
    return f"{head}{START}\n{values_table(values_text)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if README.md is not up to date")
    parser.add_argument("--chart", type=Path, default=CHART)
    args = parser.parse_args(argv)
    readme_path = args.chart / "README.md"
    current = readme_path.read_text()
    try:
        wanted = render(current, (args.chart / "values.yaml").read_text())
    except (UndocumentedKey, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.check:
        if wanted != current:
            print(f"{readme_path} is stale: run python helm/gen_readme.py", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
