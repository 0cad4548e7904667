"""The pinned mount source: an alias path opened without following symlinks and bind-mounted where
nobody else can change it, so Docker mounts exactly the directory (or file) that was checked.

Checking a path and then handing the same path to Docker is a race: Docker and runc resolve it again
when the container starts, and whoever can write to a directory on the path (another sandbox with a
writable alias, a user of the host) can swap a component for a symlink in between. The fix is
kubelet's for CVE-2017-1002101: never hand over a path that can change.

1. ``open_source`` walks the alias path from ``/`` one component at a time with
   ``O_PATH | O_NOFOLLOW`` (``O_DIRECTORY`` for every directory on the way), so a symlink anywhere
   in the path refuses the mount. An alias whose host policy says ``symlinks = "within_alias"`` walks
   its ``root`` that way, opens the rest with symlinks followed, and is refused unless the object it
   opened lies within the root, judged on the opened descriptor (``/proc/self/fd/N``), never by
   walking the path again.
2. The opened object must be a directory or a regular file, and its resolved path (the descriptor's
   ``/proc/self/fd/N`` link) must pass ``docker_policy.check_source``: no system directory, Docker or
   containerd state, socket, corral directory, or anything above one. Paths alone miss aliasing by
   bind mounts (a secrets dir that is a bind of ``/disk/secrets``; an alias on ``/disk`` holds it),
   so ``check_identity`` also compares both by where they lie in their *filesystem*: the device and
   the path below that filesystem's root, read from ``mountinfo`` (``fs_location``).
3. ``pin`` bind-mounts ``/proc/self/fd/N`` (mount(2) with ``MS_BIND``, not recursive, so mounts
   below the alias are not exposed) onto ``<state_dir>/mounts/<session slug>/<pin name>`` (an empty
   file for a single-file alias), makes it private, and remounts it ``nosuid,nodev`` (plus ``ro``
   for a read-only mount, ``noexec`` when the source has it). Docker gets that path. Swapping the
   alias path afterwards changes nothing: the pin shows the object that was opened and checked.
4. ``unpin_session`` (cleanup, and through it the reconciler, which finds session pin directories by
   their labels file) detaches every pin of a session and removes the directory. It never deletes
   recursively: a pin still mounted is reported, never descended into.

Pinning needs root (mount(2)); a worker that is not root refuses every mount with
``HostConfigurationNeeded`` (the capability report says so). The worker must share the host's
mount namespace with dockerd (no ``PrivateTmp``/``ProtectSystem`` in its unit), or Docker cannot
see the pins. A replay finds its pin mounted (``mountinfo``) and reuses it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
from dataclasses import replace
from functools import lru_cache
from pathlib import Path

from corral.contract.errors import HostConfigurationNeeded, PolicyDenial
from corral.contract.refs import slug
from corral.contract.vocabulary import MountMode
from corral.io.spool import LABELS_FILE, read_json, write_json
from corral.runtimes.docker.policy import ResolvedMount, check_source, within
from corral.settings import HostSettings

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2
LOCK_FILE = ".lock"
MOUNTINFO = "/proc/self/mountinfo"
_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LAST = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


def mounts_root(host: HostSettings) -> Path:
    return Path(host.state_dir) / "mounts"


def pin_dir(host: HostSettings, s: str) -> Path:
    return mounts_root(host) / s


def pin_name(mount: ResolvedMount) -> str:
    """The pin's file name: a different alias or mode under the same mount_ref never reuses a pin."""
    return slug(f"{mount.mount_ref}\0{mount.source_alias}\0{mount.mode.value}")


def require_root() -> None:
    if os.geteuid() != 0:
        raise HostConfigurationNeeded(
            "mounts need a root worker: each mount source is pinned with a bind mount, which only root can make"
        )


# -- opening ------------------------------------------------------------------------------------------


def fd_path(fd: int) -> str:
    """Where the opened object is now, as the kernel names it."""
    return os.readlink(f"/proc/self/fd/{fd}")


def _symlink_denial(alias: str) -> PolicyDenial:
    return PolicyDenial(f"mount alias {alias!r} resolves through a symlink", context={"alias": alias})


def _walk(path: str, alias: str) -> int:
    """An ``O_PATH`` descriptor of ``path``, opened from ``/`` component by component without
    following any symlink. The caller closes it."""
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", _DIR)
    try:
        for i, part in enumerate(parts):
            if part in (".", ".."):
                raise HostConfigurationNeeded("mount alias path is not normalized", context={"alias": alias})
            try:
                child = os.open(part, _LAST if i == len(parts) - 1 else _DIR, dir_fd=fd)
            except FileNotFoundError:
                raise HostConfigurationNeeded("mount alias source does not exist", context={"alias": alias}) from None
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                try:
                    link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                except FileNotFoundError:  # it changed under us: whatever it was, it is not usable
                    link = False
                if link:
                    raise _symlink_denial(alias) from None
                raise HostConfigurationNeeded(
                    "a component of the mount alias path is not a directory", context={"alias": alias}
                ) from None
            os.close(fd)
            fd = child
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise _symlink_denial(alias)
        return fd
    except BaseException:
        os.close(fd)
        raise


