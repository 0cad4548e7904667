"""The shim template: one warm process per host that forks a ready I/O shim per sandbox.

A shim started as a new interpreter spent ~25 ms (the interpreter, then the shim's imports) before it
could attach, on every launch's critical path and on the host's CPUs. This process has done that once:
a fork of it is ready in about a millisecond, shares the template's pages (a shim's own memory is what
it writes) and is born in the helpers' cgroup the template joined. It is the forkserver (Python's
``multiprocessing``) or zygote pattern, for a process that only ever runs ``corral.io.shim``.

Protocol, on a unix socket only root reaches (0600 in a 0700 directory): the worker connects, sends
one request (4-byte big-endian length, then JSON ``{"argv": [...], "log": path, "cwd": path}``, the
shim's command line after its module name, where its stderr goes, its working directory) and keeps
the connection. The template forks; the child answers ``forked``, then, as the shim, writes
``started`` / ``failed`` / ``busy`` on it as it does on ``--notify-fd``, and the worker sees EOF if it
died. A request the template cannot read or serve (or a fork it cannot make) is dropped with the
connection before ``forked``, and the worker starts that shim the old way.

A forked shim shows the command line a shim started the old way has (``python -S -m corral.io.shim
--container ... --spool ...``): the host finds its shims by it (``resources.shim_pid``, the metrics,
operators' ``ps``). A process cannot grow its argument area, so the template is started with a
``--room`` filler and each child writes its own command line over it (``/proc/self/mem``).

Life: started detached by the first ``start_process`` that finds none (``corral.runtimes.docker.process``),
in its own session, its children reaped by the kernel (SIGCHLD ignored). Nothing wakes it but a
connection; it exits after ``IDLE_EXIT_S`` without one. The socket's name carries a digest of this
package's source, so new code gets a new template and the old one ages out; the shims it forked are
processes of their own and outlive it.

    python -S -m corral.io.template --socket PATH [--cgroup NAME --cgroup-cpus F ...] [--daemonize] --room FILLER
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys

from corral.io import shim

IDLE_EXIT_S = 600.0
"""A template that forked nothing for this long exits (the next launch starts another)."""
MAX_REQUEST_BYTES = 64 * 1024
"""A shim's command line is a few hundred bytes; anything near this is not one."""
ROOM_BYTES = 4096
"""The filler the template is started with: room for each child's own command line."""
FORKED = b"forked\n"
"""The only answer: the request was read and a shim forked for it (the child says it)."""
SHIM_MODULE = "corral.io.shim"
READ_TIMEOUT_S = 5.0
"""How long a connection may take to send its request before it is dropped."""


def read_request(conn: socket.socket) -> dict[str, object]:
    """One length-prefixed JSON request; ValueError for anything else."""
    head = _read_exactly(conn, 4)
    (size,) = struct.unpack(">I", head)
    if not 0 < size <= MAX_REQUEST_BYTES:
        raise ValueError(f"request of {size} bytes")
    request = json.loads(_read_exactly(conn, size))
    if not isinstance(request, dict):
        raise ValueError("request is not an object")
    argv, log_path, cwd = request.get("argv"), request.get("log"), request.get("cwd")
    if not (isinstance(argv, list) and all(isinstance(a, str) for a in argv)):
        raise ValueError("argv must be a list of strings")
    if not (isinstance(log_path, str) and isinstance(cwd, str)):
        raise ValueError("log and cwd must be paths")
    return request


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk and not data:
            raise EOFError  # a liveness check: connected, sent nothing
        if not chunk:
            raise ValueError("connection closed before the request was complete")
        data += chunk
    return data


def encode_request(argv: list[str], log_path: str, cwd: str) -> bytes:
    """The worker's side of the protocol (kept here, next to ``read_request``)."""
    body = json.dumps({"argv": argv, "log": log_path, "cwd": cwd}).encode()
    return struct.pack(">I", len(body)) + body


def shim_cmdline(argv: list[str]) -> bytes:
    """The command line a shim started as its own interpreter has, as /proc shows it."""
    return b"\0".join(word.encode() for word in [sys.executable, "-S", "-m", SHIM_MODULE, *argv]) + b"\0"


