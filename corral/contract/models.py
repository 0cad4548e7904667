"""Request and result models of the isolation contract (CONTRACT.md), with the upstream field names.

Every model is pydantic v2, frozen, ``extra="forbid"``. Across Celery they travel as
``model_dump(mode="json")`` dicts and are re-validated on the other side. Limits are checked here,
so a negative or absurd request fails before anything touches a host.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.contract.refs import Ref


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# ---------------------------------------------------------------------------------------------
# capability vocabulary


class IsolationClass(StrEnum):
    host_process = "host_process"
    sandbox = "sandbox"
    container = "container"
    lightweight_vm = "lightweight_vm"
    remote_sandbox = "remote_sandbox"


CLASS_STRENGTH: dict[IsolationClass, int] = {
    IsolationClass.host_process: 0,
    IsolationClass.sandbox: 1,
    IsolationClass.container: 2,
    IsolationClass.remote_sandbox: 3,
    IsolationClass.lightweight_vm: 4,
}


class Capability(StrEnum):
    read_only_root = "read_only_root"
    writable_layer = "writable_layer"
    mount_read_only_enforcement = "mount_read_only_enforcement"
    single_file_mount_expansion_audit = "single_file_mount_expansion_audit"
    no_network_guarantee = "no_network_guarantee"
    egress_allowlist = "egress_allowlist"
    secret_isolation = "secret_isolation"
    secret_mount = "secret_mount"
    secret_redaction = "secret_redaction"
    process_timeout = "process_timeout"
    process_signal = "process_signal"
    process_rlimits = "process_rlimits"
    content_ref_io = "content_ref_io"
    io_redaction = "io_redaction"
    process_stats = "process_stats"
    cleanup = "cleanup"
    detach = "detach"
    reclaim = "reclaim"
    audit_log = "audit_log"


class Locality(StrEnum):
    any = "any"
    local = "local"
    remote = "remote"


class Tenancy(StrEnum):
    shared_allowed = "shared_allowed"
    dedicated = "dedicated"


class Level(StrEnum):
    none = "none"
    best_effort = "best_effort"
    required = "required"


class TrustVector(Model):
    locality: Locality = Locality.any
    tenancy: Tenancy = Tenancy.shared_allowed
    auditability: Level = Level.best_effort
    cleanup: Level = Level.required
    data_residency: str = Field(default="any", pattern=r"^(any|local_only|region\([A-Za-z0-9_.-]{1,64}\))$")
    """``any``, ``local_only`` or ``region(x)``."""
    secret_isolation: Level = Level.best_effort


class FallbackPolicy(Model):
    allowed_gaps: list[str] = Field(default_factory=list, max_length=64)
    """Exact gaps (``capability:<name>``, ``class:<name>``, ``trust:<field>``) that may be accepted."""
    policy_ref: Ref | None = None
    """The policy decision that approves those gaps; without it no gap is accepted."""


class IsolationRequirement(Model):
    minimum_class: IsolationClass = IsolationClass.container
    required_capabilities: list[Capability] = Field(default_factory=list)
    trust: TrustVector = Field(default_factory=TrustVector)
    fallback: FallbackPolicy = Field(default_factory=FallbackPolicy)


class HealthState(StrEnum):
    healthy = "healthy"
    degraded = "degraded"
    unsupported_host = "unsupported_host"


class Health(Model):
    state: HealthState = HealthState.healthy
    reason: str | None = None
    missing_prerequisites: list[str] = Field(default_factory=list)


class Platform(Model):
    os: str
    cpu_architecture: str
    emulation_supported: bool = False


class IsolationRuntimeRef(Model):
    runtime_ref: Ref
    adapter_kind: str
    host_ref: Ref


class IsolationCapabilityReport(Model):
    report_ref: Ref
    adapter_ref: Ref
    adapter_kind: str
    adapter_version: str
    capability_version: int = 1
    health: Health = Field(default_factory=Health)
    supported_classes: list[IsolationClass]
    platform: Platform
    capabilities: list[Capability]
    trust: TrustVector
    unsupported_requirements: list[str] = Field(default_factory=list)
    """Features this adapter does not enforce, said plainly (never a silent no-op)."""
    weaker_features: list[str] = Field(default_factory=list)
    """Features supported with a caveat (for example env secrets visible to ``docker inspect``)."""
    hardening: list[str] = Field(default_factory=list)
    """Sandbox hardening this adapter enforces on every process (for example ``cap_drop:ALL``), each
    checked against the engine when the report is built; one that cannot be enforced is not listed."""


# ---------------------------------------------------------------------------------------------
# the environment spec

_IMAGE_RE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?$",
    re.ASCII,
)
_DIGEST_RE = r"^sha256:[0-9a-f]{64}$"
_ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


def _check_container_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("a container path must be absolute")
    if "\x00" in value or len(value) > 1024:
        raise ValueError("a container path must be at most 1024 bytes without NUL")
    if any(part == ".." for part in value.split("/")):
        raise ValueError("a container path must not contain '..'")
    normal = "/" + posixpath.normpath(value).lstrip("/")
    return normal


class ImageRequest(Model):
    image_ref: str = Field(max_length=512)
    """A local image name such as ``corral/busybox:latest`` (optionally ``@sha256:...``)."""
    expected_digest: str | None = Field(default=None, pattern=_DIGEST_RE)
    expected_architecture: str | None = Field(default=None, pattern=r"^[a-z0-9_]{1,32}$")
    credential_alias_ref: Ref | None = None

    @field_validator("image_ref")
    @classmethod
    def _image_name(cls, value: str) -> str:
        if not _IMAGE_RE.fullmatch(value):
            raise ValueError(f"not a valid image reference: {value[:80]!r}")
        return value


class RootfsRequest(Model):
    rootfs_ref: Ref
    read_only: bool = True
    writable_layer_ref: Ref | None = None


class ResourceLimits(Model):
    cpus: float = Field(default=1.0, gt=0, le=256)
    memory_mb: int = Field(default=1024, ge=6, le=1 << 20)
    timeout_ms: int = Field(default=120_000, ge=1, le=7 * 24 * 3600 * 1000)
    process_count: int = Field(default=32, ge=1, le=65_536)


class RootMode(StrEnum):
    read_only = "read_only"
    writable_layer = "writable_layer"


class MountMode(StrEnum):
    read_only = "read_only"
    writable = "writable"


class SymlinkPolicy(StrEnum):
    deny_escapes = "deny_escapes"
    follow_within_alias = "follow_within_alias"


class MountPolicy(Model):
    mount_ref: Ref
    source_alias: str = Field(pattern=_NAME_RE)
    """A host alias defined by host policy; never a raw host path."""
    destination_path: str
    mode: MountMode = MountMode.read_only

    @field_validator("destination_path")
    @classmethod
    def _dest(cls, value: str) -> str:
        path = _check_container_path(value)
        if path == "/":
            raise ValueError("a mount must not cover the root directory")
        return path


class FilesystemPolicy(Model):
    root: RootMode = RootMode.read_only
    mounts: list[MountPolicy] = Field(default_factory=list, max_length=64)
    symlink_policy: SymlinkPolicy = SymlinkPolicy.deny_escapes
    scratch_mb: int = Field(default=64, ge=1, le=65_536)
    """Size of the tmpfs scratch at ``/tmp`` (the only writable place on a read-only root)."""

    @model_validator(mode="after")
    def _unique_destinations(self) -> FilesystemPolicy:
        dests = [m.destination_path for m in self.mounts]
        if len(set(dests)) != len(dests):
            raise ValueError("two mounts share a destination path")
        return self


class NetworkMode(StrEnum):
    disabled = "disabled"
    allowlist = "allowlist"
    egress_scoped = "egress_scoped"
    socket_relay = "socket_relay"
    exposed_ports = "exposed_ports"
    adapter_defined_denied = "adapter_defined_denied"


class NetworkPolicy(Model):
    mode: NetworkMode = NetworkMode.disabled
    hosts: list[str] = Field(default_factory=list, max_length=256)
    rules: list[str] = Field(default_factory=list, max_length=256)
    ports: list[Annotated[int, Field(ge=1, le=65535)]] = Field(default_factory=list, max_length=64)


class AmbientSecrets(StrEnum):
    denied = "denied"
    explicit_refs_only = "explicit_refs_only"


class SecretMount(Model):
    secret_ref: str = Field(pattern=_NAME_RE)
    mount_ref: Ref
    destination: str

    _dest = field_validator("destination")(classmethod(lambda cls, v: _check_container_path(v)))


class EnvSecret(Model):
    secret_ref: str = Field(pattern=_NAME_RE)
    env_key: str = Field(pattern=_ENV_NAME_RE)


class SecretPolicy(Model):
    ambient: AmbientSecrets = AmbientSecrets.denied
    secret_mounts: list[SecretMount] = Field(default_factory=list, max_length=64)
    env_secrets: list[EnvSecret] = Field(default_factory=list, max_length=64)
    teardown_required: bool = True


class LifecyclePolicy(Model):
    timeout_signal: ProcessSignal = Field(default_factory=lambda: ProcessSignal.terminate)
    grace_ms: int = Field(default=5_000, ge=0, le=600_000)
    """How long a terminated process gets before it is killed."""


class OwnershipClass(StrEnum):
    agent_owned = "agent_owned"
    host_managed = "host_managed"
    detached_by_intent = "detached_by_intent"


class ParentAction(StrEnum):
    cleanup = "cleanup"
    detach = "detach"
    keep = "keep"


class DetachPolicy(Model):
    allowed: bool = False
    required_policy_refs: list[Ref] = Field(default_factory=list)


class ReclaimPolicy(Model):
    required: bool = True
    policy_ref: Ref | None = None


class OwnershipPolicy(Model):
    child_artifact_id: Ref | None = None
    owner_run_id: Ref | None = None
    ownership_class: OwnershipClass = OwnershipClass.agent_owned
    on_parent_cancel: ParentAction = ParentAction.cleanup
    on_parent_complete: ParentAction = ParentAction.cleanup
    detach_policy: DetachPolicy = Field(default_factory=DetachPolicy)
    reclaim_policy: ReclaimPolicy = Field(default_factory=ReclaimPolicy)


class CaptureMode(StrEnum):
    off = "off"
    metadata_only = "metadata_only"
    redacted_summary = "redacted_summary"
    content_ref = "content_ref"
    raw_content_if_policy_allows = "raw_content_if_policy_allows"


class TruncationPolicy(StrEnum):
    truncate_with_marker = "truncate_with_marker"
    fail_if_exceeded = "fail_if_exceeded"


class StreamIoPolicy(Model):
    default_capture: CaptureMode = CaptureMode.metadata_only
    max_bytes: int = Field(default=64 << 20, ge=0, le=1 << 40)
    """Spool cap for the stream; beyond it the head and tail are kept and the middle is dropped."""
    truncation_policy: TruncationPolicy = TruncationPolicy.truncate_with_marker
    redaction_policy_ref: Ref | None = None


class IoPolicy(Model):
    stdout: StreamIoPolicy = Field(default_factory=StreamIoPolicy)
    stderr: StreamIoPolicy = Field(default_factory=StreamIoPolicy)


class StatsPolicy(Model):
    enabled: bool = True


class EnvironmentSpec(Model):
    kind: str = Field(default="batch", pattern=_NAME_RE)
    requirement: IsolationRequirement = Field(default_factory=IsolationRequirement)
    image: ImageRequest | None = None
    rootfs: RootfsRequest | None = None
    resources: ResourceLimits = Field(default_factory=ResourceLimits)
    filesystem: FilesystemPolicy = Field(default_factory=FilesystemPolicy)
    network: NetworkPolicy = Field(default_factory=NetworkPolicy)
    secrets: SecretPolicy = Field(default_factory=SecretPolicy)
    lifecycle: LifecyclePolicy = Field(default_factory=LifecyclePolicy)
    ownership: OwnershipPolicy = Field(default_factory=OwnershipPolicy)
    io_policy: IoPolicy = Field(default_factory=IoPolicy)
    stats_policy: StatsPolicy = Field(default_factory=StatsPolicy)


class ExecutionEnvironment(Model):
    environment_id: Ref
    spec: EnvironmentSpec = Field(default_factory=EnvironmentSpec)
    policy_refs: list[Ref] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# process


class TerminalMode(StrEnum):
    pipe = "pipe"
    pty = "pty"


class StdinMode(StrEnum):
    closed = "closed"
    open = "open"
    """Bounded writes through ``stream_io`` on the stdin stream."""


class RedactedEnvVar(Model):
    name: str = Field(pattern=_ENV_NAME_RE)
    value_ref: Ref | None = None
    redacted_value: str = Field(default="", max_length=32_768)
    """The value as it may be shown; for a plain (non-secret) variable it is the value itself."""
    raw_value_present: bool = False

    @model_validator(mode="after")
    def _no_raw_values(self) -> RedactedEnvVar:
        if self.raw_value_present:
            raise ValueError("an env entry carrying a raw secret value is a contract violation")
        if "\x00" in self.redacted_value:
            raise ValueError("an env value must not contain NUL")
        return self


class IsolatedProcessSpec(Model):
    process_id: Ref
    argv: list[Annotated[str, Field(max_length=131_072)]] = Field(min_length=1, max_length=4096)
    cwd: str = "/"
    env: list[RedactedEnvVar] = Field(default_factory=list, max_length=1024)
    user: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$"
    )
    terminal_mode: TerminalMode = TerminalMode.pipe
    timeout_ms: int | None = Field(default=None, ge=1, le=7 * 24 * 3600 * 1000)
    rlimits: dict[Annotated[str, Field(pattern=r"^[a-z]{2,16}$")], Annotated[int, Field(ge=0)]] = Field(
        default_factory=dict
    )
    stdin: StdinMode = StdinMode.closed

    _cwd = field_validator("cwd")(classmethod(lambda cls, v: _check_container_path(v)))

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: list[str]) -> list[str]:
        if not value[0]:
            raise ValueError("argv[0] must not be empty")
        if any("\x00" in a for a in value):
            raise ValueError("argv must not contain NUL bytes")
        return value

    @field_validator("env")
    @classmethod
    def _unique_env(cls, value: list[RedactedEnvVar]) -> list[RedactedEnvVar]:
        names = [e.name for e in value]
        if len(set(names)) != len(names):
            raise ValueError("an env name appears twice")
        return value


class EffectIntent(Model):
    effect_id: Ref
    kind: str
    idempotency_key: Ref
    dedupe_key: Ref
    redacted_summary: str = ""


class ProcessState(StrEnum):
    created = "created"
    running = "running"
    exited = "exited"
    unknown = "unknown"


class TerminationReason(StrEnum):
    exit = "exit"
    timeout = "timeout"
    oom = "oom"
    signal = "signal"
    lost = "lost"


class TerminalStatus(Model):
    state: ProcessState
    exit_code: int | None = None
    reason: TerminationReason | None = None


# ---------------------------------------------------------------------------------------------
# requests and results, one pair per operation


class SessionPrepareRequest(Model):
    environment: ExecutionEnvironment
    host_ref: Ref | None = None


class SessionState(StrEnum):
    preparing = "preparing"
    prepared = "prepared"
    running = "running"
    exited = "exited"
    detached = "detached"
    cleaning = "cleaning"
    cleaned = "cleaned"
    repair_needed = "repair_needed"


class IsolationSessionRef(Model):
    session_ref: Ref
    environment_id: Ref
    host_ref: Ref


class ImageResolveRequest(Model):
    environment: ExecutionEnvironment


class ImageResolution(Model):
    image_ref: str
    digest: str
    architecture: str | None = None
    redacted_credential_alias: str | None = None


class RootfsPrepareRequest(Model):
    environment: ExecutionEnvironment


class RootfsRef(Model):
    rootfs_ref: Ref
    read_only: bool
    scratch_mb: int


class MountResolveRequest(Model):
    environment: ExecutionEnvironment


class MountRef(Model):
    mount_ref: Ref
    source_alias: str
    destination_path: str
    mode: MountMode


class MountPlan(Model):
    mounts: list[MountRef] = Field(default_factory=list)
    expanded_exposure_audits: list[str] = Field(default_factory=list)


class NetworkPrepareRequest(Model):
    environment: ExecutionEnvironment


class NetworkNamespaceRef(Model):
    network_ref: Ref
    mode: NetworkMode


class SecretPrepareRequest(Model):
    environment: ExecutionEnvironment


class SecretMountRef(Model):
    secret_ref: str
    mount_ref: Ref
    destination: str


class SecretMaterializationPlan(Model):
    secret_mount_refs: list[SecretMountRef] = Field(default_factory=list)
    env_secret_keys: list[str] = Field(default_factory=list)
    """Names of env variables that will carry a secret (never their values)."""
    teardown_required: bool = True


class EnvironmentPrepareRequest(Model):
    environment: ExecutionEnvironment
    process: IsolatedProcessSpec
    image: ImageResolution | None = None
    """Filled by the coordinator from the session record: the results of the earlier steps."""
    rootfs: RootfsRef | None = None
    mounts: MountPlan | None = None
    network: NetworkNamespaceRef | None = None
    secrets: SecretMaterializationPlan | None = None


class PreparedEnvironmentRef(Model):
    prepared_ref: Ref
    environment_id: Ref


class ProcessStartRequest(Model):
    environment: ExecutionEnvironment
    process: IsolatedProcessSpec
    effect_intent: EffectIntent | None = None
    """Supplied by the coordinator, not by the caller."""


class IoStream(StrEnum):
    stdin = "stdin"
    stdout = "stdout"
    stderr = "stderr"


MAX_FRAME_BYTES = 1 << 20


class ProcessIoRequest(Model):
    process_ref: Ref
    stream: IoStream
    cursor: int = Field(default=0, ge=0)
    """Byte offset to read from (stdout/stderr); ignored for stdin."""
    max_bytes: int = Field(default=64 * 1024, ge=1, le=MAX_FRAME_BYTES)
    data_b64: str | None = Field(default=None, max_length=(MAX_FRAME_BYTES * 4) // 3 + 4)
    """stdin only: the bytes to write, base64; at most ``MAX_FRAME_BYTES`` once decoded."""
    close_stdin: bool = False

    @field_validator("data_b64")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("data_b64 is not valid base64") from None
        if len(decoded) > MAX_FRAME_BYTES:
            raise ValueError(f"a stdin write is at most {MAX_FRAME_BYTES} bytes")
        return value

    @model_validator(mode="after")
    def _stdin_only_data(self) -> ProcessIoRequest:
        if self.stream is not IoStream.stdin and (self.data_b64 is not None or self.close_stdin):
            raise ValueError("data and close_stdin apply to the stdin stream only")
        return self


class ProcessIoFrame(Model):
    stream_ref: Ref
    stream: IoStream
    cursor: int
    """Where the next frame starts: resuming from it never re-reads or skips a byte."""
    start_cursor: int
    byte_count: int
    content_hash: str
    content_refs: list[Ref] = Field(default_factory=list)
    raw_content_present: bool = False
    content_b64: str | None = None
    truncated: bool = False
    dropped_bytes: int = 0
    eof: bool = False
    redaction_count: int = 0
    redacted_summary: str = ""


class ProcessStartResult(Model):
    process_ref: Ref
    adapter_session_ref: Ref | None = None
    terminal_status: TerminalStatus | None = None
    external_operation_id: str | None = None
    io_frames: list[ProcessIoFrame] = Field(default_factory=list)
    redacted_summary: str = ""


class ProcessSignal(StrEnum):
    interrupt = "interrupt"
    terminate = "terminate"
    kill = "kill"


class ProcessSignalRequest(Model):
    process_ref: Ref
    signal: ProcessSignal
    grace_ms: int = Field(default=5_000, ge=0, le=600_000)


class ProcessSignalResult(Model):
    process_ref: Ref
    signal: ProcessSignal
    delivered: bool
    redacted_summary: str = ""


class ProcessStatsRequest(Model):
    process_ref: Ref


class ProcessStatsSnapshot(Model):
    snapshot_ref: Ref
    process_ref: Ref
    state: ProcessState = ProcessState.unknown
    cpu_millis: int | None = None
    memory_bytes: int | None = None
    process_count: int | None = None
    filesystem_bytes: int | None = None
    network_bytes: int | None = None
    exit_code: int | None = None
    oom_killed: bool = False
    reason: TerminationReason | None = None
    redacted_summary: str = ""


class CleanupStatus(StrEnum):
    completed = "completed"
    repair_needed = "repair_needed"


class CleanupRequest(Model):
    environment: ExecutionEnvironment
    cleanup_plan_ref: Ref


class CleanupResult(Model):
    cleanup_plan_ref: Ref
    status: CleanupStatus
    external_operation_id: str | None = None
    redacted_summary: str = ""


class DetachTransferRequest(Model):
    environment: ExecutionEnvironment
    ttl_ms: int = Field(default=3_600_000, ge=1_000, le=30 * 24 * 3600 * 1000)
    ticket_ref: Ref | None = None
    """Supplied by the coordinator, which owns the ticket."""


class DetachTransferResult(Model):
    host_ack_ref: Ref
    ticket_ref: Ref
    deadline_ms: int
    redacted_summary: str = ""


class ReclaimRequest(Model):
    ticket_ref: Ref
    environment_id: Ref | None = None
    """Supplied by the coordinator from the ticket record."""


class ReclaimResult(Model):
    ticket_ref: Ref
    status: CleanupStatus
    redacted_summary: str = ""


def dump(model: BaseModel) -> dict[str, Any]:
    """The one wire form: JSON-safe dict."""
    return model.model_dump(mode="json")


LifecyclePolicy.model_rebuild()
