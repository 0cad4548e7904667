"""corral.fleet.job: JobSpec -> the contract requests of the prepare-to-start chain, and its validation
(every bad input is an InvalidRequest, never a raw pydantic ValidationError)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from corral.contract.errors import InvalidRequest
from corral.contract.models import (
    EnvironmentPrepareRequest,
    ImageResolveRequest,
    MountResolveRequest,
    NetworkKind,
    NetworkPrepareRequest,
    ProcessStartRequest,
    RootfsPrepareRequest,
    SecretPrepareRequest,
    SessionPrepareRequest,
    StdinKind,
)
from corral.contract.vocabulary import AmbientSecretPolicy, MountMode, RootFilesystemMode
from corral.fleet.job import JobSpec, parse_mount
from tests.unit.helpers import CHAIN_OPS, IMAGE


def _job(**kwargs: Any) -> JobSpec:
    kwargs.setdefault("image", IMAGE)
    kwargs.setdefault("argv", ["echo", "hi"])
    return JobSpec(**kwargs)


def test_requests_are_the_chain_in_contract_order() -> None:
    requests = _job().requests("host-a")
    assert [op for op, _ in requests] == CHAIN_OPS
    types = [type(r) for _, r in requests]
    assert types == [
        SessionPrepareRequest,
        ImageResolveRequest,
        RootfsPrepareRequest,
        MountResolveRequest,
        NetworkPrepareRequest,
        SecretPrepareRequest,
        EnvironmentPrepareRequest,
        ProcessStartRequest,
    ]


def test_requests_share_one_environment_and_name_the_host() -> None:
    j = _job()
    requests = dict(j.requests("host-a"))
    envs = {r.environment.model_dump_json() for r in requests.values()}  # type: ignore[attr-defined]
    assert len(envs) == 1
    session = requests["prepare_session"]
    assert isinstance(session, SessionPrepareRequest)
    assert session.host_ref == "host-a"
    assert session.environment.environment_id == j.environment_id
    start = requests["start_process"]
    assert isinstance(start, ProcessStartRequest)
    # upstream requires the intent: the client sends the process's own; the host journals its own keys
    assert start.effect_intent == start.process.effect_intent(start.environment)
    prep = requests["prepare_environment"]
    assert isinstance(prep, EnvironmentPrepareRequest)
    assert prep.process == start.process
    assert (prep.image, prep.rootfs, prep.mounts, prep.network, prep.secrets) == (None,) * 5


def test_requests_are_deterministic_for_one_job() -> None:
    j = _job()
    assert j.requests("host-a") == j.requests("host-a")
    assert _job().environment_id != j.environment_id


def test_job_fields_reach_the_environment_and_process() -> None:
    j = _job(
        argv=["sh", "-c", "exit 3"],
        cpus=0.5,
        memory_mb=256,
        process_count=8,
        timeout_ms=5_000,
        env={"A": "1"},
        mounts=["data:/data", "cache:/cache:rw", "ro:/ro:ro"],
        network="allowlist",
        secrets=["token"],
        user="1000:1000",
        workdir="/work",
        stdin=True,
        allow_detach=True,
        writable_root=True,
        environment_id="env-fixed",
    )
    env = j.environment()
    spec = env.spec
    assert env.environment_id == "env-fixed"
    assert spec.image is not None and spec.image.image_ref == IMAGE
    # upstream's cpus is a whole number; the fraction rides in corral's cpu_millis
    assert (spec.resources.cpus, spec.resources.cpu_millis, spec.resources.cpu_quota) == (1, 500, 0.5)
    assert (spec.resources.cpus, spec.resources.memory_mb, spec.resources.timeout_ms, spec.resources.process_count) == (
        1,
        256,
        5_000,
        8,
    )
    assert spec.filesystem.root is RootFilesystemMode.writable_layer
    assert [(m.mount_ref, m.source_alias, m.destination_path, m.mode) for m in spec.filesystem.mounts] == [
        ("mount-0", "data", "/data", MountMode.read_only),
        ("mount-1", "cache", "/cache", MountMode.writable),
        ("mount-2", "ro", "/ro", MountMode.read_only),
    ]
    assert spec.network.kind is NetworkKind.allowlist
    assert spec.secrets.ambient is AmbientSecretPolicy.explicit_refs_only
    assert [(s.secret_ref, s.container_path) for s in spec.secrets.secret_mounts] == [("token", "/run/secrets/token")]
    assert spec.ownership.detach_policy.allowed is True
    proc = j.process()
    assert proc.process_id == "env-fixed-main"
    assert proc.argv == ["sh", "-c", "exit 3"]
    assert proc.cwd == "/work"
    assert proc.user == "1000:1000"
    assert proc.timeout_ms == 5_000
    assert proc.stdin_open and proc.stdin.kind is StdinKind.closed  # upstream has no "open" stdin
    assert [(e.name, e.redacted_value, e.raw_value_present) for e in proc.env] == [("A", "1", False)]


def test_job_defaults_are_closed() -> None:
    spec = _job().environment().spec
    assert spec.network.kind is NetworkKind.disabled
    assert spec.secrets.ambient is AmbientSecretPolicy.denied
    assert spec.filesystem.root is RootFilesystemMode.read_only
    assert spec.ownership.detach_policy.allowed is False
    assert not _job().process().stdin_open


BAD_JOBS: list[tuple[str, dict[str, Any]]] = [
    ("mount-without-colon", {"mounts": ["datadata"]}),
    ("mount-too-many-parts", {"mounts": ["a:/b:rw:x"]}),
    ("mount-bad-mode", {"mounts": ["data:/data:rx"]}),
    ("mount-relative-dest", {"mounts": ["data:data"]}),
    ("mount-dotdot-dest", {"mounts": ["data:/x/../etc"]}),
    ("mount-raw-host-path", {"mounts": ["/etc:/etc"]}),
    ("mount-duplicate-dest", {"mounts": ["data:/d", "other:/d"]}),
    ("negative-memory", {"memory_mb": -1}),
    ("tiny-memory", {"memory_mb": 1}),
    ("zero-cpus", {"cpus": 0}),
    ("zero-timeout", {"timeout_ms": 0}),
    ("zero-processes", {"process_count": 0}),
    ("empty-argv", {"argv": []}),
    ("empty-argv0", {"argv": [""]}),
    ("nul-in-argv", {"argv": ["echo", "a\x00b"]}),
    ("image-shell-metachars", {"image": "busybox;rm -rf /"}),
    ("image-backticks", {"image": "`reboot`"}),
    ("image-uppercase", {"image": "Corral/BusyBox"}),
    ("image-empty", {"image": ""}),
    ("bad-network", {"network": "wifi"}),
    ("bad-env-name", {"env": {"1BAD": "x"}}),
    ("env-name-with-equals", {"env": {"A=B": "x"}}),
    ("bad-secret-name", {"secrets": ["../etc/passwd"]}),
    ("relative-workdir", {"workdir": "work"}),
    ("bad-user", {"user": "root; id"}),
    ("control-char-env-id", {"environment_id": "env\nid"}),
]


@pytest.mark.parametrize(("kwargs"), [k for _, k in BAD_JOBS], ids=[name for name, _ in BAD_JOBS])
def test_bad_job_is_invalid_request_not_validation_error(kwargs: dict[str, Any]) -> None:
    j = _job(**kwargs)
    with pytest.raises(InvalidRequest) as info:
        j.requests("host-a")
    assert not isinstance(info.value, ValidationError)
    assert info.value.message.startswith(("invalid job", "mount "))
    assert info.value.__cause__ is None or not isinstance(info.value.__cause__, ValidationError)


def test_bad_job_error_lists_the_offending_field() -> None:
    with pytest.raises(InvalidRequest) as info:
        _job(memory_mb=-5).environment()
    assert "memory_mb" in info.value.message


def test_bad_job_error_does_not_echo_env_values() -> None:
    with pytest.raises(InvalidRequest) as info:
        _job(env={"OK": "hunter2-value", "1BAD": "x"}).process()
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "alias", "dest", "mode"),
    [
        ("data:/data", "data", "/data", MountMode.read_only),
        ("data:/data:ro", "data", "/data", MountMode.read_only),
        ("data:/data:rw", "data", "/data", MountMode.writable),
        ("data:/a/./b/", "data", "/a/b", MountMode.read_only),
    ],
)
def test_parse_mount_accepts(text: str, alias: str, dest: str, mode: MountMode) -> None:
    m = parse_mount(text, 3)
    assert (m.mount_ref, m.source_alias, m.destination_path, m.mode) == ("mount-3", alias, dest, mode)


@pytest.mark.parametrize("text", ["", "data", "data:/d:", "data:/d:RW", "a:b:c:d"])
def test_parse_mount_rejects_malformed(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_mount(text, 0)