def argument_room() -> tuple[int, int]:
    """(start, length) of this process's argument area (``/proc/self/stat`` fields 48 and 49)."""
    with open("/proc/self/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    start, end = int(fields[45]), int(fields[46])
    return start, end - start


def set_cmdline(cmdline: bytes, room: tuple[int, int]) -> None:
    """Write ``cmdline`` over this process's argument area, NUL-filled to its end."""
    start, length = room
    with open("/proc/self/mem", "r+b", buffering=0) as mem:
        mem.seek(start)
        mem.write(cmdline + b"\0" * (length - len(cmdline)))


def become_shim(conn: socket.socket, request: dict[str, object], in_cgroup: bool, room: tuple[int, int]) -> int:
    """In the forked child: the shim of one sandbox, its notify fd the worker's connection."""
    argv = [str(a) for a in request["argv"]]  # type: ignore[attr-defined]
    args = shim.parse_args(argv)
    set_cmdline(shim_cmdline(argv), room)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sink = os.open(str(request["log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    os.dup2(sink, 1)
    os.dup2(sink, 2)
    os.close(sink)
    os.chdir(str(request["cwd"]))
    args.notify_fd = conn.detach()
    os.set_inheritable(args.notify_fd, False)
    if in_cgroup:  # born in the helpers' cgroup the template joined: no migration per shim
        args.cgroup = ""
    return shim.run(args)


def serve(listener: socket.socket, in_cgroup: bool) -> int:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the shims' first exits
    room = argument_room()
    listener.settimeout(IDLE_EXIT_S)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            shim.log(f"template idle for {IDLE_EXIT_S:.0f} s: exiting")
            return 0
        try:
            conn.settimeout(READ_TIMEOUT_S)
            request = read_request(conn)
            if len(shim_cmdline(request["argv"])) > room[1]:  # type: ignore[arg-type]
                raise ValueError("no room for this shim's command line")
            shim.parse_args(request["argv"])  # type: ignore[arg-type]
            conn.settimeout(None)
        except EOFError:
            conn.close()
            continue
        except (OSError, ValueError) as exc:
            shim.log(f"template dropped a request: {exc}")
            conn.close()
            continue
        try:
            child = os.fork()
        except OSError as exc:  # no process to be had (the helpers' pids limit): no ack, the worker falls back
            shim.log(f"template could not fork: {exc}")
            conn.close()
            continue
        if child == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 1
            try:
                conn.sendall(FORKED)  # the child's first word, so the shim's own words come after it
                code = become_shim(conn, request, in_cgroup, room)
            except BaseException as exc:
                shim.log(f"template child failed: {type(exc).__name__}: {exc}")
            finally:
                os._exit(code)
        conn.close()


def socket_address(directory_fd: int, name: str) -> str:
    """A unix socket's address through its directory's descriptor: a state directory's full path
    can pass the 108 bytes an address may have; ``/proc/self/fd/N/name`` never does."""
    return f"/proc/self/fd/{directory_fd}/{name}"


def listen(path: str) -> socket.socket:
    """Bind ``path`` (a fresh name: the caller holds the directory's lock) and listen on it."""
    directory, name = os.path.split(path)
    tmp = f"{name}.{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dir_fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        old = os.umask(0o177)
        try:
            listener.bind(socket_address(dir_fd, tmp))
        finally:
            os.umask(old)
        listener.listen(64)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # the name appears only once it accepts
    finally:
        os.close(dir_fd)
    return listener


def main(argv: list[str] | None = None) -> int:
    items = list(sys.argv[1:] if argv is None else argv)
    daemonize = "--daemonize" in items
    items = [i for i in items if i != "--daemonize"]
    if "--room" in items[:-1]:  # the filler only makes room (module docstring)
        at = items.index("--room")
        del items[at : at + 2]
    if len(items) < 2 or items[0] != "--socket":
        sys.stderr.write("usage: python -S -m corral.io.template --socket PATH [--cgroup ...] [--daemonize]\n")
        return 2
    path = items[1]
    cgroup_args = shim.Args()
    try:
        # The shim's own parser for the cgroup options (a placeholder container satisfies it).
        cgroup_args = shim.parse_args(["--container", "template", "--spool", os.devnull, *items[2:]])
    except ValueError as exc:
        sys.stderr.write(f"corral-template: {exc}\n")
        return 2
    if daemonize:
        shim.daemonize()
    shim.join_cgroup(cgroup_args)
    in_cgroup = bool(cgroup_args.cgroup)
    return serve(listen(path), in_cgroup)


if __name__ == "__main__":
    sys.exit(main())
