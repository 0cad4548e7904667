"""The process half of the Docker runtime: launching the shim, frames, stdin, signals, stats.

Everything is found from the spool (``corral.io.spool``) and the container name, so any
worker process of the host can serve any operation on any sandbox of that host.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import docker.errors

from corral.contract.errors import AgentError, InvalidRequest, IsolationFailure
from corral.contract.models import ProcessIoFrame, ProcessState, ProcessStatsSnapshot, TerminationReason
from corral.contract.operations import Operation
from corral.contract.vocabulary import ProcessContentCaptureMode, ProcessIoStream, ProcessSignal
from corral.io import cgroup, template
from corral.io.spool import (
    STDIN_MAX_TOTAL,
    SpoolLayout,
    append_bytes,
    atomic_write,
    file_size,
    frame_eof,
    poke,
    read_int,
    read_json,
    read_window,
    write_json,
)
from corral.runtimes.docker import usage
from corral.runtimes.docker.failure import HostPaths, engine_failure
from corral.runtimes.docker.resources import SHIM_MODULE, TEMPLATE_MODULE, shim_pid
from corral.sandbox.redact import Cut, Redactor
from corral.settings import HostSettings

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
START_WAIT_S = 15.0
SHIM_BOOT_S = 5.0
"""After this long a shim that is not alive (and said nothing) has crashed."""
SIGNALS = {
    ProcessSignal.interrupt: "SIGINT",
    ProcessSignal.terminate: "SIGTERM",
    ProcessSignal.kill: "SIGKILL",
}
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])
"""The directory holding the ``corral`` package (a source tree or site-packages): the shim runs
with ``python -S``, so it finds the package only through ``PYTHONPATH``."""


@contextlib.contextmanager
def docker_errors(operation: str, secret_values: list[bytes] | None = None) -> Iterator[None]:
    """Translate docker-py failures into the contract's errors, classified by ``docker_failure``
    (a request the engine will always refuse is not retryable); Docker's text is redacted with the
    session's secret values (when known), logged, and shown only when not recognised."""
    try:
        yield
    except AgentError:
        raise
    except docker.errors.APIError as exc:
        text = str(getattr(exc, "explanation", None) or exc)
        raise engine_failure(operation, exc.status_code, text, secret_values) from None
    except (docker.errors.DockerException, OSError) as exc:  # requests' RequestException is an OSError
        raise IsolationFailure(f"{operation}: docker unavailable ({type(exc).__name__})") from None


def contract_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Every public operation raises only ``AgentError``: Docker failures are translated by
    ``docker_errors``; anything else (a bug, a host file error) becomes a retryable
    ``IsolationFailure`` naming only the exception type, because its text could carry a host path
    or a value. The traceback (code locations only, no message) goes to the log. Every error that
    leaves is scrubbed of this host's paths (``docker_failure.HostPaths``, from the runtime's
    ``host`` settings)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            with docker_errors(func.__name__):
                return func(*args, **kwargs)
        except AgentError as exc:
            host = getattr(args[0], "host", None) if args else None
            clean = HostPaths.of(host).error(exc) if isinstance(host, HostSettings) else exc
            if clean is exc:
                raise
            raise clean from None
        except Exception as exc:
            where = "".join(traceback.format_tb(exc.__traceback__)[-3:])
            log.warning("%s failed: %s\n%s", func.__name__, type(exc).__name__, where)
            raise IsolationFailure(f"{func.__name__}: unexpected {type(exc).__name__}") from None

    return wrapper


# ---------------------------------------------------------------------------------------------
# start


HELPER_CGROUP = "corral-io"
"""The cgroup every shim of the host joins, under the launching worker's own cgroup
(``corral.io.cgroup.join_helper_group``); its limits hold for all shims together."""
HELPER_CPUS = 1.0
HELPER_MEMORY_MB = 1024
HELPER_PIDS = 4096


