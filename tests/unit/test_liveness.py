"""Lease holders: only a provably dead process of this host and pid namespace counts as dead."""

from __future__ import annotations

import subprocess
import sys

from corral.host.liveness import holder_dead, holder_id


def test_a_running_process_is_alive() -> None:
    assert not holder_dead(holder_id("h"), "h")


def test_an_exited_process_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import os, time; print(os.getpid())"], stdout=subprocess.PIPE)
    out, _ = child.communicate(timeout=30)
    pid = int(out)
    mine = holder_id("h").rsplit("/", 2)[0]
    assert holder_dead(f"{mine}/{pid}/123", "h")


def test_a_reused_pid_with_another_start_time_is_dead() -> None:
    host, namespace, pid, _ = holder_id("h").rsplit("/", 3)
    assert holder_dead(f"{host}/{namespace}/{pid}/1", "h")


def test_other_hosts_namespaces_and_garbage_are_never_declared_dead() -> None:
    _, namespace, _pid, started = holder_id("h").rsplit("/", 3)
    assert not holder_dead(f"other/{namespace}/999999/{started}", "h")
    assert not holder_dead(f"h/elsewhere/999999/{started}", "h")
    assert not holder_dead("garbage", "h")
    assert not holder_dead("", "h")
