"""Generate the upstream-wire-form corpus (tests/wire_corpus/) for the isolation contract.

Every document is written in the exact form upstream serde produces, so that decoding it as the
named Rust type and re-encoding gives the same JSON value (modulo object key order). In particular:
  * empty Vec fields marked `default, skip_serializing_if = "Vec::is_empty"` are OMITTED, never [];
  * Option fields without skip_serializing_if are present as null when None;
  * IsolationCapabilitySet.capabilities is a BTreeSet: listed in enum declaration order, no dupes.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)
UPSTREAM = Path(sys.argv[2] if len(sys.argv) > 2 else "/work/shared/seed/upstream/examples")

INDEX: dict[str, dict[str, str]] = {}


def put(name: str, rust_type: str, doc: object, note: str = "") -> None:
    assert name not in INDEX, name
    (OUT / name).write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    INDEX[name] = {"rust_type": rust_type, "note": note} if note else {"rust_type": rust_type}


# ---------------------------------------------------------------------------------- vocabularies
CAPABILITIES = [
    "read_only_root",
    "writable_layer",
    "mount_read_only_enforcement",
    "single_file_mount_expansion_audit",
    "no_network_guarantee",
    "egress_allowlist",
    "secret_isolation",
    "secret_mount",
    "secret_redaction",
    "process_timeout",
    "process_signal",
    "process_rlimits",
    "content_ref_io",
    "io_redaction",
    "process_stats",
    "cleanup",
    "detach",
    "reclaim",
    "audit_log",
]
CLASSES = ["host_process", "sandbox", "container", "lightweight_vm", "remote_sandbox"]
TRUST_FIELDS = ["locality", "tenancy", "auditability", "cleanup", "data_residency", "secret_isolation"]
ERROR_KINDS = [
    "InvalidPackage",
    "InvalidStateTransition",
    "ProviderFailure",
    "ProjectionFailure",
    "ToolFailure",
    "ApprovalFailure",
    "PolicyDenial",
    "JournalFailure",
    "TelemetryFailure",
    "IsolationFailure",
    "StructuredOutputFailure",
    "StreamRuleFailure",
    "SubagentFailure",
    "ExtensionFailure",
    "Cancellation",
    "ChildLifecycleFailure",
    "HookFailure",
    "Timeout",
    "RecoveryRepairNeeded",
    "HostConfigurationNeeded",
]
RETRY = ["Retryable", "NotRetryable", "RepairNeeded", "UserActionNeeded", "HostConfigurationNeeded"]
EFFECT_KINDS = [
    "provider_request",
    "tool_execution",
    "approval_dispatch",
    "memory_write",
    "extension_action",
    "output_delivery",
    "file_write",
    "process_start",
    "process_signal",
    "isolated_process_start",
    "child_agent_start",
    "run_message_delivery",
    "child_artifact_shutdown",
    "detach_transfer",
    "hook_mutation",
]
TERMINAL = ["completed", "failed", "timed_out", "cancelled", "denied_before_execution", "unknown"]
EVENT_KINDS = [
    "isolation_requested",
    "isolation_adapter_health_checked",
    "isolation_capability_matched",
    "isolation_downgrade_denied",
    "isolation_downgrade_approved",
    "isolation_image_resolved",
    "isolation_rootfs_prepared",
    "isolation_session_prepared",
    "isolation_mounts_resolved",
    "isolation_network_prepared",
    "isolation_secrets_prepared",
    "isolation_environment_prepared",
    "isolation_process_started",
    "isolation_process_io_captured",
    "isolation_process_stats_recorded",
    "isolation_process_signalled",
    "isolation_process_exited",
    "isolation_cleanup_started",
    "isolation_cleanup_completed",
    "isolation_cleanup_failed",
    "isolation_failed",
]
VOCAB: dict[str, list[object]] = {
    "IsolationClass": CLASSES,
    "IsolationCapability": CAPABILITIES,
    "IsolationTrustField": TRUST_FIELDS,
    "IsolationRuntimeKind": [
        "host_provided",
        "host_process",
        "os_sandbox",
        "container",
        "lightweight_vm",
        "remote_sandbox",
        "test_only_fake",
    ],
    "IsolationRuntimeHealth": [
        "healthy",
        {"degraded": {"reason": "docker daemon slow"}},
        {"unsupported_host": {"missing_prerequisites": ["docker", "cgroup_v2"]}},
        {"unsupported_host": {"missing_prerequisites": []}},
    ],
    "LocalityRequirement": ["any", "local", "remote"],
    "TenantBoundaryRequirement": ["shared_allowed", "dedicated"],
    "AuditabilityRequirement": ["none", "best_effort", "required"],
    "CleanupGuaranteeRequirement": ["best_effort", "required"],
    "DataResidencyRequirement": ["any", "local_only", {"region": "eu-west-1"}],
    "SecretIsolationRequirement": ["none", "best_effort", "required"],
    "IsolationFallback": [
        "deny",
        "test_only_host_process",
        {
            "allow_if_package_and_policy_approve": {
                "accepted_classes": [],
                "accepted_capability_downgrades": [],
                "accepted_trust_downgrades": [],
                "required_policy_refs": [],
            }
        },
    ],
    "ExecutionEnvironmentKind": CLASSES,
    "RootFilesystemMode": ["read_only", "writable_layer"],
    "WorkspaceMountMode": ["none", "snapshot", "live_read_only", "live_writable", "scratch"],
    "MountMode": ["read_only", "writable"],
    "SymlinkPolicy": ["deny_escapes", "follow_within_alias"],
    "SingleFileMountExpansionPolicy": ["audit_expanded_parent", "deny_single_file"],
    "NetworkIsolationPolicy": [
        "disabled",
        "adapter_defined_denied",
        {"allowlist": {"hosts": ["pypi.org", "files.pythonhosted.org"]}},
        {"egress_scoped": {"rules": ["tcp:443"]}},
        {"socket_relay": {"relay_refs": ["relay.docker-sock"]}},
        {"exposed_ports": {"ports": [8080, 65535]}},
        {"allowlist": {"hosts": []}},
    ],
    "AmbientSecretPolicy": ["denied", "explicit_refs_only"],
    "EnvironmentLifecyclePolicy": [
        {"EphemeralCleanupRequired": {"cleanup_mode": "always"}},
        {"ReusableIfPolicyAllows": {"cleanup_mode": "on_success"}},
        {"ReusableIfPolicyAllows": {"cleanup_mode": "host_policy"}},
    ],
    "CleanupMode": ["always", "on_success", "host_policy"],
    "ProcessOwnershipClass": ["agent_owned", "host_managed", "detached_by_intent"],
    "ChildShutdownBehavior": [
        {"terminate_after_grace": {"grace_ms": 5000}},
        "require_exit_or_cleanup",
        "preserve_by_policy",
    ],
    "ProcessContentCaptureMode": [
        "off",
        "metadata_only",
        "redacted_summary",
        "content_ref",
        "raw_content_if_policy_allows",
    ],
    "TruncationPolicy": ["truncate_with_marker", "fail_if_exceeded"],
    "ContentRefMode": ["none", "content_ref_if_policy_allows"],
    "TerminalMode": ["pipe", "pty"],
    "StdinPolicy": ["closed", {"content_ref": "content.stdin.input"}],
    "ProcessIoStream": ["stdin", "stdout", "stderr"],
    "ProcessSignal": ["interrupt", "terminate", "kill"],
    "CleanupStatus": ["completed", "repair_needed"],
    "AgentErrorKind": ERROR_KINDS,
    "RetryClassification": RETRY,
    "EffectKind": EFFECT_KINDS,
    "EffectTerminalStatus": TERMINAL,
    "IsolationEventKind": EVENT_KINDS,
    "PolicyDecisionScope": ["IsolationDowngrade", "ToolApproval"],
    "PolicyKind": [
        "approval",
        "permission",
        "sandbox",
        "context",
        "privacy",
        "retention",
        "redaction",
        "runtime_package",
        "host",
    ],
    "SourceKind": [
        "sdk",
        "host",
        "user",
        "system",
        "developer",
        "memory",
        "compaction",
        "hook",
        "extension",
        "tool",
        "remote_channel",
        "scheduled_task",
        "subagent",
        "external_runtime",
        "replay",
    ],
    "DestinationKind": [
        "agent",
        "agent_pool",
        "topic",
        "provider",
        "context_projection",
        "journal",
        "event_stream",
        "telemetry",
        "output_sink",
        "host",
        "user",
        "remote_channel",
        "tool",
        "extension",
        "subagent",
        "external_runtime",
    ],
    "EntityKind": [
        "run",
        "turn",
        "attempt",
        "agent",
        "agent_pool",
        "topic",
        "event",
        "message",
        "wake_condition",
        "context_contribution",
        "context_item",
        "context_projection",
        "content",
        "artifact",
        "capability",
        "package_sidecar",
        "runtime_package",
        "policy_decision",
        "effect",
        "effect_intent",
        "effect_result",
        "tool_call",
        "approval_request",
        "stream_rule",
        "realtime_session",
        "hook",
        "execution_environment",
        "child_artifact",
        "subagent_run",
        "extension_action",
        "output_delivery",
    ],
    "PrivacyClass": ["public", "internal", "content_refs_only", "sensitive", "secret"],
    "RetentionClass": ["ephemeral", "run_scoped", "session_scoped", "durable", "persistent", "host_policy"],
    "TrustClass": ["trusted", "sdk_generated", "host_provided", "user_provided", "external", "untrusted"],
}

# ---------------------------------------------------------------------------------- building blocks


def policy(pid: str, kind: str = "host", version: str | None = None) -> dict:
    d = {"kind": kind, "id": pid}
    if version is not None:
        d["version"] = version
    return d


SOURCE = {"kind": "sdk", "id": "source.sdk.isolation", "trust": "host_provided", "privacy": "content_refs_only"}
SOURCE_FULL = {
    "kind": "host",
    "id": "source.host.corral",
    "trust": "trusted",
    "privacy": "internal",
    "correlation": [{"key": "job", "value": "job-1f3a9c02d4e5"}],
    "redacted_summary": "corral host",
}
DEST = {
    "kind": "external_runtime",
    "id": "destination.isolation.runtime",
    "privacy": "content_refs_only",
    "retention": "host_policy",
}
DEST_FULL = {
    "kind": "host",
    "id": "destination.host.corral",
    "privacy": "sensitive",
    "retention": "run_scoped",
    "correlation": [{"key": "tenant", "value": "acme"}],
    "redacted_summary": "corral host sink",
}


def entity(kind: str, eid: str, full: bool = False) -> dict:
    d: dict = {"kind": kind, "id": eid}
    if full:
        d["source"] = SOURCE
    d["privacy"] = "content_refs_only"
    if full:
        d["redacted_summary"] = f"{kind} entity"
    return d


def capture(
    mode: str = "redacted_summary", trunc: str = "truncate_with_marker", crm: str = "content_ref_if_policy_allows"
) -> dict:
    return {
        "default_capture": mode,
        "max_bytes": 65536,
        "truncation_policy": trunc,
        "content_ref_mode": crm,
        "redaction_policy_ref": policy("policy.process_io.redacted"),
    }


STATS_ALL = {
    k: True
    for k in [
        "collect_cpu",
        "collect_memory",
        "collect_process_count",
        "collect_filesystem_bytes",
        "collect_network_bytes",
        "collect_exit_status",
    ]
}
STATS_NONE = {k: False for k in STATS_ALL}

OWNERSHIP = {
    "child_artifact_id": "child.isolation.process",
    "owner_run_id": "run.isolation.owner",
    "ownership_class": "agent_owned",
    "on_parent_cancel": {"terminate_after_grace": {"grace_ms": 5000}},
    "on_parent_complete": "require_exit_or_cleanup",
    "detach_policy": {"allowed": False},
    "reclaim_policy": {"required": True, "policy_ref": policy("policy.reclaim.host-required")},
}
OWNERSHIP_DETACHABLE = {
    "child_artifact_id": "child.corral.job-7",
    "owner_run_id": "run.corral.job-7",
    "ownership_class": "detached_by_intent",
    "on_parent_cancel": "preserve_by_policy",
    "on_parent_complete": "preserve_by_policy",
    "detach_policy": {"allowed": True, "required_policy_refs": [policy("policy.detach.approved", "approval", "v2")]},
    "reclaim_policy": {"required": False, "policy_ref": policy("policy.reclaim.optional")},
}

TRUST_ANY = {
    "locality": "any",
    "tenancy": "shared_allowed",
    "auditability": "none",
    "cleanup": "best_effort",
    "data_residency": "any",
    "secret_isolation": "none",
}
TRUST_LOCAL = {
    "locality": "local",
    "tenancy": "dedicated",
    "auditability": "required",
    "cleanup": "required",
    "data_residency": "local_only",
    "secret_isolation": "required",
}
TRUST_REMOTE = {
    "locality": "remote",
    "tenancy": "dedicated",
    "auditability": "best_effort",
    "cleanup": "required",
    "data_residency": {"region": "eu-west-1"},
    "secret_isolation": "best_effort",
}


def minimal_spec(env_id: str = "env.isolation.contract") -> dict:
    """Everything optional omitted/null: no image/rootfs keys, empty vecs omitted."""
    return {
        "environment_id": env_id,
        "kind": "host_process",
        "requirement": {
            "minimum_class": "host_process",
            "trust": TRUST_ANY,
            "fallback": "deny",
            "required_capabilities": {},
        },
        "resources": {"cpus": 1, "memory_mb": 1024, "timeout_ms": 120000, "process_count": 32},
        "filesystem": {
            "root": "read_only",
            "workspace": {"mode": "none"},
            "symlink_policy": "deny_escapes",
            "single_file_mount_expansion": "audit_expanded_parent",
        },
        "network": "disabled",
        "secrets": {"ambient": "denied", "teardown_required": True},
        "lifecycle": {"EphemeralCleanupRequired": {"cleanup_mode": "always"}},
        "ownership": OWNERSHIP,
        "io_policy": {"stdout": capture(), "stderr": capture()},
        "stats_policy": STATS_ALL,
    }


def full_spec(env_id: str = "env.corral.job-7") -> dict:
    """Every optional field present, every list non-empty."""
    return {
        "environment_id": env_id,
        "kind": "container",
        "requirement": {
            "minimum_class": "container",
            "trust": TRUST_REMOTE,
            "preferred_adapters": ["runtime.corral.docker", "runtime.corral.gvisor"],
            "fallback": {
                "allow_if_package_and_policy_approve": {
                    "accepted_classes": ["sandbox", "host_process"],
                    "accepted_capability_downgrades": ["egress_allowlist", "audit_log"],
                    "accepted_trust_downgrades": ["auditability", "data_residency"],
                    "required_policy_refs": [policy("policy.downgrade.approved", "sandbox")],
                }
            },
            "required_capabilities": {"capabilities": CAPABILITIES},
        },
        "image": {
            "image_ref": "corral/busybox:latest",
            "expected_digest": "sha256:" + "ab" * 32,
            "expected_architecture": "amd64",
            "credential_alias_ref": "secret.registry.alias",
        },
        "rootfs": {
            "rootfs_ref": "rootfs.corral.busybox",
            "read_only": False,
            "writable_layer_ref": "layer.corral.job-7",
        },
        "resources": {"cpus": 4, "memory_mb": 8192, "timeout_ms": 3600000, "process_count": 256},
        "filesystem": {
            "root": "writable_layer",
            "workspace": {
                "workspace_ref": "workspace.primary",
                "mode": "live_writable",
                "mount_ref": "mount.workspace.primary",
                "destination_path": "/workspace",
            },
            "mounts": [
                {
                    "mount_ref": "mount.data",
                    "source_alias": "datasets",
                    "destination_path": "/data",
                    "mode": "read_only",
                    "expansion_audit": {
                        "single_file_mount": False,
                        "expanded_parent_alias": None,
                        "symlink_resolution": "none",
                        "redacted_summary": "dir mount",
                    },
                    "policy_refs": [policy("policy.mount.data")],
                },
                {
                    "mount_ref": "mount.config",
                    "source_alias": "config",
                    "destination_path": "/etc/app.toml",
                    "mode": "writable",
                    "expansion_audit": {
                        "single_file_mount": True,
                        "expanded_parent_alias": "config-dir",
                        "symlink_resolution": "within_alias",
                        "redacted_summary": "single file expanded to parent",
                    },
                },
            ],
            "symlink_policy": "follow_within_alias",
            "single_file_mount_expansion": "deny_single_file",
        },
        "network": {"allowlist": {"hosts": ["pypi.org", "files.pythonhosted.org"]}},
        "secrets": {
            "ambient": "explicit_refs_only",
            "secret_mounts": [
                {
                    "secret_ref": "secret.db.password",
                    "mount_ref": "secretmount.db",
                    "destination": DEST,
                    "redaction_policy_ref": policy("policy.secret.redact", "redaction"),
                }
            ],
            "env_secrets": [
                {
                    "secret_ref": "secret.api.token",
                    "env_key": "API_TOKEN",
                    "destination": DEST_FULL,
                    "redaction_policy_ref": policy("policy.secret.redact", "redaction"),
                }
            ],
            "teardown_required": False,
        },
        "lifecycle": {"ReusableIfPolicyAllows": {"cleanup_mode": "on_success"}},
        "ownership": OWNERSHIP_DETACHABLE,
        "accepted_adapters": [{"required_class": "container"}, {"required_class": "lightweight_vm"}],
        "io_policy": {
            "stdout": capture("content_ref", "fail_if_exceeded", "none"),
            "stderr": capture("raw_content_if_policy_allows"),
        },
        "stats_policy": STATS_NONE,
    }


SIDECAR = {"sidecar_id": "sidecar.isolation.default", "kind": "isolation_requirement", "version": "v1"}


def environment(spec: dict, full: bool = False) -> dict:
    env_id = spec["environment_id"]
    d = {
        "environment_id": env_id,
        "requirement_ref": f"isolation.requirement.{env_id}",
        "sidecar_ref": dict(SIDECAR, content_hash="sha256:" + "cd" * 32) if full else SIDECAR,
        "spec": spec,
        "source": SOURCE_FULL if full else SOURCE,
        "destination": DEST_FULL if full else DEST,
    }
    if full:
        d["policy_refs"] = [
            policy("policy.corral.tenant", "permission"),
            policy("policy.corral.sandbox", "sandbox", "2026-11"),
        ]
    d["runtime_package_fingerprint"] = "runtime.package.fingerprint.pending"
    return d


ENV_MIN = environment(minimal_spec())
ENV_FULL = environment(full_spec(), full=True)
UPSTREAM_ENV = json.loads((UPSTREAM / "prepare_session.request.json").read_text())["environment"]


def env_with(**spec_overrides: object) -> dict:
    env = copy.deepcopy(UPSTREAM_ENV)
    env["spec"].update(spec_overrides)
    return env


PROCESS_MIN = {
    "process_id": "process.isolation.contract",
    "argv": ["/bin/sh", "-c", "echo hello"],
    "cwd": "/workspace",
    "terminal_mode": "pipe",
    "timeout_ms": 120000,
    "rlimits": {"cpus": 1, "memory_mb": 1024, "timeout_ms": 120000, "process_count": 32},
    "stdin": "closed",
    "stdout_policy": capture(),
    "stderr_policy": capture(),
    "stats_policy": STATS_ALL,
    "ownership": OWNERSHIP,
}
PROCESS_FULL = dict(
    PROCESS_MIN,
    **{
        "process_id": "process.corral.job-7",
        "argv": ["python3", "-m", "pytest", "-q"],
        "cwd": "/workspace/src",
        "env": [
            {
                "name": "API_TOKEN",
                "value_ref": "secret.api.token",
                "redacted_value": "[secret-ref]",
                "raw_value_present": False,
            },
            {"name": "LANG", "redacted_value": "C.UTF-8", "raw_value_present": False},
        ],
        "user": "1000:1000",
        "terminal_mode": "pty",
        "timeout_ms": 600000,
        "rlimits": {"cpus": 2, "memory_mb": 2048, "timeout_ms": 600000, "process_count": 64},
        "stdin": {"content_ref": "content.stdin.job-7"},
        "stdout_policy": capture("metadata_only"),
        "stderr_policy": capture("off", "fail_if_exceeded", "none"),
        "stats_policy": STATS_NONE,
        "ownership": OWNERSHIP_DETACHABLE,
    },
)
# key order as upstream declares (env/user after cwd)
PROCESS_FULL = {
    k: PROCESS_FULL[k]
    for k in [
        "process_id",
        "argv",
        "cwd",
        "env",
        "user",
        "terminal_mode",
        "timeout_ms",
        "rlimits",
        "stdin",
        "stdout_policy",
        "stderr_policy",
        "stats_policy",
        "ownership",
    ]
}

INTENT_MIN = {
    "effect_id": "effect.process.isolation.contract",
    "kind": "isolated_process_start",
    "subject_ref": entity("execution_environment", "env.isolation.contract"),
    "source": SOURCE,
    "redacted_summary": "start isolated process with redacted argv and environment",
}
INTENT_FULL = {
    "effect_id": "effect.process.corral.job-7",
    "kind": "isolated_process_start",
    "subject_ref": entity("execution_environment", "env.corral.job-7", full=True),
    "source": SOURCE_FULL,
    "destination": DEST,
    "policy_refs": [policy("policy.corral.tenant", "permission")],
    "idempotency_key": "idempotency.process.corral.job-7",
    "dedupe_key": "dedupe.process.corral.job-7",
    "content_refs": ["content.argv.job-7"],
    "redacted_summary": "start isolated process with redacted argv and environment",
}
RESULT_MIN = {
    "effect_id": "effect.process.isolation.contract",
    "terminal_status": "completed",
    "redacted_summary": "isolated process started",
}
RESULT_FULL = {
    "effect_id": "effect.process.corral.job-7",
    "terminal_status": "failed",
    "external_operation_id": "docker.container.start.3f2a",
    "reconciliation_ref": "reconcile.job-7",
    "error_ref": "error.job-7.exit-1",
    "content_refs": ["content.isolation.stdout", "content.isolation.stderr"],
    "redacted_summary": "process exited 1",
}

FRAME_STDOUT = json.loads((UPSTREAM / "stream_io.result.json").read_text())
FRAME_MIN = {
    "stream_ref": "stream.stderr.fake",
    "stream": "stderr",
    "cursor": 0,
    "byte_count": 0,
    "content_hash": "sha256:empty",
    "raw_content_present": False,
    "truncated": False,
    "redacted_summary": "stderr empty",
}
FRAME_STDIN = {
    "stream_ref": "stream.stdin.job-7",
    "stream": "stdin",
    "cursor": 18446744073709551615,
    "byte_count": 18446744073709551615,
    "content_hash": "sha256:" + "ef" * 32,
    "content_refs": ["content.stdin.a", "content.stdin.b"],
    "raw_content_present": True,
    "truncated": True,
    "redacted_summary": "stdin fed (u64::MAX cursor edge)",
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for old in OUT.glob("*.json"):  # regenerate the documents; leave the README/SPEC/tools alone
        old.unlink()

    # --- the six upstream examples, verbatim
    for name, ty in [
        ("agent_error.classified.json", "AgentError"),
        ("capability_report.result.json", "IsolationCapabilityReport"),
        ("detach.result.json", "DetachTransferResult"),
        ("prepare_session.request.json", "SessionPrepareRequest"),
        ("start_process.result.json", "ProcessStartResult"),
        ("stream_io.result.json", "ProcessIoFrame"),
    ]:
        shutil.copyfile(UPSTREAM / name, OUT / f"upstream.{name}")
        INDEX[f"upstream.{name}"] = {"rust_type": ty, "note": "verbatim copy of an upstream example"}

    # --- runtime_ref / capability_report (no request arguments: null = Rust unit)
    put("runtime_ref.request.none.json", "()", None, "trait method takes no argument; unit is JSON null")
    put("runtime_ref.result.default.json", "IsolationRuntimeRef", "runtime.fake.sandbox")
    put(
        "runtime_ref.result.unicode.json",
        "IsolationRuntimeRef",
        "runtime.corral.docker/ü@host-1",
        "ids accept any non-control chars, <=512 bytes",
    )
    put("capability_report.request.none.json", "()", None)
    up_report = json.loads((UPSTREAM / "capability_report.result.json").read_text())
    put("capability_report.result.sandbox.json", "IsolationCapabilityReport", up_report)
    put(
        "capability_report.result.full.json",
        "IsolationCapabilityReport",
        {
            "report_ref": "report.runtime.corral.docker",
            "adapter_ref": "runtime.corral.docker",
            "adapter_kind": "container",
            "adapter_version": "corral.docker.v3",
            "capability_version": "isolation.capability.v1",
            "health": {"degraded": {"reason": "image cache cold"}},
            "supported_classes": ["host_process", "sandbox", "container"],
            "platform": {
                "platform": "linux/amd64",
                "os": "linux",
                "cpu_architecture": "x86_64",
                "emulation_supported": True,
            },
            "capabilities": {"capabilities": CAPABILITIES},
            "trust": TRUST_REMOTE,
            "unsupported_requirements": ["egress_allowlist: adapter cannot filter by host"],
            "log_retention": "durable",
        },
    )
    put(
        "capability_report.result.unsupported_host.json",
        "IsolationCapabilityReport",
        {
            "report_ref": "report.runtime.fake.sandbox",
            "adapter_ref": "runtime.fake.sandbox",
            "adapter_kind": "host_provided",
            "adapter_version": "fake.v1",
            "capability_version": "isolation.capability.v1",
            "health": {"unsupported_host": {"missing_prerequisites": ["docker", "cgroup_v2"]}},
            "supported_classes": ["sandbox"],
            "platform": {
                "platform": "portable-test",
                "os": "test-os",
                "cpu_architecture": "test-arch",
                "emulation_supported": False,
            },
            "capabilities": up_report["capabilities"],
            "trust": TRUST_LOCAL,
            "unsupported_requirements": ["docker", "cgroup_v2"],
            "log_retention": "run_scoped",
        },
        "as IsolationCapabilityReport::unsupported() builds it",
    )
    put(
        "capability_report.result.minimal.json",
        "IsolationCapabilityReport",
        {
            "report_ref": "report.runtime.fake.host",
            "adapter_ref": "runtime.fake.host",
            "adapter_kind": "test_only_fake",
            "adapter_version": "fake.host.v1",
            "capability_version": "isolation.capability.host.v1",
            "health": "healthy",
            "platform": {
                "platform": "portable-test",
                "os": "test-os",
                "cpu_architecture": "test-arch",
                "emulation_supported": False,
            },
            "capabilities": {},
            "trust": TRUST_ANY,
            "log_retention": "ephemeral",
        },
        "empty supported_classes/unsupported_requirements omitted; empty capability set is {}",
    )

    # --- prepare_session
    put(
        "prepare_session.request.minimal.json",
        "SessionPrepareRequest",
        {"environment": ENV_MIN},
        "every optional field omitted (image/rootfs absent, empty lists omitted)",
    )
    put(
        "prepare_session.request.full.json",
        "SessionPrepareRequest",
        {"environment": ENV_FULL},
        "every optional field present",
    )
    put(
        "prepare_session.request.reusable_host_policy.json",
        "SessionPrepareRequest",
        {
            "environment": env_with(
                kind="remote_sandbox",
                lifecycle={"ReusableIfPolicyAllows": {"cleanup_mode": "host_policy"}},
                ownership=dict(OWNERSHIP, ownership_class="host_managed", on_parent_cancel="require_exit_or_cleanup"),
                requirement=dict(
                    UPSTREAM_ENV["spec"]["requirement"],
                    minimum_class="remote_sandbox",
                    fallback="test_only_host_process",
                ),
            )
        },
    )
    put(
        "prepare_session.request.lightweight_vm.json",
        "SessionPrepareRequest",
        {
            "environment": env_with(
                kind="lightweight_vm",
                requirement=dict(
                    UPSTREAM_ENV["spec"]["requirement"], minimum_class="lightweight_vm", trust=TRUST_LOCAL
                ),
                filesystem=dict(
                    UPSTREAM_ENV["spec"]["filesystem"],
                    workspace={"workspace_ref": "workspace.primary", "mode": "live_read_only"},
                ),
            )
        },
    )
    put("prepare_session.result.default.json", "IsolationSessionRef", "session.fake.isolation")

    # --- resolve_image
    put("resolve_image.request.full.json", "ImageResolveRequest", {"image": full_spec()["image"]})
    put(
        "resolve_image.request.minimal.json",
        "ImageResolveRequest",
        {
            "image": {
                "image_ref": "image.fake.sandbox",
                "expected_digest": None,
                "expected_architecture": None,
                "credential_alias_ref": None,
            }
        },
        "Option fields without skip_serializing_if are emitted as null",
    )
    put(
        "resolve_image.result.full.json",
        "ImageResolution",
        {
            "image_ref": "corral/busybox:latest",
            "digest": "sha256:" + "ab" * 32,
            "redacted_credential_alias": "registry alias [redacted]",
        },
    )
    put(
        "resolve_image.result.minimal.json",
        "ImageResolution",
        {"image_ref": "image.fake.sandbox", "digest": "sha256:fake.image", "redacted_credential_alias": None},
    )

    # --- prepare_rootfs
    put("prepare_rootfs.request.full.json", "RootfsPrepareRequest", {"rootfs": full_spec()["rootfs"]})
    put(
        "prepare_rootfs.request.minimal.json",
        "RootfsPrepareRequest",
        {"rootfs": {"rootfs_ref": "rootfs.fake.sandbox", "read_only": True, "writable_layer_ref": None}},
    )
    put("prepare_rootfs.result.default.json", "RootfsRef", "rootfs.fake.sandbox")

    # --- resolve_mounts
    put("resolve_mounts.request.full.json", "MountResolveRequest", {"environment": ENV_FULL})
    put("resolve_mounts.request.upstream_env.json", "MountResolveRequest", {"environment": UPSTREAM_ENV})
    put(
        "resolve_mounts.result.full.json",
        "MountPlan",
        {
            "mounts": ["mount.workspace.primary", "mount.data"],
            "expanded_exposure_audits": ["mount.config: single file expanded to parent alias config-dir"],
        },
    )
    put("resolve_mounts.result.empty.json", "MountPlan", {}, "both lists empty -> both omitted")

    # --- configure_network (one request per NetworkIsolationPolicy variant)
    for variant, value in [
        ("disabled", "disabled"),
        ("adapter_defined_denied", "adapter_defined_denied"),
        ("allowlist", {"allowlist": {"hosts": ["pypi.org"]}}),
        ("egress_scoped", {"egress_scoped": {"rules": ["tcp:443", "udp:53"]}}),
        ("socket_relay", {"socket_relay": {"relay_refs": ["relay.ssh-agent"]}}),
        ("exposed_ports", {"exposed_ports": {"ports": [80, 8080]}}),
    ]:
        put(
            f"configure_network.request.{variant}.json",
            "NetworkPrepareRequest",
            {"environment": env_with(network=value)},
        )
    put("configure_network.result.default.json", "NetworkNamespaceRef", "network.fake.disabled")

    # --- prepare_secrets
    put("prepare_secrets.request.full.json", "SecretPrepareRequest", {"environment": ENV_FULL})
    put("prepare_secrets.request.minimal.json", "SecretPrepareRequest", {"environment": ENV_MIN})
    put(
        "prepare_secrets.result.full.json",
        "SecretMaterializationPlan",
        {"secret_mount_refs": ["secretmount.db", "secretmount.tls"], "teardown_required": True},
    )
    put("prepare_secrets.result.empty.json", "SecretMaterializationPlan", {"teardown_required": False})

    # --- prepare_environment
    put("prepare_environment.request.full.json", "EnvironmentPrepareRequest", {"environment": ENV_FULL})
    put("prepare_environment.request.minimal.json", "EnvironmentPrepareRequest", {"environment": ENV_MIN})
    put("prepare_environment.result.default.json", "PreparedEnvironmentRef", "prepared.fake.env")

    # --- start_process
    put(
        "start_process.request.minimal.json",
        "ProcessStartRequest",
        {"environment": UPSTREAM_ENV, "process": PROCESS_MIN, "effect_intent": INTENT_MIN},
        "what IsolatedProcessSpecBuilder + effect_intent() produce without options",
    )
    put(
        "start_process.request.full.json",
        "ProcessStartRequest",
        {"environment": ENV_FULL, "process": PROCESS_FULL, "effect_intent": INTENT_FULL},
    )
    put(
        "start_process.result.upstream.json",
        "ProcessStartResult",
        json.loads((UPSTREAM / "start_process.result.json").read_text()),
    )
    put(
        "start_process.result.minimal.json",
        "ProcessStartResult",
        {
            "process_ref": "process.ref.job-7",
            "adapter_session_ref": None,
            "terminal_status": "unknown",
            "external_operation_id": None,
            "redacted_summary": "start outcome unknown",
        },
        "Options null, io_frames omitted",
    )
    for st in ["failed", "timed_out", "cancelled", "denied_before_execution"]:
        put(
            f"start_process.result.{st}.json",
            "ProcessStartResult",
            {
                "process_ref": "process.ref.job-7",
                "adapter_session_ref": "adapter.session.docker.7",
                "terminal_status": st,
                "external_operation_id": "docker.op.7",
                "io_frames": [FRAME_MIN],
                "redacted_summary": f"process {st}",
            },
        )

    # --- stream_io
    for s in ["stdin", "stdout", "stderr"]:
        put(
            f"stream_io.request.{s}.json",
            "ProcessIoRequest",
            {"process_ref": "process.ref.process.isolation.contract", "stream": s},
        )
    put("stream_io.result.stdout.json", "ProcessIoFrame", FRAME_STDOUT)
    put("stream_io.result.minimal.json", "ProcessIoFrame", FRAME_MIN, "content_refs omitted")
    put("stream_io.result.stdin_max.json", "ProcessIoFrame", FRAME_STDIN)

    # --- signal_process
    for i, sig in enumerate(["interrupt", "terminate", "kill"]):
        put(
            f"signal_process.request.{sig}.json",
            "ProcessSignalRequest",
            {"process_ref": "process.ref.job-7", "signal": sig, "grace_ms": [0, 5000, 18446744073709551615][i]},
        )
        put(
            f"signal_process.result.{sig}.json",
            "ProcessSignalResult",
            {
                "process_ref": "process.ref.job-7",
                "signal": sig,
                "delivered": sig != "interrupt",
                "redacted_summary": f"{sig} {'not ' if sig == 'interrupt' else ''}delivered",
            },
        )

    # --- collect_stats
    put("collect_stats.request.default.json", "ProcessStatsRequest", {"process_ref": "process.ref.job-7"})
    put(
        "collect_stats.result.full.json",
        "ProcessStatsSnapshot",
        {
            "snapshot_ref": "stats.job-7.1",
            "process_ref": "process.ref.job-7",
            "cpu_millis": 1234,
            "memory_bytes": 18446744073709551615,
            "process_count": 4294967295,
            "filesystem_bytes": 4096,
            "network_bytes": 0,
            "exit_code": -2147483648,
            "redacted_summary": "stats at exit (numeric edges: u64/u32 max, i32 min)",
        },
    )
    put(
        "collect_stats.result.empty.json",
        "ProcessStatsSnapshot",
        {
            "snapshot_ref": "stats.job-7.0",
            "process_ref": "process.ref.job-7",
            "cpu_millis": None,
            "memory_bytes": None,
            "process_count": None,
            "filesystem_bytes": None,
            "network_bytes": None,
            "exit_code": None,
            "redacted_summary": "no counters collected",
        },
        "all Option counters null (never omitted)",
    )

    # --- cleanup
    put(
        "cleanup.request.default.json",
        "CleanupRequest",
        {"environment": UPSTREAM_ENV, "cleanup_plan_ref": "cleanup.plan.env.isolation.contract"},
    )
    put(
        "cleanup.request.full.json",
        "CleanupRequest",
        {"environment": ENV_FULL, "cleanup_plan_ref": "cleanup.plan.job-7"},
    )
    put(
        "cleanup.result.completed.json",
        "CleanupResult",
        {
            "cleanup_plan_ref": "cleanup.plan.job-7",
            "status": "completed",
            "external_operation_id": "docker.rm.7",
            "redacted_summary": "container removed",
        },
    )
    put(
        "cleanup.result.repair_needed.json",
        "CleanupResult",
        {
            "cleanup_plan_ref": "cleanup.plan.job-7",
            "status": "repair_needed",
            "external_operation_id": None,
            "redacted_summary": "volume busy; repair needed",
        },
    )

    # --- detach / reclaim
    put("detach.request.default.json", "DetachTransferRequest", {"environment": UPSTREAM_ENV})
    put("detach.request.full.json", "DetachTransferRequest", {"environment": ENV_FULL})
    put("detach.result.default.json", "DetachTransferResult", json.loads((UPSTREAM / "detach.result.json").read_text()))
    put(
        "detach.result.empty_ack.json",
        "DetachTransferResult",
        {"host_ack_ref": "", "redacted_summary": ""},
        "host_ack_ref is a plain String upstream: no identifier validation, empty accepted",
    )
    put("reclaim.request.default.json", "ReclaimRequest", {"ticket_ref": "reclaim.ticket.job-7"})
    put(
        "reclaim.result.completed.json",
        "ReclaimResult",
        {"ticket_ref": "reclaim.ticket.job-7", "status": "completed", "redacted_summary": "reclaimed"},
    )
    put(
        "reclaim.result.repair_needed.json",
        "ReclaimResult",
        {"ticket_ref": "reclaim.ticket.job-7", "status": "repair_needed", "redacted_summary": "process would not die"},
    )

    # --- errors
    null_ctx = {
        "policy_refs": [],
        "source": None,
        "destination": None,
        "subject": None,
        "privacy": None,
        "redacted_summary": None,
    }
    null_ids = {
        "run_id": None,
        "turn_id": None,
        "attempt_id": None,
        "event_id": None,
        "tool_call_id": None,
        "span_id": None,
        "related": [],
    }
    retry_for = {
        "InvalidPackage": "NotRetryable",
        "InvalidStateTransition": "RepairNeeded",
        "ProviderFailure": "Retryable",
        "ProjectionFailure": "NotRetryable",
        "ToolFailure": "Retryable",
        "ApprovalFailure": "UserActionNeeded",
        "PolicyDenial": "NotRetryable",
        "JournalFailure": "Retryable",
        "TelemetryFailure": "Retryable",
        "IsolationFailure": "HostConfigurationNeeded",
        "StructuredOutputFailure": "RepairNeeded",
        "StreamRuleFailure": "NotRetryable",
        "SubagentFailure": "Retryable",
        "ExtensionFailure": "NotRetryable",
        "Cancellation": "NotRetryable",
        "ChildLifecycleFailure": "RepairNeeded",
        "HookFailure": "UserActionNeeded",
        "Timeout": "Retryable",
        "RecoveryRepairNeeded": "RepairNeeded",
        "HostConfigurationNeeded": "HostConfigurationNeeded",
    }
    for kind in ERROR_KINDS:
        put(
            f"agent_error.{kind}.json",
            "AgentError",
            {
                "Classified": {
                    "kind": kind,
                    "retry": retry_for[kind],
                    "context": dict(null_ctx, message=f"{kind} example"),
                    "causal_ids": null_ids,
                }
            },
        )
    put(
        "agent_error.classified_full.json",
        "AgentError",
        {
            "Classified": {
                "kind": "PolicyDenial",
                "retry": "UserActionNeeded",
                "context": {
                    "message": "egress denied by host policy",
                    "policy_refs": [policy("policy.egress", "sandbox", "v3"), policy("policy.tenant")],
                    "source": SOURCE_FULL,
                    "destination": DEST_FULL,
                    "subject": entity("execution_environment", "env.corral.job-7", full=True),
                    "privacy": "sensitive",
                    "redacted_summary": "egress denied",
                },
                "causal_ids": {
                    "run_id": "run.corral.job-7",
                    "turn_id": "turn.3",
                    "attempt_id": "attempt.1",
                    "event_id": "event.99",
                    "tool_call_id": "toolcall.5",
                    "span_id": "span.abc",
                    "related": [
                        entity("child_artifact", "child.corral.job-7"),
                        entity("effect", "effect.process.corral.job-7"),
                    ],
                },
            }
        },
        "every ErrorContext/CausalIds field set",
    )
    put(
        "agent_error.missing_required_field.json",
        "AgentError",
        {"MissingRequiredField": {"field": "isolated_process.argv"}},
        "kind()=InvalidPackage retry()=HostConfigurationNeeded (derived, not on the wire)",
    )
    put(
        "agent_error.contract_violation.json",
        "AgentError",
        {"ContractViolation": {"message": "isolated process environment cannot contain raw secret values"}},
        "kind()=InvalidStateTransition retry()=RepairNeeded (derived)",
    )
    put(
        "agent_error.host_configuration_needed.json",
        "AgentError",
        {"HostConfigurationNeeded": {"message": "no isolation runtime registered"}},
        "kind()=HostConfigurationNeeded retry()=HostConfigurationNeeded (derived)",
    )

    # --- effect records
    put("effect_intent.minimal.json", "EffectIntent", INTENT_MIN)
    put("effect_intent.full.json", "EffectIntent", INTENT_FULL)
    for k in ["detach_transfer", "child_artifact_shutdown", "process_signal"]:
        put(
            f"effect_intent.{k}.json",
            "EffectIntent",
            dict(INTENT_MIN, kind=k, subject_ref=entity("child_artifact", "child.isolation.process")),
        )
    put("effect_result.minimal.json", "EffectResult", RESULT_MIN)
    put("effect_result.full.json", "EffectResult", RESULT_FULL)
    for st in TERMINAL:
        put(f"effect_result.{st}.json", "EffectResult", dict(RESULT_MIN, terminal_status=st))

    # --- isolation journal records (IsolationRecord, adjacently tagged)
    env_id = "env.corral.job-7"
    recs: dict[str, dict] = {
        "requested": {
            "environment_id": env_id,
            "requirement_ref": f"isolation.requirement.{env_id}",
            "requested_class": "container",
            "source": SOURCE,
            "destination": DEST,
            "policy_refs": [policy("policy.corral.tenant", "permission")],
            "redacted_summary": "isolation requested",
        },
        "adapter_capability_reported": {
            "environment_id": env_id,
            "adapter_ref": "runtime.corral.docker",
            "capability_report_ref": "report.runtime.corral.docker",
            "health": "healthy",
            "redacted_summary": "adapter healthy",
        },
        "capability_match": {
            "environment_id": env_id,
            "adapter_ref": "runtime.corral.docker",
            "requested_class": "container",
            "selected_class": "container",
            "missing_capabilities": ["egress_allowlist", "audit_log"],
            "trust_gaps": ["auditability"],
            "redacted_summary": "matched with gaps",
        },
        "downgrade_decision": {
            "environment_id": env_id,
            "adapter_ref": "runtime.corral.docker",
            "requested_class": "container",
            "selected_class": "sandbox",
            "capability_gaps": ["egress_allowlist"],
            "trust_gaps": ["data_residency"],
            "approved": True,
            "policy_decision_scope": "IsolationDowngrade",
            "policy_decision_refs": ["decision.downgrade.7"],
            "redacted_summary": "downgrade approved",
        },
        "environment_prepare_intent": {
            "environment_id": env_id,
            "effect_intent": INTENT_FULL,
            "redacted_summary": "preparing environment",
        },
        "environment_prepare_result": {
            "environment_id": env_id,
            "prepared_environment_ref": "prepared.corral.job-7",
            "effect_result": RESULT_MIN,
            "redacted_summary": "prepared",
        },
        "process_start_intent": {
            "environment_id": env_id,
            "process_ref": "process.ref.job-7",
            "effect_intent": INTENT_MIN,
            "redacted_summary": "starting",
        },
        "process_start_result": {
            "environment_id": env_id,
            "process_ref": "process.ref.job-7",
            "effect_result": RESULT_FULL,
            "content_refs": ["content.isolation.stdout"],
            "redacted_summary": "started",
        },
        "process_io_frame": FRAME_STDOUT,
        "process_stats_snapshot": {
            "environment_id": env_id,
            "snapshot_ref": "stats.job-7.1",
            "redacted_summary": "stats recorded",
        },
        "cleanup_intent": {
            "environment_id": env_id,
            "cleanup_plan_ref": "cleanup.plan.job-7",
            "effect_intent": dict(INTENT_MIN, kind="child_artifact_shutdown"),
            "redacted_summary": "cleanup started",
        },
        "cleanup_result": {
            "environment_id": env_id,
            "cleanup_plan_ref": "cleanup.plan.job-7",
            "status": "repair_needed",
            "effect_result": dict(RESULT_MIN, terminal_status="failed"),
            "redacted_summary": "cleanup failed",
        },
        "failed": {
            "environment_id": env_id,
            "adapter_ref": "runtime.corral.docker",
            "reason": "docker daemon unreachable",
            "retry_classification": "Retryable",
        },
    }
    for tag, rec in recs.items():
        put(f"isolation_record.{tag}.json", "IsolationRecord", {"record_type": tag, "record": rec})
    # minimal variants (empty lists omitted / Options null)
    put(
        "isolation_record.capability_match_minimal.json",
        "IsolationRecord",
        {
            "record_type": "capability_match",
            "record": {
                "environment_id": env_id,
                "adapter_ref": "runtime.corral.docker",
                "requested_class": "sandbox",
                "selected_class": "lightweight_vm",
                "redacted_summary": "exact match",
            },
        },
    )
    put(
        "isolation_record.downgrade_decision_denied.json",
        "IsolationRecord",
        {
            "record_type": "downgrade_decision",
            "record": {
                "environment_id": env_id,
                "adapter_ref": "runtime.fake.host",
                "requested_class": "remote_sandbox",
                "selected_class": "host_process",
                "approved": False,
                "policy_decision_scope": None,
                "redacted_summary": "downgrade denied",
            },
        },
    )
    put(
        "isolation_record.failed_no_adapter.json",
        "IsolationRecord",
        {
            "record_type": "failed",
            "record": {
                "environment_id": env_id,
                "adapter_ref": None,
                "reason": "no runtime",
                "retry_classification": "HostConfigurationNeeded",
            },
        },
    )
    put(
        "isolation_record.requested_minimal.json",
        "IsolationRecord",
        {
            "record_type": "requested",
            "record": {
                "environment_id": env_id,
                "requirement_ref": f"isolation.requirement.{env_id}",
                "requested_class": "host_process",
                "source": SOURCE,
                "destination": DEST,
                "redacted_summary": "isolation requested",
            },
        },
    )
    put(
        "isolation_record.process_start_result_minimal.json",
        "IsolationRecord",
        {
            "record_type": "process_start_result",
            "record": {
                "environment_id": env_id,
                "process_ref": "process.ref.job-7",
                "effect_result": RESULT_MIN,
                "redacted_summary": "started, no content refs",
            },
        },
    )
    put(
        "isolation_network_prepared_record.default.json",
        "IsolationNetworkPreparedRecord",
        {"environment_id": env_id, "network_namespace_ref": "netns.job-7", "redacted_summary": "network ready"},
    )

    base_min = {
        "run_id": "run.corral.job-7",
        "agent_id": "agent.corral",
        "subject_ref": entity("execution_environment", env_id),
        "source": SOURCE,
        "destination": DEST,
        "privacy": "content_refs_only",
        "retention": "run_scoped",
        "runtime_package_fingerprint": "runtime.package.fingerprint.pending",
    }
    base_full = dict(
        base_min,
        related_refs=[entity("child_artifact", "child.corral.job-7", full=True)],
        policy_refs=[policy("policy.corral.tenant")],
        source=SOURCE_FULL,
        destination=DEST_FULL,
        privacy="secret",
        retention="persistent",
    )
    order = [
        "run_id",
        "agent_id",
        "subject_ref",
        "related_refs",
        "source",
        "destination",
        "policy_refs",
        "privacy",
        "retention",
        "runtime_package_fingerprint",
    ]
    base_full = {k: base_full[k] for k in order}
    put("isolation_event_base.minimal.json", "IsolationEventBase", base_min)
    put("isolation_event_base.full.json", "IsolationEventBase", base_full)
    for i, ek in enumerate(EVENT_KINDS):
        b = base_full if i % 2 else base_min
        ev = {"schema_version": 1, "run_id": b["run_id"], "agent_id": b["agent_id"], "event_kind": ek}
        ev.update({k: v for k, v in b.items() if k not in ("run_id", "agent_id")})
        ev["redacted_summary"] = ek.replace("_", " ")
        put(f"isolation_event_record.{ek}.json", "IsolationEventRecord", ev)

    # --- package sidecar (IsolationRequirementSnapshot) and fingerprint fields
    fp_full = {
        "minimum_class": "container",
        "trust": TRUST_REMOTE,
        "required_capabilities_hash": "sha256:" + "01" * 32,
        "preferred_adapter_refs": ["runtime.corral.docker"],
        "fallback_policy": full_spec()["requirement"]["fallback"],
        "image_policy_hash": "sha256:" + "02" * 32,
        "rootfs_policy_hash": "sha256:" + "03" * 32,
        "mount_policy_hash": "sha256:" + "04" * 32,
        "network_policy_hash": "sha256:" + "05" * 32,
        "secret_policy_hash": "sha256:" + "06" * 32,
        "resource_policy_hash": "sha256:" + "07" * 32,
        "cleanup_policy_ref": policy("policy.cleanup"),
        "child_lifecycle_policy_ref": "policy.child.lifecycle",
        "redaction_policy_ref": policy("policy.redaction", "redaction"),
    }
    fp_min = {
        k: v
        for k, v in fp_full.items()
        if k not in ("preferred_adapter_refs", "image_policy_hash", "rootfs_policy_hash")
    }
    fp_min["fallback_policy"] = "deny"
    put("isolation_fingerprint_fields.full.json", "IsolationFingerprintFields", fp_full)
    put(
        "isolation_fingerprint_fields.minimal.json",
        "IsolationFingerprintFields",
        fp_min,
        "image/rootfs hashes are skip_serializing_if None -> omitted",
    )
    snap = {
        "requirement_ref": f"isolation.requirement.{env_id}",
        "sidecar_ref": SIDECAR,
        "schema_version": 1,
        "requirement": full_spec()["requirement"],
        "lifecycle_defaults": {"EphemeralCleanupRequired": {"cleanup_mode": "always"}},
        "process_defaults": OWNERSHIP,
        "redaction_policy_ref": policy("policy.redaction", "redaction"),
        "allowed_downgrade_policy_refs": [policy("policy.downgrade.approved", "sandbox")],
        "cleanup_policy_ref": policy("policy.cleanup"),
        "child_lifecycle_policy_ref": "policy.child.lifecycle",
        "fingerprint_fields": fp_full,
    }
    put("isolation_requirement_snapshot.full.json", "IsolationRequirementSnapshot", snap)
    snap_min = {k: v for k, v in snap.items() if k != "allowed_downgrade_policy_refs"}
    snap_min["requirement"] = minimal_spec()["requirement"]
    snap_min["fingerprint_fields"] = fp_min
    put("isolation_requirement_snapshot.minimal.json", "IsolationRequirementSnapshot", snap_min)

    # --- standalone struct docs that are otherwise only nested
    put("isolated_process_spec.minimal.json", "IsolatedProcessSpec", PROCESS_MIN)
    put("isolated_process_spec.full.json", "IsolatedProcessSpec", PROCESS_FULL)
    put("execution_environment.minimal.json", "ExecutionEnvironment", ENV_MIN)
    put("execution_environment.full.json", "ExecutionEnvironment", ENV_FULL)

    # --- documents upstream must REJECT (decode error); expect = decode_error
    bad = [
        ("id_empty", "IsolationRuntimeRef", "", "ids must be non-empty"),
        ("id_control_char", "IsolatedProcessRef", "proc\u0085ess", "Cc character (U+0085) rejected"),
        ("id_513_bytes", "IsolationSessionRef", "\u00e9" * 256 + "a", "513 UTF-8 bytes > MAX_ID_LEN 512"),
        (
            "cpus_float",
            "ResourceLimits",
            {"cpus": 1.5, "memory_mb": 1024, "timeout_ms": 1, "process_count": 1},
            "cpus is u16",
        ),
        (
            "cpus_out_of_range",
            "ResourceLimits",
            {"cpus": 65536, "memory_mb": 1024, "timeout_ms": 1, "process_count": 1},
            "cpus is u16",
        ),
        ("negative_u64", "ProcessSignalRequest", {"process_ref": "p", "signal": "kill", "grace_ms": -1}, "u64"),
        ("missing_grace_ms", "ProcessSignalRequest", {"process_ref": "p", "signal": "kill"}, "no default"),
        ("error_context_without_policy_refs", "ErrorContext", {"message": "m"}, "policy_refs has no default"),
        (
            "agent_error_snake_kind",
            "AgentError",
            {
                "Classified": {
                    "kind": "isolation_failure",
                    "retry": "retryable",
                    "context": dict(null_ctx, message="m"),
                    "causal_ids": null_ids,
                }
            },
            "kinds are PascalCase",
        ),
        (
            "agent_error_flat_payload",
            "AgentError",
            {
                "type": "IsolationFailure",
                "kind": "isolation_failure",
                "retry": "retryable",
                "message": "m",
                "context": {},
            },
            "corral's current payload shape",
        ),
        (
            "lifecycle_snake_case",
            "EnvironmentLifecyclePolicy",
            {"ephemeral_cleanup_required": {"cleanup_mode": "always"}},
            "variant names are PascalCase",
        ),
        ("network_flat_object", "NetworkIsolationPolicy", {"mode": "disabled"}, "externally tagged enum"),
        ("data_residency_paren", "DataResidencyRequirement", "region(eu-west-1)", 'must be {"region": ...}'),
        (
            "capability_version_int",
            "IsolationCapabilityReport",
            dict(up_report, capability_version=1),
            "capability_version is a string",
        ),
        (
            "capabilities_bare_list",
            "IsolationCapabilityReport",
            dict(up_report, capabilities=["cleanup"]),
            'capabilities is {"capabilities": [...]}',
        ),
        (
            "mount_plan_objects",
            "MountPlan",
            {"mounts": [{"mount_ref": "m", "source_alias": "a", "destination_path": "/d", "mode": "read_only"}]},
            "MountRef is a string",
        ),
        ("record_without_payload", "IsolationRecord", {"record_type": "requested"}, "adjacent tag needs record"),
        (
            "terminal_status_object",
            "ProcessStartResult",
            {
                "process_ref": "p",
                "adapter_session_ref": None,
                "terminal_status": {"state": "exited"},
                "external_operation_id": None,
                "redacted_summary": "",
            },
            "EffectTerminalStatus is a string",
        ),
        (
            "fallback_missing_list",
            "IsolationFallback",
            {
                "allow_if_package_and_policy_approve": {
                    "accepted_classes": [],
                    "accepted_capability_downgrades": [],
                    "accepted_trust_downgrades": [],
                }
            },
            "the four lists are required",
        ),
        ("unknown_enum_variant", "ProcessIoStream", "stdall", "closed vocabulary"),
    ]
    for name, ty, doc, note in bad:
        put(f"invalid.{name}.json", ty, doc, note)
        INDEX[f"invalid.{name}.json"]["expect"] = "decode_error"

    # --- every enum's full vocabulary, one array per enum
    for enum, values in VOCAB.items():
        put(f"vocab.{enum}.json", f"Vec<{enum}>", values, "every variant of the enum, in declaration order")

    (OUT / "index.json").write_text(
        json.dumps(
            {
                "about": "file -> upstream Rust type (agent-sdk-core @ adad005) it must decode as; "
                "'()' = Rust unit (JSON null), 'Vec<T>' = JSON array of T. Decoding then "
                "re-encoding each file upstream gives the same JSON value (key order aside); "
                "files with expect=decode_error must be REJECTED by the decoder.",
                "files": dict(sorted(INDEX.items())),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"{len(INDEX)} documents in {OUT}")


if __name__ == "__main__":
    main()
