"""The per-sandbox I/O shim: ``python -m corral.io.shim --container NAME --spool DIR ...``.

Docker's logs API costs O(whole log) per read and its json-file driver mangles non-UTF-8 bytes;
the attach stream is raw and exact. So, like podman's conmon and Nomad's logmon, one small process
per sandbox, detached from the Celery worker (it survives worker restarts), owns the container's
stdio for its whole life:

1. attach to the container (stdout+stderr, +stdin when open) BEFORE starting it, then start it;
2. append the demultiplexed raw bytes to ``stdout`` / ``stderr`` in the spool (capped, head kept);
3. forward stdin by tailing the append-only ``stdin`` file, half-closing at ``stdin.closed``;
4. enforce the timeout itself (signal, grace, SIGKILL), and any kill deadline that
   ``signal_process`` leaves in ``escalate.json``; nothing has to poll for a timeout to happen;
5. when the stream ends: wait for the container and write ``exit.json`` atomically, LAST.

``--kill-after-ms`` is a second, tiny mode: sleep, then SIGKILL the container if it still runs.
``signal_process`` uses it for terminate-with-grace when the sandbox's shim is gone.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.io import cgroup
from corral.io.spool import (
    STREAM_STDERR,
    STREAM_STDOUT,
    CappedSink,
    Demuxer,
    SpoolLayout,
    atomic_write,
    file_size,
    read_json,
    read_span,
    write_json,
)
from corral.runtimes.docker.policy import DETACH_KEYS

log = logging.getLogger("corral.shim")
TICK_S = 0.05
OOM_SETTLE_S = 1.0
CHUNK = 1 << 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="corral-shim", description=__doc__.splitlines()[0])
    parser.add_argument("--container", required=True)
    parser.add_argument("--spool", help="the sandbox's spool directory")
    parser.add_argument("--timeout-ms", type=int, default=0, help="0: no timeout")
    parser.add_argument("--grace-ms", type=int, default=5000)
    parser.add_argument("--timeout-signal", default="SIGTERM", choices=["SIGINT", "SIGTERM", "SIGKILL"])
    parser.add_argument("--stdin", action="store_true", help="forward the spool's stdin file")
    parser.add_argument("--daemonize", action="store_true", help="fork and leave the caller at once")
    parser.add_argument("--kill-after-ms", type=int, default=None, help="escalation-only mode")
    return parser.parse_args(argv)


def daemonize() -> None:
    """Fork; the caller's child exits at once, the grandchild (reparented to init, in its own
    session) does the work. No zombie is left in the worker, and the worker may die freely."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()


@dataclass
class Enforcer:
    """Timeout and kill-escalation decisions, in one monotonic time base (pure: unit-testable)."""

    deadline: float | None
    grace_s: float
    timeout_signal: str
    timed_out: bool = False
    kill_at: float | None = None
    killed: bool = False
    output_limit: bool = False

    def tick(self, now: float, escalate_at: float | None = None) -> list[str]:
        """The signals to send now, in order."""
        out: list[str] = []
        if not self.timed_out and self.deadline is not None and now >= self.deadline:
            self.timed_out = True
            if self.timeout_signal == "SIGKILL":
                self._kill_by(now)
            else:
                out.append(self.timeout_signal)
                self._kill_by(now + self.grace_s)
        if escalate_at is not None:
            self._kill_by(escalate_at)
        if not self.killed and self.kill_at is not None and now >= self.kill_at:
            self.killed = True
            out.append("SIGKILL")
        return out

    def _kill_by(self, when: float) -> None:
        if self.kill_at is None or when < self.kill_at:
            self.kill_at = when

    def fail_output(self, now: float) -> None:
        """The output cap was exceeded under ``fail_if_exceeded``: kill at once."""
        self.output_limit = True
        self._kill_by(now)


def exit_reason(enforcer: Enforcer, exit_code: int | None, oom: bool, signaled: bool) -> str:
    if enforcer.timed_out:
        return "timeout"
    if oom:
        return "oom"
    if enforcer.output_limit or enforcer.killed:
        return "signal"
    if exit_code is None:
        return "lost"
    if exit_code > 128 or (signaled and exit_code != 0):
        return "signal"
    return "exit"


