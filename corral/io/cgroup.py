"""cpu / memory / pids counters of a running container, read straight from its cgroup.

Docker's ``stats(stream=False)`` takes about a second (it samples twice); reading three files
takes microseconds. Both cgroup layouts are supported:

- v1 (cgroupfs driver): ``<root>/{cpuacct,memory,pids}/docker/<id>/...``; with the systemd
  driver ``<root>/<controller>/system.slice/docker-<id>.scope/...``.
- v2 (unified): ``<root>/system.slice/docker-<id>.scope/`` (systemd driver) or ``<root>/docker/<id>/``
  (cgroupfs driver), with ``cpu.stat``, ``memory.current`` and ``pids.current``.

``root`` is a parameter so the parsing is unit-tested against a fake tree.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
_ID_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class CgroupCounters:
    cpu_millis: int | None = None
    memory_bytes: int | None = None
    process_count: int | None = None

    @property
    def empty(self) -> bool:
        return self.cpu_millis is None and self.memory_bytes is None and self.process_count is None


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _v1_dir(root: Path, controller: str, container_id: str) -> Path | None:
    for base in (controller, "cpu,cpuacct" if controller == "cpuacct" else controller):
        for rel in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
            candidate = root / base / rel
            if candidate.is_dir():
                return candidate
    return None


def _v2_dir(root: Path, container_id: str) -> Path | None:
    for rel in (f"system.slice/docker-{container_id}.scope", f"docker/{container_id}"):
        candidate = root / rel
        if candidate.is_dir():
            return candidate
    return None


def _cpu_stat_usec(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def read_v1(root: Path, container_id: str) -> CgroupCounters:
    cpu_dir = _v1_dir(root, "cpuacct", container_id)
    mem_dir = _v1_dir(root, "memory", container_id)
    pids_dir = _v1_dir(root, "pids", container_id)
    cpu_ns = _read_int(cpu_dir / "cpuacct.usage") if cpu_dir else None
    return CgroupCounters(
        cpu_millis=cpu_ns // 1_000_000 if cpu_ns is not None else None,
        memory_bytes=_read_int(mem_dir / "memory.usage_in_bytes") if mem_dir else None,
        process_count=_read_int(pids_dir / "pids.current") if pids_dir else None,
    )


def read_v2(root: Path, container_id: str) -> CgroupCounters:
    base = _v2_dir(root, container_id)
    if base is None:
        return CgroupCounters()
    usec = _cpu_stat_usec(base / "cpu.stat")
    return CgroupCounters(
        cpu_millis=usec // 1000 if usec is not None else None,
        memory_bytes=_read_int(base / "memory.current"),
        process_count=_read_int(base / "pids.current"),
    )


def is_unified(root: Path = CGROUP_ROOT) -> bool:
    """cgroup v2 mounts a ``cgroup.controllers`` file at the root; v1 (even hybrid) does not."""
    return (root / "cgroup.controllers").is_file()


def read_counters(container_id: str, root: Path = CGROUP_ROOT) -> CgroupCounters:
    """Counters of a running container by its full id; all None when its cgroup is gone (exited)."""
    if not _ID_RE.match(container_id):
        raise ValueError("a full 64-hex container id is required")
    return read_v2(root, container_id) if is_unified(root) else read_v1(root, container_id)


def _oom_kill_field(path: Path) -> int | None:
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def oom_kills(container_id: str, root: Path = CGROUP_ROOT) -> int | None:
    """How many processes the kernel's OOM killer killed in the container's memory cgroup; None
    once the cgroup is gone. Docker's own ``OOMKilled`` flag comes from an event that is sometimes
    lost when the container exits at once, so the shim samples this counter while it runs."""
    if not _ID_RE.match(container_id):
        raise ValueError("a full 64-hex container id is required")
    if is_unified(root):
        base = _v2_dir(root, container_id)
        return _oom_kill_field(base / "memory.events") if base else None
    mem_dir = _v1_dir(root, "memory", container_id)
    return _oom_kill_field(mem_dir / "memory.oom_control") if mem_dir else None


class OomListener:
    """cgroup v1: an eventfd registered on ``memory.oom_control`` that the kernel signals at the
    moment of an OOM (while the cgroup still exists) and once more when the cgroup is removed.

    ``wait()`` blocks until one of the two and tells them apart: a pending count of 2 or more, or a
    count of 1 while ``memory.oom_control`` is still readable, is an OOM. This catches the OOM kills
    that Docker's event-based ``OOMKilled`` flag misses when a container dies at once.
    """

    def __init__(self, container_id: str, root: Path = CGROUP_ROOT) -> None:
        if not _ID_RE.match(container_id) or is_unified(root):
            raise ValueError("an OOM listener needs a cgroup v1 memory controller")
        mem_dir = _v1_dir(root, "memory", container_id)
        if mem_dir is None:
            raise FileNotFoundError("the container's memory cgroup does not exist")
        self._control = mem_dir / "memory.oom_control"
        self._efd = os.eventfd(0)
        self._ofd = os.open(self._control, os.O_RDONLY)
        try:
            (mem_dir / "cgroup.event_control").write_text(f"{self._efd} {self._ofd}")
        except OSError:
            self.close()
            raise
        self.already = bool(_oom_kill_field(self._control))

    def wait(self) -> bool:
        """Block until the OOM or the removal notification; True for an OOM."""
        if self.already:
            return True
        count = os.eventfd_read(self._efd)
        return count >= 2 or _oom_kill_field(self._control) is not None

    def close(self) -> None:
        for fd in (self._efd, self._ofd):
            with contextlib.suppress(OSError):
                os.close(fd)
