"""The one output helper of the CLI: rich tables for people, ``--json`` for scripts, and the error model.

Errors: the project's own error types — bad input (``UsageError``, a JobSpec or training config that
does not validate, a preflight check), storage, tracking and launcher failures — print one line plus a
hint and exit with code 2. Anything else is a crash: it propagates with its traceback (in a
PyTorchJob pod the log is read after the fact, so nobody could set a debug flag then). Printed
messages have the credentials of any URL in them redacted. ``QTRAIN_DEBUG=1`` shows the traceback of
known errors too.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def redact(text: str) -> str:
    """``http://user:password@host`` -> ``http://***@host``, anywhere in ``text`` (model.storage.redact)."""
    from qwen3_trainer.model.storage import redact as _redact

    return _redact(text)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    console.print(table)


def fail(message: str, hint: str | None = None, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {redact(message)}", highlight=False, soft_wrap=True, markup=True)
    if hint:
        err_console.print(f"[dim]hint: {redact(hint)}[/]", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# The project's own error types, by module: an exception can only be one of them if its module is
# loaded, so none is imported here (a failing command stays fast).
KNOWN_ERRORS = {
    "qwen3_trainer.cli.output": ("UsageError",),
    "qwen3_trainer.model.storage": ("StorageError",),
    "qwen3_trainer.model.hf_interop": ("HFFormatError",),
    "qwen3_trainer.model.tokenizer": ("TokenizerError",),
    "qwen3_trainer.model.flavors": ("UnknownFlavorError",),
    "qwen3_trainer.platform.jobs.spec": ("SpecError",),
    "qwen3_trainer.platform.jobs.status": ("LauncherError",),
    "qwen3_trainer.platform.train.run": ("PreflightError",),
    "qwen3_trainer.platform.data.sources": ("DataError",),
    "qwen3_trainer.platform.tracking": ("TrackingError",),
    # a document (config, spec, parameters) that does not validate
    "pydantic_core._pydantic_core": ("ValidationError",),
}


def known_error_types() -> tuple[type[BaseException], ...]:
    out = []
    for module, names in KNOWN_ERRORS.items():
        loaded = sys.modules.get(module)
        out += [getattr(loaded, n) for n in names if loaded is not None and hasattr(loaded, n)]
    return tuple(out)


def one_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        from qwen3_trainer.platform.validation import describe

        return redact(f"{exc.title}: {describe(exc)}").splitlines()[0]
    text = str(exc).strip().splitlines()
    return redact(text[0] if text else type(exc).__name__)


@contextmanager
def bad_input(*types: type[BaseException], hint: str | None = None) -> Iterator[None]:
    """Around one call that validates what the user gave (a parser, a validator) and signals a bad value
    with a builtin type (``ValueError`` by default): those become a UsageError. Nothing else does."""
    caught: tuple[type[BaseException], ...] = types or (ValueError,)
    try:
        yield
    except caught as exc:
        if isinstance(exc, known_error_types()):
            raise
        raise UsageError(one_line(exc), hint=hint) from exc


def handle_errors(fn: Callable) -> Callable:
    """Decorator for commands: the project's own errors become one line + hint and exit code 2;
    everything else propagates with its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as exc:
            if not isinstance(exc, known_error_types()) or os.environ.get("QTRAIN_DEBUG"):
                raise
            fail(one_line(exc), getattr(exc, "hint", None) or "set QTRAIN_DEBUG=1 for the traceback")

    return wrapper