class StdinForwarder(threading.Thread):
    """Tails the append-only ``stdin`` spool file into the attach socket; half-closes the socket's
    write side once ``stdin.closed`` exists and every byte before it was sent."""

    def __init__(self, layout: SpoolLayout, sock: socket.socket) -> None:
        super().__init__(name="stdin", daemon=True)
        self.layout = layout
        self.sock = sock
        self.stop = threading.Event()
        self.offset = 0

    def run(self) -> None:
        path = self.layout.stream("stdin")
        try:
            while not self.stop.is_set():
                closed = self.layout.stdin_closed.exists()  # BEFORE the size: no byte is lost
                if file_size(path) > self.offset:
                    chunk = read_span(path, self.offset, CHUNK)
                    self.sock.sendall(chunk)
                    self.offset += len(chunk)
                elif closed:
                    self.sock.shutdown(socket.SHUT_WR)
                    return
                else:
                    self.stop.wait(0.02)
        except OSError as exc:
            log.info("stdin forwarding ended: %s", type(exc).__name__)


@dataclass
class Output:
    """The two capped spool sinks and their policies."""

    layout: SpoolLayout
    sinks: dict[int, CappedSink] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    fail_on_excess: dict[int, bool] = field(default_factory=dict)
    last_dropped_write: float = 0.0

    @classmethod
    def open(cls, layout: SpoolLayout) -> Output:
        policy = read_json(layout.io_policy) or {}
        out = cls(layout)
        for kind, name in ((STREAM_STDOUT, "stdout"), (STREAM_STDERR, "stderr")):
            spec = policy.get(name) or {}
            path = layout.stream(name)
            handle = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
            out.sinks[kind] = CappedSink(handle, int(spec.get("max_bytes", 64 << 20)), file_size(path))
            out.names[kind] = name
            out.fail_on_excess[kind] = spec.get("truncation_policy") == "fail_if_exceeded"
        return out

    def write(self, kind: int, data: bytes) -> bool:
        """Append; True when bytes were dropped under a fail-if-exceeded policy."""
        sink = self.sinks.get(kind)
        if sink is None:
            return False
        lost = sink.write(data)
        if lost and time.monotonic() - self.last_dropped_write > 0.25:
            self.record_dropped()
        return bool(lost) and self.fail_on_excess[kind]

    def record_dropped(self) -> None:
        self.last_dropped_write = time.monotonic()
        for kind, sink in self.sinks.items():
            if sink.dropped:
                atomic_write(self.layout.dropped(self.names[kind]), str(sink.dropped).encode())

    def close(self) -> None:
        self.record_dropped()
        for sink in self.sinks.values():
            sink.close()


def escalate_deadline(layout: SpoolLayout) -> float | None:
    """``escalate.json`` holds a wall-clock kill time (another process wrote it); convert it to
    this process's monotonic clock."""
    if not layout.escalate.exists():
        return None
    data = read_json(layout.escalate)
    if not isinstance(data, dict) or "kill_at_ms" not in data:
        return None
    return time.monotonic() + (float(data["kill_at_ms"]) / 1000.0 - time.time())


def send(container: Any, sig: str) -> None:
    try:
        container.kill(signal=sig)
    except Exception as exc:  # not running any more: nothing to signal
        log.info("signal %s not delivered: %s", sig, type(exc).__name__)


class OomWatch:
    """Whether the kernel OOM-killed something in the container: Docker's ``OOMKilled`` flag comes
    from an event that is sometimes lost when a container dies at once. On cgroup v1 a thread waits
    on the kernel's eventfd notification (``cgroup.OomListener``); elsewhere the cgroup's counter is
    sampled every tick while it exists."""

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        self.seen = False
        self.last = 0.0
        self.listening = False
        try:
            listener = cgroup.OomListener(container_id)
        except (OSError, ValueError) as exc:
            log.info("no OOM listener (%s): sampling the counter", type(exc).__name__)
            return
        self.listening = True
        threading.Thread(target=self._listen, args=(listener,), name="oom", daemon=True).start()

    def _listen(self, listener: cgroup.OomListener) -> None:
        try:
            self.seen = listener.wait() or self.seen
        except OSError as exc:
            log.info("OOM listener ended: %s", type(exc).__name__)
        finally:
            listener.close()

    def sample(self, now: float, force: bool = False) -> None:
        if self.listening or self.seen or (not force and now - self.last < TICK_S):
            return
        self.last = now
        try:
            self.seen = bool(cgroup.oom_kills(self.container_id))
        except ValueError:
            self.seen = False


def pump(sock: socket.socket, container: Any, output: Output, enforcer: Enforcer, oom: OomWatch) -> None:
    """Move output from the attach stream to the spool until it ends; enforce deadlines meanwhile."""
    demux = Demuxer()
    while True:
        ready, _, _ = select.select([sock], [], [], TICK_S)
        now = time.monotonic()
        if ready:
            data = sock.recv(CHUNK)
            if not data:
                oom.sample(now, force=True)  # a last look, when nothing listens (cgroup v2)
                return
            for kind, chunk in demux.feed(data):
                if output.write(kind, chunk):
                    enforcer.fail_output(now)
        oom.sample(now)
        for sig in enforcer.tick(now, escalate_deadline(output.layout)):
            send(container, sig)


