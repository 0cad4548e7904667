"""The seed's unit enums, spelled as on the wire (``rename_all = "snake_case"`` where upstream says so,
PascalCase where it does not: ``AgentErrorKind``, ``RetryClassification``, ``PolicyDecisionScope``).

Members are declared in upstream's declaration order, which is also serde's sort order for the
``BTreeSet`` fields that hold them (``IsolationCapabilitySet``). Enums with data live beside the
types that use them (``corral.contract.models``), as ``Tagged`` models.
"""

from __future__ import annotations

from enum import StrEnum


class AgentErrorKind(StrEnum):
    InvalidPackage = "InvalidPackage"
    InvalidStateTransition = "InvalidStateTransition"
    ProviderFailure = "ProviderFailure"
    ProjectionFailure = "ProjectionFailure"
    ToolFailure = "ToolFailure"
    ApprovalFailure = "ApprovalFailure"
    PolicyDenial = "PolicyDenial"
    JournalFailure = "JournalFailure"
    TelemetryFailure = "TelemetryFailure"
    IsolationFailure = "IsolationFailure"
    StructuredOutputFailure = "StructuredOutputFailure"
    StreamRuleFailure = "StreamRuleFailure"
    SubagentFailure = "SubagentFailure"
    ExtensionFailure = "ExtensionFailure"
    Cancellation = "Cancellation"
    ChildLifecycleFailure = "ChildLifecycleFailure"
    HookFailure = "HookFailure"
    Timeout = "Timeout"
    RecoveryRepairNeeded = "RecoveryRepairNeeded"
    HostConfigurationNeeded = "HostConfigurationNeeded"


class AmbientSecretPolicy(StrEnum):
    denied = "denied"
    explicit_refs_only = "explicit_refs_only"


class AuditabilityRequirement(StrEnum):
    none = "none"
    best_effort = "best_effort"
    required = "required"


class CleanupGuaranteeRequirement(StrEnum):
    best_effort = "best_effort"
    required = "required"


class CleanupMode(StrEnum):
    always = "always"
    on_success = "on_success"
    host_policy = "host_policy"


class CleanupStatus(StrEnum):
    completed = "completed"
    repair_needed = "repair_needed"


class ContentRefMode(StrEnum):
    none = "none"
    content_ref_if_policy_allows = "content_ref_if_policy_allows"


class DestinationKind(StrEnum):
    agent = "agent"
    agent_pool = "agent_pool"
    topic = "topic"
    provider = "provider"
    context_projection = "context_projection"
    journal = "journal"
    event_stream = "event_stream"
    telemetry = "telemetry"
    output_sink = "output_sink"
    host = "host"
    user = "user"
    remote_channel = "remote_channel"
    tool = "tool"
    extension = "extension"
    subagent = "subagent"
    external_runtime = "external_runtime"


class EffectKind(StrEnum):
    provider_request = "provider_request"
    tool_execution = "tool_execution"
    approval_dispatch = "approval_dispatch"
    memory_write = "memory_write"
    extension_action = "extension_action"
    output_delivery = "output_delivery"
    file_write = "file_write"
    process_start = "process_start"
    process_signal = "process_signal"
    isolated_process_start = "isolated_process_start"
    child_agent_start = "child_agent_start"
    run_message_delivery = "run_message_delivery"
    child_artifact_shutdown = "child_artifact_shutdown"
    detach_transfer = "detach_transfer"
    hook_mutation = "hook_mutation"


class EffectTerminalStatus(StrEnum):
    completed = "completed"
    failed = "failed"
    timed_out = "timed_out"
    cancelled = "cancelled"
    denied_before_execution = "denied_before_execution"
    unknown = "unknown"


class EntityKind(StrEnum):
    run = "run"
    turn = "turn"
    attempt = "attempt"
    agent = "agent"
    agent_pool = "agent_pool"
    topic = "topic"
    event = "event"
    message = "message"
    wake_condition = "wake_condition"
    context_contribution = "context_contribution"
    context_item = "context_item"
    context_projection = "context_projection"
    content = "content"
    artifact = "artifact"
    capability = "capability"
    package_sidecar = "package_sidecar"
    runtime_package = "runtime_package"
    policy_decision = "policy_decision"
    effect = "effect"
    effect_intent = "effect_intent"
    effect_result = "effect_result"
    tool_call = "tool_call"
    approval_request = "approval_request"
    stream_rule = "stream_rule"
    realtime_session = "realtime_session"
    hook = "hook"
    execution_environment = "execution_environment"
    child_artifact = "child_artifact"
    subagent_run = "subagent_run"
    extension_action = "extension_action"
    output_delivery = "output_delivery"


class ExecutionEnvironmentKind(StrEnum):
    host_process = "host_process"
    sandbox = "sandbox"
    container = "container"
    lightweight_vm = "lightweight_vm"
    remote_sandbox = "remote_sandbox"


class IsolationCapability(StrEnum):
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


class IsolationClass(StrEnum):
    host_process = "host_process"
    sandbox = "sandbox"
    container = "container"
    lightweight_vm = "lightweight_vm"
    remote_sandbox = "remote_sandbox"


