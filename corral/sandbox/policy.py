"""The host policy: what this host lets a request ask for, as data (``config/policy.toml``) and pure checks.

The caller states a request; the host decides whether it may run here. Every check is a pure function
of (policy, request) that returns nothing or raises ``PolicyDenial`` whose context names the rule that
said no (``rule=images.allowed``, ``rule=limits.max_memory_mb``, ...), so a denial is explainable and
testable without a host. The coordinator runs them before any adapter call (``corral.host.coordinator``);
reloading the file is ``corral.host.policy_source``. Rules::

    images.allowed / images.pinned / images.digests / images.require_digest
    mounts.aliases / mounts.modes
    limits.max_cpus / max_memory_mb / max_timeout_ms / max_process_count / max_scratch_mb
    limits.max_spool_bytes / max_argv_bytes / max_env_bytes / max_stdin_bytes / max_sandboxes
    network.allowed_modes
    detach.allowed / detach.max_ttl_ms
    users.allow_unset / users.allow_root / users.allowed
    policy.file                      (corral.host.policy_source: the file is missing or invalid)

Mount aliases are defined here (alias -> host path + allowed modes); the legacy ``host.mounts`` /
``host.writable_mounts`` settings are merged in as read-only (or writable) aliases, and a conflicting
definition makes the whole policy invalid rather than picking a side.
"""

from __future__ import annotations

import fnmatch
import posixpath
import tomllib
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal, NoReturn

from pydantic import Field, ValidationError, field_validator, model_validator

from corral.contract.errors import InvalidRequest, PolicyDenial
from corral.contract.matching import Approval
from corral.contract.models import (
    ExecutionEnvironment,
    ImageRequest,
    ImageResolution,
    IsolatedProcessSpec,
    MountPolicy,
    NetworkIsolationPolicy,
    NetworkKind,
    ProcessIoPolicy,
    ProcessOwnershipPolicy,
    RedactedEnvVar,
    ResourceLimits,
    ShutdownKind,
)
from corral.contract.vocabulary import MountMode, ProcessOwnershipClass
from corral.contract.wire import Model
from corral.sandbox.userspec import go_atoi, is_zero_id
from corral.trust.identity import COMPONENT_PREFIX, is_component

MAX_REQUEST_BYTES = 16 << 20
"""Absolute bound on one request document, measured before it is parsed (``tasks.base``); the
size limits below can only be set well inside it."""

Digest = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
AliasName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
_USER_NAME = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")]


class PolicyError(ValueError):
    """The policy file cannot be used (unreadable, not TOML, not valid, conflicting aliases)."""


# -- the file's shape ------------------------------------------------------------------------------


class ImageRules(Model):
    allowed: list[str] = Field(default_factory=lambda: ["corral/*"], max_length=1024)
    """Glob patterns (fnmatch, case-sensitive) over the image name with its tag, ``:latest`` added when absent."""
    digests: list[Digest] = Field(default_factory=list, max_length=1024)
    """Image ids allowed whatever their name (the request must name the digest)."""
    pinned: dict[str, Digest] = Field(default_factory=dict)
    """Image name -> the only image id it may resolve to (also allows the name)."""
    require_digest: bool = False
    """Every request must name a digest (``expected_digest`` or ``@sha256:``), unless its name is pinned."""


class MountAlias(Model):
    path: str = Field(min_length=1, max_length=4096)
    """The host directory or file behind the alias (absolute). Never shown to callers."""
    modes: list[MountMode] = Field(default_factory=lambda: [MountMode.read_only], min_length=1)
    symlinks: Literal["deny", "within_alias"] = "deny"
    """``deny``: a symlink anywhere in ``path`` refuses the mount. ``within_alias``: symlinks in
    ``path`` are followed, and the mount is refused unless the opened target lies within ``root``.
    A request's ``symlink_policy`` never widens this (``follow_within_alias`` on a deny alias gets deny)."""
    root: str | None = Field(default=None, min_length=2, max_length=4096)
    """For ``symlinks = "within_alias"`` (required then): a directory above ``path`` that the resolved
    target must stay within. Its own components must not be symlinks."""

    @field_validator("path", "root")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and (not value.startswith("/") or "\x00" in value):
            raise ValueError("a mount alias path must be absolute")
        return value

    @model_validator(mode="after")
    def _root_above_path(self) -> MountAlias:
        if self.symlinks == "deny":
            if self.root is not None:
                raise ValueError('root is only used with symlinks = "within_alias"')
            return self
        root = posixpath.normpath(self.root or "")
        if self.root is None or root == "/":
            raise ValueError('symlinks = "within_alias" needs a root directory other than /')
        path = posixpath.normpath(self.path)
        if path != root and not path.startswith(root + "/"):
            raise ValueError("a mount alias path must lie within its root")
        return self


