"""Terminal and JSON rendering for the CLI: one function per view."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from corral.errors import AgentError

# Not a terminal (a pipe, a log, CI): wide enough that tables don't fold.
console = Console(stderr=False, highlight=False, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, highlight=False)


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    view = Table(title=title, title_justify="left", box=None, header_style="bold")
    for column in columns:
        view.add_column(column)
    for row in rows:
        view.add_row(*["" if v is None else str(v) for v in row])
    console.print(view)


def age(ms: str | int | None) -> str:
    if not ms:
        return ""
    seconds = max(0, time.time() - int(ms) / 1000)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def error_line(exc: AgentError) -> str:
    return f"corral: {exc.kind.value} ({exc.retry.value}): {exc.message}"


def print_error(exc: AgentError, as_json: bool) -> None:
    if as_json:
        emit_json({"error": exc.to_payload()})
    else:
        errors.print(error_line(exc), markup=False, soft_wrap=True)
