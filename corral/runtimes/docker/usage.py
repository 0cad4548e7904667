"""Filesystem and network counters of a running sandbox, for ``collect_stats`` (upstream's
``ProcessStatsSnapshot.filesystem_bytes`` / ``network_bytes``, collected by its default
``ProcessStatsPolicy``). Docker's ``stats(stream=False)`` takes about a second; these take microseconds
(a few small file reads), plus one engine call for a sandbox whose root is writable.

- **filesystem_bytes**: what the sandbox has written that occupies the host, without its bind mounts
  (those are the host's own directories): its tmpfs mounts (the scratch dir, the tmpfs over each image
  ``VOLUME``, ``/dev/shm``), read as the ``shmem`` of its memory cgroup (tmpfs pages are charged to the
  cgroup of the process that wrote them; SysV/POSIX shared memory is counted too), plus, only when the
  root is writable, the size of its writable layer (Docker's ``SizeRw``; a read-only root has none).
  No path inside the sandbox is resolved: nothing it controls (a symlink) can point the reader elsewhere.
- **network_bytes**: bytes received plus bytes sent on every interface of the sandbox's network
  namespace (``/proc/<pid>/net/dev`` of its init process). With ``network_mode: none`` that is the
  loopback only, where every byte counts twice (sent, then received).

Both are None when unknown: the process is not running (its cgroup and namespace are gone, like the
cpu and memory counters), or the host does not expose them.
"""

from __future__ import annotations

import os
from typing import Any

from corral.io.cgroup import CGROUP_ROOT, is_container_id, is_unified

_PathArg = str | os.PathLike[str]


def network_bytes(pid: int, proc_root: _PathArg = "/proc") -> int | None:
    """Received + sent bytes over every interface of ``pid``'s network namespace; None when unreadable."""
    if pid <= 0:
        return None
    try:
        with open(os.path.join(proc_root, str(pid), "net", "dev")) as handle:
            lines = handle.read().splitlines()[2:]  # two header lines
    except OSError:
        return None
    total = 0
    for line in lines:
        _name, sep, counters = line.partition(":")
        fields = counters.split()
        if not sep or len(fields) < 9:
            return None
        try:
            total += int(fields[0]) + int(fields[8])  # receive bytes, transmit bytes
        except ValueError:
            return None
    return total


def _memory_dir(container_id: str, root: _PathArg) -> str | None:
    if is_unified(root):
        candidates = [f"system.slice/docker-{container_id}.scope", f"docker/{container_id}"]
    else:
        candidates = [f"memory/docker/{container_id}", f"memory/system.slice/docker-{container_id}.scope"]
    for rel in candidates:
        path = os.path.join(root, rel)
        if os.path.isdir(path):
            return path
    return None


def tmpfs_bytes(container_id: str, root: _PathArg = CGROUP_ROOT) -> int | None:
    """The ``shmem`` of the container's memory cgroup (its tmpfs contents); None once it is gone."""
    if not is_container_id(container_id):
        raise ValueError("a container id is 64 hex digits")
    base = _memory_dir(container_id, root)
    if base is None:
        return None
    try:
        with open(os.path.join(base, "memory.stat")) as handle:
            text = handle.read()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "shmem":  # v1 and v2 alike: this cgroup's own (the container has no child cgroups)
            try:
                return int(value)
            except ValueError:
                return None
    return None


def writable_layer_bytes(api: Any, container_id: str) -> int | None:
    """Docker's ``SizeRw`` of the container (the engine sums its writable layer's files)."""
    found = api.containers(all=True, size=True, filters={"id": container_id})
    for entry in found:
        if str(entry.get("Id", "")) == container_id:
            size = entry.get("SizeRw")
            return int(size) if isinstance(size, int) else None
    return None


def usage(container: Any, api: Any) -> tuple[int | None, int | None]:
    """``(filesystem_bytes, network_bytes)`` of a running container (its ``attrs`` freshly reloaded)."""
    state = container.attrs.get("State") or {}
    if not state.get("Running"):
        return None, None
    network = network_bytes(int(state.get("Pid") or 0))
    filesystem = tmpfs_bytes(container.id)
    if filesystem is not None and not (container.attrs.get("HostConfig") or {}).get("ReadonlyRootfs"):
        layer = writable_layer_bytes(api, container.id)
        filesystem = None if layer is None else filesystem + layer
    return filesystem, network