def oom_killed(container: Any, settle_s: float) -> bool:
    """Docker learns of an OOM kill from an event that can land after the exit; when nobody here
    killed the process yet it died of SIGKILL, give that event a moment before saying "no"."""
    deadline = time.monotonic() + settle_s
    while True:
        container.reload()
        if container.attrs["State"].get("OOMKilled"):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def finish(container: Any, layout: SpoolLayout, enforcer: Enforcer, oom_seen: bool = False) -> None:
    """Wait for the container's exit status and publish ``exit.json`` (atomically, last)."""
    exit_code: int | None = None
    oom = False
    try:
        exit_code = int(container.wait(timeout=60)["StatusCode"])
        settle = exit_code == 137 and not enforcer.killed and not layout.signaled.exists()
        oom = oom_seen or oom_killed(container, OOM_SETTLE_S if settle else 0.0)
    except Exception as exc:  # removed under us (cleanup) or the engine failed
        log.warning("no exit status: %s", type(exc).__name__)
    reason = exit_reason(enforcer, exit_code, oom, layout.signaled.exists())
    log.info("exit code %s, reason %s, oom %s (seen in the cgroup: %s)", exit_code, reason, oom, oom_seen)
    record = {
        "exit_code": exit_code,
        "oom_killed": oom,
        "reason": reason,
        "finished_at_ms": int(time.time() * 1000),
    }
    if enforcer.output_limit:
        record["detail"] = "output_limit_exceeded"
    try:
        write_json(layout.exit, record)
    except OSError as exc:  # the spool was removed by cleanup: nobody is left to tell
        log.warning("exit status not recorded: %s", type(exc).__name__)


def attach(client: Any, container_id: str, stdin: bool) -> tuple[Any, socket.socket]:
    params = {
        "stdin": int(stdin),
        "stdout": 1,
        "stderr": 1,
        "stream": 1,
        "logs": 0,
        "detachKeys": DETACH_KEYS,
    }
    handle = client.api.attach_socket(container_id, params=params)
    raw: socket.socket = getattr(handle, "_sock", handle)
    raw.settimeout(None)
    return handle, raw


def fail(layout: SpoolLayout, exc: BaseException) -> int:
    """Tell ``start_process`` why the container was not started (it polls for this file)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    message = str(getattr(exc, "explanation", None) or exc)[:2000]
    write_json(layout.shim_error, {"type": type(exc).__name__, "status_code": status, "message": message})
    log.error("shim failed before start: %s", message)
    return 1


def run(args: argparse.Namespace) -> int:
    import docker

    layout = SpoolLayout(Path(args.spool))
    lock = open(layout.shim_lock, "a")  # noqa: SIM115 - held (locked) for the whole life of the shim
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info("another shim owns this spool")
        return 0
    atomic_write(layout.shim_pid, str(os.getpid()).encode())
    try:
        client = docker.from_env(timeout=60)
        container = client.containers.get(args.container)
        if container.status != "created":
            raise RuntimeError(f"container is {container.status}, not created")
        output = Output.open(layout)
        _handle, sock = attach(client, container.id, args.stdin)  # BEFORE start: no byte is missed
        container.start()
        oom = OomWatch(container.id)  # right after start: the cgroup exists from start to exit
    except Exception as exc:
        return fail(layout, exc)
    started = time.monotonic()
    deadline = started + args.timeout_ms / 1000.0 if args.timeout_ms > 0 else None
    write_json(layout.started, {"started_at_ms": int(time.time() * 1000), "timeout_ms": args.timeout_ms})
    enforcer = Enforcer(deadline, args.grace_ms / 1000.0, args.timeout_signal)
    forwarder = StdinForwarder(layout, sock) if args.stdin else None
    if forwarder:
        forwarder.start()
    try:
        pump(sock, container, output, enforcer, oom)
    finally:
        if forwarder:
            forwarder.stop.set()
        output.close()
        finish(container, layout, enforcer, oom.seen)
    return 0


def kill_after(args: argparse.Namespace) -> int:
    import docker

    time.sleep(max(args.kill_after_ms, 0) / 1000.0)
    try:
        container = docker.from_env(timeout=30).containers.get(args.container)
        if container.status == "running":
            container.kill(signal="SIGKILL")
    except Exception as exc:
        log.info("escalation: %s", type(exc).__name__)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.daemonize:
        daemonize()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s shim %(levelname)s %(message)s")
    if args.kill_after_ms is not None:
        return kill_after(args)
    if not args.spool:
        log.error("--spool is required")
        return 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
