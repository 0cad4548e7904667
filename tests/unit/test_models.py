"""corral.contract.models: malformed or dangerous requests fail validation; good ones survive the JSON wire form.

The wire models check what upstream's types check (shapes, unsigned ranges, ids) plus what a host must
refuse before anything else (container paths, env names, argv NUL, raw secret values). What is merely
absurd (a 10^13 ms timeout, 10 000 CPUs) is the host policy's to judge (``tests/unit/test_policy.py``);
what no runtime can run (0 CPUs, 1 MiB of memory) is ``ResourceLimits.problems``, tested below."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from corral.contract import models as m
from corral.contract.refs import check_image_ref

DIGEST = "sha256:" + "ab" * 32


def env(**spec: Any) -> dict[str, Any]:
    return {"environment_id": "env-1", "spec": spec}


def process(**fields: Any) -> dict[str, Any]:
    return {"process_id": "proc-1", "argv": ["/bin/sh", "-c", "echo hi"], **fields}


# ---------------------------------------------------------------------------------------------
# bad inputs: (model, data, a fragment of the error)

BAD: list[Any] = [
    # argv
    pytest.param(m.IsolatedProcessSpec, process(argv=[]), "argv", id="argv-empty"),
    pytest.param(m.IsolatedProcessSpec, process(argv=[""]), "argv[0]", id="argv0-empty"),
    pytest.param(m.IsolatedProcessSpec, process(argv=["sh", "a\x00b"]), "NUL", id="argv-nul"),
    pytest.param(m.IsolatedProcessSpec, process(argv=["s\x00h"]), "NUL", id="argv0-nul"),
    pytest.param(m.IsolatedProcessSpec, process(argv="sh -c id"), "argv", id="argv-string"),
    pytest.param(m.IsolatedProcessSpec, process(argv=["x"] * 4097), "argv", id="argv-too-long"),
    pytest.param(m.IsolatedProcessSpec, process(argv=["x" * 131_073]), "argv", id="argv-item-too-big"),
    # process fields
    pytest.param(m.IsolatedProcessSpec, process(cwd="tmp"), "absolute", id="cwd-relative"),
    pytest.param(m.IsolatedProcessSpec, process(cwd="/tmp/../etc"), "'..'", id="cwd-dotdot"),
    pytest.param(m.IsolatedProcessSpec, process(cwd="/tmp\x00"), "NUL", id="cwd-nul"),
    pytest.param(m.IsolatedProcessSpec, process(timeout_ms=-1), "timeout_ms", id="timeout-negative"),
    pytest.param(m.IsolatedProcessSpec, process(timeout_ms=1.5), "timeout_ms", id="timeout-float"),
    pytest.param(m.IsolatedProcessSpec, process(user="root; id"), "user", id="user-shell"),
    pytest.param(m.IsolatedProcessSpec, process(user="-u0"), "user", id="user-option"),
    pytest.param(m.IsolatedProcessSpec, process(posix_rlimits={"nofile": -1}), "rlimits", id="rlimit-negative"),
    pytest.param(m.IsolatedProcessSpec, process(posix_rlimits={"NOFILE": 1}), "rlimits", id="rlimit-name"),
    pytest.param(m.IsolatedProcessSpec, process(process_id=""), "process_id", id="process-id-empty"),
    pytest.param(m.IsolatedProcessSpec, process(shell=True), "shell", id="extra-field"),
    # env
    pytest.param(
        m.IsolatedProcessSpec,
        process(env=[{"name": "HOME", "redacted_value": "/a"}, {"name": "HOME", "redacted_value": "/b"}]),
        "twice",
        id="env-duplicate",
    ),
    pytest.param(m.RedactedEnvVar, {"name": "TOKEN", "raw_value_present": True}, "raw secret", id="env-raw"),
    pytest.param(m.RedactedEnvVar, {"name": "A", "redacted_value": "x\x00y"}, "NUL", id="env-value-nul"),
    pytest.param(m.RedactedEnvVar, {"name": "1A"}, "name", id="env-name-digit"),
    pytest.param(m.RedactedEnvVar, {"name": "A=B"}, "name", id="env-name-equals"),
    pytest.param(m.RedactedEnvVar, {"name": "A-B"}, "name", id="env-name-dash"),
    pytest.param(m.RedactedEnvVar, {"name": ""}, "name", id="env-name-empty"),
    # resource limits
    pytest.param(m.ResourceLimits, {"cpus": -1}, "cpus", id="cpus-negative"),
    pytest.param(m.ResourceLimits, {"cpus": 0.5}, "cpus", id="cpus-fraction"),  # upstream: u16
    pytest.param(m.ResourceLimits, {"cpus": 65_536}, "cpus", id="cpus-over-u16"),
    pytest.param(m.ResourceLimits, {"cpus": float("nan")}, "cpus", id="cpus-nan"),
    pytest.param(m.ResourceLimits, {"cpus": float("inf")}, "cpus", id="cpus-inf"),
    pytest.param(m.ResourceLimits, {"cpu_millis": 0}, "cpu_millis", id="cpu-millis-zero"),
    pytest.param(m.ResourceLimits, {"memory_mb": -512}, "memory_mb", id="memory-negative"),
    pytest.param(m.ResourceLimits, {"memory_mb": 1 << 64}, "memory_mb", id="memory-over-u64"),
    pytest.param(m.ResourceLimits, {"process_count": 1 << 32}, "process_count", id="pids-over-u32"),
    pytest.param(m.ResourceLimits, {"memory_mb": "lots"}, "memory_mb", id="memory-not-a-number"),
    pytest.param(m.FilesystemIsolationPolicy, {"scratch_mb": 0}, "scratch_mb", id="scratch-zero"),
    pytest.param(m.IsolatedProcessSpec, process(grace_ms=-1), "grace_ms", id="grace-negative"),
    pytest.param(
        m.ProcessSignalRequest,
        {"process_ref": "p", "signal": "kill", "grace_ms": 1 << 64},
        "grace_ms",
        id="signal-grace-over-u64",
    ),
    pytest.param(
        m.ProcessSignalRequest, {"process_ref": "p", "signal": "SIGKILL", "grace_ms": 0}, "signal", id="signal-name"
    ),
    pytest.param(m.ProcessSignalRequest, {"process_ref": "p", "signal": "kill"}, "grace_ms", id="signal-no-grace"),
    pytest.param(m.DetachTransferRequest, {"environment": env(), "ttl_ms": 10}, "ttl_ms", id="ttl-tiny"),
    pytest.param(m.DetachTransferRequest, {"environment": env(), "ttl_ms": 10**12}, "ttl_ms", id="ttl-absurd"),
    pytest.param(m.NetworkIsolationPolicy, {"exposed_ports": {"ports": [65_536]}}, "ports", id="port-too-big"),
    pytest.param(m.NetworkIsolationPolicy, "host", "Input should be 'disabled'", id="network-host"),
    pytest.param(m.NetworkIsolationPolicy, {"allowlist": {}}, "missing field", id="network-allowlist-no-hosts"),
    pytest.param(
        m.NetworkIsolationPolicy, {"disabled": {"hosts": ["x"]}}, "no field 'hosts'", id="network-disabled-hosts"
    ),
    pytest.param(m.IsolationTrustRequirement, {"data_residency": "region()"}, "data_residency", id="residency-empty"),
    pytest.param(
        m.IsolationTrustRequirement, {"data_residency": "region(eu;rm)"}, "data_residency", id="residency-shell"
    ),
    pytest.param(
        m.IsolationTrustRequirement, {"data_residency": "somewhere"}, "data_residency", id="residency-unknown"
    ),
    # control characters in refs
    pytest.param(m.ExecutionEnvironment, {"environment_id": "env\n1"}, "control", id="ref-newline"),
    pytest.param(m.ExecutionEnvironment, {"environment_id": "env\x00"}, "control", id="ref-nul"),
    pytest.param(m.ExecutionEnvironment, {"environment_id": "env\x1b[2J"}, "control", id="ref-escape"),
    pytest.param(m.ExecutionEnvironment, {"environment_id": ""}, "empty", id="ref-empty"),
    pytest.param(m.ExecutionEnvironment, {"environment_id": "e" * 513}, "512", id="ref-too-long"),
    pytest.param(m.ProcessIoRequest, {"process_ref": "p\r", "stream": "stdout"}, "control", id="io-ref-cr"),
    pytest.param(m.ReclaimRequest, {"ticket_ref": "t\x7f"}, "control", id="ticket-ref-del"),
    pytest.param(
        m.ExecutionEnvironment,
        {"environment_id": "e", "policy_refs": [{"kind": "host", "id": "ok"}, {"kind": "host", "id": "bad\t"}]},
        "control",
        id="policy-ref-tab",
    ),
    pytest.param(m.ImageRequest, {"image_ref": "x" * 513}, "image_ref", id="image-too-long"),
    # container paths
    *[
        pytest.param(
            m.MountPolicy,
            {"mount_ref": "m1", "source_alias": "data", "destination_path": path},
            why,
            id=f"mount-dest-{name}",
        )
        for name, path, why in [
            ("relative", "data", "absolute"),
            ("dot-relative", "./data", "absolute"),
            ("parent", "../etc", "absolute"),
            ("dotdot-inside", "/data/../../etc", "'..'"),
            ("dotdot-end", "/data/..", "'..'"),
            ("nul", "/data\x00", "NUL"),
            ("empty", "", "absolute"),
            ("huge", "/" + "a" * 1024, "1024"),
        ]
    ],
    pytest.param(
        m.MountPolicy,
        {"mount_ref": "m1", "source_alias": "/srv/data", "destination_path": "/d"},
        "source_alias",
        id="mount-source-host-path",
    ),
    pytest.param(
        m.MountPolicy,
        {"mount_ref": "m1", "source_alias": "../x", "destination_path": "/d"},
        "source_alias",
        id="mount-source-dotdot",
    ),
    pytest.param(
        m.SecretMountPolicy,
        {"secret_ref": "db", "mount_ref": "s1", "path": "run/secrets/db"},
        "absolute",
        id="secret-dest-relative",
    ),
    pytest.param(
        m.SecretMountPolicy,
        {"secret_ref": "db", "mount_ref": "s1", "path": "/run/../etc/shadow"},
        "'..'",
        id="secret-dest-dotdot",
    ),
    pytest.param(
        m.SecretMountPolicy,
        {"secret_ref": "../etc/shadow", "mount_ref": "s1"},
        "secret_ref",
        id="secret-ref-path",
    ),
    pytest.param(m.SecretEnvPolicy, {"secret_ref": "db", "env_key": "DB PASSWORD"}, "env_key", id="env-secret-key"),
    pytest.param(
        m.FilesystemIsolationPolicy,
        {
            "mounts": [
                {"mount_ref": "a", "source_alias": "data", "destination_path": "/data"},
                {"mount_ref": "b", "source_alias": "other", "destination_path": "/data/./"},
            ]
        },
        "destination",
        id="mount-dest-duplicate-after-normalising",
    ),
    # stream I/O
    pytest.param(
        m.ProcessIoRequest,
        {"process_ref": "p", "stream": "stdout", "data_b64": "aGk="},
        "stdin stream only",
        id="io-data-on-stdout",
    ),
    pytest.param(
        m.ProcessIoRequest,
        {"process_ref": "p", "stream": "stderr", "data_b64": ""},
        "stdin stream only",
        id="io-empty-data-on-stderr",
    ),
    pytest.param(
        m.ProcessIoRequest,
        {"process_ref": "p", "stream": "stdout", "close_stdin": True},
        "stdin stream only",
        id="io-close-on-stdout",
    ),
    pytest.param(
        m.ProcessIoRequest,
        {"process_ref": "p", "stream": "stdout", "cursor": -1},
        "cursor",
        id="io-cursor-negative",
    ),
    pytest.param(
        m.ProcessIoRequest,
        {"process_ref": "p", "stream": "stdout", "max_bytes": 0},
        "max_bytes",
        id="io-frame-empty",
    ),
    pytest.param(
        m.ProcessIoRequest,
        {"process_ref": "p", "stream": "stdout", "max_bytes": m.MAX_FRAME_BYTES + 1},
        "max_bytes",
        id="io-frame-too-big",
    ),
    pytest.param(
        m.ProcessIoRequest,
        {"process_ref": "p", "stream": "stdin", "data_b64": "A" * (2 << 20)},
        "data_b64",
        id="io-stdin-too-big",
    ),
    pytest.param(m.ProcessIoRequest, {"process_ref": "p", "stream": "stdstuff"}, "stream", id="io-stream"),
    pytest.param(
        m.ProcessIoRequest,
        {"process_ref": "p", "stream": "stdin", "data_b64": "not base64!!"},
        "data_b64",
        id="io-stdin-not-base64",
    ),
]


@pytest.mark.parametrize(("model", "data", "fragment"), BAD)
def test_bad_input_is_rejected(model: type[BaseModel], data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "bad_spec",
    [
        {"resources": {"cpus": -2}},
        {"filesystem": {"mounts": [{"mount_ref": "m", "source_alias": "d", "destination_path": "rel"}]}},
        {"image": {"image_ref": "busybox\n"}},
        {"network": {"ports": [0]}},
        {"secrets": {"env_secrets": [{"secret_ref": "db", "env_key": "1BAD"}]}},
        {"lifecycle": {"timeout_signal": "SIGKILL"}},
        {"unknown_section": {}},
    ],
)
def test_bad_nested_spec_is_rejected_through_every_request(bad_spec: dict[str, Any]) -> None:
    """A request carrying the environment re-validates the nested spec on the worker side."""
    with pytest.raises(ValidationError):
        m.ExecutionEnvironment.model_validate(env(**bad_spec))
    with pytest.raises(ValidationError):
        m.ProcessStartRequest.model_validate({"environment": env(**bad_spec), "process": process()})


def test_models_are_frozen() -> None:
    spec = m.IsolatedProcessSpec.model_validate(process())
    with pytest.raises(ValidationError):
        spec.argv = ["/bin/false"]  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# good inputs survive the wire form


def full_environment() -> m.ExecutionEnvironment:
    return m.ExecutionEnvironment.model_validate(
        {
            "environment_id": "env-7f3a",
            "policy_refs": [{"kind": "sandbox", "id": "policy/batch-default"}],
            "spec": {
                "kind": "container",
                "requirement": {
                    "minimum_class": "container",
                    "required_capabilities": {"capabilities": ["read_only_root", "no_network_guarantee"]},
                    "trust": {"locality": "local", "data_residency": {"region": "eu-west-1"}},
                    "fallback": {
                        "allow_if_package_and_policy_approve": {
                            "accepted_classes": [],
                            "accepted_capability_downgrades": ["audit_log"],
                            "accepted_trust_downgrades": [],
                            "required_policy_refs": [{"kind": "host", "id": "gap-approval-1"}],
                        }
                    },
                },
                "image": {
                    "image_ref": "corral/busybox:latest",
                    "expected_digest": DIGEST,
                    "expected_architecture": "amd64",
                },
                "rootfs": {"rootfs_ref": "rootfs-1", "read_only": True},
                "resources": {
                    "cpus": 1,
                    "cpu_millis": 500,
                    "memory_mb": 256,
                    "timeout_ms": 30_000,
                    "process_count": 64,
                },
                "filesystem": {
                    "root": "read_only",
                    "mounts": [
                        {"mount_ref": "m-data", "source_alias": "data", "destination_path": "/data"},
                        {
                            "mount_ref": "m-out",
                            "source_alias": "out",
                            "destination_path": "/out",
                            "mode": "writable",
                        },
                    ],
                    "scratch_mb": 32,
                },
                "network": {"allowlist": {"hosts": ["pypi.org"]}},
                "secrets": {
                    "ambient": "explicit_refs_only",
                    "secret_mounts": [
                        {"secret_ref": "db-password", "mount_ref": "s-1", "path": "/run/secrets/db-password"}
                    ],
                    "env_secrets": [{"secret_ref": "api-token", "env_key": "API_TOKEN"}],
                },
                "lifecycle": {"ReusableIfPolicyAllows": {"cleanup_mode": "on_success"}},
                "ownership": {
                    "owner_run_id": "run-42",
                    "on_parent_cancel": "preserve_by_policy",
                    "detach_policy": {"allowed": True, "required_policy_refs": [{"kind": "host", "id": "detach-ok"}]},
                },
                "io_policy": {
                    "stdout": {"default_capture": "raw_content_if_policy_allows", "max_bytes": 4096},
                    "stderr": {"default_capture": "off"},
                },
                "stats_policy": {"collect_network_bytes": False},
            },
        }
    )


def full_process() -> m.IsolatedProcessSpec:
    return m.IsolatedProcessSpec.model_validate(
        process(
            argv=[
                "/bin/sh",
                "-c",
                "printf '%s' \"$GREETING\"; cat /run/secrets/db-password",
                "ünïcode ✓",
                "",
            ],
            cwd="/data/",
            env=[
                {"name": "GREETING", "redacted_value": "hello"},
                {"name": "API_TOKEN", "value_ref": "secret-api-token", "redacted_value": "[REDACTED]"},
            ],
            user="65534:65534",
            timeout_ms=5_000,
            posix_rlimits={"nofile": 1024, "core": 0},
            stdin_open=True,
            timeout_signal="kill",
            grace_ms=0,
        )
    )


GOOD: list[Callable[[], BaseModel]] = [
    full_environment,
    full_process,
    lambda: m.ExecutionEnvironment.by_id("env-minimal"),
    lambda: m.ProcessStartRequest(environment=full_environment(), process=full_process()),
    lambda: m.EnvironmentPrepareRequest(
        environment=full_environment(),
        process=full_process(),
        image=m.ImageResolution(image_ref="corral/busybox:latest", digest=DIGEST),
        rootfs="rootfs-1",
        mounts=m.MountPlan(mounts=["m-data"]),
        network="net-1",
        secrets=m.SecretMaterializationPlan(env_secret_keys=["API_TOKEN"]),
    ),
    lambda: m.ProcessIoRequest(
        process_ref="proc-0123456789abcdef", stream=m.ProcessIoStream.stdin, data_b64="aGk=", close_stdin=True
    ),
    lambda: m.ProcessIoRequest(
        process_ref="proc-0123456789abcdef",
        stream=m.ProcessIoStream.stdout,
        cursor=10**12,
        max_bytes=m.MAX_FRAME_BYTES,
    ),
    lambda: m.ProcessIoFrame(
        stream_ref="s",
        stream=m.ProcessIoStream.stderr,
        cursor=5,
        start_cursor=0,
        byte_count=5,
        content_hash="sha256:x",
        content_b64="aGVsbG8=",
        raw_content_present=True,
    ),
    lambda: m.ProcessSignalRequest(process_ref="p", signal=m.ProcessSignal.terminate, grace_ms=0),
    lambda: m.ProcessStatsSnapshot(
        snapshot_ref="snap",
        process_ref="p",
        state=m.ProcessState.exited,
        exit_code=137,
        oom_killed=True,
        reason=m.TerminationReason.oom,
    ),
    lambda: m.DetachTransferRequest(environment=full_environment(), ttl_ms=1_000, ticket_ref="ticket-1"),
    lambda: m.ReclaimResult(ticket_ref="ticket-1", status=m.CleanupStatus.repair_needed),
    lambda: m.IsolationCapabilityReport(
        report_ref="r",
        adapter_ref="a",
        adapter_kind=m.IsolationRuntimeKind.container,
        adapter_version="20.10",
        supported_classes=[m.IsolationClass.container],
        platform=m.PlatformReport(platform="docker-linux", os="linux", cpu_architecture="amd64"),
        capabilities=m.IsolationCapabilitySet(capabilities=list(m.IsolationCapability)),
        trust=m.IsolationTrustRequirement(),
    ),
]


@pytest.mark.parametrize("build", GOOD)
def test_good_input_round_trips_through_the_wire_form(build: Callable[[], BaseModel]) -> None:
    original = build()
    wire = json.loads(json.dumps(m.dump(original)))
    assert wire == original.model_dump(mode="json")
    again = type(original).model_validate(wire)
    assert again == original
    assert m.dump(again) == wire


@pytest.mark.parametrize(
    "image_ref",
    [
        "busybox",
        "corral/busybox:latest",
        "localhost:5000/team/app:1.2.3-rc_1",
        "registry.example.com/a/b/c",
        f"busybox@{DIGEST}",
        f"corral/busybox:latest@{DIGEST}",
    ],
)
def test_good_image_refs_are_accepted_unchanged(image_ref: str) -> None:
    assert check_image_ref(image_ref) == image_ref
    assert m.ImageRequest(image_ref=image_ref).image_ref == image_ref


BAD_IMAGE_REFS = [
    ("semicolon", "busybox;rm -rf /"),
    ("subshell", "$(x)"),
    ("subshell-tag", "busybox:$(id)"),
    ("backticks", "busybox`id`"),
    ("and", "busybox && true"),
    ("pipe", "busybox|sh"),
    ("redirect", "busybox>/etc/passwd"),
    ("space", "busy box"),
    ("leading-space", " busybox"),
    ("option", "--privileged"),
    ("dotdot", "../busybox"),
    ("absolute", "/busybox"),
    ("uppercase", "BusyBox"),
    ("empty", ""),
    ("empty-tag", "busybox:"),
    ("bad-digest", "busybox@sha256:1234"),
    ("tab", "busybox\t"),
    ("trailing-newline", "busybox:latest\n"),
    ("unicode-tag", "busybox:lätest"),
]


@pytest.mark.parametrize("image_ref", [ref for _, ref in BAD_IMAGE_REFS], ids=[n for n, _ in BAD_IMAGE_REFS])
def test_image_refs_outside_dockers_grammar_are_refused_before_use(image_ref: str) -> None:
    """The wire's ``image_ref`` is an id (upstream checks no more); the client's job spec and the host's
    ``resolve_image`` both check Docker's grammar before anything uses it."""
    with pytest.raises(ValueError, match="image reference"):
        check_image_ref(image_ref)


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ({"cpus": 0}, "cpus"),
        ({"cpus": 1, "cpu_millis": 1}, None),
        ({"memory_mb": 0}, "memory_mb"),
        ({"memory_mb": 5}, "memory_mb"),
        ({"timeout_ms": 0}, "timeout_ms"),
        ({"process_count": 0}, "process_count"),
        ({}, None),
    ],
)
def test_limits_no_runtime_can_run_are_problems(limits: dict[str, int], problem: str | None) -> None:
    """Upstream's types take any unsigned value; corral's client and host refuse these (InvalidRequest)."""
    found = m.ResourceLimits.model_validate(limits).problems()
    assert (problem is None) == (not found)
    if problem:
        assert problem in found[0]


