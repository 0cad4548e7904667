"""The per-sandbox I/O shim: ``python -S -m corral.io.shim --container NAME --spool DIR ...``.

Docker's logs API costs O(whole log) per read and its json-file driver mangles non-UTF-8 bytes;
the attach stream is raw and exact. So, like podman's conmon and Nomad's logmon, one small process
per sandbox, detached from the Celery worker (it survives worker restarts), owns the container's
stdio for its whole life:

1. attach to the container (stdout+stderr, +stdin when open) BEFORE starting it, then start it;
2. append the demultiplexed raw bytes to ``stdout`` / ``stderr`` in the spool (capped, head kept);
3. forward stdin from the append-only ``stdin`` file, half-closing once ``stdin.closed`` exists;
4. enforce the timeout itself (signal, grace, SIGKILL), and any kill deadline that
   ``signal_process`` leaves in ``escalate.json``; nothing has to poll for a timeout to happen;
5. when the stream ends: wait for the container and write ``exit.json`` atomically, LAST.

Cost (the shim runs once per sandbox, so its cost is the product's): standard library only, and
few modules of it (``corral.io.files``, ``corral.io.engine``: the Engine API spoken by hand over
the unix socket); started with ``python -S`` (no site, no .pth hooks). Event-driven: one thread
sleeps in ``poll()`` on the attach socket, the ``shim.wake`` FIFO and the OOM notification, with
a timeout equal to the next deadline (timeout, grace, escalation) or none at all: an idle
sandbox's shim does not wake. Writers of ``stdin``, ``stdin.closed`` and ``escalate.json`` change
the file first and then write one byte to ``shim.wake`` (``files.poke``); the shim drains the FIFO
and then reads the files, so the files stay the truth and no change is missed. (inotify would do
the same through ctypes, which costs more than a FIFO and needs no writer's cooperation, but
every writer is ours.) The shim joins the helpers' cgroup (``cgroup.join_helper_group``).

``--resume`` is the supervisor a worker starts when a sandbox's shim died while its process ran
(``process.revive_shim``): it records in ``lost.json`` the stream sizes at which capture stopped
(the spool is byte-exact up to there; what came later was not captured), then enforces the
remaining timeout and any escalation, waits for the exit and writes ``exit.json``.

``--kill-after-ms`` is a third, tiny mode: sleep, then SIGKILL the container if it still runs.
"""

from __future__ import annotations

import _socket as socket  # the C module: socket.py adds enum, selectors and array (0.4 MiB)
import errno
import fcntl
import os
import select
import sys
import time

from corral.io import cgroup, files
from corral.io.engine import Engine, EngineError
from corral.io.files import suppress

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs the shim 1.7 MiB
if TYPE_CHECKING:
    from typing import Any

OOM_SETTLE_S = 1.0
CHUNK = 1 << 16
SIGNAL_NAMES = ("SIGINT", "SIGTERM", "SIGKILL")
DROPPED_EVERY_S = 0.25
USAGE = """usage: python -S -m corral.io.shim --container NAME (--spool DIR | --kill-after-ms MS) [options]
  --timeout-ms MS        0: no timeout                --grace-ms MS      SIGKILL this long after the signal
  --timeout-signal SIG   SIGINT, SIGTERM or SIGKILL   --stdin            forward the spool's stdin file
  --daemonize            fork and leave the caller    --notify-fd FD     write "started" or "failed" there
  --resume               supervise a running container whose shim died (no output capture)
  --cgroup NAME          the helpers' cgroup ("" : stay where launched)
  --cgroup-cpus F / --cgroup-memory-mb N / --cgroup-pids N   its limits (all shims together)"""


def log(message: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} shim {message}\n")
    sys.stderr.flush()