class IsolationEventKind(StrEnum):
    isolation_requested = "isolation_requested"
    isolation_adapter_health_checked = "isolation_adapter_health_checked"
    isolation_capability_matched = "isolation_capability_matched"
    isolation_downgrade_denied = "isolation_downgrade_denied"
    isolation_downgrade_approved = "isolation_downgrade_approved"
    isolation_image_resolved = "isolation_image_resolved"
    isolation_rootfs_prepared = "isolation_rootfs_prepared"
    isolation_session_prepared = "isolation_session_prepared"
    isolation_mounts_resolved = "isolation_mounts_resolved"
    isolation_network_prepared = "isolation_network_prepared"
    isolation_secrets_prepared = "isolation_secrets_prepared"
    isolation_environment_prepared = "isolation_environment_prepared"
    isolation_process_started = "isolation_process_started"
    isolation_process_io_captured = "isolation_process_io_captured"
    isolation_process_stats_recorded = "isolation_process_stats_recorded"
    isolation_process_signalled = "isolation_process_signalled"
    isolation_process_exited = "isolation_process_exited"
    isolation_cleanup_started = "isolation_cleanup_started"
    isolation_cleanup_completed = "isolation_cleanup_completed"
    isolation_cleanup_failed = "isolation_cleanup_failed"
    isolation_failed = "isolation_failed"


class IsolationRuntimeKind(StrEnum):
    host_provided = "host_provided"
    host_process = "host_process"
    os_sandbox = "os_sandbox"
    container = "container"
    lightweight_vm = "lightweight_vm"
    remote_sandbox = "remote_sandbox"
    test_only_fake = "test_only_fake"


class IsolationTrustField(StrEnum):
    locality = "locality"
    tenancy = "tenancy"
    auditability = "auditability"
    cleanup = "cleanup"
    data_residency = "data_residency"
    secret_isolation = "secret_isolation"


class LocalityRequirement(StrEnum):
    any = "any"
    local = "local"
    remote = "remote"


class MountMode(StrEnum):
    read_only = "read_only"
    writable = "writable"


class PolicyDecisionScope(StrEnum):
    IsolationDowngrade = "IsolationDowngrade"
    ToolApproval = "ToolApproval"


class PolicyKind(StrEnum):
    approval = "approval"
    permission = "permission"
    sandbox = "sandbox"
    context = "context"
    privacy = "privacy"
    retention = "retention"
    redaction = "redaction"
    runtime_package = "runtime_package"
    host = "host"


class PrivacyClass(StrEnum):
    public = "public"
    internal = "internal"
    content_refs_only = "content_refs_only"
    sensitive = "sensitive"
    secret = "secret"


class ProcessContentCaptureMode(StrEnum):
    off = "off"
    metadata_only = "metadata_only"
    redacted_summary = "redacted_summary"
    content_ref = "content_ref"
    raw_content_if_policy_allows = "raw_content_if_policy_allows"


class ProcessIoStream(StrEnum):
    stdin = "stdin"
    stdout = "stdout"
    stderr = "stderr"


class ProcessOwnershipClass(StrEnum):
    agent_owned = "agent_owned"
    host_managed = "host_managed"
    detached_by_intent = "detached_by_intent"


class ProcessSignal(StrEnum):
    interrupt = "interrupt"
    terminate = "terminate"
    kill = "kill"


class RetentionClass(StrEnum):
    ephemeral = "ephemeral"
    run_scoped = "run_scoped"
    session_scoped = "session_scoped"
    durable = "durable"
    persistent = "persistent"
    host_policy = "host_policy"


class RetryClassification(StrEnum):
    Retryable = "Retryable"
    NotRetryable = "NotRetryable"
    RepairNeeded = "RepairNeeded"
    UserActionNeeded = "UserActionNeeded"
    HostConfigurationNeeded = "HostConfigurationNeeded"


class RootFilesystemMode(StrEnum):
    read_only = "read_only"
    writable_layer = "writable_layer"


class SecretIsolationRequirement(StrEnum):
    none = "none"
    best_effort = "best_effort"
    required = "required"


class SingleFileMountExpansionPolicy(StrEnum):
    audit_expanded_parent = "audit_expanded_parent"
    deny_single_file = "deny_single_file"


class SourceKind(StrEnum):
    sdk = "sdk"
    host = "host"
    user = "user"
    system = "system"
    developer = "developer"
    memory = "memory"
    compaction = "compaction"
    hook = "hook"
    extension = "extension"
    tool = "tool"
    remote_channel = "remote_channel"
    scheduled_task = "scheduled_task"
    subagent = "subagent"
    external_runtime = "external_runtime"
    replay = "replay"


class SymlinkPolicy(StrEnum):
    deny_escapes = "deny_escapes"
    follow_within_alias = "follow_within_alias"


class TenantBoundaryRequirement(StrEnum):
    shared_allowed = "shared_allowed"
    dedicated = "dedicated"


class TerminalMode(StrEnum):
    pipe = "pipe"
    pty = "pty"


class TruncationPolicy(StrEnum):
    truncate_with_marker = "truncate_with_marker"
    fail_if_exceeded = "fail_if_exceeded"


class TrustClass(StrEnum):
    trusted = "trusted"
    sdk_generated = "sdk_generated"
    host_provided = "host_provided"
    user_provided = "user_provided"
    external = "external"
    untrusted = "untrusted"


class WorkspaceMountMode(StrEnum):
    none = "none"
    snapshot = "snapshot"
    live_read_only = "live_read_only"
    live_writable = "live_writable"
    scratch = "scratch"
