"""cgroups for corral's I/O path: a container's counters and OOM kills, and the helpers' own group.

Counters: cpu / memory / pids of a running container read straight from its cgroup. Docker's
``stats(stream=False)`` takes about a second (it samples twice); reading three files takes
microseconds. Both cgroup layouts are supported:

- v1 (cgroupfs driver): ``<root>/{cpuacct,memory,pids}/docker/<id>/...``; with the systemd
  driver ``<root>/<controller>/system.slice/docker-<id>.scope/...``.
- v2 (unified): ``<root>/system.slice/docker-<id>.scope/`` (systemd driver) or ``<root>/docker/<id>/``
  (cgroupfs driver), with ``cpu.stat``, ``memory.current`` and ``pids.current``.

The helpers' group (``join_helper_group``): every I/O shim of the host runs in ONE cgroup,
``<the launching worker's cgroup>/corral-io`` in each of the cpu, cpuacct, memory and pids
hierarchies, with a CPU quota, a memory limit and a pids limit for all shims together. So what the
shims of all sandboxes cost is accounted in one place (``cpuacct.usage``, ``memory.usage_in_bytes``)
and capped: a sandbox that floods its output makes its shim busy, but that shim shares the
helpers' quota and never takes CPU beyond it, whatever the sandbox's own limit. Why not the
sandbox's own cgroup: the shim attaches BEFORE the container (and its cgroup) exists and writes
the exit record AFTER the runtime removed that cgroup (a process left inside makes the removal fail
with EBUSY), and a memory cgroup under OOM pressure from the sandbox would pick its victims among
the shim too. Nested under the worker's cgroup, the helpers stay inside whatever limits the
operator put on corral as a whole (a systemd unit's slice, a container's memory limit).

``root`` is a parameter so the parsing is unit-tested against a fake tree. Standard library only,
and only ``os``: the shim imports this module.
"""

from __future__ import annotations

import os

from corral.io.files import suppress

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs the shim 1.7 MiB
if TYPE_CHECKING:
    PathArg = str | os.PathLike[str]

CGROUP_ROOT = "/sys/fs/cgroup"
HELPER_GROUP = "corral-io"
_HEX = frozenset("0123456789abcdef")


class CgroupCounters:
    """cpu / memory / pids of one container (None: not readable, e.g. the container exited)."""

    __slots__ = ("cpu_millis", "memory_bytes", "process_count")

    def __init__(
        self, cpu_millis: int | None = None, memory_bytes: int | None = None, process_count: int | None = None
    ) -> None:
        self.cpu_millis = cpu_millis
        self.memory_bytes = memory_bytes
        self.process_count = process_count

    def _key(self) -> tuple[int | None, int | None, int | None]:
        return (self.cpu_millis, self.memory_bytes, self.process_count)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CgroupCounters) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "CgroupCounters(cpu_millis={!r}, memory_bytes={!r}, process_count={!r})".format(*self._key())

    @property
    def empty(self) -> bool:
        return self.cpu_millis is None and self.memory_bytes is None and self.process_count is None


def is_container_id(value: object) -> bool:
    """A full container id: 64 lowercase hex digits (nothing else names a cgroup path here)."""
    return isinstance(value, str) and len(value) == 64 and _HEX.issuperset(value)


def _check_id(container_id: str) -> None:
    if not is_container_id(container_id):
        raise ValueError("a full 64-hex container id is required")