class Args:
    """The command line (argparse costs the shim ~1 MiB: gettext, re and friends)."""

    def __init__(self) -> None:
        self.container = ""
        self.spool = ""
        self.timeout_ms = 0
        self.grace_ms = 5000
        self.timeout_signal = "SIGTERM"
        self.stdin = False
        self.daemonize = False
        self.resume = False
        self.kill_after_ms: int | None = None
        self.notify_fd: int | None = None
        self.cgroup = ""
        self.cgroup_cpus = 1.0
        self.cgroup_memory_mb = 1024
        self.cgroup_pids = 4096


_FLAGS = {"--stdin": "stdin", "--daemonize": "daemonize", "--resume": "resume"}
_VALUES: dict[str, tuple[str, Any]] = {
    "--container": ("container", str),
    "--spool": ("spool", str),
    "--timeout-ms": ("timeout_ms", int),
    "--grace-ms": ("grace_ms", int),
    "--timeout-signal": ("timeout_signal", str),
    "--kill-after-ms": ("kill_after_ms", int),
    "--notify-fd": ("notify_fd", int),
    "--cgroup": ("cgroup", str),
    "--cgroup-cpus": ("cgroup_cpus", float),
    "--cgroup-memory-mb": ("cgroup_memory_mb", int),
    "--cgroup-pids": ("cgroup_pids", int),
}


def parse_args(argv: list[str]) -> Args:
    """``--name value`` / ``--name=value`` / flags; raises ValueError with a readable reason."""
    args = Args()
    items = list(argv)
    while items:
        item = items.pop(0)
        name, eq, value = item.partition("=")
        if name in _FLAGS and not eq:
            setattr(args, _FLAGS[name], True)
        elif name in _VALUES:
            if not eq:
                if not items:
                    raise ValueError(f"{name} needs a value")
                value = items.pop(0)
            attr, kind = _VALUES[name]
            setattr(args, attr, kind(value))
        else:
            raise ValueError(f"unknown argument {item!r}")
    if not args.container:
        raise ValueError("--container is required")
    if args.timeout_signal not in SIGNAL_NAMES:
        raise ValueError(f"--timeout-signal must be one of {', '.join(SIGNAL_NAMES)}")
    if args.kill_after_ms is None and not args.spool:
        raise ValueError("--spool is required")
    return args


def daemonize() -> None:
    """Fork; the caller's child exits at once, the grandchild (reparented to init, in its own
    session) does the work. No zombie is left in the worker, and the worker may die freely."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()


class Enforcer:
    """Timeout and kill-escalation decisions, in one monotonic time base (pure: unit-testable)."""

    def __init__(self, deadline: float | None, grace_s: float, timeout_signal: str) -> None:
        self.deadline = deadline
        self.grace_s = grace_s
        self.timeout_signal = timeout_signal
        self.timed_out = False
        self.kill_at: float | None = None
        self.killed = False
        self.output_limit = False

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

    def next_wakeup(self) -> float | None:
        """When ``tick`` next has something to do (None: never, until told otherwise)."""
        times = []
        if not self.timed_out and self.deadline is not None:
            times.append(self.deadline)
        if not self.killed and self.kill_at is not None:
            times.append(self.kill_at)
        return min(times) if times else None

    def escalate(self, when: float) -> None:
        """``signal_process`` asked for a SIGKILL at ``when`` (terminate with grace)."""
        self._kill_by(when)

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


class Spool:
    """The spool's paths as strings (the worker's ``SpoolLayout`` uses pathlib, which the shim
    does not import)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def __call__(self, name: str) -> str:
        return os.path.join(self.root, name)

    def exists(self, name: str) -> bool:
        return os.path.exists(self(name))