def helper_cgroup_arguments() -> list[str]:
    """The helpers' cgroup and its limits, as every helper process (shim, supervisor, template) takes them."""
    return [
        "--cgroup",
        HELPER_CGROUP,
        "--cgroup-cpus",
        str(HELPER_CPUS),
        "--cgroup-memory-mb",
        str(HELPER_MEMORY_MB),
        "--cgroup-pids",
        str(HELPER_PIDS),
    ]


def shim_arguments(
    name: str, layout: SpoolLayout, timeout_ms: int, grace_ms: int, signal: str, stdin: bool
) -> list[str]:
    """The shim's arguments after its module name: the same for a shim the template forks
    (``ShimTemplate``) and one started as its own interpreter (``shim_command``)."""
    arguments = [
        "--container",
        name,
        "--spool",
        str(layout.root),
        "--timeout-ms",
        str(timeout_ms),
        "--grace-ms",
        str(grace_ms),
        "--timeout-signal",
        signal,
        *helper_cgroup_arguments(),
    ]
    return [*arguments, "--stdin"] if stdin else arguments


def shim_command(arguments: list[str]) -> list[str]:
    """``python -S``: no site, so none of the virtualenv's .pth hooks run in every shim; the
    package is found through ``PYTHONPATH`` (``spawn_detached``)."""
    return [sys.executable, "-S", "-m", SHIM_MODULE, "--daemonize", *arguments]


def resume_command(name: str, layout: SpoolLayout) -> list[str]:
    """The supervisor of a sandbox whose shim died (``shim.py --resume``)."""
    return shim_command(["--resume", "--container", name, "--spool", str(layout.root), *helper_cgroup_arguments()])


class ShimTemplate:
    """The host's shim template (``corral.io.template``), from a worker process: ``spawn`` asks it
    for a shim and returns the connection the shim will say ``started`` on, starting the template
    first when there is none (one at a time, under a lock in its directory). ``None`` means no
    template could serve: the caller starts the shim as its own interpreter. A template that could
    not be started is not tried again for ``RETRY_AFTER_S`` in this process."""

    RETRY_AFTER_S = 60.0
    ANSWER_WAIT_S = 2.0
    BOOT_WAIT_S = 5.0

    def __init__(self, state_dir: str | Path) -> None:
        self.directory = Path(state_dir) / "io"
        self.path = self.directory / f"template-{helper_digest()}.sock"
        self._retry_at = 0.0

    def spawn(self, arguments: list[str], log_path: Path, cwd: Path) -> int | None:
        if time.monotonic() < self._retry_at:
            return None
        request = template.encode_request(arguments, str(log_path), str(cwd))
        conn = self._connect()
        if conn is None and self._start():
            conn = self._connect()
        return self._ask(conn, request) if conn is not None else None

    def _start(self) -> bool:
        """Start the host's template unless another process just did; whether one listens now. A
        template that could not be started is not tried again for ``RETRY_AFTER_S``."""
        try:
            self._launch_template()
        except OSError as exc:  # its directory cannot be made or locked
            log.warning("no shim template in %s (%s)", self.directory, exc)
        if self.path.exists():
            return True
        log.warning("no shim template (see %s): shims start on their own", self.directory / "template.log")
        self._retry_at = time.monotonic() + self.RETRY_AFTER_S
        return False

    def _connect(self) -> socket.socket | None:
        """A connection to the template, or None when none listens. Bounded: a template that stopped
        taking connections (stopped, its backlog full) must not hang this process."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(self.ANSWER_WAIT_S)
        try:
            dir_fd = os.open(self.directory, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            conn.close()
            return None
        try:
            conn.connect(template.socket_address(dir_fd, self.path.name))
            return conn
        except OSError:
            conn.close()
            return None
        finally:
            os.close(dir_fd)

    def _ask(self, conn: socket.socket, request: bytes) -> int | None:
        """Send ``request``; the connection's descriptor once a shim was forked for it. A template that
        took the connection but did not answer in time is stuck (stopped, out of processes): it is
        killed and its socket removed, so the next launch starts a new one; this launch starts its
        shim the old way."""
        try:
            conn.sendall(request)
            answer = b""
            while len(answer) < len(template.FORKED):  # exactly the ack: the shim's word may follow at once
                chunk = conn.recv(len(template.FORKED) - len(answer))
                if not chunk:
                    break
                answer += chunk
        except OSError:
            answer = b""
        if answer != template.FORKED:
            if not answer:
                self._replace_if_stuck(conn)
            conn.close()
            return None
        conn.settimeout(None)
        return conn.detach()

    def _replace_if_stuck(self, conn: socket.socket) -> None:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0]
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return
        if TEMPLATE_MODULE.encode() in cmdline and str(self.path).encode() in cmdline:  # ours, not a reused pid
            log.warning("the shim template (pid %d) did not answer: replacing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _launch_template(self) -> None:
        """One launcher at a time (a lock in its directory); the socket's name appears once it listens."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        with open(self.directory / "template.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            existing = self._connect()
            if existing is not None:  # another worker process started it meanwhile
                existing.close()
                return
            self.path.unlink(missing_ok=True)  # a dead template's socket
            cmd = [
                sys.executable,
                "-S",
                "-m",
                TEMPLATE_MODULE,
                "--socket",
                str(self.path),
                "--daemonize",
                *helper_cgroup_arguments(),
                "--room",
                "." * template.ROOM_BYTES,
            ]
            spawn_detached(cmd, self.directory / "template.log", self.directory)
            deadline = time.monotonic() + self.BOOT_WAIT_S
            while not self.path.exists() and time.monotonic() < deadline:
                time.sleep(0.005)


