"""The few Docker Engine API calls the shim makes, over the engine's unix socket, by hand.

Not docker-py (it pulls requests, urllib3 and more: ~30 MiB per process) and not ``http.client``
(it imports ssl and email: +5 MiB private per shim, measured with ``python -S``): each call is one
HTTP/1.1 request with ``Connection: close`` on a fresh unix-socket connection, and the response
is read to its end (``Content-Length``, chunked, or until close). The calls: inspect, start, kill,
wait, and attach, which upgrades the connection (``Upgrade: tcp`` → ``101``) to the raw
multiplexed stdio stream of the container.

Paths carry no API version: the engine then speaks its own current version, which every engine
since 1.24 accepts for these calls.
"""

from __future__ import annotations

import _socket as socket  # the C module: socket.py adds enum, selectors and array (0.4 MiB)
import json
import os

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs the shim 1.7 MiB
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/var/run/docker.sock"
DETACH_KEYS = "ctrl-@,ctrl-^,ctrl-],ctrl-_,ctrl-@,ctrl-^,ctrl-],ctrl-_,ctrl-@,ctrl-^,ctrl-],ctrl-_"
"""Docker detaches an attach session when stdin carries the detach keys (default ctrl-p,ctrl-q).
A long, unlikely sequence keeps a caller's binary stdin from cutting off its own output."""
MAX_HEADER = 64 << 10
MAX_BODY = 16 << 20


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def quote(text: str, safe: str = "") -> str:
    """Percent-encode ``text`` for a URL path segment or query value (``urllib.parse`` costs the
    shim its import of ``re`` and more)."""
    ok = _SAFE | frozenset(safe.encode())
    return "".join(chr(b) if b in ok else f"%{b:02X}" for b in text.encode("utf-8"))


