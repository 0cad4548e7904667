"""The shim template's request protocol and command-line rewrite (``corral.io.template``), without
Docker: what a worker sends is read back exactly, anything else is refused before any fork."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from corral.io.template import MAX_REQUEST_BYTES, encode_request, read_request, shim_cmdline

REPO = Path(__file__).resolve().parents[2]


def _read(payload: bytes) -> dict[str, object]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(payload)
        theirs.shutdown(socket.SHUT_WR)
        return read_request(ours)


def test_a_request_reads_back_as_it_was_sent() -> None:
    argv = ["--container", "corral-x", "--spool", "/var/lib/corral/spool/x", "--stdin"]
    assert _read(encode_request(argv, "/tmp/shim.log", "/tmp")) == {"argv": argv, "log": "/tmp/shim.log", "cwd": "/tmp"}


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (struct.pack(">I", 0), "request of 0 bytes"),
        (struct.pack(">I", MAX_REQUEST_BYTES + 1), f"request of {MAX_REQUEST_BYTES + 1} bytes"),
        (struct.pack(">I", 10) + b"not json!!", "Expecting value"),
        (struct.pack(">I", 2) + b"[]", "not an object"),
        (struct.pack(">I", 40) + b'{"argv": "--x", "log": "/x", "cwd": "/"}'[:40], "argv must be a list"),
        (encode_request([], "/x", "/")[:-3], "closed before the request was complete"),
    ],
)
def test_anything_else_is_refused(payload: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        _read(payload)


def test_wrong_field_types_are_refused() -> None:
    body = b'{"argv": ["--container", 7], "log": "/x", "cwd": "/"}'
    with pytest.raises(ValueError, match="argv"):
        _read(struct.pack(">I", len(body)) + body)
    body = b'{"argv": [], "log": null, "cwd": "/"}'
    with pytest.raises(ValueError, match="paths"):
        _read(struct.pack(">I", len(body)) + body)


def test_a_connection_that_sends_nothing_is_a_liveness_check() -> None:
    with pytest.raises(EOFError):
        _read(b"")


def test_a_forked_child_shows_a_shims_command_line() -> None:
    """What ``ps`` and ``resources.shim_pid`` see of a child that rewrote its argument area."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from corral.io.template import argument_room, set_cmdline, shim_cmdline
        room = argument_room()
        cmdline = shim_cmdline(["--container", "c1", "--spool", "/spool/s1"])
        assert len(cmdline) <= room[1], room
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            set_cmdline(cmdline, room)
            os.write(write, b"x")
            time.sleep(5)
            os._exit(0)
        os.read(read, 1)
        seen = open(f"/proc/{pid}/cmdline", "rb").read()
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        sys.stdout.write(seen.rstrip(b"\\0").decode())
        """
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", script, "--room", "." * 1024],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    words = done.stdout.split("\0")
    assert words == [sys.executable, "-S", "-m", "corral.io.shim", "--container", "c1", "--spool", "/spool/s1"]
    assert shim_cmdline(["a"]).endswith(b"corral.io.shim\0a\0")