DEFAULT_RLIMIT_BOUNDS: dict[str, tuple[int, int]] = {
    "core": (0, 1 << 30),
    "cpu": (1, 1 << 31),
    "data": (256 << 20, 1 << 44),
    "fsize": (0, 1 << 44),
    "locks": (0, 1 << 20),
    "memlock": (0, 64 << 10),
    "msgqueue": (0, 800 << 10),
    "nice": (0, 0),
    "nofile": (64, 1 << 20),
    "nproc": (0, 1 << 22),
    "rss": (0, 1 << 44),
    "rtprio": (0, 0),
    "rttime": (0, 0),
    "sigpending": (0, 1 << 20),
    "stack": (0, 1 << 30),
}
"""Bounds that keep a sandbox within what an unprivileged default container gets (Docker's defaults:
memlock 64 KiB, no real-time priority, no raised nice) and above what runc needs to start."""


class LimitRules(Model):
    max_cpus: float = Field(default=16, gt=0)
    max_memory_mb: int = Field(default=65_536, ge=1)
    max_timeout_ms: int = Field(default=24 * 3600 * 1000, ge=1)
    max_process_count: int = Field(default=4096, ge=1)
    max_scratch_mb: int = Field(default=4096, ge=1)
    max_spool_bytes: int = Field(default=256 << 20, ge=0, le=1 << 40)
    """Bytes of stdout (and, separately, of stderr) a sandbox may keep in the host spool: a request's
    ``io_policy`` cap above it is denied, not clamped (the caller asked for something this host won't keep)."""
    max_argv_bytes: int = Field(default=256 << 10, ge=1, le=MAX_REQUEST_BYTES // 4)
    """Total argv size, counted like the kernel (each argument's UTF-8 bytes plus its NUL)."""
    max_env_bytes: int = Field(default=256 << 10, ge=0, le=MAX_REQUEST_BYTES // 4)
    """Total environment size (``NAME=value`` plus NUL per variable, plain variables only)."""
    max_spec_bytes: int = Field(default=256 << 10, ge=1024, le=1 << 20)
    """The environment's whole spec as JSON (mounts, secrets, network lists, labels...): every free-form
    field a session record keeps for its lifetime, whether or not the runtime uses it. At most 1 MiB:
    a chain's first message carries the spec once per step, and Redis takes no value over 32 MiB."""
    max_stdin_bytes: int = Field(default=64 << 20, ge=0, le=1 << 30)
    """All stdin bytes written to one process over its life (every ``stream_io`` stdin write counts).
    At most 1 GiB: the Docker adapter's own backstop (``spool.STDIN_MAX_TOTAL``)."""
    max_sandboxes: int = Field(default=256, ge=0)
    """Sessions alive on this host at once (any state but cleaned, checked at ``prepare_session``)."""
    max_batch_jobs: int = Field(default=100_000, ge=1, le=10_000_000)
    """Jobs one batch may hold (``corral batch submit``), checked by the fleet worker that accepts it."""
    rlimits: dict[str, tuple[int, int]] = Field(default_factory=lambda: dict(DEFAULT_RLIMIT_BOUNDS))
    """rlimit name -> inclusive [floor, ceiling] a request's value must lie in; a name not listed is
    denied. runc sets rlimits as root, so without a ceiling a request could raise ``rtprio`` (run
    SCHED_FIFO past its cpus limit), ``nice`` or ``memlock``; without a floor ``nofile``/``cpu``/``data``
    of 0 kill runc's own init, a failure that looks transient. Entries in the file override these
    name by name."""

    @field_validator("rlimits")
    @classmethod
    def _over_defaults(cls, value: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
        for name, (floor, ceiling) in value.items():
            if not 0 <= floor <= ceiling:
                raise ValueError(f"rlimits.{name}: need 0 <= floor <= ceiling")
        return {**DEFAULT_RLIMIT_BOUNDS, **value}


class NetworkRules(Model):
    allowed_modes: list[NetworkKind] = Field(
        default_factory=lambda: [
            NetworkKind.disabled,
            NetworkKind.adapter_defined_denied,
            NetworkKind.allowlist,
            NetworkKind.egress_scoped,
        ]
    )


class DetachRules(Model):
    allowed: bool = True
    max_ttl_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=1000)


class UserRules(Model):
    allow_unset: bool = True
    """A process without a user runs as the runtime's default user (65534:65534 for Docker)."""
    allow_root: bool = False
    """Whether a process may run with uid 0, gid 0 or a supplementary gid 0, however spelled: ``root``,
    ``0``, ``00``, or a name the image maps to 0 (Docker resolves it in the image and checks)."""
    allowed_users: list[_USER_NAME] = Field(default_factory=list)
    """User names (or numbers) allowed as written; root is still denied unless ``allow_root``."""
    allowed_uids: list[tuple[int, int]] = Field(default_factory=list)
    """Inclusive uid ranges, judged on the uid the user resolves to in the image (a name too).
    With both lists empty any (non-root) user is allowed."""


TenantName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
_IDENTITY = Annotated[str, Field(pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_.@-]{0,127})$")]


class TenantLimits(Model):
    """Per-tenant ceilings; each only lowers the host's ``[limits]`` (unset: the host's alone)."""

    max_cpus: float | None = Field(default=None, gt=0)
    max_memory_mb: int | None = Field(default=None, ge=1)
    max_timeout_ms: int | None = Field(default=None, ge=1)
    max_process_count: int | None = Field(default=None, ge=1)
    max_sandboxes: int | None = Field(default=None, ge=0)
    """Sandboxes of this tenant alive on this host (any state but cleaned or repair_needed), counted at
    ``prepare_session``; not atomic: concurrent prepares of one tenant may overshoot by a few."""


class TenantRules(Model):
    """``[tenants.<name>]``: who belongs to the tenant and what it may use (``corral.host.tenancy``).
    Every rule can only narrow the host-wide rules; unset list rules mean "the host's rules alone",
    except ``secrets``, which is a grant: a tenant may use only the secret names it lists."""

    identities: list[_IDENTITY] = Field(default_factory=list, max_length=4096)
    """Caller identities (certificate CNs) of the tenant; ``*``: every identity no other tenant lists."""
    operator: bool = False
    """Operators see and may act on every tenant's sessions (``corral ps``, cleanup, reclaim)."""
    images: list[str] | None = Field(default=None, max_length=1024)
    mounts: list[AliasName] | None = Field(default=None, max_length=1024)
    network_modes: list[NetworkKind] | None = None
    secrets: list[str] = Field(default_factory=list, max_length=1024)
    """Glob patterns over secret names. Empty (the default): no secret at all."""
    limits: TenantLimits = Field(default_factory=TenantLimits)
    hosts: list[str] | None = Field(default=None, max_length=1024)
    """Glob patterns over host ids that serve this tenant."""

    @field_validator("identities")
    @classmethod
    def _no_components(cls, value: list[str]) -> list[str]:
        if any(is_component(identity) for identity in value):
            raise ValueError(f"identities starting {COMPONENT_PREFIX!r} belong to fleet components, not tenants")
        return value


class HostPolicy(Model):
    version: Literal[1] = 1
    images: ImageRules = Field(default_factory=ImageRules)
    mounts: dict[AliasName, MountAlias] = Field(default_factory=dict)
    limits: LimitRules = Field(default_factory=LimitRules)
    network: NetworkRules = Field(default_factory=NetworkRules)
    detach: DetachRules = Field(default_factory=DetachRules)
    users: UserRules = Field(default_factory=UserRules)
    approvals: list[Approval] = Field(default_factory=list, max_length=256)
    """Fallback decisions (``corral.contract.matching``): which exact gaps each ``policy_ref`` accepts."""
    tenants: dict[TenantName, TenantRules] = Field(default_factory=dict)
    """Who may use this host and for what (``corral.host.tenancy``); none: one implicit tenant, ``default``."""

    @model_validator(mode="after")
    def _one_tenant_per_identity(self) -> HostPolicy:
        seen: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            for identity in tenant.identities:
                if identity in seen and seen[identity] != name:
                    raise ValueError(f"identity {identity!r} is listed by tenants {seen[identity]} and {name}")
                seen[identity] = name
        return self


def parse_policy(text: str, source: str = "policy") -> HostPolicy:
    """A policy from TOML text; ``PolicyError`` saying where and why when it is not valid."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source} is not valid TOML: {exc}") from None
    try:
        return HostPolicy.model_validate(data)
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:5]]
        raise PolicyError(f"{source} is not a valid host policy: " + "; ".join(problems)) from None


def with_legacy_mounts(policy: HostPolicy, mounts: Mapping[str, str], writable: Sequence[str]) -> HostPolicy:
    """The policy plus the aliases of ``host.mounts`` (read-only unless in ``host.writable_mounts``)."""
    merged = dict(policy.mounts)
    for alias, path in mounts.items():
        modes = [MountMode.read_only, *([MountMode.writable] if alias in writable else [])]
        try:
            legacy = MountAlias(path=path, modes=modes)
        except ValidationError:
            raise PolicyError(f"host.mounts alias {alias!r} is not an absolute path") from None
        known = merged.get(alias)
        if known is not None and (known.path != legacy.path or set(known.modes) != set(legacy.modes)):
            raise PolicyError(f"mount alias {alias!r} is defined differently in the policy file and host.mounts")
        merged[alias] = known or legacy
    try:
        return HostPolicy.model_validate({**policy.model_dump(), "mounts": merged})
    except ValidationError as exc:
        raise PolicyError(f"host.mounts is not valid: {exc.errors()[0]['msg']}") from None


def symlink_roots(policy: HostPolicy) -> dict[str, str]:
    """alias -> root, for the aliases whose path may hold symlinks (``symlinks = "within_alias"``)."""
    return {alias: m.root for alias, m in policy.mounts.items() if m.symlinks == "within_alias" and m.root}


def mount_table(policy: HostPolicy) -> tuple[dict[str, str], list[str]]:
    """(alias -> host path, writable aliases): the shape the Docker runtime reads from ``HostSettings``."""
    return (
        {alias: m.path for alias, m in policy.mounts.items()},
        [alias for alias, m in policy.mounts.items() if MountMode.writable in m.modes],
    )


# -- the checks --------------------------------------------------------------------------------------


def deny(message: str, rule: str, **context: str) -> NoReturn:
    raise PolicyDenial(f"{message} (host policy {rule})", context={"rule": rule, **context})


def check_environment(policy: HostPolicy, env: ExecutionEnvironment) -> None:
    """Everything about an environment the host policy rules on (the process is ``check_process``)."""
    spec = env.spec
    problems = spec.resources.problems()
    if problems:
        raise InvalidRequest("; ".join(problems), context={"environment_id": env.environment_id})
    spec_bytes = len(spec.model_dump_json().encode())
    _bytes_at_most(spec_bytes, policy.limits.max_spec_bytes, "environment spec", "limits.max_spec_bytes")
    if spec.image is not None:
        check_image(policy, spec.image)
    check_limits(policy, spec.resources, spec.filesystem.scratch)
    check_spool(policy, spec.io_policy)
    check_network(policy, spec.network)
    check_mounts(policy, spec.filesystem.mounts)
    check_ownership(policy, spec.ownership)


def image_name(image_ref: str) -> str:
    """The name patterns match: the reference without ``@digest``, with ``:latest`` when it has no tag."""
    name = image_ref.split("@", 1)[0]
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def named_digests(image: ImageRequest) -> set[str]:
    found = {image.expected_digest} if image.expected_digest else set()
    if "@" in image.image_ref:
        found.add(image.image_ref.split("@", 1)[1])
    return found


def check_image(policy: HostPolicy, image: ImageRequest) -> None:
    rules = policy.images
    name = image_name(image.image_ref)
    digests = named_digests(image)
    pin = rules.pinned.get(name)
    if pin is not None:
        if digests - {pin}:
            deny(f"image {name} is pinned to another digest", "images.pinned", image=name)
        return
    by_name = any(fnmatch.fnmatchcase(name, pattern) for pattern in rules.allowed)
    if not by_name and not (digests and digests <= set(rules.digests)):
        allowed = ", ".join(rules.allowed) or "none"
        deny(
            f"image {name} is not allowed on this host (images.allowed: {allowed}; see the host policy file)",
            "images.allowed",
            image=name,
        )
    if rules.require_digest and not digests:
        deny(f"image {name} must be requested by digest", "images.require_digest", image=name)


def check_resolution(policy: HostPolicy, image: ImageRequest, resolution: ImageResolution) -> None:
    """What the image resolved to: a pinned name must be its pin; a name allowed only by digest must
    have resolved to an allowed digest."""
    rules = policy.images
    name = image_name(image.image_ref)
    pin = rules.pinned.get(name)
    if pin is not None:
        if resolution.digest != pin:
            deny(f"image {name} resolved to a digest other than its pin", "images.pinned", image=name)
        return
    if not any(fnmatch.fnmatchcase(name, pattern) for pattern in rules.allowed) and (
        resolution.digest not in rules.digests
    ):
        deny(f"image {name} resolved to a digest that is not allowed", "images.digests", image=name)


def _at_most(value: float, limit: float, what: str, rule: str) -> None:
    if value > limit:
        deny(f"{what} {value:g} exceeds the host maximum {limit:g}", rule)


def check_limits(policy: HostPolicy, resources: ResourceLimits, scratch_mb: int) -> None:
    limits = policy.limits
    _at_most(resources.cpu_quota, limits.max_cpus, "cpus", "limits.max_cpus")
    _at_most(resources.memory_mb, limits.max_memory_mb, "memory_mb", "limits.max_memory_mb")
    _at_most(resources.timeout_ms, limits.max_timeout_ms, "timeout_ms", "limits.max_timeout_ms")
    _at_most(resources.process_count, limits.max_process_count, "process_count", "limits.max_process_count")
    _at_most(scratch_mb, limits.max_scratch_mb, "scratch_mb", "limits.max_scratch_mb")


def _bytes_at_most(value: int, limit: int, what: str, rule: str) -> None:
    if value > limit:
        deny(f"{what} ({value} bytes) exceeds the host maximum of {limit} bytes", rule, limit=str(limit))


def check_spool(policy: HostPolicy, io_policy: ProcessIoPolicy) -> None:
    """Each output stream's spool cap: the host keeps at most ``max_spool_bytes`` of it on disk."""
    for name, stream in (("stdout", io_policy.stdout), ("stderr", io_policy.stderr)):
        _bytes_at_most(stream.max_bytes, policy.limits.max_spool_bytes, f"{name} spool cap", "limits.max_spool_bytes")


def argv_bytes(argv: Sequence[str]) -> int:
    """What argv costs the kernel: each argument's UTF-8 bytes plus its terminating NUL."""
    return sum(len(arg.encode()) + 1 for arg in argv)


def env_bytes(env: Sequence[RedactedEnvVar]) -> int:
    """What the plain environment costs: ``NAME=value`` plus a NUL per variable (secrets are the
    host's own values and are not counted against the caller)."""
    return sum(len(var.name.encode()) + len(var.redacted_value.encode()) + 2 for var in env)


def check_process_size(policy: HostPolicy, process: IsolatedProcessSpec) -> None:
    limits = policy.limits
    _bytes_at_most(argv_bytes(process.argv), limits.max_argv_bytes, "argv", "limits.max_argv_bytes")
    _bytes_at_most(env_bytes(process.env), limits.max_env_bytes, "environment", "limits.max_env_bytes")


def check_stdin(policy: HostPolicy, written: int, adding: int) -> None:
    """A stdin write of ``adding`` bytes to a process that was already sent ``written``: the whole
    write is refused if the total would pass the cap (exactly the cap gets through)."""
    if written + adding > policy.limits.max_stdin_bytes:
        deny(
            f"stdin total would be {written + adding} bytes, over the host maximum of "
            f"{policy.limits.max_stdin_bytes} bytes per process",
            "limits.max_stdin_bytes",
            limit=str(policy.limits.max_stdin_bytes),
            written=str(written),
        )


def check_sandboxes(policy: HostPolicy, live: int) -> None:
    """One more sandbox on a host that already holds ``live`` sessions (any state but cleaned)."""
    if live >= policy.limits.max_sandboxes:
        deny(
            f"this host already holds {live} sandbox(es), its maximum is {policy.limits.max_sandboxes}",
            "limits.max_sandboxes",
            limit=str(policy.limits.max_sandboxes),
        )


def check_network(policy: HostPolicy, network: NetworkIsolationPolicy) -> None:
    if network.kind not in policy.network.allowed_modes:
        deny(f"network mode {network.kind.value} is not allowed on this host", "network.allowed_modes")


def check_mounts(policy: HostPolicy, mounts: Sequence[MountPolicy]) -> None:
    for mount in mounts:
        alias = policy.mounts.get(mount.source_alias)
        if alias is None:
            deny(f"unknown mount alias {mount.source_alias!r}", "mounts.aliases", alias=mount.source_alias)
        if mount.mode not in alias.modes:
            deny(
                f"mount alias {mount.source_alias!r} may not be mounted {mount.mode.value}",
                "mounts.modes",
                alias=mount.source_alias,
            )


def check_ownership(policy: HostPolicy, ownership: ProcessOwnershipPolicy) -> None:
    """An environment that plans to detach is refused up front on a host that never allows it."""
    wants_detach = (
        ownership.detach_policy.allowed
        or ownership.ownership_class is ProcessOwnershipClass.detached_by_intent
        or ShutdownKind.preserve_by_policy in (ownership.on_parent_cancel.kind, ownership.on_parent_complete.kind)
    )
    if wants_detach and not policy.detach.allowed:
        deny("this host does not allow detach", "detach.allowed")


def check_detach(policy: HostPolicy, ttl_ms: int) -> None:
    if not policy.detach.allowed:
        deny("this host does not allow detach", "detach.allowed")
    _at_most(ttl_ms, policy.detach.max_ttl_ms, "detach ttl_ms", "detach.max_ttl_ms")


def check_process(policy: HostPolicy, env: ExecutionEnvironment, process: IsolatedProcessSpec) -> None:
    """The process spec (carried by prepare_environment and start_process): its user and its timeout."""
    check_user(policy, process.user)
    if process.timeout_ms < 1:  # the shim reads 0 as "no timeout": never from a caller
        raise InvalidRequest("timeout_ms must be at least 1", context={"process_id": process.process_id})
    _at_most(process.timeout_ms, policy.limits.max_timeout_ms, "timeout_ms", "limits.max_timeout_ms")
    check_process_size(policy, process)
    check_rlimits(policy, process.posix_rlimits)


def check_rlimits(policy: HostPolicy, rlimits: Mapping[str, int]) -> None:
    bounds = policy.limits.rlimits
    for name, value in sorted(rlimits.items()):
        if name not in bounds:
            deny(f"rlimit {name} may not be set on this host", "limits.rlimits", rlimit=name)
        floor, ceiling = bounds[name]
        if not floor <= value <= ceiling:
            deny(
                f"rlimit {name}={value} is outside this host's bounds [{floor}, {ceiling}]",
                "limits.rlimits",
                rlimit=name,
            )


def _is_root(part: str) -> bool:
    return part == "root" or is_zero_id(part)


def check_user(policy: HostPolicy, user: str | None) -> None:
    """The user as written, before any image is looked at: ``root``, 0 however Docker would read it
    (``00``, ``+0``) and an empty user part (``:1000`` is uid 0) are root. What a name means is up to
    the image, so a runtime that runs images judges the identity it resolves there by these same
    rules (Docker: ``docker_policy.check_sandbox_user``, on the image id this host resolved): a name
    that maps to uid 0, a group that maps to gid 0, a member of a gid-0 group. A name not in
    ``allowed_users`` passes here when ``allowed_uids`` is set: it must resolve into a range there."""
    rules = policy.users
    if user is None:
        if not rules.allow_unset:
            deny("the process must name a user", "users.allow_unset")
        return
    parts = user.split(":")  # as runc splits it: USER[:GROUP[:ignored]]
    name, group = parts[0], parts[1] if len(parts) > 1 else ""
    if (not name or _is_root(name) or (group and _is_root(group))) and not rules.allow_root:
        deny("running as root (uid or gid 0) is not allowed on this host", "users.allow_root")
    if (not rules.allowed_users and not rules.allowed_uids) or name in rules.allowed_users:
        return
    uid, numeric = go_atoi(name)
    if numeric and any(lo <= uid <= hi for lo, hi in rules.allowed_uids):
        return
    if not numeric and rules.allowed_uids:
        return  # judged on the uid it resolves to in the image (the runtime's check)
    deny(f"user {name} is not allowed on this host", "users.allowed")