@functools.cache
def helper_digest() -> str:
    """What the helper's code is (its sources and the interpreter): a template serves only shims of
    the code this worker runs; a deploy of new code starts a new template."""
    digest = hashlib.sha256(sys.executable.encode())
    for source in sorted((Path(_PACKAGE_ROOT) / "corral" / "io").glob("*.py")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()[:16]


@functools.cache
def ensure_bytecode() -> None:
    """Compile the shim's modules once per worker process: a shim that finds no ``.pyc`` (a source
    tree under ``PYTHONDONTWRITEBYTECODE``) compiles them itself at every start, which costs it
    ~1.2 MiB of memory it keeps and ~20 ms. An unwritable tree (an installed wheel has its .pyc
    already) is left as it is."""
    import py_compile

    root = Path(_PACKAGE_ROOT) / "corral"
    for source in [root / "__init__.py", *sorted((root / "io").glob("*.py"))]:
        with contextlib.suppress(OSError, py_compile.PyCompileError):
            py_compile.compile(str(source), doraise=True)


def spawn_detached(cmd: list[str], log_path: Path | None, cwd: Path, notify: bool = False) -> int | None:
    """Run ``cmd`` (which daemonizes itself) detached from this worker: own session, no inherited
    descriptors but one, output to a log. Waits only for the short-lived intermediate process.
    ``notify``: pass the write end of a pipe as ``--notify-fd`` and return its read end, on which
    the shim says ``started`` / ``failed`` (or closes it by dying)."""
    ensure_bytecode()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    read_fd, write_fd = os.pipe() if notify else (None, None)
    if write_fd is not None:
        cmd = [*cmd, "--notify-fd", str(write_fd)]
    sink = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
            close_fds=True,
            pass_fds=(write_fd,) if write_fd is not None else (),
            env=env,
            cwd=cwd,
        )
        proc.wait(timeout=30)
    except BaseException:
        if read_fd is not None:
            os.close(read_fd)
        raise
    finally:
        if write_fd is not None:
            os.close(write_fd)
        if not isinstance(sink, int):
            sink.close()
    return read_fd


def _await_word(notify_fd: int, timeout_s: float) -> bytes:
    """What the shim wrote on the notify pipe ('' at EOF: it died or handed over), or '' at timeout."""
    try:
        ready, _, _ = select.select([notify_fd], [], [], timeout_s)
        return os.read(notify_fd, 64) if ready else b""
    finally:
        os.close(notify_fd)