@pytest.mark.parametrize("ref", ["env\u202egnp.exe", "env\u200b", "a/b@c: d", "ünïcode"])
def test_ids_follow_upstreams_rule_only_cc_control_characters_are_refused(ref: str) -> None:
    assert m.ExecutionEnvironment.by_id(ref).environment_id == ref


def test_fractional_cpus_ride_beside_upstreams_whole_number() -> None:
    half = m.ResourceLimits.with_cpus(0.5)
    assert (half.cpus, half.cpu_millis, half.cpu_quota) == (1, 500, 0.5)
    two = m.ResourceLimits.with_cpus(2)
    assert (two.cpus, two.cpu_millis, two.cpu_quota) == (2, None, 2.0)
    assert "cpu_millis" not in m.dump(two)


def test_a_mount_over_the_root_directory_is_rejected() -> None:
    with pytest.raises(ValidationError, match="root directory"):
        m.MountPolicy(mount_ref="m", source_alias="data", destination_path="/")


@pytest.mark.parametrize(
    ("path", "normalised"),
    [("/data", "/data"), ("/data/", "/data"), ("/data/./x//y", "/data/x/y"), ("//data", "/data")],
)
def test_container_paths_are_normalised(path: str, normalised: str) -> None:
    assert m.MountPolicy(mount_ref="m", source_alias="data", destination_path=path).destination_path == normalised
    assert m.IsolatedProcessSpec.model_validate(process(cwd=path)).cwd == normalised


def test_defaults_are_the_safe_choices() -> None:
    spec = m.ExecutionEnvironment.by_id("env-1").spec
    assert spec.filesystem.root is m.RootFilesystemMode.read_only
    assert spec.network.kind is m.NetworkKind.disabled
    assert spec.secrets.ambient is m.AmbientSecretPolicy.denied
    assert spec.ownership.detach_policy.allowed is False
    assert spec.io_policy.stdout.default_capture is m.ProcessContentCaptureMode.metadata_only
    assert spec.lifecycle.kind is m.LifecycleKind.EphemeralCleanupRequired
    assert m.MountPolicy(mount_ref="m", source_alias="d", destination_path="/d").mode is m.MountMode.read_only
    default = m.IsolatedProcessSpec.model_validate(process())
    assert default.stdin.kind is m.StdinKind.closed and not default.stdin_open
    assert default.timeout_signal is m.ProcessSignal.terminate