def open_source(mount: ResolvedMount, forbidden: list[tuple[str, str]]) -> int:
    """The alias's source, opened (``O_PATH``) per the host's symlink rule; the caller closes it.
    The configured path is judged as written first (a forbidden place is refused even while it
    does not exist); ``verify`` then judges what was really opened."""
    alias = mount.source_alias
    check_source(alias, mount.host_path, forbidden)
    if mount.symlink_root is None:
        return _walk(mount.host_path, alias)
    root = mount.symlink_root
    if not within(mount.host_path, root):
        raise HostConfigurationNeeded("mount alias path is not within its root", context={"alias": alias})
    root_fd = _walk(root, alias)
    try:
        if not stat.S_ISDIR(os.fstat(root_fd).st_mode):
            raise HostConfigurationNeeded("mount alias root is not a directory", context={"alias": alias})
        rest = os.path.relpath(mount.host_path, root)
        try:
            fd = os.dup(root_fd) if rest == "." else os.open(rest, os.O_PATH | os.O_CLOEXEC, dir_fd=root_fd)
        except FileNotFoundError:
            raise HostConfigurationNeeded("mount alias source does not exist", context={"alias": alias}) from None
        except OSError as exc:
            raise HostConfigurationNeeded(
                f"mount alias source cannot be opened ({errno.errorcode.get(exc.errno or 0, 'error')})",
                context={"alias": alias},
            ) from None
        try:
            if not within(fd_path(fd), fd_path(root_fd)):
                raise PolicyDenial(
                    f"mount alias {alias!r} resolves through a symlink out of its root", context={"alias": alias}
                )
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(root_fd)


def verify(fd: int, mount: ResolvedMount, forbidden: list[tuple[str, str]]) -> ResolvedMount:
    """Check the opened object: a directory or regular file, at an allowed place. Returns the mount
    with ``is_file`` set."""
    alias = mount.source_alias
    real = fd_path(fd)
    if real.endswith(" (deleted)"):
        raise HostConfigurationNeeded("mount alias source was removed", context={"alias": alias})
    check_source(alias, real, forbidden)
    check_identity(alias, real, forbidden)
    mode = os.fstat(fd).st_mode
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        raise PolicyDenial(f"mount alias {alias!r} is neither a directory nor a regular file", context={"alias": alias})
    return replace(mount, is_file=stat.S_ISREG(mode))


def check(mount: ResolvedMount, forbidden: list[tuple[str, str]]) -> ResolvedMount:
    """Open, check and close (``resolve_mounts``: the plan, no pin yet)."""
    fd = open_source(mount, forbidden)
    try:
        return verify(fd, mount, forbidden)
    finally:
        os.close(fd)


# -- pinning ------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source is not None else None
    if _libc().mount(src, target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def _umount(target: str) -> None:
    if _libc().umount2(target.encode(), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), target)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(under: str, mountinfo: str = MOUNTINFO) -> dict[str, str]:
    """Mount points at or below ``under`` -> their per-mount options (``ro,nosuid,...``)."""
    found: dict[str, str] = {}
    try:
        with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
            for line in handle:
                fields = line.split(" ")
                if len(fields) > 5:
                    point = _unescape(fields[4])
                    if within(point, under):
                        found[point] = fields[5]
    except FileNotFoundError:
        pass
    return found


def _mount_table(mountinfo: str = MOUNTINFO) -> list[tuple[str, str, str]]:
    """(mount point, device, root of the mount within its filesystem), in mountinfo order."""
    table: list[tuple[str, str, str]] = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
        for line in handle:
            fields = line.split(" ")
            if len(fields) > 4:
                table.append((_unescape(fields[4]), fields[2], _unescape(fields[3])))
    return table


def fs_location(path: str, table: list[tuple[str, str, str]]) -> tuple[str, str] | None:
    """Where ``path`` (resolved, absolute) lies in its filesystem: (device, path below the
    filesystem's root). Two paths that reach the same directory through bind mounts get the same
    answer. The deepest mount point above the path wins; among equals the last (it is on top)."""
    best: tuple[str, str, str] | None = None
    for point, device, root in table:
        if within(path, point) and (best is None or len(point) >= len(best[0])):
            best = (point, device, root)
    if best is None:
        return None
    point, device, root = best
    below = os.path.relpath(path, point)
    return device, os.path.normpath(os.path.join(root, below)) if below != "." else root


