"""Terminal and JSON rendering for the CLI: one function per view."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from corral.contract.errors import AgentError

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


def size_mib(mb: int) -> str:
    """``16 MiB``, ``2 GiB``: how a memory limit is said back to a person."""
    return f"{mb // 1024} GiB" if mb >= 1024 and mb % 1024 == 0 else f"{mb} MiB"


def duration(ms: int) -> str:
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms / 1000:g}s" if ms >= 1000 else f"{ms}ms"


def ending(reason: str | None, oom_killed: bool, memory_mb: int, timeout_ms: int) -> str | None:
    """The line a killed process deserves on stderr (an exit code of 137 alone says nothing), or None."""
    if oom_killed or reason == "oom":
        return f"corral: killed: out of memory (limit {size_mib(memory_mb)})"
    if reason == "timeout":
        return f"corral: killed: timeout (limit {duration(timeout_ms)})"
    if reason == "lost":
        return "corral: the process was lost (its host no longer has it)"
    return None


class Progress:
    """One status line on stderr while a command waits (``corral run`` before the process starts),
    rewritten in place and erased when done. Only on a terminal: piped or ``--json``, it says nothing."""

    def __init__(self, enabled: bool, stream: Any = None, tick_s: float = 1.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.tick_s = tick_s
        self._text = ""
        self._shown = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def update(self, text: str) -> None:
        """Show ``text`` with the time waited so far (kept ticking by a thread until ``done``)."""
        if not self.enabled:
            return
        self._text = text
        self._draw()
        if self._ticker is None:
            self._ticker = threading.Thread(target=self._tick, name="corral-progress", daemon=True)
            self._ticker.start()

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            self._draw()

    def _draw(self) -> None:
        with self._lock:
            if self._stop.is_set():
                return
            waited = time.monotonic() - self.started
            self.stream.write(f"\r\x1b[2Kcorral: {self._text} ({waited:.0f}s)")
            self.stream.flush()
            self._shown = True

    def done(self) -> None:
        """Erase the line; nothing is drawn after this."""
        with self._lock:
            self._stop.set()
            if self._shown:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
                self._shown = False