def wait_started(
    layout: SpoolLayout, secret_values: list[bytes], timeout_s: float = START_WAIT_S, notify_fd: int | None = None
) -> None:
    """Until the shim has started the container or said why it could not: woken by the shim
    itself through ``notify_fd`` when this process launched it, else (a replayed start finding a
    shim at work) by polling the spool, bounded."""
    began = time.monotonic()
    if notify_fd is not None:
        _await_word(notify_fd, timeout_s)
    while True:
        if layout.started.exists():
            return
        error = read_json(layout.shim_error)  # written atomically: complete or absent
        if isinstance(error, dict):
            raise _shim_failure(error, secret_values)
        waited = time.monotonic() - began
        if waited > timeout_s:
            break
        if waited > SHIM_BOOT_S and shim_pid(layout) is None and not layout.started.exists():
            raise IsolationFailure("start_process: the I/O shim exited before starting the container")
        time.sleep(0.02)
    raise IsolationFailure("the I/O shim did not start the container in time", context={"waited_s": timeout_s})


def revive_shim(layout: SpoolLayout, name: str) -> bool:
    """A started sandbox whose shim is gone and whose exit is not recorded gets a supervisor
    (``shim --resume``): it records what output was lost, enforces the rest of the timeout and any
    escalation, and writes ``exit.json``. Its spool lock makes a second supervisor leave at once.
    The container must be running (the caller checks): a removed one has nothing to supervise."""
    if not layout.started.exists() or layout.removing.exists() or shim_pid(layout) is not None:
        return False
    if layout.exit.exists():  # AFTER the shim is known dead: a shim writes exit.json before it exits
        return False
    spawn_detached(resume_command(name, layout), layout.shim_log, layout.root)
    return True


def _shim_failure(error: dict[str, Any], secret_values: list[bytes]) -> AgentError:
    """Why the shim could not start the container, classified like any engine failure: a user
    missing from the image is refused once, not retried with a new shim each time."""
    status = error.get("status_code")
    return engine_failure(
        Operation.start_process,
        status if isinstance(status, int) else None,
        str(error.get("message", "")),
        secret_values,
    )


# ---------------------------------------------------------------------------------------------
# frames


READ_WAIT_PAUSE_S = (0.001, 0.008)
"""A held read looks at the spool after 1 ms, then after twice as long each time, up to 8 ms: a
short job's end is seen within a few ms, and a held read costs a few stat calls per 8 ms."""


def await_output(layout: SpoolLayout, stream: str, cursor: int, wait_s: float) -> None:
    """Return once ``stream`` has bytes past ``cursor``, the other stream has new bytes, the writer
    is finished or its sink full, or ``wait_s`` has passed (a held read, ``ProcessIoRequest.wait_ms``).
    Two stats and the writer check per look, no descriptor kept open."""
    streams = (ProcessIoStream.stdout.value, ProcessIoStream.stderr.value)
    others = {name: file_size(layout.stream(name)) for name in streams if name != stream}
    deadline = time.monotonic() + wait_s
    pause, longest = READ_WAIT_PAUSE_S
    while True:
        if file_size(layout.stream(stream)) > cursor or read_int(layout.dropped(stream)) > 0:
            return
        if any(file_size(layout.stream(name)) != size for name, size in others.items()):
            return
        if writer_finished(layout):
            return
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(pause, left))
        pause = min(pause * 2, longest)


def writer_finished(layout: SpoolLayout) -> bool:
    """No byte will be added any more: ``exit.json`` exists, the shim died after starting, or a
    supervisor recorded that death (``lost.json``)."""
    if layout.exit.exists() or layout.lost.exists():
        return True
    return layout.started.exists() and shim_pid(layout) is None


LOST_OUTPUT = "not captured"
"""In a frame's summary (and ``corral logs``' note): output after this byte was never captured."""


