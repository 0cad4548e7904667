"""The Docker runtime's capability report: what it enforces, what it does not, and host health.

Honest by construction: a capability is listed only when the adapter enforces it (and the
integration tests prove it); everything else is in ``unsupported_requirements`` or, when it works
with a caveat, in ``weaker_features``. Capability matching fails closed on this report.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from typing import Any

from corral.contract.models import (
    DataResidencyKind,
    DataResidencyRequirement,
    HealthState,
    IsolationCapabilityReport,
    IsolationCapabilitySet,
    IsolationRuntimeHealth,
    IsolationTrustRequirement,
    PlatformReport,
)
from corral.contract.refs import slug
from corral.contract.vocabulary import (
    AuditabilityRequirement,
    CleanupGuaranteeRequirement,
    IsolationCapability,
    IsolationClass,
    IsolationRuntimeKind,
    LocalityRequirement,
    SecretIsolationRequirement,
    TenantBoundaryRequirement,
)
from corral.runtimes.docker.policy import within
from corral.settings import HostSettings

ADAPTER_VERSION = "0.1.0"
CAPABILITIES = [
    IsolationCapability.read_only_root,
    IsolationCapability.writable_layer,
    IsolationCapability.mount_read_only_enforcement,
    IsolationCapability.no_network_guarantee,
    IsolationCapability.secret_mount,
    IsolationCapability.secret_isolation,
    IsolationCapability.secret_redaction,
    IsolationCapability.process_timeout,
    IsolationCapability.process_signal,
    IsolationCapability.process_rlimits,
    IsolationCapability.io_redaction,
    IsolationCapability.process_stats,
    IsolationCapability.cleanup,
    IsolationCapability.detach,
    IsolationCapability.reclaim,
]
UNSUPPORTED = [
    "capability:egress_allowlist",
    "capability:content_ref_io",
    "capability:audit_log",
    "capability:single_file_mount_expansion_audit",
    "network:allowlist with hosts (not enforced by the host: refused; an empty allowlist runs with no network at all)",
    "network:egress_scoped with rules (refused; with no rules it runs with no network at all)",
    "network:socket_relay",
    "network:exposed_ports",
    "terminal_mode:pty",
    "env:value_ref",
    "image:pull (local images only)",
]
WEAKER = [
    "env_secrets: the value is in the container's configuration, visible to host admins through docker inspect "
    "(and to every process of the sandbox); file secrets (secret_mounts) are not",
    "secret_redaction: exact values always; for values of 4+ bytes also base64 (std/urlsafe, padded or not, and "
    "inside longer base64 except one mixed character per edge), URL, hex and JSON-escaped forms, across frame "
    "boundaries; not line-wrapped base64/hex, other transformations, or a value split between stdout and stderr",
    "io spool cap: keeps the head of a stream only (no tail)",
    "io spool: output is kept unredacted on the host (state_dir) until cleanup; frames are redacted when read",
]
NON_ROOT_WORKER = (
    "secret files: 0444 (readable by every user in the sandbox) for any process user other than the worker's "
    "own uid: the worker is not root and cannot chown them"
)
NON_ROOT_MOUNTS = (
    "mounts: every mount alias is refused (host_configuration_needed): the worker is not root and cannot pin "
    "mount sources with bind mounts"
)
HARDENING = [
    "cap_drop:ALL - no capability, none ever added (an explicitly requested root user has none either)",
    "no_new_privileges - setuid binaries and file capabilities grant nothing",
    "read_only_root - by default; a writable layer only when the environment asks for root=writable_layer",
    "non_root_user:65534:65534 - unless the process names a user; root only when the host policy allows it",
    "pids_limit - resources.process_count on every container",
    "privileged:never",
    "namespaces:private - network none in every mode without egress (only lo, no route; never a bridge), "
    "ipc private, pid/uts private, cgroup private; never the host's, never userns=host",
    "root_by_any_name:denied - the user is resolved in the image as Docker does; uid 0, gid 0 or a "
    "supplementary gid 0 (a name mapped to 0, 00, a member of a gid-0 group) is refused unless users.allow_root",
    "devices:none - only the default /dev nodes; no device is added, no device cgroup rule",
    "docker_socket:never - denied as a mount source (or anything containing it) and as a destination",
    "mount_sources:pinned - each alias path is opened without following symlinks, checked where it really is "
    "(never Docker's or containerd's state, a socket, corral's own directories or anything above them) and "
    "bind-mounted under the state dir; Docker mounts that pin, so swapping the path for a symlink changes nothing",
]
SECCOMP_DEFAULT = "seccomp:docker-default - Docker's default profile; seccomp=unconfined is never passed"
_DEFAULT_SECCOMP_PROFILES = ("default", "builtin")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}
TMPFS_TYPES = ("tmpfs", "ramfs")


def _nearest_existing(path: str) -> str:
    current = os.path.realpath(path)
    while not os.path.exists(current) and current != "/":
        current = os.path.dirname(current)
    return current


def fs_type(path: str, mounts_file: str = "/proc/mounts") -> str | None:
    """The filesystem type of the mount holding ``path`` (or its nearest existing ancestor)."""
    target = _nearest_existing(path)
    best, fstype = "", None
    try:
        with open(mounts_file) as handle:
            for line in handle:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                if within(target, point) and len(point) >= len(best):
                    best, fstype = point, fields[2]
    except OSError:
        return None
    return fstype


def host_problems(host: HostSettings) -> list[str]:
    """Degradations that still let work run, but weaker than the report promises."""
    problems = []
    kind = fs_type(host.secrets_root)
    if kind not in TMPFS_TYPES:
        consequence = (
            "file secrets are written anyway (allow_secrets_off_tmpfs) and could reach a disk"
            if host.allow_secrets_off_tmpfs
            else "file secrets are refused"
        )
        problems.append(f"secrets_root is not on tmpfs (found {kind or 'unknown'}): {consequence}")
    if not os.access(_nearest_existing(host.state_dir), os.W_OK):
        problems.append("state_dir is not writable: no spool for process output")
    return problems


ENGINE_INFO_TTL_S = 5.0
"""How long an answer of the engine's ``info`` stands for it. Every ``prepare_session`` matches the
job against the capability report, and ``info`` is one of the engine's dearest calls (it counts
containers and images): asked per session, it was two Docker calls and a few ms of the daemon's CPU
per launch. What it reports (version, OS, security options) changes only with a daemon restart;
an engine that stopped answering is asked again at once, and its failure is never kept."""


class EngineInfo:
    """The engine's ``info`` (after a ``ping``), kept ``ttl_s`` seconds while the engine answers."""

    def __init__(
        self,
        client_getter: Callable[[], Any],
        ttl_s: float = ENGINE_INFO_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client_getter = client_getter
        self._ttl_s = ttl_s
        self._clock = clock
        self._kept: tuple[float, dict[str, Any]] | None = None

    def __call__(self) -> tuple[dict[str, Any] | None, str | None]:
        now = self._clock()
        if self._kept is not None and now - self._kept[0] < self._ttl_s:
            return self._kept[1], None
        try:
            client = self._client_getter()
            client.ping()
            info = dict(client.info())
        except Exception as exc:
            self._kept = None
            return None, f"docker engine unreachable ({type(exc).__name__})"
        self._kept = (now, info)
        return info, None


def security_options(info: dict[str, Any] | None) -> dict[str, dict[str, str]]:
    """The engine's ``SecurityOptions`` (``name=seccomp,profile=default``) as ``{name: {key: value}}``."""
    out: dict[str, dict[str, str]] = {}
    for item in (info or {}).get("SecurityOptions") or []:
        fields = dict(part.split("=", 1) for part in str(item).split(",") if "=" in part)
        name = fields.pop("name", "")
        if name:
            out[name] = fields
    return out


def engine_problems(info: dict[str, Any]) -> list[str]:
    """Engine settings under which a hardened default or a secret file would not hold."""
    options = security_options(info)
    problems = []
    seccomp = options.get("seccomp")
    if seccomp is None:
        problems.append("the engine has no seccomp support: Docker's default seccomp profile is not applied")
    elif seccomp.get("profile") not in _DEFAULT_SECCOMP_PROFILES:
        problems.append(f"the engine's default seccomp profile is {seccomp.get('profile')!r}, not Docker's default")
    if "userns" in options:
        problems.append("the engine remaps users (userns-remap): secret file ownership would be wrong")
    if "rootless" in options:
        problems.append("the engine is rootless: secret file ownership would be wrong")
    return problems


def hardening(info: dict[str, Any] | None) -> list[str]:
    """What is enforced on every container of this host; seccomp only when the engine applies the default."""
    items = list(HARDENING)
    seccomp = security_options(info).get("seccomp")
    if seccomp is not None and seccomp.get("profile") in _DEFAULT_SECCOMP_PROFILES:
        items.insert(2, SECCOMP_DEFAULT)
    if "apparmor" in security_options(info):
        items.append("apparmor:docker-default - the engine's default AppArmor profile")
    return items


def _health(
    info: dict[str, Any] | None, engine_error: str | None, host: HostSettings, extra: list[str] | None = None
) -> IsolationRuntimeHealth:
    if info is None:
        # upstream's unsupported_host carries only its missing prerequisites: the engine's error goes there
        missing = f"docker engine ({engine_error})" if engine_error else "docker engine"
        return IsolationRuntimeHealth(kind=HealthState.unsupported_host, missing_prerequisites=[missing])
    problems = host_problems(host) + engine_problems(info) + list(extra or [])
    if problems:
        return IsolationRuntimeHealth(kind=HealthState.degraded, reason="; ".join(problems))
    return IsolationRuntimeHealth()


def weaker(host: HostSettings, info: dict[str, Any] | None) -> list[str]:
    items = list(WEAKER)
    if os.geteuid() != 0:
        items += [NON_ROOT_WORKER, NON_ROOT_MOUNTS]
    if "apparmor" not in security_options(info):
        items.append("apparmor: not enabled on this host (seccomp, no capabilities and no-new-privileges still apply)")
    if host.allow_secrets_off_tmpfs and fs_type(host.secrets_root) not in TMPFS_TYPES:
        items.append("secret files: written to a disk-backed secrets_root (allow_secrets_off_tmpfs, tests only)")
    return items


def report(
    runtime_ref: str,
    host_id: str,
    host: HostSettings,
    engine: Callable[[], tuple[dict[str, Any] | None, str | None]],
    providers_problem: str | None = None,
) -> IsolationCapabilityReport:
    info, error = engine()
    arch = str((info or {}).get("Architecture") or platform.machine())
    engine_version = (info or {}).get("ServerVersion", "unknown")
    return IsolationCapabilityReport(
        report_ref=f"report-docker-{slug(host_id)}",
        adapter_ref=runtime_ref,
        adapter_kind=IsolationRuntimeKind.container,
        adapter_version=f"{ADAPTER_VERSION} (engine {engine_version})",
        health=_health(info, error, host, [providers_problem] if providers_problem else None),
        supported_classes=[IsolationClass.container],
        platform=PlatformReport(
            platform=f"docker-{(info or {}).get('OSType') or platform.system().lower()!s}",
            os=str((info or {}).get("OSType") or platform.system().lower()),
            cpu_architecture=_ARCH.get(arch, arch),
            emulation_supported=False,
        ),
        capabilities=IsolationCapabilitySet(capabilities=list(CAPABILITIES)),
        trust=IsolationTrustRequirement(
            locality=LocalityRequirement.local,
            tenancy=TenantBoundaryRequirement.shared_allowed,
            auditability=AuditabilityRequirement.best_effort,
            cleanup=CleanupGuaranteeRequirement.required,
            data_residency=DataResidencyRequirement(kind=DataResidencyKind.local_only),
            secret_isolation=SecretIsolationRequirement.best_effort,
        ),
        unsupported_requirements=list(UNSUPPORTED),
        weaker_features=weaker(host, info),
        hardening=hardening(info) if info is not None else [],
    )