class Output:
    """The two capped spool sinks and their policies."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.sinks: dict[int, files.CappedSink] = {}
        self.names: dict[int, str] = {}
        self.fail_on_excess: dict[int, bool] = {}
        self.last_dropped_write = 0.0
        policy = files.read_json(spool(files.IO_POLICY)) or {}
        for kind, name in ((files.STREAM_STDOUT, "stdout"), (files.STREAM_STDERR, "stderr")):
            spec = policy.get(name) or {}
            path = spool(name)
            handle = open(path, "ab", buffering=0)  # noqa: SIM115 - closed in close()
            self.sinks[kind] = files.CappedSink(handle, int(spec.get("max_bytes", 64 << 20)), files.file_size(path))
            self.names[kind] = name
            self.fail_on_excess[kind] = spec.get("truncation_policy") == "fail_if_exceeded"

    def write(self, kind: int, data: bytes) -> bool:
        """Append; True when bytes were dropped under a fail-if-exceeded policy."""
        sink = self.sinks.get(kind)
        if sink is None:
            return False
        lost = sink.write(data)
        if lost and time.monotonic() - self.last_dropped_write > DROPPED_EVERY_S:
            self.record_dropped()
        return bool(lost) and self.fail_on_excess[kind]

    def record_dropped(self) -> None:
        self.last_dropped_write = time.monotonic()
        for kind, sink in self.sinks.items():
            if sink.dropped:
                files.atomic_write(self.spool(f"{self.names[kind]}.dropped"), str(sink.dropped).encode())

    def close(self) -> None:
        self.record_dropped()
        for sink in self.sinks.values():
            sink.close()


class Stdin:
    """Forwards the append-only ``stdin`` spool file into the (non-blocking) attach socket, one
    bounded chunk in hand at a time; half-closes the socket's write side once ``stdin.closed``
    exists and every byte before it was sent."""

    def __init__(self, spool: Spool, sock: socket.socket) -> None:
        self.path = spool(files.STDIN)
        self.closed_marker = spool(files.STDIN_CLOSED)
        self.sock = sock
        self.offset = 0
        self.pending = b""
        self.done = False

    def pump(self) -> None:
        """Send what can be sent now; called on a wake-up and when the socket is writable."""
        try:
            while not self.done:
                if not self.pending:
                    closed = os.path.exists(self.closed_marker)  # BEFORE the size: no byte is lost
                    if files.file_size(self.path) > self.offset:
                        self.pending = files.read_span(self.path, self.offset, CHUNK)
                        self.offset += len(self.pending)
                    elif closed:
                        self.sock.shutdown(socket.SHUT_WR)
                        self.done = True
                        return
                    else:
                        return
                sent = self.sock.send(self.pending)
                self.pending = self.pending[sent:]
        except BlockingIOError:
            return
        except OSError as exc:
            log(f"stdin forwarding ended: {type(exc).__name__}")
            self.done, self.pending = True, b""

    @property
    def wants_write(self) -> bool:
        return bool(self.pending) and not self.done


class OomWatch:
    """Whether the kernel OOM-killed something in the container: Docker's ``OOMKilled`` flag comes
    from an event that is sometimes lost when a container dies at once. cgroup v1: the kernel's
    eventfd notification on ``memory.oom_control`` (``cgroup.OomListener``); v2: ``memory.events``
    polled for POLLPRI; both sit in the shim's poll set. Elsewhere: one look when the stream ends."""

    def __init__(self, container_id: str) -> None:
        self.container_id = container_id
        self.seen = False
        self.listener: cgroup.OomListener | None = None
        self.events_fd: int | None = None
        try:
            self.listener = cgroup.OomListener(container_id)
            self.seen = self.listener.already
        except (OSError, ValueError):
            self.events_fd = cgroup.memory_events_fd(container_id)

    def register(self, poller: select.poll) -> int | None:
        if self.listener is not None:
            poller.register(self.listener.fd, select.POLLIN)
            return self.listener.fd
        if self.events_fd is not None:
            poller.register(self.events_fd, select.POLLPRI)
            return self.events_fd
        return None

    def on_event(self, poller: select.poll) -> None:
        if self.listener is not None:
            seen = self.listener.check()
            if seen is not None:
                self.seen = self.seen or seen
                poller.unregister(self.listener.fd)  # an OOM, or the cgroup is gone: nothing more
                self.listener.close()
                self.listener = None
        elif self.events_fd is not None:
            try:
                text = os.pread(self.events_fd, 4096, 0).decode()
            except OSError:
                text = ""
            kills = [line.split()[1] for line in text.splitlines() if line.startswith("oom_kill ")]
            if not text or (kills and kills[0] != "0"):
                self.seen = self.seen or bool(kills)
                poller.unregister(self.events_fd)
                os.close(self.events_fd)
                self.events_fd = None

    def last_look(self) -> None:
        if not self.seen:
            with suppress(ValueError):
                self.seen = bool(cgroup.oom_kills(self.container_id))

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self.events_fd is not None:
            os.close(self.events_fd)