def lost_summary(layout: SpoolLayout, stream: str) -> str:
    """Why a stream ends early: its shim died while the process ran (``lost.json``), or died and
    nobody has noticed yet (no shim, no exit record)."""
    lost = read_json(layout.lost)
    if isinstance(lost, dict) and stream in lost:
        return f"{stream} after byte {lost[stream]} was {LOST_OUTPUT}: the I/O shim died while the process ran"
    if layout.started.exists() and not layout.exit.exists() and shim_pid(layout) is None:
        return f"{stream} after byte {file_size(layout.stream(stream))} was {LOST_OUTPUT}: the I/O shim is gone"
    return ""


def cut_frame(path: Path, cursor: int, max_bytes: int, redactor: Redactor, final_size: int | None, capped: bool) -> Cut:
    """Read the window around ``[cursor, cursor + max_bytes)`` (lookbehind and holdback included)
    and cut one redacted frame from it. ``final_size``: the stream's size once nothing more will be
    appended (None while the writer may still write); ``capped``: the spool cap cut the stream."""
    window, offset = read_window(path, cursor, max_bytes, redactor.lookbehind, redactor.holdback)
    final = final_size is not None and cursor - offset + len(window) >= final_size
    return redactor.cut(window, offset, max_bytes, final=final, truncated=final and capped)


def read_output_frame(
    layout: SpoolLayout,
    process_ref: str,
    stream: ProcessIoStream,
    cursor: int,
    max_bytes: int,
    secrets: tuple[list[bytes], list[str]],
    allow_raw: bool,
) -> ProcessIoFrame:
    """One bounded, redacted frame of stdout/stderr from ``cursor``.

    ``byte_count`` counts spool bytes consumed (the cursor's advance); ``content_hash`` is over the
    bytes as returned (after redaction), which are the only bytes that ever leave the host. While
    the stream is live a frame may stop short of ``max_bytes``: its cursor never stops where the
    next read could complete a secret (see ``Redactor.cut``), so frames concatenate to the
    redaction of the whole stream whatever the frame sizes and write boundaries."""
    path = layout.stream(stream.value)
    values, missing = secrets
    finished = writer_finished(layout)  # FIRST: then the size measured below is final if finished
    dropped = read_int(layout.dropped(stream.value))  # > 0: the sink is full, the file is final too
    size = file_size(path)
    if cursor > size:
        raise InvalidRequest("cursor is beyond the end of the stream", context={"cursor": cursor, "size": size})
    final_size = size if finished or dropped > 0 else None
    cut = cut_frame(path, cursor, max_bytes, Redactor(values), final_size, dropped > 0)
    shown, end = cut.content, cursor + cut.consumed
    at_cut = dropped > 0 and end >= size
    capture = ((read_json(layout.io_policy) or {}).get(stream.value) or {}).get("default_capture")
    wants_raw = capture == ProcessContentCaptureMode.raw_content_if_policy_allows.value
    raw = allow_raw and wants_raw and not missing
    return ProcessIoFrame(
        stream_ref=f"{process_ref}/{stream.value}",
        stream=stream,
        cursor=end,
        start_cursor=cursor,
        byte_count=cut.consumed,
        content_hash="sha256:" + hashlib.sha256(shown).hexdigest(),
        raw_content_present=raw,
        content_b64=base64.b64encode(shown).decode() if raw else None,
        truncated=at_cut,
        dropped_bytes=dropped if at_cut else 0,
        eof=frame_eof(finished, end, size),
        redaction_count=cut.count,
        redacted_summary=_frame_summary(
            cut.count,
            withheld=bool(missing) and wants_raw,
            lost=lost_summary(layout, stream.value) if finished and end >= size and not at_cut else "",
        ),
    )


def _frame_summary(count: int, withheld: bool, lost: str = "") -> str:
    parts = [f"{count} redaction(s)"] if count else []
    if withheld:
        parts.append("raw content withheld: a secret could not be resolved")
    if lost:
        parts.append(lost)
    return "; ".join(parts)