class EngineError(Exception):
    """The engine answered with an error status (``status``), or could not be reached (None)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def socket_path(environ: dict[str, str] | None = None) -> str:
    """The engine's unix socket: ``DOCKER_HOST=unix://PATH`` or the default path. Any other
    ``DOCKER_HOST`` (tcp, ssh) is refused: the shim only speaks to a local engine."""
    host = (os.environ if environ is None else environ).get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://") :]
    raise EngineError(None, f"the I/O shim needs a unix-socket DOCKER_HOST, not {host.split(':', 1)[0]}")


def _request_bytes(method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: docker"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Reader:
    """Buffered reads from a connected socket."""

    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def until(self, marker: bytes, limit: int) -> bytes:
        while marker not in self.buf:
            if len(self.buf) > limit or not self._more():
                raise EngineError(None, "malformed or truncated engine response")
        head, _, self.buf = self.buf.partition(marker)
        return head

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise EngineError(None, "truncated engine response")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def rest(self, limit: int) -> bytes:
        while self._more():
            if len(self.buf) > limit:
                raise EngineError(None, "engine response too large")
        out, self.buf = self.buf, b""
        return out


def _read_head(reader: _Reader) -> tuple[int, dict[str, str]]:
    head = reader.until(b"\r\n\r\n", MAX_HEADER).decode("latin-1").split("\r\n")
    try:
        status = int(head[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        raise EngineError(None, "malformed engine status line") from None
    headers: dict[str, str] = {}
    for line in head[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return status, headers


def _read_body(reader: _Reader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = bytearray()
        while True:
            size = int(reader.until(b"\r\n", 1024).split(b";", 1)[0], 16)
            if size == 0:
                return bytes(out)  # trailers, if any, are not read: the connection closes
            out += reader.exactly(size)
            reader.exactly(2)
            if len(out) > MAX_BODY:
                raise EngineError(None, "engine response too large")
    if "content-length" in headers:
        return reader.exactly(int(headers["content-length"]))
    return reader.rest(MAX_BODY)


def _error_message(status: int, body: bytes) -> str:
    try:
        value = json.loads(body)
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            return str(value["message"])
    except ValueError:
        pass
    return body.decode("utf-8", "replace").strip() or f"engine status {status}"


class Engine:
    """One engine, reached through ``path`` (a unix socket)."""

    def __init__(self, path: str | None = None, timeout_s: float = 60.0) -> None:
        self.path = path or socket_path()
        self.timeout_s = timeout_s

    def _connect(self, timeout_s: float | None) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(timeout_s)
        try:
            sock.connect(self.path)
        except OSError as exc:
            sock.close()
            raise EngineError(None, f"docker engine unreachable ({type(exc).__name__})") from None
        return sock

    def call(self, method: str, target: str, body: Any = None, timeout_s: float | None = -1.0) -> tuple[int, bytes]:
        """One request; (status, body). Raises ``EngineError`` for statuses >= 400."""
        payload = json.dumps(body).encode() if body is not None else b""
        headers = {"Connection": "close"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        sock = self._connect(self.timeout_s if timeout_s == -1.0 else timeout_s)
        try:
            sock.sendall(_request_bytes(method, target, headers, payload))
            reader = _Reader(sock)
            status, response_headers = _read_head(reader)
            data = _read_body(reader, response_headers)
        except OSError as exc:
            raise EngineError(None, f"docker engine call failed ({type(exc).__name__})") from None
        finally:
            sock.close()
        if status >= 400:
            raise EngineError(status, _error_message(status, data))
        return status, data

    def inspect(self, container: str) -> dict[str, Any]:
        _status, data = self.call("GET", f"/containers/{quote(container, safe='')}/json")
        value = json.loads(data)
        if not isinstance(value, dict):
            raise EngineError(None, "malformed inspect answer")
        return value

    def start(self, container: str) -> None:
        self.call("POST", f"/containers/{quote(container, safe='')}/start")

    def kill(self, container: str, signal: str) -> bool:
        """Signal the container's process; False when it is not running (409) or gone (404)."""
        try:
            self.call("POST", f"/containers/{quote(container, safe='')}/kill?signal={quote(signal)}")
        except EngineError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True

    def wait(self, container: str, timeout_s: float | None = None) -> int:
        """Block until the container is not running; its exit code (``condition=not-running``
        answers at once for a container that already exited)."""
        _status, data = self.call(
            "POST", f"/containers/{quote(container, safe='')}/wait?condition=not-running", timeout_s=timeout_s
        )
        return int(json.loads(data)["StatusCode"])

    def connect_wait(self, container: str) -> socket.socket:
        """Send a wait request and hand back its connection: the engine answers the headers at once
        and closes the connection after the body, when the container stops, so a poll() on this
        socket sees EOF at the exit (read everything it offers until then)."""
        sock = self._connect(None)
        target = f"/containers/{quote(container, safe='')}/wait?condition=not-running"
        try:
            sock.sendall(_request_bytes("POST", target, {"Connection": "close"}, b""))
        except OSError as exc:
            sock.close()
            raise EngineError(None, f"wait failed ({type(exc).__name__})") from None
        return sock

    def attach(self, container: str, stdin: bool) -> tuple[socket.socket, bytes]:
        """Attach to stdout and stderr (and stdin) as a stream, before or after start; returns the
        hijacked socket (blocking) and the stream bytes that already came with the answer."""
        query = f"stream=1&stdout=1&stderr=1&logs=0&stdin={int(stdin)}&detachKeys={quote(DETACH_KEYS)}"
        target = f"/containers/{quote(container, safe='')}/attach?{query}"
        sock = self._connect(self.timeout_s)
        try:
            sock.sendall(_request_bytes("POST", target, {"Connection": "Upgrade", "Upgrade": "tcp"}, b""))
            reader = _Reader(sock)
            status, headers = _read_head(reader)
            if status >= 400:
                raise EngineError(status, _error_message(status, _read_body(reader, headers)))
            if status not in (101, 200):
                raise EngineError(status, f"attach answered {status}")
        except OSError as exc:
            sock.close()
            raise EngineError(None, f"attach failed ({type(exc).__name__})") from None
        except EngineError:
            sock.close()
            raise
        sock.settimeout(None)
        return sock, reader.buf