def check_identity(alias: str, real: str, forbidden: list[tuple[str, str]]) -> None:
    """``check_source`` again, on filesystem locations instead of paths: a forbidden directory that
    is a bind of a directory under the alias (or above it) is refused like its path would be."""
    try:
        table = _mount_table()
    except OSError:
        raise HostConfigurationNeeded("cannot read the mount table", context={"alias": alias}) from None
    source = fs_location(real, table)
    if source is None:
        return
    for path, why in forbidden:
        if not os.path.exists(path):
            continue
        place = fs_location(os.path.realpath(path), table)
        if place is not None and place[0] == source[0] and (within(place[1], source[1]) or within(source[1], place[1])):
            raise PolicyDenial(f"mount alias would expose {why}", context={"alias": alias})


def _pin_flags(fd: int, read_only: bool) -> int:
    flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV
    source = os.fstatvfs(fd).f_flag
    if read_only or source & os.ST_RDONLY:
        flags |= MS_RDONLY
    if source & os.ST_NOEXEC:  # a remount sets every per-mount flag: keep the source's noexec
        flags |= MS_NOEXEC
    return flags


def _pin_one(fd: int, mount: ResolvedMount, target: Path) -> None:
    read_only = mount.mode is MountMode.read_only
    options = mount_points(str(target)).get(str(target))
    if options is not None and (not read_only or "ro" in options.split(",")):
        return  # a replay: this pin was made (and checked) before
    if options is not None:  # mounted, but writable where read-only is wanted: make it again
        _umount(str(target))
    if mount.is_file:
        if not target.is_file() or target.is_symlink():
            target.unlink(missing_ok=True)
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    elif not target.is_dir() or target.is_symlink():
        target.unlink(missing_ok=True)
        target.mkdir(mode=0o700)
    _mount(f"/proc/self/fd/{fd}", str(target), MS_BIND)
    try:
        _mount(None, str(target), MS_PRIVATE)
        _mount(None, str(target), _pin_flags(fd, read_only))
    except BaseException:
        _umount(str(target))
        raise


def pin(
    host: HostSettings, s: str, labels: dict[str, str], mount: ResolvedMount, forbidden: list[tuple[str, str]]
) -> ResolvedMount:
    """Open, check and pin one mount; the returned mount's ``host_path`` is the pin."""
    require_root()
    directory = pin_dir(host, s)
    _ensure_dir(directory, labels)
    fd = open_source(mount, forbidden)
    try:
        checked = verify(fd, mount, forbidden)
        target = directory / pin_name(checked)
        with _locked(directory):
            try:
                _pin_one(fd, checked, target)
            except OSError as exc:
                raise HostConfigurationNeeded(
                    f"cannot pin the mount source ({errno.errorcode.get(exc.errno or 0, 'error')})",
                    context={"alias": mount.source_alias},
                ) from None
    finally:
        os.close(fd)
    return replace(checked, host_path=str(target), pinned=True)


def pin_all(
    host: HostSettings, s: str, labels: dict[str, str], mounts: list[ResolvedMount], forbidden: list[tuple[str, str]]
) -> list[ResolvedMount]:
    return [pin(host, s, labels, m, forbidden) for m in mounts]


def _ensure_dir(directory: Path, labels: dict[str, str]) -> None:
    """The session's pin directory (0700 up from ``mounts/``) with its labels file, written before
    any pin exists so the reconciler can always attribute a pin to its session."""
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(directory.parent, 0o700)
    directory.mkdir(mode=0o700, exist_ok=True)
    if read_json(directory / LABELS_FILE) != labels:
        write_json(directory / LABELS_FILE, labels)


class _locked:
    """An exclusive flock on the session's pin directory: two deliveries never stack two pins."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


# -- unpinning ----------------------------------------------------------------------------------------


def unpin_session(host: HostSettings, s: str) -> list[str]:
    """Detach and remove every pin of a session, then its directory. Never raises; returns what
    failed. Nothing is removed recursively: a pin that stays mounted is reported, not entered."""
    directory = pin_dir(host, s)
    if not directory.is_dir() or directory.is_symlink():
        return []
    failures: list[str] = []
    with _locked(directory):
        for child in sorted(directory.iterdir()):
            if child.name in (LOCK_FILE, LABELS_FILE):
                continue
            failures += _unpin(child)
        for name in (LABELS_FILE, LOCK_FILE):
            (directory / name).unlink(missing_ok=True)
    try:
        directory.rmdir()
    except FileNotFoundError:
        pass
    except OSError as exc:
        failures.append(f"pin dir {s} ({type(exc).__name__})")
    return failures


def _unpin(path: Path) -> list[str]:
    for _ in range(16):  # stacked pins (should never happen) come off one at a time
        if str(path) not in mount_points(str(path)):
            break
        try:
            _umount(str(path))
        except OSError as exc:
            return [f"pinned mount {path.name} ({errno.errorcode.get(exc.errno or 0, 'error')})"]
    else:
        return [f"pinned mount {path.name} (still mounted)"]
    try:
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        else:
            path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        return [f"pin {path.name} ({type(exc).__name__})"]
    return []


def pinned_mounts(host: HostSettings) -> list[str]:
    """Every mount point under this host's pin directory (what tests count as leaks)."""
    return sorted(mount_points(str(mounts_root(host))))
