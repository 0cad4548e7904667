"""The I/O shim's parts without Docker: its hand-written Engine API client against a fake engine on
a unix socket, its command line, its deadlines, the wake-up FIFO, the helpers' cgroup against a fake
tree, and what the shim process imports (the standard library only, and little of it)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from corral.io import cgroup, engine, files
from corral.io.engine import Engine, EngineError
from corral.io.shim import Enforcer, parse_args

ROOT = Path(__file__).resolve().parents[2]


class FakeEngine:
    """A unix-socket server answering each connection with one canned response; records requests."""

    def __init__(self, path: Path, responses: list[bytes]) -> None:
        self.path = path
        self.responses = responses
        self.requests: list[bytes] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for response in self.responses:
            conn, _ = self.server.accept()
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                self.requests.append(data)
                conn.sendall(response)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "docker.sock"


def serve(path: Path, *responses: bytes) -> FakeEngine:
    return FakeEngine(path, list(responses))


def test_inspect_reads_a_chunked_answer(sock_path: Path) -> None:
    body = json.dumps({"Id": "a" * 64, "State": {"Status": "created"}}).encode()
    half = len(body) // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])
    fake = serve(sock_path, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    info = Engine(str(sock_path)).inspect("corral-x y")
    fake.close()
    assert info["State"]["Status"] == "created"
    assert fake.requests[0].startswith(b"GET /containers/corral-x%20y/json HTTP/1.1\r\n")


def test_errors_carry_the_engines_status_and_message(sock_path: Path) -> None:
    body = b'{"message":"No such container: c"}'
    fake = serve(
        sock_path,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        b"HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 500 Oops\r\nContent-Length: 5\r\n\r\nboom!",
    )
    eng = Engine(str(sock_path))
    with pytest.raises(EngineError) as info:
        eng.start("c")
    assert (info.value.status, info.value.message) == (404, "No such container: c")
    assert eng.kill("c", "SIGTERM") is False  # 409: not running is not an error
    with pytest.raises(EngineError) as info:
        eng.kill("c", "SIGKILL")
    assert (info.value.status, info.value.message) == (500, "boom!")
    fake.close()
    assert fake.requests[1].startswith(b"POST /containers/c/kill?signal=SIGTERM HTTP/1.1\r\n")
    assert b"Content-Length: 0\r\n" in fake.requests[0]


def test_attach_upgrades_and_keeps_the_bytes_that_came_with_the_answer(sock_path: Path) -> None:
    stream = b"\x01\x00\x00\x00\x00\x00\x00\x03hi\n"
    fake = serve(
        sock_path,
        b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\nConnection: Upgrade\r\n"
        b"Upgrade: tcp\r\n\r\n" + stream,
    )
    sock, early = Engine(str(sock_path)).attach("c", stdin=True)
    sock.close()
    fake.close()
    request = fake.requests[0].decode()
    assert request.startswith("POST /containers/c/attach?stream=1&stdout=1&stderr=1&logs=0&stdin=1&detachKeys=ctrl-")
    assert "Upgrade: tcp\r\n" in request
    assert files.Demuxer().feed(early) == [(files.STREAM_STDOUT, b"hi\n")]


def test_an_unreachable_engine_is_an_engine_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError) as info:
        Engine(str(tmp_path / "absent.sock")).inspect("c")
    assert info.value.status is None


def test_docker_host_must_be_a_unix_socket() -> None:
    assert engine.socket_path({}) == "/var/run/docker.sock"
    assert engine.socket_path({"DOCKER_HOST": "unix:///run/user/1/docker.sock"}) == "/run/user/1/docker.sock"
    with pytest.raises(EngineError, match="unix-socket"):
        engine.socket_path({"DOCKER_HOST": "tcp://10.0.0.1:2375"})


def test_quote_escapes_what_a_url_needs() -> None:
    assert engine.quote("ctrl-@,ctrl-^") == "ctrl-%40%2Cctrl-%5E"
    assert engine.quote("a/b c") == "a%2Fb%20c"


def test_command_line() -> None:
    args = parse_args(["--container", "c", "--spool=/s", "--timeout-ms", "500", "--stdin", "--cgroup-cpus", "0.5"])
    assert (args.container, args.spool, args.timeout_ms, args.stdin, args.cgroup_cpus) == ("c", "/s", 500, True, 0.5)
    assert parse_args(["--container", "c", "--kill-after-ms", "10"]).kill_after_ms == 10
    bad = {
        "--container is required": ["--spool", "/s"],
        "--spool is required": ["--container", "c"],
        "unknown argument": ["--container", "c", "--spool", "/s", "--nope"],
        "needs a value": ["--container", "c", "--spool"],
    }
    for message, argv in bad.items():
        with pytest.raises(ValueError, match=message):
            parse_args(argv)
    with pytest.raises(ValueError, match="SIGINT"):
        parse_args(["--container", "c", "--spool", "/s", "--timeout-signal", "SIGHUP"])


def test_the_next_wakeup_is_the_next_deadline_and_none_when_idle() -> None:
    idle = Enforcer(None, 1.0, "SIGTERM")
    assert idle.next_wakeup() is None  # no timeout, no escalation: poll() sleeps without a timeout
    enforcer = Enforcer(10.0, 2.0, "SIGTERM")
    assert enforcer.next_wakeup() == 10.0
    assert enforcer.tick(10.0) == ["SIGTERM"]
    assert enforcer.next_wakeup() == 12.0  # the grace
    enforcer.escalate(11.0)  # signal_process asked for an earlier kill
    assert enforcer.next_wakeup() == 11.0
    assert enforcer.tick(11.0) == ["SIGKILL"]
    assert enforcer.next_wakeup() is None


def test_poke_wakes_a_listener_and_tells_when_nobody_listens(tmp_path: Path) -> None:
    fifo = tmp_path / "shim.wake"
    assert files.poke(fifo) is False  # never created
    os.mkfifo(fifo, 0o600)
    assert files.poke(fifo) is False  # nobody reads (the shim is gone)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        assert files.poke(fifo) is True
        assert files.poke(fifo) is True
        assert os.read(fd, 16) == b"\0\0"
        for _ in range(70_000):  # a full FIFO already holds a wake-up: never blocks, never fails
            files.poke(fifo)
    finally:
        os.close(fd)


def _fake_v1_tree(root: Path) -> dict[str, str]:
    """Parents of the helper group in a fake v1 tree, mirroring this process's real cgroups."""
    own = cgroup.own_cgroups()
    for hierarchy, path in own.items():
        if hierarchy:
            (root / hierarchy / path.strip("/")).mkdir(parents=True, exist_ok=True)
    return own


