"""Byte-level spool primitives shared by the shim and the worker, importing almost nothing.

The shim runs once per sandbox, so every module it imports is paid once per sandbox in private
memory (measured here with ``python -S``: pathlib +1.8 MiB, dataclasses +2.7 MiB, typing +1.7 MiB,
http.client +5 MiB because it pulls ssl and email). This module uses ``os``, ``json`` and
``struct`` only and takes plain paths (``str`` or ``os.PathLike``); ``corral.io.spool`` builds the
worker's ``Path``-based layout on top of it and re-exports these names.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from _thread import get_ident

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs the shim 1.7 MiB
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    PathArg = str | os.PathLike[str]

STREAM_STDOUT = 1
STREAM_STDERR = 2
_HEADER = struct.Struct(">BxxxL")

# Names of the files in one sandbox's spool directory (see ``corral.io.spool`` for what each holds).
LABELS_FILE = ".corral-labels.json"
IO_POLICY = "io_policy.json"
PROCESS = "process.json"
SHIM_PID = "shim.pid"
SHIM_LOCK = "shim.lock"
SHIM_LOG = "shim.log"
SHIM_ERROR = "shim.error"
SHIM_WAKE = "shim.wake"
STARTED = "started"
STDIN = "stdin"
STDIN_CLOSED = "stdin.closed"
ESCALATE = "escalate.json"
SIGNALED = "signaled"
LOST = "lost.json"
REMOVING = "removing"
EXIT = "exit.json"


def atomic_write(path: PathArg, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never a part."""
    path = os.fspath(path)
    head, name = os.path.split(path)
    tmp = os.path.join(head, f".{name}.{os.getpid()}.{get_ident()}.tmp")
    _unlink(tmp)  # a leftover of a crash may be read-only (secret files are 0400)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        _unlink(tmp)
        raise


class suppress:
    """``with suppress(OSError): ...``: the exceptions named are swallowed."""

    __slots__ = ("exceptions",)

    def __init__(self, *exceptions: type[BaseException]) -> None:
        self.exceptions = exceptions

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: object) -> bool:
        return kind is not None and issubclass(kind, self.exceptions)


def _unlink(path: str) -> None:
    """Remove ``path`` if it exists (``contextlib`` costs the shim an import)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return


def write_json(path: PathArg, value: Any) -> None:
    atomic_write(path, json.dumps(value, sort_keys=True).encode("utf-8"))


def read_json(path: PathArg) -> Any:
    """The JSON value of ``path``, or None when it does not exist (or is not complete JSON)."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None


def file_size(path: PathArg) -> int:
    try:
        return os.stat(path).st_size
    except (FileNotFoundError, NotADirectoryError):
        return 0


def read_span(path: PathArg, cursor: int, max_bytes: int) -> bytes:
    """At most ``max_bytes`` from ``cursor``: a seek and one bounded read, O(frame) not O(file)."""
    if cursor < 0 or max_bytes < 0:
        raise ValueError("cursor and max_bytes must not be negative")
    try:
        with open(path, "rb") as handle:
            handle.seek(cursor)
            return handle.read(max_bytes)
    except (FileNotFoundError, NotADirectoryError):
        return b""


def poke(path: PathArg) -> bool:
    """Wake the shim that listens on the FIFO ``path`` (``shim.wake``); False when nobody listens.

    The files stay the truth (append-only ``stdin``, ``stdin.closed``, ``escalate.json``): a writer
    changes them FIRST and pokes after, and the shim drains the FIFO BEFORE it reads them, so no
    change is missed. A full FIFO (EAGAIN) already holds a pending wake-up."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:  # ENXIO: no reader (the shim is gone); ENOENT: never created
        if exc.errno in (errno.ENXIO, errno.ENOENT, errno.ENOTDIR):
            return False
        raise
    try:
        os.write(fd, b"\0")
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    return True


class Demuxer:
    """Splits Docker's multiplexed attach stream (8-byte headers: stream type, 3 zero bytes, big-
    endian length) into ``(stream_type, payload)`` chunks, across arbitrary read boundaries."""

    __slots__ = ("_buffer", "_remaining", "_stream")

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

    __slots__ = ("_handle", "cap", "dropped", "written")

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
