"""Pure host-policy decisions of the Docker runtime: mounts, network mode, container settings.

Nothing here talks to Docker, so every rule is unit-testable. Callers name mount *aliases*; the host
maps them to directories (``HostSettings.mounts``). Host paths never leave the host: they are in
the bind list given to Docker, never in a result model. This module decides what a mount may be;
``docker_mounts`` opens the source without following symlinks, checks the opened object against
``forbidden_sources`` and pins it, and only the pinned path reaches Docker.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import sys
import sysconfig
from dataclasses import dataclass, field
from typing import Any

from corral.contract.errors import HostConfigurationNeeded, InvalidRequest, PolicyDenial, Unsupported
from corral.contract.models import (
    FilesystemIsolationPolicy,
    IsolatedProcessSpec,
    MountPolicy,
    MountRef,
    NetworkIsolationPolicy,
    NetworkKind,
    ResourceLimits,
)
from corral.contract.vocabulary import MountMode, SymlinkPolicy, TerminalMode
from corral.sandbox.policy import UserRules, deny
from corral.sandbox.userspec import ExecUser, UserTables, exec_user, needs_tables
from corral.settings import REPO_CONFIG, SYSTEM_POLICY, HostSettings

DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
SYSTEM_DIRS = ("/proc", "/sys", "/dev", "/boot")
DOCKER_ROOT = "/var/lib/docker"
"""Docker's default data root; the engine's own (``docker info`` DockerRootDir) is refused as well."""
ENGINE_PATHS = (
    (DOCKER_ROOT, "Docker's data root"),
    ("/var/lib/containerd", "containerd's state"),
    ("/run/containerd", "containerd's state and socket"),
    ("/var/run/containerd", "containerd's state and socket"),
    ("/run/runc", "runc's state"),
    ("/var/run/runc", "runc's state"),
    ("/etc/docker", "the Docker daemon's configuration and keys"),
    ("/etc/containerd", "containerd's configuration"),
    ("/etc/corral", "corral's configuration and policy"),
)
ENGINE_GLOBS = (("/run", "docker*"), ("/var/run", "docker*"), ("/run", "containerd*"))
"""(directory, name pattern): the Docker socket, pid file and state dirs in /run, whatever their name."""
FORBIDDEN_DESTINATIONS = ("/proc", "/sys", "/dev")
SCRATCH = "/tmp"
RLIMIT_NAMES = frozenset(
    {"core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc", "rss"}
    | {"rtprio", "rttime", "sigpending", "stack"}
)
DEFAULT_USER = "65534:65534"
"""The sandbox user when the process names none: ``nobody:nogroup`` by number (no /etc/passwd needed).
Root runs only when a process asks for it explicitly, and then still without any capability."""
IPC_MODE = "private"
CGROUPNS_MODE = "private"
_UNCONFINED = ("seccomp=unconfined", "seccomp:unconfined", "apparmor=unconfined", "apparmor:unconfined")


def within(path: str, root: str) -> bool:
    """``path`` is ``root`` or lies under it (both normalized absolute paths)."""
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root if root == "/" else root + "/")


@dataclass(frozen=True)
class ResolvedMount:
    """A validated bind: what Docker gets (host path) and what a client may see (the ref).

    ``host_path`` is the alias's configured path until ``docker_mounts`` pins it; after that it is
    the pinned path, the only kind of source ever given to Docker."""

    mount_ref: str
    source_alias: str
    host_path: str
    destination: str
    mode: MountMode
    is_file: bool = False
    symlink_root: str | None = None
    """Where symlinks in ``host_path`` may lead (host policy ``symlinks = "within_alias"``); None: nowhere."""

    pinned: bool = False
    """``host_path`` is a pin (``docker_mounts.pin``) that already carries the mount's flags."""

    def bind(self) -> str:
        # A pin is already ro (for a read-only mount), nosuid and nodev (and noexec like its source),
        # and a bind clones those flags. Asking Docker for ``ro`` would make runc remount the bind
        # read-only, and that remount resets the other flags (measured: a noexec source ran a binary).
        # So a pin is handed over as ``rw``: the kernel keeps it as read-only as the pin.
        if self.pinned:
            return f"{self.host_path}:{self.destination}:rw"
        return f"{self.host_path}:{self.destination}:{'ro' if self.mode is MountMode.read_only else 'rw'}"

    def to_ref(self) -> MountRef:
        return self.mount_ref

    def audit(self) -> str:
        kind = "single file" if self.is_file else "whole directory tree"
        return (
            f"mount {self.mount_ref}: alias {self.source_alias!r} ({kind}) "
            f"exposed {self.mode.value} at {self.destination}"
        )


