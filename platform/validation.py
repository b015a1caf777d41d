"""One line from a pydantic ``ValidationError``: ``dotted.key: message (+N more)``.

The project's one format for a bad spec, config or recipe file (job specs, training configs, recipe
and cluster files, teacher-cache manifests, the CLI's error line). The key path leaves out pydantic's
own levels (union members such as ``str`` or ``function-after[...]``, ``tagged-union[...]``, ``[key]``);
a typo is named as the unknown key rather than as the field it left missing; a model validator that
names its key first (``"mix: every source ..."``) is joined onto the path.
"""

from __future__ import annotations

import re

from pydantic import ValidationError

_TYPE_LEVELS = {"str", "int", "float", "bool", "list", "dict", "none", "[key]"}
_WRAPPER_LEVELS = ("function-", "tagged-union[", "dict[", "list[", "union[", "nullable[", "json-or-python[", "literal[")


def _level(part: object) -> bool:
    text = str(part)
    return text not in _TYPE_LEVELS and not text.startswith(_WRAPPER_LEVELS)


def describe(exc: ValidationError) -> str:
    """The first error (an unknown key before anything else) as ``dotted.key: message (+N more)``."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"] if _level(p))
    msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    named = re.match(r"^([A-Za-z_]\w*): ", msg)  # a key, not a value such as a file name
    if loc and named and named.group(1) != loc.rsplit(".", 1)[-1]:  # a model's own check names its key first
        return f"{loc}.{msg}{more}"
    return (f"{loc}: {msg}" if loc else msg) + more
