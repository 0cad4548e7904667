"""The host spool of one sandbox: file layout, atomic writes, bounded reads, stream demultiplexing.

The I/O shim (``corral.io.shim``) appends the container's raw output here and tails stdin
from here; any worker process of the host reads frames from here by byte offset. Everything in
this module is pure file logic with no Docker in it, so it is unit-tested on its own.

Layout of ``<state_dir>/spool/<slug>/``::

    .corral-labels.json   labels (host, session, slug, owner) so a reconciler can find the dir
    io_policy.json        the session's ProcessIoPolicy (stream_io and the shim read the caps from it)
    process.json          stdin mode, timeout, grace and timeout signal of the process
    secrets.json          secret *names* of the session (never values), for redaction
    shim.pid / shim.lock  the shim's pid, and a lock it holds for its whole life
    shim.log / shim.error the shim's own log; why it failed before starting the container
    shim.wake             a FIFO the shim sleeps on: writers of stdin / stdin.closed / escalate.json
                          poke it after the change (``files.poke``), so the shim never polls
    started               marker: the container was started by the shim (JSON, with the deadline)
    stdout / stderr       raw bytes, byte-exact, at most the policy's ``max_bytes`` (the head)
    stdout.dropped ...    how many bytes beyond the cap were dropped (absent: none)
    stdin / stdin.closed  append-only stdin bytes; marker: half-close stdin once all are forwarded
    escalate.json         a kill deadline set by ``signal_process`` (terminate with grace)
    signaled              marker: a signal was delivered (the exit reason becomes ``signal``)
    lost.json             the shim died while the process ran: the stream sizes at which capture
                          stopped (bytes after them were not captured) and when a supervisor noticed
    exit.json             written atomically, LAST: exit code, OOM flag, reason
    removing              marker: cleanup is removing the session; no supervisor may start now
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from corral.io import files
from corral.io.files import (
    LABELS_FILE,
    STREAM_STDERR,
    STREAM_STDOUT,
    CappedSink,
    Demuxer,
    atomic_write,
    file_size,
    poke,
    read_json,
    read_span,
    write_json,
)

__all__ = [
    "LABELS_FILE",
    "STDIN_MAX_TOTAL",
    "STREAM_STDERR",
    "STREAM_STDOUT",
    "CappedSink",
    "Demuxer",
    "SpoolLayout",
    "append_bytes",
    "atomic_write",
    "file_size",
    "frame_eof",
    "poke",
    "read_int",
    "read_json",
    "read_span",
    "read_window",
    "write_json",
]

STDIN_MAX_TOTAL = 1 << 30
"""Backstop on all stdin bytes written to one process (a runaway client cannot fill the host disk).
The cap a caller meets is the host policy's ``limits.max_stdin_bytes`` (default 64 MiB), checked by
the coordinator before the write; this bound only holds when the adapter is driven directly."""


@dataclass(frozen=True)
class SpoolLayout:
    """Paths of one sandbox's spool; deterministic, so any worker of the host finds them."""

    root: Path

    def path(self, name: str) -> Path:
        return self.root / name

    def stream(self, stream: str) -> Path:
        if stream not in ("stdout", "stderr", "stdin"):
            raise ValueError(f"not a stream: {stream!r}")
        return self.root / stream

    def dropped(self, stream: str) -> Path:
        return self.root / f"{stream}.dropped"

    @property
    def labels(self) -> Path:
        return self.root / LABELS_FILE

    @property
    def io_policy(self) -> Path:
        return self.root / files.IO_POLICY

    @property
    def process(self) -> Path:
        return self.root / files.PROCESS

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def shim_pid(self) -> Path:
        return self.root / files.SHIM_PID

    @property
    def shim_lock(self) -> Path:
        return self.root / files.SHIM_LOCK

    @property
    def start_lock(self) -> Path:
        return self.root / "start.lock"

    @property
    def shim_log(self) -> Path:
        return self.root / files.SHIM_LOG

    @property
    def shim_error(self) -> Path:
        return self.root / files.SHIM_ERROR

    @property
    def started(self) -> Path:
        return self.root / files.STARTED

    @property
    def stdin_closed(self) -> Path:
        return self.root / files.STDIN_CLOSED

    @property
    def escalate(self) -> Path:
        return self.root / files.ESCALATE

    @property
    def signaled(self) -> Path:
        return self.root / files.SIGNALED

    @property
    def wake(self) -> Path:
        return self.root / files.SHIM_WAKE

    @property
    def lost(self) -> Path:
        return self.root / files.LOST

    @property
    def removing(self) -> Path:
        return self.root / files.REMOVING

    @property
    def exit(self) -> Path:
        return self.root / files.EXIT


def read_int(path: Path) -> int:
    """An integer counter file (``*.dropped``); absent or garbled counts as 0."""
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return 0


def read_window(path: Path, cursor: int, max_bytes: int, behind: int, ahead: int) -> tuple[bytes, int]:
    """The bytes ``[cursor - behind, cursor + max_bytes + ahead)`` (clipped to the file) and how many
    of them lie before ``cursor``: a redacting reader needs context on both sides of a frame to
    know whether its edges cut through a secret. Still one seek and one bounded read."""
    if behind < 0 or ahead < 0:
        raise ValueError("behind and ahead must not be negative")
    start = max(cursor - behind, 0)
    return read_span(path, start, (cursor - start) + max_bytes + ahead), cursor - start


def append_bytes(path: Path, data: bytes) -> tuple[int, int]:
    """Append with O_APPEND (concurrent writers never interleave inside one write); return the
    (start, end) offsets of the written bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = os.fstat(fd).st_size
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        return start, start + len(data)
    finally:
        os.close(fd)


def frame_eof(exited: bool, cursor: int, size: int) -> bool:
    """A stream is at its end once the writer is finished (checked FIRST) and the reader's cursor
    has reached the size measured after that check."""
    return exited and cursor >= size