def needs_user_tables(user: str) -> bool:
    """Whether the identity of ``user`` (``USER[:GROUP]``) depends on the image's passwd/group files."""
    return needs_tables(user)


def sandbox_owner(user: str, tables: UserTables | None) -> tuple[int, int] | None:
    """The (uid, gid) a process started as ``user`` gets, resolved the way Docker (runc) does it
    (``corral.sandbox.userspec``). None: Docker would refuse the user (unknown name, unreadable tables)."""
    try:
        who = exec_user(user, tables)
    except InvalidRequest:
        return None
    return who.uid, who.gid


def check_sandbox_user(rules: UserRules, user: str, who: ExecUser) -> None:
    """The host's ``[users]`` rules on the identity ``user`` really gets in the image (``who``):
    uid 0, gid 0 or a supplementary gid 0 is root however it was spelled (``admin`` mapped to 0,
    ``00``, a member of a gid-0 group); a user allowed only by ``allowed_uids`` must resolve into
    a range. Names in ``allowed_users`` are allowed as written (root is still denied)."""
    root = who.root_ids()
    if root and not rules.allow_root:
        # Docker's --group-add cannot take a group away; an explicit group drops the image's ones
        hint = "" if who.uid == 0 or ":" in user else f" (name a non-root group: {user}:GID)"
        deny(
            f"user {user} runs with {', '.join(root)} in this image; root is not allowed on this host{hint}",
            "users.allow_root",
            user=user,
            uid=str(who.uid),
            gid=str(who.gid),
        )
    if not rules.allowed_users and not rules.allowed_uids:
        return
    name = user.split(":")[0]
    if name not in rules.allowed_users and not any(lo <= who.uid <= hi for lo, hi in rules.allowed_uids):
        deny(f"user {name} (uid {who.uid} in this image) is not allowed on this host", "users.allowed", user=user)


def check_destination(destination: str) -> None:
    if destination == "/" or any(within(destination, d) for d in FORBIDDEN_DESTINATIONS):
        raise PolicyDenial("mount destination is not allowed", context={"destination": destination})
    if within(destination, SCRATCH):
        raise PolicyDenial("mount destination would shadow the /tmp scratch", context={"destination": destination})


def forbidden_sources(host: HostSettings, docker_root: str | None = None) -> list[tuple[str, str]]:
    """(path, why) pairs a bind source must neither be, lie under, nor contain: the Docker socket,
    Docker's data root (the engine's own, ``docker_root``, and the default), containerd's and runc's
    state, and corral's own secret, state and configuration directories. Each path is listed as
    written and resolved (``/var/run`` is a symlink to ``/run`` on most hosts)."""
    items = [(s, "the Docker socket") for s in DOCKER_SOCKETS] + list(ENGINE_PATHS)
    if docker_root:
        items.append((docker_root, "Docker's data root"))
    items += [
        (host.secrets_root, "the secret root"),
        (host.secrets_dir, "the host's secrets"),
        (host.state_dir, "corral state"),
    ]
    if host.policy_file:
        items.append((os.path.dirname(os.path.abspath(host.policy_file)), "the host policy"))
    items += corral_install_paths()
    out: list[tuple[str, str]] = []
    for path, why in items:
        for form in (os.path.normpath(path), os.path.realpath(path)):
            if (form, why) not in out:
                out.append((form, why))
    return out


