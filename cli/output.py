"""The one output helper of the CLI: rich tables for people, ``--json`` for scripts, and one-line
errors (exit code 2 for bad input) with the traceback only under ``QTRAIN_DEBUG=1``."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
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
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    if hint:
        err_console.print(f"[dim]hint: {hint}[/]", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


# Exceptions that mean "bad input", mapped to exit code 2 with a one-line message.
def _bad_input_types() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    return (UsageError, ValueError, FileNotFoundError, PermissionError, OSError, ValidationError, KeyError)


def _one_line(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(root)"
        more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        msg = first["msg"].removeprefix("Value error, ")
        where = "" if loc == "(root)" else f"{loc}: "
        return f"{exc.title}: {where}{msg}{more}"
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def handle_errors(fn: Callable) -> Callable:
    """Decorator for commands: known errors become one line + hint and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except _bad_input_types() as exc:
            if os.environ.get("QTRAIN_DEBUG"):
                raise
            fail(_one_line(exc), getattr(exc, "hint", None) or "set QTRAIN_DEBUG=1 for the traceback")

    return wrapper