def write_stdin(layout: SpoolLayout, process_ref: str, data_b64: str | None, close: bool) -> ProcessIoFrame:
    """Append one bounded stdin write to the spool (the shim forwards it); optionally close."""
    process = read_json(layout.process) or {}
    if process.get("stdin") != "open":
        raise InvalidRequest("the process was started with stdin closed")
    try:
        data = base64.b64decode(data_b64 or "", validate=True)
    except binascii.Error:
        raise InvalidRequest("data_b64 is not valid base64") from None
    path = layout.stream("stdin")
    if data and layout.stdin_closed.exists():
        raise InvalidRequest("stdin is already closed")
    if layout.lost.exists() or (layout.started.exists() and not layout.exit.exists() and shim_pid(layout) is None):
        raise InvalidRequest("stdin is not forwarded any more: the sandbox's I/O shim died")
    if file_size(path) + len(data) > STDIN_MAX_TOTAL:
        raise InvalidRequest("stdin total would exceed the host bound", context={"max_bytes": STDIN_MAX_TOTAL})
    start, end = append_bytes(path, data) if data else (file_size(path), file_size(path))
    if close and not layout.stdin_closed.exists():
        atomic_write(layout.stdin_closed, b"")
    if data or close:
        poke(layout.wake)  # AFTER the files changed: the shim reads them once woken
    return ProcessIoFrame(
        stream_ref=f"{process_ref}/stdin",
        stream=ProcessIoStream.stdin,
        cursor=end,
        start_cursor=start,
        byte_count=len(data),
        content_hash="sha256:" + hashlib.sha256(data).hexdigest(),
        eof=layout.stdin_closed.exists(),
    )


# ---------------------------------------------------------------------------------------------
# signals and stats


def request_escalation(layout: SpoolLayout, name: str, grace_ms: int, now_ms: int) -> str:
    """Terminate's SIGKILL after the grace, without blocking the caller: the shim enforces the
    deadline in ``escalate.json``; when the shim is gone, a detached helper sleeps and kills."""
    if shim_pid(layout) is not None:
        write_json(layout.escalate, {"kill_at_ms": now_ms + grace_ms})
        if poke(layout.wake):  # AFTER the write: the shim reads escalate.json once woken
            return "shim"
    cmd = [
        sys.executable,
        "-S",
        "-m",
        SHIM_MODULE,
        "--daemonize",
        "--container",
        name,
        "--kill-after-ms",
        str(grace_ms),
    ]
    spawn_detached(cmd, None, layout.root if layout.root.is_dir() else Path("/"))
    return "helper"


def deliver(container: Any, layout: SpoolLayout, sig: ProcessSignal, grace_ms: int, now_ms: int) -> tuple[bool, str]:
    """Send ``sig``; (delivered, summary). A process that is not running is not an error."""
    container.reload()
    if container.status != "running":
        return False, f"not running ({container.status})"
    try:
        container.kill(signal=SIGNALS[sig])
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            return False, "not running"
        raise
    with contextlib.suppress(OSError):
        atomic_write(layout.signaled, SIGNALS[sig].encode())
    if sig is ProcessSignal.terminate:
        how = request_escalation(layout, container.name, grace_ms, now_ms)
        return True, f"SIGTERM delivered; SIGKILL after {grace_ms} ms if still running ({how})"
    return True, f"{SIGNALS[sig]} delivered"


_STATES = {
    "created": ProcessState.created,
    "running": ProcessState.running,
    "paused": ProcessState.running,
    "restarting": ProcessState.running,
    "exited": ProcessState.exited,
    "dead": ProcessState.exited,
    "removing": ProcessState.exited,
}