def test_the_helpers_group_nests_under_the_launchers_cgroup_with_its_limits(tmp_path: Path) -> None:
    own = _fake_v1_tree(tmp_path)
    if not any(set(h.split(",")) & {"cpu", "memory", "pids"} for h in own):
        pytest.skip("this process is in no v1 cpu/memory/pids hierarchy")
    joined = cgroup.join_helper_group(0.25, 64 << 20, 100, name="helpers", root=tmp_path)
    assert joined and all(Path(p).name == "helpers" for p in joined)
    for path in map(Path, joined):
        assert (path / "cgroup.procs").read_text() == str(os.getpid())
        rel = path.relative_to(tmp_path)
        assert str(rel.parent).removeprefix(rel.parts[0]).strip("/") == own[rel.parts[0]].strip("/")
        controllers = set(rel.parts[0].split(","))
        if "cpu" in controllers:
            assert (path / "cpu.cfs_quota_us").read_text() == "25000"
        if "memory" in controllers:
            assert (path / "memory.limit_in_bytes").read_text() == str(64 << 20)
        if "pids" in controllers:
            assert (path / "pids.max").read_text() == "100"
    # Joining again changes nothing, and a launcher already in the group is not nested deeper.
    assert cgroup.join_helper_group(0.25, 64 << 20, 100, name="helpers", root=tmp_path) == joined


def test_the_shim_imports_only_the_standard_library_and_little_of_it() -> None:
    code = (
        "import sys; before = set(sys.modules); import corral.io.shim; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    ours = {m for m in loaded if m.split(".")[0] == "corral"}
    assert ours == {"corral", "corral.io", "corral.io.cgroup", "corral.io.engine", "corral.io.files", "corral.io.shim"}
    stdlib = set(sys.stdlib_module_names) | {"corral"}
    assert {m for m in loaded if m.split(".")[0].lstrip("_") not in {s.lstrip("_") for s in stdlib}} == set()
    heavy = {"typing", "pathlib", "dataclasses", "logging", "argparse", "threading", "http", "ssl", "email", "urllib"}
    assert loaded & heavy == set()


def test_stdin_is_refused_once_the_shim_died_and_wakes_a_live_one(tmp_path: Path) -> None:
    """A write lands in the spool and pokes ``shim.wake``; after the shim died (``lost.json``, or
    started with no shim and no exit) nobody would forward it, so the write is refused."""
    from corral.contract.errors import InvalidRequest
    from corral.io.spool import SpoolLayout
    from corral.runtimes.docker.process import write_stdin

    layout = SpoolLayout(tmp_path)
    files.write_json(layout.process, {"stdin": "open"})
    os.mkfifo(layout.wake, 0o600)
    listener = os.open(layout.wake, os.O_RDWR | os.O_NONBLOCK)
    try:
        write_stdin(layout, "proc-0123456789abcdef", "YWJj", close=False)
        assert os.read(listener, 16) == b"\0"  # woken after the bytes were in the file
        assert layout.stream("stdin").read_bytes() == b"abc"
    finally:
        os.close(listener)
    files.write_json(layout.started, {"started_at_ms": 0, "timeout_ms": 0})  # started, and no shim alive
    with pytest.raises(InvalidRequest, match="shim died"):
        write_stdin(layout, "proc-0123456789abcdef", "YWJj", close=False)
    assert layout.stream("stdin").read_bytes() == b"abc"


def test_no_supervisor_starts_for_a_session_being_removed(tmp_path: Path) -> None:
    """Cleanup marks the spool ``removing`` before it kills the shim: a heartbeat that finds the shim
    dead in between must not start a supervisor that writes into a directory being deleted."""
    from corral.io.spool import SpoolLayout
    from corral.runtimes.docker.process import revive_shim

    layout = SpoolLayout(tmp_path)
    files.write_json(layout.started, {"started_at_ms": 0, "timeout_ms": 0})
    layout.removing.touch()
    assert revive_shim(layout, "corral-gone") is False
    assert not layout.lost.exists() and not layout.shim_log.exists()
    layout.removing.unlink()
    files.write_json(layout.exit, {"exit_code": 0})
    assert revive_shim(layout, "corral-gone") is False  # the exit is recorded: nothing to supervise
