"""Request and result models of the isolation contract, exactly as the seed puts them on the wire.

Each model is upstream's type (``ports/isolation.rs``, ``package/isolation.rs``; every one is spelled
out in ``tests/wire_corpus/SPEC.md``), built on the rules of ``corral.contract.wire``: a document the
upstream crate serializes validates here and dumps back unchanged, and what corral sends decodes with
upstream's types. Refs that upstream makes ``#[serde(transparent)]`` (``IsolationSessionRef``,
``RootfsRef``, ``NetworkNamespaceRef``, ``PreparedEnvironmentRef``, mount refs) are bare strings.

corral's extensions are optional fields beside upstream's, each marked *corral* below and omitted
from the dump when unset: the byte cursor and stdin writes of ``stream_io``, frame bytes, the ticket
of a detach, the results of earlier steps that ``prepare_environment`` creates the container from,
a fractional CPU quota, the tmpfs scratch size, POSIX rlimits, open stdin, the timeout signal.

Across Celery models travel as ``dump(model)`` dicts and are re-validated on the other side. corral
checks a few things more strictly than upstream, where a host must (absolute container paths without
``..``, env names, argv without NUL, no raw secret values): a host decides what it runs.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator, model_validator

from corral.contract.domain import DestinationRef, EffectIntent, EntityRef, PolicyRef, SourceRef
from corral.contract.vocabulary import (
    AmbientSecretPolicy,
    AuditabilityRequirement,
    CleanupGuaranteeRequirement,
    CleanupMode,
    CleanupStatus,
    ContentRefMode,
    DestinationKind,
    EffectKind,
    EffectTerminalStatus,
    EntityKind,
    ExecutionEnvironmentKind,
    IsolationCapability,
    IsolationClass,
    IsolationRuntimeKind,
    IsolationTrustField,
    LocalityRequirement,
    MountMode,
    ProcessContentCaptureMode,
    ProcessIoStream,
    ProcessOwnershipClass,
    ProcessSignal,
    RetentionClass,
    RootFilesystemMode,
    SecretIsolationRequirement,
    SingleFileMountExpansionPolicy,
    SourceKind,
    SymlinkPolicy,
    TenantBoundaryRequirement,
    TerminalMode,
    TruncationPolicy,
    WorkspaceMountMode,
)
from corral.contract.wire import I32, NEWTYPE, U16, U32, U64, Id, Model, Tagged, omit_default, omit_empty, omit_none

# Upstream's ``#[serde(transparent)]`` refs: bare, validated strings on the wire and in Python.
IsolationRuntimeRef = Id
IsolationSessionRef = Id
RootfsRef = Id
MountRef = Id
NetworkNamespaceRef = Id
SecretMountRef = Id
PreparedEnvironmentRef = Id
IsolatedProcessRef = Id


# ---------------------------------------------------------------------------------------------
# capability vocabulary and requirement

CLASS_STRENGTH: dict[IsolationClass, int] = {
    IsolationClass.host_process: 0,
    IsolationClass.sandbox: 1,
    IsolationClass.container: 2,
    IsolationClass.remote_sandbox: 3,
    IsolationClass.lightweight_vm: 4,
}
"""How strong each class isolates, for matching (upstream orders classes by declaration only)."""

_CAPABILITY_ORDER = {c: i for i, c in enumerate(IsolationCapability)}


class IsolationCapabilitySet(Model):
    """A ``BTreeSet`` of capabilities: sorted in declaration order, no duplicates, ``{}`` when empty."""

    capabilities: list[IsolationCapability] = omit_empty()

    @field_validator("capabilities")
    @classmethod
    def _as_set(cls, value: list[IsolationCapability]) -> list[IsolationCapability]:
        return sorted(set(value), key=_CAPABILITY_ORDER.__getitem__)

    @classmethod
    def of(cls, *capabilities: IsolationCapability) -> IsolationCapabilitySet:
        return cls(capabilities=list(capabilities))

    def __contains__(self, capability: object) -> bool:
        return capability in self.capabilities


class DataResidencyKind(StrEnum):
    any = "any"
    local_only = "local_only"
    region = "region"


class DataResidencyRequirement(Tagged):
    VARIANTS = {"any": (), "local_only": (), "region": (NEWTYPE, "region")}
    kind: DataResidencyKind = DataResidencyKind.any
    region: str | None = omit_none()

    def __str__(self) -> str:
        return f"region({self.region})" if self.kind is DataResidencyKind.region else self.kind.value


class IsolationTrustRequirement(Model):
    locality: LocalityRequirement = LocalityRequirement.any
    tenancy: TenantBoundaryRequirement = TenantBoundaryRequirement.shared_allowed
    auditability: AuditabilityRequirement = AuditabilityRequirement.none
    cleanup: CleanupGuaranteeRequirement = CleanupGuaranteeRequirement.best_effort
    data_residency: DataResidencyRequirement = Field(default_factory=DataResidencyRequirement)
    secret_isolation: SecretIsolationRequirement = SecretIsolationRequirement.none


class FallbackKind(StrEnum):
    deny = "deny"
    test_only_host_process = "test_only_host_process"
    allow_if_package_and_policy_approve = "allow_if_package_and_policy_approve"


class IsolationFallback(Tagged):
    """What may stand in for a missing class, capability or trust level: nothing (``deny``), or
    exactly the listed downgrades once the listed policies approve them."""

    VARIANTS = {
        "deny": (),
        "test_only_host_process": (),
        "allow_if_package_and_policy_approve": (
            "accepted_classes",
            "accepted_capability_downgrades",
            "accepted_trust_downgrades",
            "required_policy_refs",
            "accept_degraded_host",
        ),
    }
    OPTIONAL = frozenset({"accept_degraded_host"})
    kind: FallbackKind = FallbackKind.deny
    accepted_classes: list[IsolationClass] = Field(default_factory=list)
    accepted_capability_downgrades: list[IsolationCapability] = Field(default_factory=list)
    accepted_trust_downgrades: list[IsolationTrustField] = Field(default_factory=list)
    required_policy_refs: list[PolicyRef] = Field(default_factory=list)
    accept_degraded_host: bool = omit_default(False)
    """corral: the caller also accepts a host that reports itself degraded (with the same approvals)."""


class IsolationRequirement(Model):
    minimum_class: IsolationClass = IsolationClass.container
    trust: IsolationTrustRequirement = Field(default_factory=IsolationTrustRequirement)
    preferred_adapters: list[Id] = omit_empty()
    fallback: IsolationFallback = Field(default_factory=IsolationFallback)
    required_capabilities: IsolationCapabilitySet = Field(default_factory=IsolationCapabilitySet)


class IsolationAdapterRequirement(Model):
    required_class: IsolationClass


# ---------------------------------------------------------------------------------------------
# capability report


class HealthState(StrEnum):
    healthy = "healthy"
    degraded = "degraded"
    unsupported_host = "unsupported_host"


class IsolationRuntimeHealth(Tagged):
    VARIANTS = {"healthy": (), "degraded": ("reason",), "unsupported_host": ("missing_prerequisites",)}
    kind: HealthState = HealthState.healthy
    reason: str = ""
    missing_prerequisites: list[str] = Field(default_factory=list)


class PlatformReport(Model):
    platform: str
    os: str
    cpu_architecture: str
    emulation_supported: bool = False


class IsolationCapabilityReport(Model):
    report_ref: Id
    adapter_ref: Id
    adapter_kind: IsolationRuntimeKind
    adapter_version: str
    capability_version: str = "isolation.capability.v1"
    health: IsolationRuntimeHealth = Field(default_factory=IsolationRuntimeHealth)
    supported_classes: list[IsolationClass] = omit_empty()
    platform: PlatformReport
    capabilities: IsolationCapabilitySet
    trust: IsolationTrustRequirement
    unsupported_requirements: list[str] = omit_empty()
    """Features this adapter does not enforce, said plainly (never a silent no-op)."""
    log_retention: RetentionClass = RetentionClass.run_scoped
    weaker_features: list[str] = omit_empty()
    """corral: features supported with a caveat (for example env secrets visible to ``docker inspect``)."""
    hardening: list[str] = omit_empty()
    """corral: sandbox hardening enforced on every process (for example ``cap_drop:ALL``), each checked
    against the engine when the report is built; one that cannot be enforced is not listed."""


# ---------------------------------------------------------------------------------------------
# the environment spec

_ENV_NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


def _check_container_path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("a container path must be absolute")
    if "\x00" in value or len(value) > 1024:
        raise ValueError("a container path must be at most 1024 bytes without NUL")
    if any(part == ".." for part in value.split("/")):
        raise ValueError("a container path must not contain '..'")
    return "/" + posixpath.normpath(value).lstrip("/")


class ImageRequest(Model):
    image_ref: Id
    """An image name such as ``corral/busybox:latest`` (optionally ``@sha256:...``); the host checks it."""
    expected_digest: str | None = None
    expected_architecture: str | None = None
    credential_alias_ref: Id | None = None


class RootfsRequest(Model):
    rootfs_ref: Id
    read_only: bool = True
    writable_layer_ref: str | None = None


MIN_MEMORY_MB = 6


class ResourceLimits(Model):
    cpus: U16 = 1
    memory_mb: U64 = 1024
    timeout_ms: U64 = 120_000
    process_count: U32 = 32
    cpu_millis: U32 | None = omit_none(ge=1)
    """corral: a CPU quota in thousandths of a CPU, for a fractional limit (``--cpus 0.5`` is
    ``cpus = 1, cpu_millis = 500``); ``cpus`` stays upstream's whole number, rounded up."""

    def problems(self) -> list[str]:
        """What no runtime can run, whatever the host policy says (upstream only checks the types)."""
        found = []
        if self.cpu_quota <= 0:
            found.append("cpus must be more than 0")
        if self.memory_mb < MIN_MEMORY_MB:
            found.append(f"memory_mb must be at least {MIN_MEMORY_MB} (the engine's minimum)")
        if self.timeout_ms < 1:
            found.append("timeout_ms must be at least 1")
        if self.process_count < 1:
            found.append("process_count must be at least 1")
        return found

    @property
    def cpu_quota(self) -> float:
        """The CPU limit the runtime enforces, in CPUs."""
        return self.cpu_millis / 1000 if self.cpu_millis is not None else float(self.cpus)

    @classmethod
    def with_cpus(cls, cpus: float, **limits: Any) -> ResourceLimits:
        millis = round(cpus * 1000)
        whole = max(1, -(-millis // 1000))  # upstream's whole number, rounded up
        return cls(cpus=whole, cpu_millis=None if millis == whole * 1000 else millis, **limits)


class WorkspaceMountPolicy(Model):
    workspace_ref: str | None = omit_none()
    mode: WorkspaceMountMode = WorkspaceMountMode.none
    mount_ref: Id | None = omit_none()
    destination_path: str | None = omit_none()


class MountExpansionAudit(Model):
    single_file_mount: bool = False
    expanded_parent_alias: str | None = None
    symlink_resolution: str = "none"
    redacted_summary: str = ""


class MountPolicy(Model):
    mount_ref: Id
    source_alias: str = Field(pattern=_NAME_RE)
    """A host alias defined by host policy; never a raw host path."""
    destination_path: str
    mode: MountMode = MountMode.read_only
    expansion_audit: MountExpansionAudit = Field(default_factory=MountExpansionAudit)
    policy_refs: list[PolicyRef] = omit_empty()

    @field_validator("destination_path")
    @classmethod
    def _dest(cls, value: str) -> str:
        path = _check_container_path(value)
        if path == "/":
            raise ValueError("a mount must not cover the root directory")
        return path


class FilesystemIsolationPolicy(Model):
    root: RootFilesystemMode = RootFilesystemMode.read_only
    workspace: WorkspaceMountPolicy = Field(default_factory=WorkspaceMountPolicy)
    mounts: list[MountPolicy] = omit_empty(max_length=64)
    symlink_policy: SymlinkPolicy = SymlinkPolicy.deny_escapes
    single_file_mount_expansion: SingleFileMountExpansionPolicy = SingleFileMountExpansionPolicy.audit_expanded_parent
    scratch_mb: int | None = omit_none(ge=1, le=65_536)
    """corral: size of the tmpfs scratch at ``/tmp`` (the only writable place on a read-only root);
    64 MiB when unset (``scratch``)."""

    @property
    def scratch(self) -> int:
        return self.scratch_mb if self.scratch_mb is not None else 64

    @model_validator(mode="after")
    def _unique_destinations(self) -> FilesystemIsolationPolicy:
        dests = [m.destination_path for m in self.mounts]
        if len(set(dests)) != len(dests):
            raise ValueError("two mounts share a destination path")
        return self


class NetworkKind(StrEnum):
    disabled = "disabled"
    allowlist = "allowlist"
    egress_scoped = "egress_scoped"
    socket_relay = "socket_relay"
    exposed_ports = "exposed_ports"
    adapter_defined_denied = "adapter_defined_denied"


class NetworkIsolationPolicy(Tagged):
    VARIANTS = {
        "disabled": (),
        "adapter_defined_denied": (),
        "allowlist": ("hosts",),
        "egress_scoped": ("rules",),
        "socket_relay": ("relay_refs",),
        "exposed_ports": ("ports",),
    }
    kind: NetworkKind = NetworkKind.disabled
    hosts: list[str] = Field(default_factory=list, max_length=256)
    rules: list[str] = Field(default_factory=list, max_length=256)
    relay_refs: list[str] = Field(default_factory=list, max_length=64)
    ports: list[U16] = Field(default_factory=list, max_length=64)

    def summary_key(self) -> str:
        """Upstream's ``summary_key``: ``disabled``, ``allowlist:h1,h2``, ``ports:80,443``..."""
        match self.kind:
            case NetworkKind.allowlist:
                return "allowlist:" + ",".join(self.hosts)
            case NetworkKind.egress_scoped:
                return "egress:" + ",".join(self.rules)
            case NetworkKind.socket_relay:
                return "socket_relay:" + ",".join(self.relay_refs)
            case NetworkKind.exposed_ports:
                return "ports:" + ",".join(str(p) for p in self.ports)
        return self.kind.value


def _secret_destination() -> DestinationRef:
    return DestinationRef.with_kind(DestinationKind.external_runtime, "destination.isolation.runtime")


def _redaction_policy() -> PolicyRef:
    return PolicyRef.host("policy.process_io.redacted")


class SecretMountPolicy(Model):
    secret_ref: Id = Field(pattern=_NAME_RE)
    mount_ref: Id
    destination: DestinationRef = Field(default_factory=_secret_destination)
    redaction_policy_ref: PolicyRef = Field(default_factory=_redaction_policy)
    path: str | None = omit_none()
    """corral: where the file appears in the sandbox; ``/run/secrets/<secret_ref>`` when unset."""

    _path = field_validator("path")(classmethod(lambda cls, v: v if v is None else _check_container_path(v)))

    @property
    def container_path(self) -> str:
        return self.path or f"/run/secrets/{self.secret_ref}"


class SecretEnvPolicy(Model):
    secret_ref: Id = Field(pattern=_NAME_RE)
    env_key: str = Field(pattern=_ENV_NAME_RE)
    destination: DestinationRef = Field(default_factory=_secret_destination)
    redaction_policy_ref: PolicyRef = Field(default_factory=_redaction_policy)


class SecretExposurePolicy(Model):
    ambient: AmbientSecretPolicy = AmbientSecretPolicy.denied
    secret_mounts: list[SecretMountPolicy] = omit_empty(max_length=64)
    env_secrets: list[SecretEnvPolicy] = omit_empty(max_length=64)
    teardown_required: bool = True


class LifecycleKind(StrEnum):
    EphemeralCleanupRequired = "EphemeralCleanupRequired"
    ReusableIfPolicyAllows = "ReusableIfPolicyAllows"


class EnvironmentLifecyclePolicy(Tagged):
    VARIANTS = {"EphemeralCleanupRequired": ("cleanup_mode",), "ReusableIfPolicyAllows": ("cleanup_mode",)}
    kind: LifecycleKind = LifecycleKind.EphemeralCleanupRequired
    cleanup_mode: CleanupMode = CleanupMode.always


class ShutdownKind(StrEnum):
    terminate_after_grace = "terminate_after_grace"
    require_exit_or_cleanup = "require_exit_or_cleanup"
    preserve_by_policy = "preserve_by_policy"


class ChildShutdownBehavior(Tagged):
    VARIANTS = {"terminate_after_grace": ("grace_ms",), "require_exit_or_cleanup": (), "preserve_by_policy": ()}
    kind: ShutdownKind = ShutdownKind.require_exit_or_cleanup
    grace_ms: U64 = 5_000


class DetachPolicy(Model):
    allowed: bool = False
    required_policy_refs: list[PolicyRef] = omit_empty()


class ReclaimPolicy(Model):
    required: bool = True
    policy_ref: PolicyRef = Field(default_factory=lambda: PolicyRef.host("policy.reclaim.host-required"))


class ProcessOwnershipPolicy(Model):
    child_artifact_id: Id = "child.isolation.process"
    owner_run_id: Id = "run.corral"
    ownership_class: ProcessOwnershipClass = ProcessOwnershipClass.agent_owned
    on_parent_cancel: ChildShutdownBehavior = Field(
        default_factory=lambda: ChildShutdownBehavior(kind=ShutdownKind.terminate_after_grace, grace_ms=5_000)
    )
    on_parent_complete: ChildShutdownBehavior = Field(default_factory=ChildShutdownBehavior)
    detach_policy: DetachPolicy = Field(default_factory=DetachPolicy)
    reclaim_policy: ReclaimPolicy = Field(default_factory=ReclaimPolicy)


class ProcessIoCapturePolicy(Model):
    default_capture: ProcessContentCaptureMode = ProcessContentCaptureMode.metadata_only
    max_bytes: U64 = 64 << 20
    """Spool cap for the stream; beyond it the head is kept and the frame says ``truncated``."""
    truncation_policy: TruncationPolicy = TruncationPolicy.truncate_with_marker
    content_ref_mode: ContentRefMode = ContentRefMode.none
    redaction_policy_ref: PolicyRef = Field(default_factory=_redaction_policy)


class ProcessIoPolicy(Model):
    stdout: ProcessIoCapturePolicy = Field(default_factory=ProcessIoCapturePolicy)
    stderr: ProcessIoCapturePolicy = Field(default_factory=ProcessIoCapturePolicy)


class ProcessStatsPolicy(Model):
    collect_cpu: bool = True
    collect_memory: bool = True
    collect_process_count: bool = True
    collect_filesystem_bytes: bool = True
    collect_network_bytes: bool = True
    collect_exit_status: bool = True


class EnvironmentSpec(Model):
    environment_id: Id = ""
    """Required on the wire; left empty here, the enclosing ``ExecutionEnvironment`` fills in its own."""
    kind: ExecutionEnvironmentKind = ExecutionEnvironmentKind.container
    requirement: IsolationRequirement = Field(default_factory=IsolationRequirement)
    image: ImageRequest | None = omit_none()
    rootfs: RootfsRequest | None = omit_none()
    resources: ResourceLimits = Field(default_factory=ResourceLimits)
    filesystem: FilesystemIsolationPolicy = Field(default_factory=FilesystemIsolationPolicy)
    network: NetworkIsolationPolicy = Field(default_factory=NetworkIsolationPolicy)
    secrets: SecretExposurePolicy = Field(default_factory=SecretExposurePolicy)
    lifecycle: EnvironmentLifecyclePolicy = Field(default_factory=EnvironmentLifecyclePolicy)
    ownership: ProcessOwnershipPolicy = Field(default_factory=ProcessOwnershipPolicy)
    accepted_adapters: list[IsolationAdapterRequirement] = omit_empty()
    io_policy: ProcessIoPolicy = Field(default_factory=ProcessIoPolicy)
    stats_policy: ProcessStatsPolicy = Field(default_factory=ProcessStatsPolicy)

    @property
    def root_read_only(self) -> bool:
        """The root stays read-only unless the filesystem or the rootfs request asks for a writable one."""
        writable = self.filesystem.root is RootFilesystemMode.writable_layer or (
            self.rootfs is not None and not self.rootfs.read_only
        )
        return not writable


class PackageSidecarRef(Model):
    sidecar_id: str = "sidecar.isolation.default"
    kind: str = "isolation_requirement"
    version: str = "v1"
    content_hash: str | None = omit_none()


def _default_source() -> SourceRef:
    return SourceRef.with_kind(SourceKind.sdk, "source.sdk.isolation")


def _default_destination() -> DestinationRef:
    return DestinationRef.with_kind(DestinationKind.external_runtime, "destination.isolation.runtime")


class ExecutionEnvironment(Model):
    """One sandbox as the caller asks for it. ``environment_id`` appears twice on the wire (here and
    in ``spec``); corral fills the spec's from this one when a caller leaves it out, and refuses
    the two when they differ."""

    environment_id: Id
    requirement_ref: Id = ""
    sidecar_ref: PackageSidecarRef = Field(default_factory=PackageSidecarRef)
    spec: EnvironmentSpec
    source: SourceRef = Field(default_factory=_default_source)
    destination: DestinationRef = Field(default_factory=_default_destination)
    policy_refs: list[PolicyRef] = omit_empty()
    runtime_package_fingerprint: str = "runtime.package.fingerprint.pending"

    @model_validator(mode="before")
    @classmethod
    def _fill_ids(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("environment_id"), str):
            return data
        env_id = data["environment_id"]
        data = dict(data)
        data.setdefault("requirement_ref", f"isolation.requirement.{env_id}")
        spec = data.get("spec")
        if spec is None:
            data["spec"] = {"environment_id": env_id}
        elif isinstance(spec, dict) and "environment_id" not in spec:
            data["spec"] = {**spec, "environment_id": env_id}
        elif isinstance(spec, EnvironmentSpec) and not spec.environment_id:
            data["spec"] = spec.model_copy(update={"environment_id": env_id})
        return data

    @classmethod
    def by_id(cls, environment_id: str) -> ExecutionEnvironment:
        """An environment known only by its id, with the default spec (what cleanup by id needs)."""
        return cls(environment_id=environment_id, spec=EnvironmentSpec(environment_id=environment_id))

    @model_validator(mode="after")
    def _one_id(self) -> ExecutionEnvironment:
        if self.spec.environment_id != self.environment_id:
            raise ValueError("spec.environment_id differs from environment_id")
        return self


# ---------------------------------------------------------------------------------------------
# process


class StdinKind(StrEnum):
    closed = "closed"
    content_ref = "content_ref"


class StdinPolicy(Tagged):
    VARIANTS = {"closed": (), "content_ref": (NEWTYPE, "content_ref")}
    kind: StdinKind = StdinKind.closed
    content_ref: Id | None = omit_none()


class RedactedEnvVar(Model):
    name: str = Field(pattern=_ENV_NAME_RE)
    value_ref: Id | None = omit_none()
    redacted_value: str = Field(default="", max_length=32_768)
    """The value as it may be shown; for a plain (non-secret) variable it is the value itself."""
    raw_value_present: bool = False

    @model_validator(mode="after")
    def _no_raw_values(self) -> RedactedEnvVar:
        if self.raw_value_present:
            raise ValueError("isolated process environment cannot contain raw secret values")
        if "\x00" in self.redacted_value:
            raise ValueError("an env value must not contain NUL")
        return self


_RLIMIT_NAME = Annotated[str, Field(pattern=r"^[a-z]{2,16}$")]


class IsolatedProcessSpec(Model):
    process_id: Id
    argv: list[Annotated[str, Field(max_length=131_072)]] = Field(min_length=1, max_length=4096)
    cwd: str = "/"
    env: list[RedactedEnvVar] = omit_empty(max_length=1024)
    user: str | None = omit_none(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$")
    terminal_mode: TerminalMode = TerminalMode.pipe
    timeout_ms: U64 = 120_000
    rlimits: ResourceLimits = Field(default_factory=ResourceLimits)
    stdin: StdinPolicy = Field(default_factory=StdinPolicy)
    stdout_policy: ProcessIoCapturePolicy = Field(default_factory=ProcessIoCapturePolicy)
    stderr_policy: ProcessIoCapturePolicy = Field(default_factory=ProcessIoCapturePolicy)
    stats_policy: ProcessStatsPolicy = Field(default_factory=ProcessStatsPolicy)
    ownership: ProcessOwnershipPolicy = Field(default_factory=ProcessOwnershipPolicy)
    posix_rlimits: dict[_RLIMIT_NAME, Annotated[int, Field(ge=0)]] = omit_empty(dict)
    """corral: POSIX rlimits by name (``nofile``, ``nproc``...), within the host policy's bounds."""
    stdin_open: bool = omit_default(False)
    """corral: stdin stays open for bounded writes through ``stream_io`` (upstream: ``closed``)."""
    timeout_signal: ProcessSignal = omit_default(ProcessSignal.terminate)
    """corral: what the timeout sends first; a terminate is followed by a kill after ``grace_ms``."""
    grace_ms: int = omit_default(5_000)
    """corral: how long a terminated process gets before it is killed (0 to 600000)."""

    _cwd = field_validator("cwd")(classmethod(lambda cls, v: _check_container_path(v)))

    @field_validator("grace_ms")
    @classmethod
    def _grace(cls, value: int) -> int:
        if not 0 <= value <= 600_000:
            raise ValueError("grace_ms must be between 0 and 600000")
        return value

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

    def effect_intent(self, environment: ExecutionEnvironment) -> EffectIntent:
        """Upstream's ``IsolatedProcessSpec::effect_intent``: the start as an effect of the environment."""
        return EffectIntent(
            effect_id=f"effect.{self.process_id}",
            kind=EffectKind.isolated_process_start,
            subject_ref=EntityRef.of(EntityKind.execution_environment, environment.environment_id),
            source=environment.source,
            destination=environment.destination,
            policy_refs=environment.policy_refs,
            idempotency_key=f"idempotency.{self.process_id}",
            dedupe_key=f"dedupe.{self.process_id}",
            redacted_summary="start isolated process with redacted argv and environment",
        )


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


class ProcessStatus(Model):
    """corral: the process's own state, beside upstream's effect ``terminal_status``."""

    state: ProcessState
    exit_code: int | None = None
    reason: TerminationReason | None = None


# ---------------------------------------------------------------------------------------------
# requests and results, one pair per operation (results that upstream makes a transparent ref are
# plain ``str``)


class SessionState(StrEnum):
    preparing = "preparing"
    prepared = "prepared"
    running = "running"
    exited = "exited"
    detached = "detached"
    cleaning = "cleaning"
    cleaned = "cleaned"
    repair_needed = "repair_needed"


class SessionPrepareRequest(Model):
    environment: ExecutionEnvironment
    host_ref: Id | None = omit_none()
    """corral: the host the caller means; a worker of another host refuses the request."""


class ImageResolveRequest(Model):
    image: ImageRequest
    environment: ExecutionEnvironment | None = omit_none()
    """corral: the environment the image is for (its session and host policy); corral's chain sends it."""


class ImageResolution(Model):
    image_ref: Id
    digest: str
    redacted_credential_alias: str | None = None
    architecture: str | None = omit_none()
    """corral: the image's architecture as the engine reports it."""


class RootfsPrepareRequest(Model):
    rootfs: RootfsRequest
    environment: ExecutionEnvironment | None = omit_none()
    """corral: the environment the root is for; corral's chain sends it."""


class MountResolveRequest(Model):
    environment: ExecutionEnvironment


class MountPlan(Model):
    mounts: list[Id] = omit_empty()
    expanded_exposure_audits: list[str] = omit_empty()


class NetworkPrepareRequest(Model):
    environment: ExecutionEnvironment


class SecretPrepareRequest(Model):
    environment: ExecutionEnvironment


class SecretMaterializationPlan(Model):
    secret_mount_refs: list[Id] = omit_empty()
    teardown_required: bool = True
    env_secret_keys: list[str] = omit_empty()
    """corral: names of env variables that will carry a secret (never their values)."""


class EnvironmentPrepareRequest(Model):
    environment: ExecutionEnvironment
    process: IsolatedProcessSpec | None = omit_none()
    """corral: the process the container is created for (upstream passes it to ``start_process`` only;
    corral creates the container here, so starting it is one engine call)."""
    image: ImageResolution | None = omit_none()
    """corral: filled by the coordinator from the session record, like the results below."""
    rootfs: str | None = omit_none()
    mounts: MountPlan | None = omit_none()
    network: str | None = omit_none()
    secrets: SecretMaterializationPlan | None = omit_none()


class ProcessStartRequest(Model):
    environment: ExecutionEnvironment
    process: IsolatedProcessSpec
    effect_intent: EffectIntent | None = omit_none()
    """Required upstream; corral's client sends ``process.effect_intent(environment)``, and the
    coordinator journals its own (the host owns idempotency keys)."""


MAX_FRAME_BYTES = 1 << 20
MAX_READ_WAIT_MS = 2000
"""The longest a read may be held open for output (``ProcessIoRequest.wait_ms``)."""
MAX_GRACE_MS = 600_000
"""The longest grace a host gives a terminated process before the kill (10 minutes)."""


class ProcessIoRequest(Model):
    process_ref: Id
    stream: ProcessIoStream
    cursor: int = omit_default(0)
    """corral: byte offset to read from (stdout/stderr); ignored for stdin."""
    max_bytes: int = omit_default(64 * 1024)
    """corral: the most bytes one frame returns (1 to ``MAX_FRAME_BYTES``)."""
    data_b64: str | None = omit_none(max_length=(MAX_FRAME_BYTES * 4) // 3 + 4)
    """corral, stdin only: the bytes to write, base64; at most ``MAX_FRAME_BYTES`` once decoded."""
    close_stdin: bool = omit_default(False)
    """corral, stdin only: close the process's stdin after this write."""
    wait_ms: int = omit_default(0)
    """corral, stdout/stderr only: when nothing is past ``cursor`` yet and the stream is not at its
    end, hold the read up to this long (at most ``MAX_READ_WAIT_MS``) for new bytes of either
    stream or the end. The host holds only a few reads at once; the others answer at once."""

    @field_validator("wait_ms")
    @classmethod
    def _wait_ms(cls, value: int) -> int:
        if not 0 <= value <= MAX_READ_WAIT_MS:
            raise ValueError(f"wait_ms must be between 0 and {MAX_READ_WAIT_MS}")
        return value

    @field_validator("cursor")
    @classmethod
    def _cursor(cls, value: int) -> int:
        if value < 0:
            raise ValueError("cursor must not be negative")
        return value

    @field_validator("max_bytes")
    @classmethod
    def _max_bytes(cls, value: int) -> int:
        if not 1 <= value <= MAX_FRAME_BYTES:
            raise ValueError(f"max_bytes must be between 1 and {MAX_FRAME_BYTES}")
        return value

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
        if self.stream is not ProcessIoStream.stdin and (self.data_b64 is not None or self.close_stdin):
            raise ValueError("data and close_stdin apply to the stdin stream only")
        return self


class ProcessIoFrame(Model):
    stream_ref: Id
    stream: ProcessIoStream
    cursor: U64
    """Where the next frame starts: resuming from it never re-reads or skips a byte."""
    byte_count: U64
    content_hash: str
    content_refs: list[Id] = omit_empty()
    raw_content_present: bool = False
    truncated: bool = False
    redacted_summary: str = ""
    start_cursor: int | None = omit_none()
    """corral: where this frame's bytes start in the stream."""
    content_b64: str | None = omit_none()
    """corral: the frame's (redacted) bytes, base64, when the capture policy lets them out."""
    dropped_bytes: int = omit_default(0)
    """corral: bytes the spool cap dropped before this frame's end."""
    eof: bool = omit_default(False)
    """corral: the stream has ended and this frame reaches its end."""
    redaction_count: int = omit_default(0)
    """corral: how many secret values were replaced in this frame."""


class ProcessStartResult(Model):
    process_ref: Id
    adapter_session_ref: Id | None = None
    terminal_status: EffectTerminalStatus = EffectTerminalStatus.completed
    """Upstream's effect status of the start (``completed`` once the process runs)."""
    external_operation_id: str | None = None
    io_frames: list[ProcessIoFrame] = omit_empty()
    redacted_summary: str = ""
    process_status: ProcessStatus | None = omit_none()
    """corral: the process's own state when the result was made (``running``, or ``exited`` with
    its code for a replay after the process ended)."""


class ProcessSignalRequest(Model):
    process_ref: Id
    signal: ProcessSignal
    grace_ms: U64
    """How long a terminate waits before the kill (required upstream; a host caps it, ``MAX_GRACE_MS``)."""


class ProcessSignalResult(Model):
    process_ref: Id
    signal: ProcessSignal
    delivered: bool
    redacted_summary: str = ""


class ProcessStatsRequest(Model):
    process_ref: Id


class ProcessStatsSnapshot(Model):
    snapshot_ref: Id
    process_ref: Id
    cpu_millis: U64 | None = None
    memory_bytes: U64 | None = None
    process_count: U32 | None = None
    filesystem_bytes: U64 | None = None
    network_bytes: U64 | None = None
    exit_code: I32 | None = None
    redacted_summary: str = ""
    state: ProcessState | None = omit_none()
    """corral: the process's state (``running``, ``exited``...)."""
    oom_killed: bool = omit_default(False)
    """corral: the kernel's OOM killer ended the process."""
    reason: TerminationReason | None = omit_none()
    """corral: why the process ended."""


class CleanupRequest(Model):
    environment: ExecutionEnvironment
    cleanup_plan_ref: Id


class CleanupResult(Model):
    cleanup_plan_ref: Id
    status: CleanupStatus
    external_operation_id: str | None = None
    redacted_summary: str = ""


class DetachTransferRequest(Model):
    environment: ExecutionEnvironment
    ttl_ms: int = omit_default(3_600_000)
    """corral: how long the host keeps the detached sandbox before reclaiming it (1 s to 30 days)."""
    ticket_ref: Id | None = omit_none()
    """corral: supplied by the coordinator, which owns the ticket."""

    @field_validator("ttl_ms")
    @classmethod
    def _ttl(cls, value: int) -> int:
        if not 1_000 <= value <= 30 * 24 * 3600 * 1000:
            raise ValueError("ttl_ms must be between 1 s and 30 days")
        return value


class DetachTransferResult(Model):
    host_ack_ref: str
    redacted_summary: str = ""
    ticket_ref: Id | None = omit_none()
    """corral: the reclaim ticket that now owns the sandbox."""
    deadline_ms: int | None = omit_none()
    """corral: when the ticket expires and the sweeper reclaims the sandbox (epoch ms)."""


class ReclaimRequest(Model):
    ticket_ref: Id
    environment_id: Id | None = omit_none()
    """corral: supplied by the coordinator from the ticket record."""


class ReclaimResult(Model):
    ticket_ref: Id
    status: CleanupStatus
    redacted_summary: str = ""


def dump(model: BaseModel) -> dict[str, Any]:
    """The one wire form: the JSON-safe dict upstream's serde would write."""
    return model.model_dump(mode="json")