def wait_exit_record(layout: SpoolLayout, timeout_s: float = 2.5) -> dict[str, Any] | None:
    """The container has exited; give a live shim a moment to publish ``exit.json`` (it may spend
    up to ``shim.OOM_SETTLE_S`` asking the engine whether an unexplained SIGKILL was an OOM kill)."""
    deadline = time.monotonic() + timeout_s
    while True:
        record = read_json(layout.exit)
        if isinstance(record, dict):
            return record
        if shim_pid(layout) is None or time.monotonic() >= deadline:
            return None
        time.sleep(0.02)


def _exit_summary(layout: SpoolLayout, record: dict[str, Any]) -> str:
    if not record:
        return "exit status from the engine (no shim record)"
    lost = read_json(layout.lost) if record.get("output_lost") else None
    if isinstance(lost, dict):
        return (
            f"stdout after byte {lost.get('stdout')} and stderr after byte {lost.get('stderr')} were "
            f"{LOST_OUTPUT}: the I/O shim died while the process ran"
        )
    return ""


def running_snapshot(layout: SpoolLayout, process_ref: str, snapshot_ref: str) -> ProcessStatsSnapshot | None:
    """The snapshot of a running sandbox read from the host alone (its spool, its cgroup, ``/proc``),
    without the engine: a host busy starting sandboxes answered each inspect in tens of ms, and
    ``collect_stats`` must not queue behind that. Only when everything agrees that it runs: its shim
    started it and is alive, no exit was recorded, its cgroup holds a process and its root is
    read-only (a writable layer's size is the engine's to tell). Otherwise None: ``snapshot`` asks
    the engine, which also revives a dead shim and reads an exit."""
    if layout.exit.exists() or layout.lost.exists():
        return None
    started, process = read_json(layout.started), read_json(layout.process)
    if not (isinstance(started, dict) and isinstance(process, dict) and process.get("read_only_root") is True):
        return None
    container_id = str(started.get("id") or "")
    if not cgroup.is_container_id(container_id):
        return None
    if shim_pid(layout) is None:
        return None
    pid = cgroup.lowest_pid(container_id)
    counters = cgroup.read_counters(container_id)
    if pid is None or counters.memory_bytes is None or layout.exit.exists():
        return None  # it ended meanwhile: the engine's answer is the one to give
    return ProcessStatsSnapshot(
        snapshot_ref=snapshot_ref,
        process_ref=process_ref,
        state=ProcessState.running,
        cpu_millis=counters.cpu_millis,
        memory_bytes=counters.memory_bytes,
        process_count=counters.process_count,
        filesystem_bytes=usage.tmpfs_bytes(container_id),
        network_bytes=usage.network_bytes(pid),
    )


def snapshot(container: Any, layout: SpoolLayout, process_ref: str, snapshot_ref: str) -> ProcessStatsSnapshot:
    container.reload()
    state = _STATES.get(container.status, ProcessState.unknown)
    base = {"snapshot_ref": snapshot_ref, "process_ref": process_ref, "state": state}
    if state is ProcessState.running:
        revive_shim(layout, container.name)  # its shim died: the timeout must still hold
        counters = cgroup.read_counters(container.id)
        return ProcessStatsSnapshot(
            **base,
            cpu_millis=counters.cpu_millis,
            memory_bytes=counters.memory_bytes,
            process_count=counters.process_count,
        )
    if state is not ProcessState.exited:
        return ProcessStatsSnapshot(**base)
    record = wait_exit_record(layout) or {}
    container.reload()  # the engine may have learnt of an OOM kill after the shim asked
    docker_state = container.attrs.get("State") or {}
    oom = bool(record.get("oom_killed")) or bool(docker_state.get("OOMKilled"))
    code = record.get("exit_code", docker_state.get("ExitCode"))
    reason = record.get("reason") or ("signal" if (code or 0) > 128 else "exit")
    if oom and reason != "timeout":
        reason = "oom"
    return ProcessStatsSnapshot(
        **base,
        exit_code=code,
        oom_killed=oom,
        reason=TerminationReason(reason),
        redacted_summary=_exit_summary(layout, record),
    )