class Shim:
    def __init__(self, args: Args) -> None:
        self.args = args
        self.spool = Spool(args.spool)
        self.engine = Engine()
        self.container_id = args.container
        deadline = time.monotonic() + args.timeout_ms / 1000.0 if args.timeout_ms > 0 else None
        self.enforcer = Enforcer(deadline, args.grace_ms / 1000.0, args.timeout_signal)
        self.wake_fd = -1

    # ------------------------------------------------------------------ set-up

    def open_wake(self) -> None:
        """The FIFO writers poke (``files.poke``); opened read-write so it never reports EOF."""
        path = self.spool(files.SHIM_WAKE)
        with suppress(FileExistsError):
            os.mkfifo(path, 0o600)
        self.wake_fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

    def drain_wake(self) -> None:
        try:
            while os.read(self.wake_fd, 4096):
                pass
        except BlockingIOError:
            pass

    def read_escalation(self) -> None:
        """``escalate.json`` holds a wall-clock kill time (another process wrote it)."""
        data = files.read_json(self.spool(files.ESCALATE))
        if isinstance(data, dict) and "kill_at_ms" in data:
            self.enforcer.escalate(time.monotonic() + (float(data["kill_at_ms"]) / 1000.0 - time.time()))

    def signal(self, sig: str) -> None:
        try:
            self.engine.kill(self.container_id, sig)
        except EngineError as exc:
            log(f"signal {sig} not delivered: {exc.message}")

    def enforce(self) -> None:
        for sig in self.enforcer.tick(time.monotonic()):
            self.signal(sig)

    def timeout_ms(self) -> int:
        when = self.enforcer.next_wakeup()
        if when is None:
            return -1
        return max(int((when - time.monotonic()) * 1000) + 1, 0)

    # ------------------------------------------------------------------ the normal life

    def start(self) -> tuple[socket.socket, bytes, Output]:
        info = self.engine.inspect(self.args.container)
        state = (info.get("State") or {}).get("Status")
        if state != "created":
            raise RuntimeError(f"container is {state}, not created")
        self.container_id = str(info["Id"])
        output = Output(self.spool)
        sock, early = self.engine.attach(self.container_id, self.args.stdin)  # BEFORE start: no byte missed
        self.engine.start(self.container_id)
        return sock, early, output

    def pump(self, sock: socket.socket, early: bytes, output: Output, oom: OomWatch) -> None:
        """Move output from the attach stream to the spool until it ends; enforce deadlines and
        forward stdin meanwhile. Sleeps in poll() between events."""
        demux = files.Demuxer()
        stdin = Stdin(self.spool, sock) if self.args.stdin else None
        sock.setblocking(False)
        poller = select.poll()
        sock_fd = sock.fileno()
        poller.register(sock_fd, select.POLLIN)
        poller.register(self.wake_fd, select.POLLIN)
        oom_fd = oom.register(poller)
        self.read_escalation()
        if stdin:
            stdin.pump()
        data = early
        while True:
            if data:
                for kind, chunk in demux.feed(data):
                    if output.write(kind, chunk):
                        self.enforcer.fail_output(time.monotonic())
                data = b""
            self.enforce()
            poller.modify(sock_fd, select.POLLIN | (select.POLLOUT if stdin and stdin.wants_write else 0))
            for fd, events in poller.poll(self.timeout_ms()):
                if fd == sock_fd:
                    if events & select.POLLOUT and stdin:
                        stdin.pump()
                    if events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                        try:
                            data = sock.recv(CHUNK)
                        except BlockingIOError:
                            continue
                        except OSError as exc:
                            log(f"attach stream failed: {type(exc).__name__}")
                            data = b""
                        if not data:
                            return
                elif fd == self.wake_fd:
                    self.drain_wake()  # FIRST: then the files read below are at least as new
                    self.read_escalation()
                    if stdin:
                        stdin.pump()
                elif fd == oom_fd:
                    oom.on_event(poller)

    def run(self) -> int:
        try:
            sock, early, output = self.start()
            oom = OomWatch(self.container_id)  # right after start: the cgroup exists from start to exit
        except Exception as exc:
            return self.fail(exc)
        files.write_json(
            self.spool(files.STARTED),
            {"started_at_ms": int(time.time() * 1000), "timeout_ms": self.args.timeout_ms, "id": self.container_id},
        )
        self.notify(b"started\n")
        try:
            self.pump(sock, early, output, oom)
            self.until_exit()  # a process that closed its stdout and stderr still has its timeout
        finally:
            sock.close()
            output.close()
            oom.last_look()
            oom.close()
            self.finish(oom.seen)
        return 0

    # ------------------------------------------------------------------ a shim died: supervise

    def resume(self) -> int:
        """The container runs (or ran) without its shim: record what was lost, then enforce the
        remaining timeout and escalation and record the exit."""
        started = files.read_json(self.spool(files.STARTED))
        if not isinstance(started, dict) or self.spool.exists(files.EXIT) or self.spool.exists(files.REMOVING):
            log("nothing to resume")
            return 0
        if not self.spool.exists(files.LOST):
            files.write_json(
                self.spool(files.LOST),
                {
                    "stdout": files.file_size(self.spool("stdout")),
                    "stderr": files.file_size(self.spool("stderr")),
                    "noticed_at_ms": int(time.time() * 1000),
                },
            )
        self.container_id = str(started.get("id") or self.args.container)
        timeout_ms = int(started.get("timeout_ms") or 0)
        if timeout_ms > 0:
            remaining_s = (int(started["started_at_ms"]) + timeout_ms) / 1000.0 - time.time()
            self.enforcer.deadline = time.monotonic() + remaining_s
        log(f"resumed: output capture lost; timeout in {self.timeout_ms()} ms")
        self.read_escalation()
        self.until_exit()
        oom = OomWatch.__new__(OomWatch)
        oom.container_id, oom.seen, oom.listener, oom.events_fd = self.container_id, False, None, None
        oom.last_look()
        self.finish(oom.seen)
        return 0

    def until_exit(self) -> None:
        """Sleep until the container stops, enforcing deadlines and escalations meanwhile: a wait
        request whose connection the engine closes at the exit sits in the poll set."""
        poller = select.poll()
        poller.register(self.wake_fd, select.POLLIN)
        try:
            waiter = self.engine.connect_wait(self.container_id)
        except EngineError as exc:
            log(f"cannot wait for the exit: {exc.message}")
            return
        poller.register(waiter.fileno(), select.POLLIN)
        try:
            while True:
                self.enforce()
                ready = [fd for fd, _ in poller.poll(self.timeout_ms())]
                if self.wake_fd in ready:
                    self.drain_wake()
                    self.read_escalation()
                if waiter.fileno() in ready and not _recv_or_eof(waiter):
                    return  # the engine closed the wait connection: the container stopped
        finally:
            waiter.close()

    # ------------------------------------------------------------------ the end

    def oom_killed(self, settle_s: float) -> bool:
        """Docker learns of an OOM kill from an event that can land after the exit; when nobody here
        killed the process yet it died of SIGKILL, give that event a moment before saying "no"."""
        deadline = time.monotonic() + settle_s
        while True:
            if (self.engine.inspect(self.container_id).get("State") or {}).get("OOMKilled"):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def finish(self, oom_seen: bool) -> None:
        """Wait for the container's exit status and publish ``exit.json`` (atomically, last)."""
        exit_code: int | None = None
        oom = False
        signaled = self.spool.exists(files.SIGNALED)
        try:
            exit_code = self.engine.wait(self.container_id, timeout_s=60)
            settle = exit_code == 137 and not self.enforcer.killed and not signaled
            oom = oom_seen or self.oom_killed(OOM_SETTLE_S if settle else 0.0)
        except (EngineError, ValueError, KeyError) as exc:  # removed under us (cleanup) or the engine failed
            log(f"no exit status: {exc}")
        reason = exit_reason(self.enforcer, exit_code, oom, signaled)
        log(f"exit code {exit_code}, reason {reason}, oom {oom} (seen in the cgroup: {oom_seen})")
        record: dict[str, Any] = {
            "exit_code": exit_code,
            "oom_killed": oom,
            "reason": reason,
            "finished_at_ms": int(time.time() * 1000),
        }
        if self.enforcer.output_limit:
            record["detail"] = "output_limit_exceeded"
        if self.spool.exists(files.LOST):
            record["output_lost"] = True
        try:
            files.write_json(self.spool(files.EXIT), record)
        except OSError as exc:  # the spool was removed by cleanup: nobody is left to tell
            log(f"exit status not recorded: {type(exc).__name__}")

    def fail(self, exc: BaseException) -> int:
        """Tell ``start_process`` why the container was not started."""
        status = exc.status if isinstance(exc, EngineError) else None
        message = (exc.message if isinstance(exc, EngineError) else str(exc))[:2000]
        files.write_json(
            self.spool(files.SHIM_ERROR), {"type": type(exc).__name__, "status_code": status, "message": message}
        )
        log(f"failed before start: {message}")
        self.notify(b"failed\n")
        return 1

    def notify(self, word: bytes) -> None:
        """Wake the launcher at once (it also watches the files, for a replayed start)."""
        fd = self.args.notify_fd
        if fd is None:
            return
        self.args.notify_fd = None
        with suppress(OSError):
            os.write(fd, word)
        with suppress(OSError):
            os.close(fd)


