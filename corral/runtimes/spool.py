"""The host spool of one sandbox: file layout, atomic writes, bounded reads, stream demultiplexing.

The I/O shim (``corral.runtimes.shim``) appends the container's raw output here and tails stdin
from here; any worker process of the host reads frames from here by byte offset. Everything in
this module is pure file logic with no Docker in it, so it is unit-tested on its own.

Layout of ``<state_dir>/spool/<slug>/``::

    .corral-labels.json   labels (host, session, slug, owner) so a reconciler can find the dir
    io_policy.json        the session's IoPolicy (stream_io and the shim read the caps from it)
    process.json          stdin mode, timeout, grace and timeout signal of the process
    secrets.json          secret *names* of the session (never values), for redaction
    shim.pid / shim.lock  the shim's pid, and a lock it holds for its whole life
    shim.log / shim.error the shim's own log; why it failed before starting the container
    started               marker: the container was started by the shim (JSON, with the deadline)
    stdout / stderr       raw bytes, byte-exact, at most the policy's ``max_bytes`` (the head)
    stdout.dropped ...    how many bytes beyond the cap were dropped (absent: none)
    stdin / stdin.closed  append-only stdin bytes; marker: half-close stdin once all are forwarded
    escalate.json         a kill deadline set by ``signal_process`` (terminate with grace)
    signaled              marker: a signal was delivered (the exit reason becomes ``signal``)
    exit.json             written atomically, LAST: exit code, OOM flag, reason
"""

from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

LABELS_FILE = ".corral-labels.json"
STDIN_MAX_TOTAL = 1 << 30
"""Backstop on all stdin bytes written to one process (a runaway client cannot fill the host disk).
The cap a caller meets is the host policy's ``limits.max_stdin_bytes`` (default 64 MiB), checked by
the coordinator before the write; this bound only holds when the adapter is driven directly."""

STREAM_STDOUT = 1
STREAM_STDERR = 2
_HEADER = struct.Struct(">BxxxL")


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
        return self.root / "io_policy.json"

    @property
    def process(self) -> Path:
        return self.root / "process.json"

    @property
    def secrets(self) -> Path:
        return self.root / "secrets.json"

    @property
    def shim_pid(self) -> Path:
        return self.root / "shim.pid"

    @property
    def shim_lock(self) -> Path:
        return self.root / "shim.lock"

    @property
    def start_lock(self) -> Path:
        return self.root / "start.lock"

    @property
    def shim_log(self) -> Path:
        return self.root / "shim.log"

    @property
    def shim_error(self) -> Path:
        return self.root / "shim.error"

    @property
    def started(self) -> Path:
        return self.root / "started"

    @property
    def stdin_closed(self) -> Path:
        return self.root / "stdin.closed"

    @property
    def escalate(self) -> Path:
        return self.root / "escalate.json"

    @property
    def signaled(self) -> Path:
        return self.root / "signaled"

    @property
    def exit(self) -> Path:
        return self.root / "exit.json"


def atomic_write(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover of a crash may be read-only (secret files are 0400)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, sort_keys=True).encode("utf-8"))


def read_json(path: Path) -> Any:
    """The JSON value of ``path``, or None when it does not exist (or is not complete JSON)."""
    try:
        return json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        return 0


def read_int(path: Path) -> int:
    """An integer counter file (``*.dropped``); absent or garbled counts as 0."""
    try:
        return int(path.read_text().strip() or 0)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return 0


def read_span(path: Path, cursor: int, max_bytes: int) -> bytes:
    """At most ``max_bytes`` from ``cursor``: a seek and one bounded read, O(frame) not O(file)."""
    if cursor < 0 or max_bytes < 0:
        raise ValueError("cursor and max_bytes must not be negative")
    try:
        with path.open("rb") as handle:
            handle.seek(cursor)
            return handle.read(max_bytes)
    except (FileNotFoundError, NotADirectoryError):
        return b""


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


class Demuxer:
    """Splits Docker's multiplexed attach stream (8-byte headers: stream type, 3 zero bytes, big-
    endian length) into ``(stream_type, payload)`` chunks, across arbitrary read boundaries."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._stream = 0
        self._remaining = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buffer += data
        out: list[tuple[int, bytes]] = []
        while self._buffer:
            if self._remaining == 0:
                if len(self._buffer) < _HEADER.size:
                    break
                self._stream, self._remaining = _HEADER.unpack_from(self._buffer)
                del self._buffer[: _HEADER.size]
                continue
            take = min(self._remaining, len(self._buffer))
            out.append((self._stream, bytes(self._buffer[:take])))
            del self._buffer[:take]
            self._remaining -= take
        return out

    @property
    def pending(self) -> int:
        """Bytes held back waiting for the rest of a header."""
        return len(self._buffer)


class CappedSink:
    """Appends to a spool stream file up to ``cap`` bytes (the head is kept) and counts the rest as
    dropped. The file is unbuffered: every chunk is a write(2), so readers see it at once."""

    def __init__(self, handle: BinaryIO, cap: int, already: int = 0) -> None:
        self._handle = handle
        self.cap = cap
        self.written = already
        self.dropped = 0

    def write(self, data: bytes) -> int:
        """Write what fits; return how many bytes were dropped by this call."""
        room = max(self.cap - self.written, 0)
        keep = data[:room]
        if keep:
            self._handle.write(keep)
            self.written += len(keep)
        lost = len(data) - len(keep)
        self.dropped += lost
        return lost

    def close(self) -> None:
        self._handle.close()


def frame_eof(exited: bool, cursor: int, size: int) -> bool:
    """A stream is at its end once the writer is finished (checked FIRST) and the reader's cursor
    has reached the size measured after that check."""
    return exited and cursor >= size