def corral_install_paths() -> list[tuple[str, str]]:
    """What the root worker runs and obeys: its packages, the interpreter's environment and library
    directories, and the configuration directories (the shipped policy is in force when
    ``host.policy_file`` is unset). A writable alias on any of them would let a sandbox rewrite the
    worker's code or the policy that judges it; a read-only one would show it."""
    code_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the corral package
    items = [(code_root, "corral's code")]
    items += [(os.path.join(os.path.dirname(code_root), pkg), "corral's code") for pkg in ("tasks", "workers")]
    paths = sysconfig.get_paths()
    python = [sys.prefix] + [paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")]
    items += [(path, "the worker's Python environment") for path in python]
    items += [(str(config.parent), "corral's configuration") for config in (REPO_CONFIG, SYSTEM_POLICY)]
    return [(path, why) for path, why in items if os.path.isabs(path)]


def check_source(alias: str, real: str, forbidden: list[tuple[str, str]]) -> None:
    """Refuse a bind source (the resolved path of the opened object) that is a system directory,
    a forbidden source, under one, or above one."""
    if real == "/" or not real.startswith("/") or any(within(real, d) for d in SYSTEM_DIRS):
        raise PolicyDenial("mount alias points at a system directory", context={"alias": alias})
    for path, why in forbidden:
        if within(real, path) or within(path, real):
            raise PolicyDenial(f"mount alias would expose {why}", context={"alias": alias})
    for parent, pattern in ENGINE_GLOBS:
        if within(parent, real):
            raise PolicyDenial("mount alias would expose the Docker engine's state", context={"alias": alias})
        if within(real, parent) and fnmatch.fnmatchcase(real[len(parent) + 1 :].split("/")[0], pattern):
            raise PolicyDenial("mount alias would expose the Docker engine's state", context={"alias": alias})


def resolve_mount(mount: MountPolicy, host: HostSettings, symlinks: SymlinkPolicy) -> ResolvedMount:
    """What the host allows for one requested mount; the path itself is judged by ``docker_mounts``
    on the object it opens. The host policy alone decides whether symlinks in the alias path are
    followed: ``deny_escapes`` (the default) and ``follow_within_alias`` both deny escapes, and a
    request never widens the alias's ``symlinks`` setting (on a deny alias it gets deny)."""
    alias = mount.source_alias
    if alias not in host.mounts:
        raise PolicyDenial(f"unknown mount alias {alias!r}", context={"alias": alias})
    if mount.mode is MountMode.writable and alias not in host.writable_mounts:
        raise PolicyDenial(f"mount alias {alias!r} may not be writable", context={"alias": alias})
    configured = host.mounts[alias]
    if not os.path.isabs(configured):
        raise HostConfigurationNeeded("mount alias is not an absolute path", context={"alias": alias})
    check_destination(mount.destination_path)
    root = host.symlink_root(alias)
    return ResolvedMount(
        mount_ref=mount.mount_ref,
        source_alias=alias,
        host_path=os.path.normpath(configured),
        destination=mount.destination_path,
        mode=mount.mode,
        symlink_root=os.path.normpath(root) if root else None,
    )


def resolve_mounts(fs: FilesystemIsolationPolicy, host: HostSettings) -> list[ResolvedMount]:
    return [resolve_mount(m, host, fs.symlink_policy) for m in fs.mounts]


NO_NETWORK = "none"
"""Docker's ``network_mode`` for a sandbox: a network namespace with only ``lo`` and no route."""


def network_mode(policy: NetworkIsolationPolicy) -> str:
    """The ``network_mode`` of a sandbox: ``none`` for every mode that promises no egress (disabled,
    adapter_defined_denied, an empty allowlist, an empty egress rule set).

    Not an internal bridge: a container on a ``--internal`` Docker network still has a default route
    and reaches listeners on the host's 0.0.0.0 through the gateway (verified on Docker 20.10). Only
    what is enforced is accepted: an allowlist with hosts, egress rules, a socket relay or published
    ports would need host-side filtering that this runtime does not have, so they are refused
    (``Unsupported``), never silently widened or narrowed."""
    empty_allowlist = policy.kind is NetworkKind.allowlist and not policy.hosts
    empty_egress = policy.kind is NetworkKind.egress_scoped and not policy.rules
    if policy.kind in (NetworkKind.disabled, NetworkKind.adapter_defined_denied) or empty_allowlist or empty_egress:
        return NO_NETWORK
    raise Unsupported(
        f"network mode {policy.kind.value} with hosts, rules or ports cannot be enforced by the Docker runtime "
        "(only no network at all is)",
        context={"mode": policy.kind.value},
    )


def check_process(process: IsolatedProcessSpec) -> None:
    if process.terminal_mode is TerminalMode.pty:
        raise Unsupported("terminal_mode pty is not supported by the Docker runtime (pipes only)")
    for var in process.env:
        if var.value_ref is not None:
            raise Unsupported("env value_ref is not supported; use secrets.env_secrets", context={"env": var.name})
    unknown = sorted(set(process.posix_rlimits) - RLIMIT_NAMES)
    if unknown:
        raise InvalidRequest("unknown rlimit names", context={"rlimits": ",".join(unknown)})


def env_secret_text(key: str, value: bytes) -> str:
    """An env secret must be UTF-8 without NUL to be passed through Docker's JSON API."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("env secret value is not UTF-8", context={"env": key}) from None
    if "\x00" in text:
        raise InvalidRequest("env secret value contains NUL", context={"env": key})
    return text


@dataclass(frozen=True)
class ContainerPlan:
    """Everything ``containers.create`` needs, decided on the host."""

    name: str
    image: str
    labels: dict[str, str]
    process: IsolatedProcessSpec
    resources: ResourceLimits
    scratch_mb: int
    read_only: bool
    network: str = NO_NETWORK
    """Always ``none`` (``network_mode``); ``check_hardened`` refuses anything else."""
    mounts: list[ResolvedMount] = field(default_factory=list)
    secret_binds: list[tuple[str, str]] = field(default_factory=list)
    """(host file, container destination), always read-only."""
    secret_env: dict[str, str] = field(default_factory=dict)
    image_volumes: list[str] = field(default_factory=list)
    """The image's ``VOLUME`` paths: each is covered by a tmpfs (``volume_tmpfs``)."""


def volume_tmpfs(plan: ContainerPlan, taken: set[str]) -> dict[str, str]:
    """A tmpfs over each ``VOLUME`` of the image. Without it Docker creates an anonymous volume on the
    host disk: writable host storage that no scratch cap bounds and a read-only root does not cover.
    The tmpfs is read-only with a read-only root (the image's files there are hidden, not shown in a
    writable copy), else writable up to the scratch size and charged to the sandbox's memory. A path
    that a mount or secret already covers, or the scratch, is left to that."""
    mode = "ro" if plan.read_only else "rw"
    out: dict[str, str] = {}
    for path in plan.image_volumes:
        path = os.path.normpath("/" + path.lstrip("/"))
        if path != "/" and path not in taken and not within(path, SCRATCH):
            out[path] = f"{mode},nosuid,nodev,size={plan.scratch_mb}m,mode=1777"
    return out


def create_kwargs(plan: ContainerPlan) -> dict[str, Any]:
    """Keyword arguments for docker-py's ``containers.create``, hardened (``check_hardened``): no
    capability, no-new-privileges, Docker's default seccomp profile (no seccomp option is ever
    passed), the non-root default user, a pids limit, no network (``none``: only lo, no route), private
    ipc/pid/uts/cgroup namespaces, no device, no privilege, the root read-only unless asked for."""
    proc = plan.process
    env = [f"{v.name}={v.redacted_value}" for v in proc.env]
    env += [f"{k}={v}" for k, v in sorted(plan.secret_env.items())]
    binds = [m.bind() for m in plan.mounts] + [f"{src}:{dst}:ro" for src, dst in plan.secret_binds]
    memory = f"{plan.resources.memory_mb}m"
    kwargs: dict[str, Any] = {
        "image": plan.image,
        "command": list(proc.argv),
        "name": plan.name,
        "labels": dict(plan.labels),
        "working_dir": proc.cwd,
        "environment": env,
        "read_only": plan.read_only,
        "tmpfs": {
            SCRATCH: f"rw,nosuid,nodev,size={plan.scratch_mb}m,mode=1777",
            **volume_tmpfs(plan, {m.destination for m in plan.mounts} | {dst for _src, dst in plan.secret_binds}),
        },
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "privileged": False,
        "user": proc.user or DEFAULT_USER,
        "ipc_mode": IPC_MODE,
        "cgroupns": CGROUPNS_MODE,
        "devices": [],
        "nano_cpus": int(plan.resources.cpu_quota * 1e9),
        "mem_limit": memory,
        "memswap_limit": memory,
        "pids_limit": plan.resources.process_count,
        "network_mode": plan.network,
        "volumes": binds,
        "stdin_open": proc.stdin_open,
        "tty": False,
        "init": True,
        "auto_remove": False,
        "log_config": {"type": "none"},
        "ulimits": [{"name": k, "soft": v, "hard": v} for k, v in sorted(proc.posix_rlimits.items())],
    }
    return kwargs


def check_hardened(kwargs: dict[str, Any]) -> None:
    """The last gate before ``containers.create``: every hardened default holds, whatever built the
    arguments. A violation is a bug in corral, so it is refused, never passed on to Docker."""
    problems: list[str] = []
    if kwargs.get("cap_drop") != ["ALL"] or kwargs.get("cap_add"):
        problems.append("capabilities")
    if kwargs.get("privileged") is not False:
        problems.append("privileged")
    opts = [str(o).lower() for o in kwargs.get("security_opt") or []]
    if "no-new-privileges" not in opts and "no-new-privileges:true" not in opts:
        problems.append("no-new-privileges")
    if any(o.replace(" ", "") in _UNCONFINED or o.startswith("seccomp") for o in opts):
        problems.append("seccomp (only Docker's default profile is allowed)")
    if not kwargs.get("user"):
        problems.append("user")
    if not isinstance(kwargs.get("pids_limit"), int) or kwargs["pids_limit"] < 1:
        problems.append("pids_limit")
    if kwargs.get("network_mode") != NO_NETWORK:  # no bridge of any kind: see network_mode
        problems.append("network namespace")
    if kwargs.get("ipc_mode") not in ("private", "none"):
        problems.append("ipc namespace")
    for key in ("pid_mode", "uts_mode", "userns_mode"):
        if kwargs.get(key):
            problems.append(key)
    if kwargs.get("cgroupns") not in (None, "private"):
        problems.append("cgroup namespace")
    if kwargs.get("devices") or kwargs.get("device_cgroup_rules") or kwargs.get("device_requests"):
        problems.append("devices")
    for bind in kwargs.get("volumes") or []:
        source, destination = str(bind).split(":")[:2]
        real = os.path.realpath(source)
        for sock in DOCKER_SOCKETS:
            if within(real, sock) or within(sock, real) or within(source, sock) or destination == sock:
                problems.append("the Docker socket")
    if problems:
        raise PolicyDenial(
            "container settings violate the hardened defaults", context={"violations": ",".join(sorted(set(problems)))}
        )


def config_digest(kwargs: dict[str, Any], secret_env_keys: list[str]) -> str:
    """A digest of the container settings, to tell a replay from a changed request. Env secret
    values are replaced by their key first: a hash of a low-entropy secret in a label would leak it."""
    masked = dict(kwargs)
    masked["environment"] = [
        e if e.split("=", 1)[0] not in secret_env_keys else e.split("=", 1)[0] + "=<secret>"
        for e in kwargs.get("environment", [])
    ]
    blob = json.dumps(masked, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]
