"""The Docker runtime's capability report: what it enforces, what it does not, and host health.

Honest by construction: a capability is listed only when the adapter enforces it (and the
integration tests prove it); everything else is in ``unsupported_requirements`` or, when it works
with a caveat, in ``weaker_features``. Capability matching fails closed on this report.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from typing import Any

from corral.models import (
    Capability,
    Health,
    HealthState,
    IsolationCapabilityReport,
    IsolationClass,
    Level,
    Locality,
    Platform,
    Tenancy,
    TrustVector,
)
from corral.refs import slug
from corral.runtimes.docker_policy import within
from corral.settings import HostSettings

ADAPTER_VERSION = "0.1.0"
CAPABILITIES = [
    Capability.read_only_root,
    Capability.writable_layer,
    Capability.mount_read_only_enforcement,
    Capability.no_network_guarantee,
    Capability.secret_mount,
    Capability.secret_isolation,
    Capability.secret_redaction,
    Capability.process_timeout,
    Capability.process_signal,
    Capability.process_rlimits,
    Capability.io_redaction,
    Capability.process_stats,
    Capability.cleanup,
    Capability.detach,
    Capability.reclaim,
]
UNSUPPORTED = [
    "capability:egress_allowlist",
    "capability:content_ref_io",
    "capability:audit_log",
    "capability:single_file_mount_expansion_audit",
    "network:allowlist with hosts (only an empty allowlist, i.e. no egress, is enforced)",
    "network:egress_scoped with rules",
    "network:socket_relay",
    "network:exposed_ports",
    "terminal_mode:pty",
    "env:value_ref",
    "image:pull (local images only)",
]
WEAKER = [
    "env_secrets: visible to host admins via docker inspect",
    "secret_redaction: basic - exact values only; not encodings, not values split across frames",
    "io spool cap: keeps the head of a stream only (no tail)",
    "io spool: output is kept unredacted on the host (state_dir) until cleanup; frames are redacted when read",
    "secret files: readable by every user in the container when the process user is a name, not a uid",
]
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}
_TMPFS = ("tmpfs", "ramfs")


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
    if kind not in _TMPFS:
        problems.append(f"secrets_root is not on tmpfs (found {kind or 'unknown'}): secrets could reach a disk")
    if not os.access(_nearest_existing(host.state_dir), os.W_OK):
        problems.append("state_dir is not writable: no spool for process output")
    return problems


def _engine(client_getter: Callable[[], Any]) -> tuple[dict[str, Any] | None, str | None]:
    try:
        client = client_getter()
        client.ping()
        return dict(client.info()), None
    except Exception as exc:
        return None, f"docker engine unreachable ({type(exc).__name__})"


def _health(info: dict[str, Any] | None, engine_error: str | None, host: HostSettings) -> Health:
    if info is None:
        return Health(state=HealthState.unsupported_host, reason=engine_error, missing_prerequisites=["docker engine"])
    problems = host_problems(host)
    if problems:
        return Health(state=HealthState.degraded, reason="; ".join(problems))
    return Health()


def report(
    runtime_ref: str, host_id: str, host: HostSettings, client_getter: Callable[[], Any]
) -> IsolationCapabilityReport:
    info, error = _engine(client_getter)
    arch = str((info or {}).get("Architecture") or platform.machine())
    engine_version = (info or {}).get("ServerVersion", "unknown")
    return IsolationCapabilityReport(
        report_ref=f"report-docker-{slug(host_id)}",
        adapter_ref=runtime_ref,
        adapter_kind="docker",
        adapter_version=f"{ADAPTER_VERSION} (engine {engine_version})",
        health=_health(info, error, host),
        supported_classes=[IsolationClass.container],
        platform=Platform(
            os=str((info or {}).get("OSType") or platform.system().lower()),
            cpu_architecture=_ARCH.get(arch, arch),
            emulation_supported=False,
        ),
        capabilities=list(CAPABILITIES),
        trust=TrustVector(
            locality=Locality.local,
            tenancy=Tenancy.shared_allowed,
            auditability=Level.best_effort,
            cleanup=Level.required,
            data_residency="local_only",
            secret_isolation=Level.best_effort,
        ),
        unsupported_requirements=list(UNSUPPORTED),
        weaker_features=list(WEAKER),
    )
