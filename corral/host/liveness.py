"""Who holds an idempotency lease, and whether that holder is provably dead.

A holder id names a process: ``<host>/<pid namespace>/<pid>/<start time>``. A redelivered task
that finds a lease held by a process of *this* host and pid namespace which no longer exists (or
whose pid was reused: the start time differs) takes the lease over at once instead of waiting
for it to expire. Anything not provably dead is treated as alive.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


@lru_cache(maxsize=1)
def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid").strip("pid:[]")
    except OSError:
        return "?"


def holder_id(host_id: str) -> str:
    pid = os.getpid()
    return f"{host_id}/{_pid_namespace()}/{pid}/{_start_time(pid) or '?'}"


def holder_dead(holder: str, host_id: str) -> bool:
    parts = holder.rsplit("/", 3)
    if len(parts) != 4:
        return False
    host, namespace, pid, started = parts
    if host != host_id or namespace != _pid_namespace() or namespace == "?" or not pid.isdigit():
        return False
    current = _start_time(int(pid))
    return current is None or (started != "?" and current != started)