def _recv_or_eof(sock: socket.socket) -> bytes:
    try:
        return sock.recv(CHUNK)
    except OSError:
        return b""


def join_cgroup(args: Args) -> None:
    if not args.cgroup:
        return
    try:
        joined = cgroup.join_helper_group(
            args.cgroup_cpus, args.cgroup_memory_mb << 20, args.cgroup_pids, name=args.cgroup
        )
        log(f"accounted in {', '.join(joined) or 'no cgroup hierarchy'}")
    except OSError as exc:
        why = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        log(f"not in the helpers' cgroup ({why}): running unconfined")


def run(args: Args) -> int:
    shim = Shim(args)
    lock = os.open(shim.spool(files.SHIM_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held for the whole life of the shim
    except BlockingIOError:
        log("another shim owns this spool")
        shim.notify(b"busy\n")
        return 0
    files.atomic_write(shim.spool(files.SHIM_PID), str(os.getpid()).encode())
    join_cgroup(args)
    shim.open_wake()
    return shim.resume() if args.resume else shim.run()


def kill_after(args: Args) -> int:
    time.sleep(max(args.kill_after_ms or 0, 0) / 1000.0)
    try:
        engine = Engine(timeout_s=30)
        if (engine.inspect(args.container).get("State") or {}).get("Running"):
            engine.kill(args.container, "SIGKILL")
    except EngineError as exc:
        log(f"escalation: {exc.message}")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        sys.stderr.write(f"corral-shim: {exc}\n{USAGE}\n")
        return 2
    if args.daemonize:
        daemonize()
    if args.kill_after_ms is not None:
        return kill_after(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