def _read_text(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    try:
        return int(text.split()[0]) if text is not None else None
    except (ValueError, IndexError):
        return None


def _field(path: str, name: str) -> int | None:
    """``name value`` lines (``cpu.stat``, ``memory.events``, ``memory.oom_control``)."""
    text = _read_text(path)
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _v1_dir(root: PathArg, controller: str, container_id: str) -> str | None:
    for base in (controller, "cpu,cpuacct" if controller == "cpuacct" else controller):
        for rel in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
            candidate = os.path.join(root, base, rel)
            if os.path.isdir(candidate):
                return candidate
    return None


def _v2_dir(root: PathArg, container_id: str) -> str | None:
    for rel in (f"system.slice/docker-{container_id}.scope", f"docker/{container_id}"):
        candidate = os.path.join(root, rel)
        if os.path.isdir(candidate):
            return candidate
    return None


def read_v1(root: PathArg, container_id: str) -> CgroupCounters:
    cpu_dir = _v1_dir(root, "cpuacct", container_id)
    mem_dir = _v1_dir(root, "memory", container_id)
    pids_dir = _v1_dir(root, "pids", container_id)
    cpu_ns = _read_int(os.path.join(cpu_dir, "cpuacct.usage")) if cpu_dir else None
    return CgroupCounters(
        cpu_millis=cpu_ns // 1_000_000 if cpu_ns is not None else None,
        memory_bytes=_read_int(os.path.join(mem_dir, "memory.usage_in_bytes")) if mem_dir else None,
        process_count=_read_int(os.path.join(pids_dir, "pids.current")) if pids_dir else None,
    )


def read_v2(root: PathArg, container_id: str) -> CgroupCounters:
    base = _v2_dir(root, container_id)
    if base is None:
        return CgroupCounters()
    usec = _field(os.path.join(base, "cpu.stat"), "usage_usec")
    return CgroupCounters(
        cpu_millis=usec // 1000 if usec is not None else None,
        memory_bytes=_read_int(os.path.join(base, "memory.current")),
        process_count=_read_int(os.path.join(base, "pids.current")),
    )


def is_unified(root: PathArg = CGROUP_ROOT) -> bool:
    """cgroup v2 mounts a ``cgroup.controllers`` file at the root; v1 (even hybrid) does not."""
    return os.path.isfile(os.path.join(root, "cgroup.controllers"))


def read_counters(container_id: str, root: PathArg = CGROUP_ROOT) -> CgroupCounters:
    """Counters of a running container by its full id; all None when its cgroup is gone (exited)."""
    _check_id(container_id)
    return read_v2(root, container_id) if is_unified(root) else read_v1(root, container_id)


def lowest_pid(container_id: str, root: PathArg = CGROUP_ROOT) -> int | None:
    """The lowest host pid in the container's cgroup (its init, started first); None when the cgroup
    is gone or holds no process (the container is not running)."""
    _check_id(container_id)
    base = _v2_dir(root, container_id) if is_unified(root) else _v1_dir(root, "pids", container_id)
    text = _read_text(os.path.join(base, "cgroup.procs")) if base else None
    pids = [int(word) for word in (text or "").split() if word.isdigit()]
    return min(pids) if pids else None


def oom_kills(container_id: str, root: PathArg = CGROUP_ROOT) -> int | None:
    """How many processes the kernel's OOM killer killed in the container's memory cgroup; None
    once the cgroup is gone. Docker's own ``OOMKilled`` flag comes from an event that is sometimes
    lost when the container exits at once, so the shim watches this too."""
    _check_id(container_id)
    if is_unified(root):
        base = _v2_dir(root, container_id)
        return _field(os.path.join(base, "memory.events"), "oom_kill") if base else None
    mem_dir = _v1_dir(root, "memory", container_id)
    return _field(os.path.join(mem_dir, "memory.oom_control"), "oom_kill") if mem_dir else None


class OomListener:
    """cgroup v1: an eventfd registered on ``memory.oom_control`` that the kernel signals at the
    moment of an OOM (while the cgroup still exists) and once more when the cgroup is removed.

    ``fd`` goes into the shim's poll set; when it is readable, ``check()`` tells the two apart: a
    pending count of 2 or more, or a count of 1 while ``memory.oom_control`` is still readable, is
    an OOM. This catches the OOM kills that Docker's event-based ``OOMKilled`` flag misses when a
    container dies at once. ``wait()`` blocks for the same answer.
    """

    def __init__(self, container_id: str, root: PathArg = CGROUP_ROOT) -> None:
        if not is_container_id(container_id) or is_unified(root):
            raise ValueError("an OOM listener needs a cgroup v1 memory controller")
        mem_dir = _v1_dir(root, "memory", container_id)
        if mem_dir is None:
            raise FileNotFoundError("the container's memory cgroup does not exist")
        self._control = os.path.join(mem_dir, "memory.oom_control")
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._ofd = -1
        try:
            self._ofd = os.open(self._control, os.O_RDONLY | os.O_CLOEXEC)
            with open(os.path.join(mem_dir, "cgroup.event_control"), "w") as handle:
                handle.write(f"{self.fd} {self._ofd}")
        except OSError:
            self.close()
            raise
        self.already = bool(_field(self._control, "oom_kill"))

    def check(self) -> bool | None:
        """After ``fd`` polled readable: True for an OOM, False for the cgroup's removal, None when
        nothing was pending."""
        try:
            count = os.eventfd_read(self.fd)
        except BlockingIOError:
            return None
        return count >= 2 or _field(self._control, "oom_kill") is not None

    def wait(self) -> bool:
        """Block until the OOM or the removal notification; True for an OOM."""
        import select

        while not self.already:
            select.select([self.fd], [], [])
            seen = self.check()
            if seen is not None:
                return seen
        return True

    def close(self) -> None:
        for fd in (self.fd, self._ofd):
            if fd >= 0:
                with suppress(OSError):
                    os.close(fd)
        self.fd = self._ofd = -1


def memory_events_fd(container_id: str, root: PathArg = CGROUP_ROOT) -> int | None:
    """cgroup v2: an open ``memory.events`` of the container; the kernel flags it POLLPRI on every
    change (an OOM kill among them), so the shim sleeps on it instead of sampling. None on v1 or
    when the cgroup is not there."""
    _check_id(container_id)
    base = _v2_dir(root, container_id) if is_unified(root) else None
    if base is None:
        return None
    try:
        return os.open(os.path.join(base, "memory.events"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# the helpers' group


def own_cgroups(pid: int | str = "self") -> dict[str, str]:
    """``{hierarchy: path}`` from ``/proc/<pid>/cgroup``: v1 hierarchies are named by their
    controllers (``"memory"``, ``"cpu,cpuacct"``), the v2 one by ``""``."""
    out: dict[str, str] = {}
    for line in (_read_text(f"/proc/{pid}/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            out[parts[1]] = parts[2]
    return out


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _limits_v1(controllers: set[str], cpus: float, memory_bytes: int, pids_max: int) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if "memory" in controllers:
        # v1 leaves a migrating process's pages charged where they were allocated unless asked;
        # newer kernels refuse the setting (EINVAL): then only pages allocated after the move count.
        out.append(("memory.move_charge_at_immigrate?", "3"))
    if "cpu" in controllers and cpus > 0:
        out += [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", str(max(int(cpus * 100_000), 1000)))]
    if "memory" in controllers and memory_bytes > 0:
        # v1 leaves a migrating process's pages charged where they were allocated unless asked.
        out.append(("memory.limit_in_bytes", str(memory_bytes)))
    if "pids" in controllers and pids_max > 0:
        out.append(("pids.max", str(pids_max)))
    return out


def helper_group_dirs(name: str = HELPER_GROUP, pid: int | str = "self", root: PathArg = CGROUP_ROOT) -> dict[str, str]:
    """Where ``join_helper_group`` puts a process: ``{hierarchy: directory}`` (the launcher's own
    cgroup in each relevant hierarchy, plus ``name``, unless it already is that group)."""
    out: dict[str, str] = {}
    wanted = {"cpu", "cpuacct", "memory", "pids"}
    for hierarchy, path in own_cgroups(pid).items():
        controllers = set(hierarchy.split(","))
        if hierarchy and not controllers & wanted:
            continue
        if not hierarchy and not is_unified(root):
            continue  # the hybrid layout's empty v2 tree: no controllers there
        base = os.path.join(root, hierarchy) if hierarchy else os.fspath(root)
        rel = path.strip("/")
        if os.path.basename(rel) != name:
            rel = os.path.join(rel, name) if rel else name
        out[hierarchy] = os.path.join(base, rel)
    return out


def join_helper_group(
    cpus: float,
    memory_bytes: int,
    pids_max: int,
    name: str = HELPER_GROUP,
    root: PathArg = CGROUP_ROOT,
) -> list[str]:
    """Move this process into the helpers' group (created, with its limits, when missing) in every
    hierarchy that has cpu, cpuacct, memory or pids; return the directories joined. Raises
    ``OSError`` when the group cannot be made or joined (no permission, a v2 parent that holds
    processes itself): the caller logs it and runs unconfined rather than not at all."""
    joined: list[str] = []
    me = str(os.getpid())
    for hierarchy, path in sorted(helper_group_dirs(name, "self", root).items()):
        with suppress(FileExistsError):
            os.mkdir(path, 0o755)
        if hierarchy:
            limits = _limits_v1(set(hierarchy.split(",")), cpus, memory_bytes, pids_max)
        else:
            parent = os.path.dirname(path)
            _write(os.path.join(parent, "cgroup.subtree_control"), "+cpu +memory +pids")
            limits = [
                ("cpu.max", f"{max(int(cpus * 100_000), 1000)} 100000" if cpus > 0 else "max 100000"),
                ("memory.max", str(memory_bytes) if memory_bytes > 0 else "max"),
                ("pids.max", str(pids_max) if pids_max > 0 else "max"),
            ]
        for file, value in limits:
            name, optional = file.rstrip("?"), file.endswith("?")
            current = (_read_text(os.path.join(path, name)) or "").strip()
            if current != value:
                try:
                    _write(os.path.join(path, name), value)
                except OSError:
                    if not optional:
                        raise
        _write(os.path.join(path, "cgroup.procs"), me)
        joined.append(path)
    return joined
