"""corral.sandbox.policy and corral.host.policy_source: the host policy file (loading, defaults, failing closed,
reloading on mtime change), each rule denying with its rule name, and the coordinator refusing before
any adapter call with a journaled ``denial`` record (FakeRuntime counting calls + real Redis)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from corral import settings as settings_mod
from corral.contract.errors import PolicyDenial
from corral.contract.matching import ApprovalKind
from corral.contract.models import (
    CleanupRequest,
    DetachTransferRequest,
    ExecutionEnvironment,
    HealthState,
    ImageRequest,
    ImageResolution,
    IsolationCapabilityReport,
    ProcessOwnershipPolicy,
    ProcessSignalRequest,
    SessionState,
)
from corral.contract.vocabulary import IsolationClass, ProcessOwnershipClass, ProcessSignal
from corral.fleet.job import JobSpec
from corral.host.policy_source import PolicySource
from corral.runtimes.fake import FakeRuntime
from corral.sandbox.policy import (
    HostPolicy,
    PolicyError,
    check_environment,
    check_image,
    check_ownership,
    check_process,
    check_resolution,
    check_user,
    image_name,
    mount_table,
    parse_policy,
    with_legacy_mounts,
)
from corral.settings import Settings, policy_path
from tests.unit.helpers import HOST, CountingRuntime, Rig, job, make_rig, request_of, start_request, started
from tests.unit.policy_helpers import approval, fixed, policy_with, report, requirement, with_requirement

PIN = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64
FAKE_DIGEST = "sha256:" + "0" * 64  # what FakeRuntime resolves corral/busybox:latest to


def denied_rule(call: Any, *args: Any) -> str:
    with pytest.raises(PolicyDenial) as info:
        call(*args)
    return info.value.context["rule"]


# -- the file ------------------------------------------------------------------------------------


def test_shipped_policy_file_is_valid_and_equals_the_built_in_defaults() -> None:
    shipped = parse_policy(settings_mod.REPO_POLICY.read_text(), "config/policy.toml")
    assert shipped == HostPolicy()


def test_defaults_keep_todays_jobs_working_and_nothing_more() -> None:
    policy = HostPolicy()
    check_environment(policy, job().environment())  # the busybox test image, default limits, no network
    check_environment(policy, job(image="corral/does-not-exist:1").environment())  # NotFound later, not denied
    assert policy.mounts == {}
    assert policy.approvals == []
    assert denied_rule(check_environment, policy, job(image="debian:12").environment()) == "images.allowed"
    assert denied_rule(check_user, policy, "root") == "users.allow_root"
    check_user(policy, None)
    check_user(policy, "65534:65534")


def test_a_full_policy_file_parses() -> None:
    policy = parse_policy(
        f"""
        version = 1
        [images]
        allowed = ["corral/*", "registry.local:5000/tools/*"]
        digests = ["{OTHER}"]
        require_digest = true
        [images.pinned]
        "corral/busybox:latest" = "{PIN}"
        [mounts.data]
        path = "/srv/data"
        [mounts.scratch]
        path = "/srv/scratch"
        modes = ["read_only", "writable"]
        [limits]
        max_memory_mb = 2048
        [network]
        allowed_modes = ["disabled"]
        [detach]
        allowed = false
        [users]
        allow_unset = false
        allowed_uids = [[1000, 1999]]
        [[approvals]]
        policy_ref = "dev-no-audit"
        kind = "downgrade"
        gaps = ["capability:audit_log"]
        [[approvals]]
        policy_ref = "tool-ok"
        kind = "tool"
        gaps = ["class:container"]
        """
    )
    assert policy.images.pinned == {"corral/busybox:latest": PIN}
    assert mount_table(policy) == ({"data": "/srv/data", "scratch": "/srv/scratch"}, ["scratch"])
    assert policy.limits.max_memory_mb == 2048 and policy.limits.max_cpus == 16  # untouched keys keep defaults
    assert policy.users.allowed_uids == [(1000, 1999)]
    assert [(a.policy_ref, a.kind) for a in policy.approvals] == [
        ("dev-no-audit", ApprovalKind.downgrade),
        ("tool-ok", ApprovalKind.tool),
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("this is = = not toml", "not valid TOML"),
        ("version = 2", "version"),
        ("[images]\nallowd = []", "images.allowd"),
        ("[limitz]\nmax_cpus = 1", "limitz"),
        ('[images]\ndigests = ["sha256:short"]', "images.digests"),
        ('[mounts.data]\npath = "relative/dir"', "absolute"),
        ('[mounts.data]\npath = "/srv"\nmodes = []', "mounts.data.modes"),
        ('[mounts.data]\npath = "/srv"\nmodes = ["sideways"]', "mounts.data.modes"),
        ('[mounts."bad alias!"]\npath = "/srv"', "mounts"),
        ("[limits]\nmax_memory_mb = -1", "limits.max_memory_mb"),
        ('[network]\nallowed_modes = ["everything"]', "network.allowed_modes"),
        ("[detach]\nmax_ttl_ms = 5", "detach.max_ttl_ms"),
        ('[[approvals]]\npolicy_ref = "x"\nkind = "blanket"\ngaps = []', "approvals.0.kind"),
        ('[[approvals]]\npolicy_ref = "x"\nkind = "downgrade"\ngaps = ["everything"]', "not a gap"),
    ],
)
def test_an_invalid_policy_says_where_and_why(text: str, why: str) -> None:
    with pytest.raises(PolicyError, match="policy") as info:
        parse_policy(text, "policy.toml")
    assert why in str(info.value)


def test_legacy_host_mounts_merge_in_as_aliases() -> None:
    base = policy_with(mounts={"data": {"path": "/srv/data"}})
    merged = with_legacy_mounts(base, {"logs": "/var/log/app", "rw": "/srv/rw"}, ["rw", "unknown"])
    assert mount_table(merged) == ({"data": "/srv/data", "logs": "/var/log/app", "rw": "/srv/rw"}, ["rw"])
    same = with_legacy_mounts(base, {"data": "/srv/data"}, [])
    assert same == base


@pytest.mark.parametrize(
    ("legacy", "writable"),
    [({"data": "/srv/elsewhere"}, []), ({"data": "/srv/data"}, ["data"]), ({"x": "relative"}, [])],
    ids=["other-path", "other-modes", "relative"],
)
def test_conflicting_or_bad_legacy_mounts_make_the_policy_invalid(legacy: dict[str, str], writable: list[str]) -> None:
    with pytest.raises(PolicyError):
        with_legacy_mounts(policy_with(mounts={"data": {"path": "/srv/data"}}), legacy, writable)


# -- the source: failing closed and reloading -------------------------------------------------------


class Tick:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str, bump: int = 0) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump * 1_000_000_000))


def test_source_reads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    write(path, "[limits]\nmax_cpus = 2\n")
    assert PolicySource(path).current().limits.max_cpus == 2


@pytest.mark.parametrize(
    "content",
    [None, "not = = toml", "[limits]\nmax_cpus = -1\n", b"\xff\xfe binary"],
    ids=["missing", "toml", "invalid", "bytes"],
)
def test_a_bad_policy_file_denies_every_request(tmp_path: Path, content: str | bytes | None) -> None:
    path = tmp_path / "policy.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    source = PolicySource(path)
    for _ in range(2):
        with pytest.raises(PolicyDenial, match="every request is denied") as info:
            source.current()
        assert info.value.context["rule"] == "policy.file"


def test_reload_on_mtime_change_checked_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    write(path, "[limits]\nmax_cpus = 2\n")
    tick = Tick()
    loads: list[HostPolicy] = []
    source = PolicySource(path, check_interval_s=5, monotonic=tick, on_load=loads.append)
    assert source.current().limits.max_cpus == 2 and len(loads) == 1
    write(path, "[limits]\nmax_cpus = 3\n", bump=1)
    tick.now += 4.9
    assert source.current().limits.max_cpus == 2  # not checked yet
    tick.now += 0.1
    assert source.current().limits.max_cpus == 3
    tick.now += 10
    assert source.current().limits.max_cpus == 3 and len(loads) == 2  # unchanged file: no re-read


def test_a_broken_edit_denies_and_a_fix_recovers(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    write(path, "[limits]\nmax_cpus = 2\n")
    tick = Tick()
    source = PolicySource(path, check_interval_s=0, monotonic=tick)
    source.current()
    write(path, "[limits]\nmax_cpus = 'many'\n", bump=1)
    # the earlier good policy is not kept: what applies is what the file says, or nothing
    with pytest.raises(PolicyDenial, match=r"limits\.max_cpus"):
        source.current()
    path.unlink()
    with pytest.raises(PolicyDenial, match="cannot read"):
        source.current()
    write(path, "[limits]\nmax_cpus = 4\n", bump=2)
    assert source.current().limits.max_cpus == 4


def test_without_any_file_the_built_in_defaults_apply() -> None:
    assert PolicySource(None).current() == HostPolicy()


def test_policy_path_setting_env_and_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("CORRAL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CORRAL_CONFIG", str(settings_mod.REPO_CONFIG))
    expected = settings_mod.SYSTEM_POLICY if settings_mod.SYSTEM_POLICY.exists() else settings_mod.REPO_POLICY
    assert policy_path(Settings()) == expected
    monkeypatch.setenv("CORRAL_HOST__POLICY_FILE", str(tmp_path / "absent.toml"))
    assert policy_path(Settings()) == tmp_path / "absent.toml"  # named but missing: the source fails closed
    with pytest.raises(PolicyDenial):
        PolicySource.from_settings(Settings()).current()


def test_limits_section_in_settings_is_refused_with_a_pointer_to_the_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "corral.toml"
    config.write_text("[limits]\nmax_cpus = 4\n")
    monkeypatch.setenv("CORRAL_CONFIG", str(config))
    with pytest.raises(ValidationError, match="moved to the host policy file"):
        Settings()


def test_from_settings_installs_the_alias_table_into_host_settings_and_reloads_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.toml"
    write(path, '[mounts.data]\npath = "/srv/data"\nmodes = ["read_only", "writable"]\n')
    monkeypatch.setenv("CORRAL_CONFIG", str(settings_mod.REPO_CONFIG))
    monkeypatch.setenv("CORRAL_HOST__POLICY_FILE", str(path))
    monkeypatch.setenv("CORRAL_HOST__POLICY_CHECK_S", "0")
    monkeypatch.setenv("CORRAL_HOST__MOUNTS", json.dumps({"legacy": "/srv/legacy"}))
    settings = Settings()
    host = settings.host  # the very object a DockerRuntime holds
    source = PolicySource.from_settings(settings)
    assert host.mounts == {"data": "/srv/data", "legacy": "/srv/legacy"}
    assert host.writable_mounts == ["data"]
    write(path, '[mounts.logs]\npath = "/srv/logs"\n', bump=1)
    source.current()
    assert host.mounts == {"logs": "/srv/logs", "legacy": "/srv/legacy"} and host.writable_mounts == []
    assert host.configured_mounts() == ({"legacy": "/srv/legacy"}, [])
    # a second source over the same settings (a forked pool process) starts from the configured table
    PolicySource.from_settings(settings)
    assert set(host.mounts) == {"logs", "legacy"}


# -- each rule denies with its name -------------------------------------------------------------------


def env_of(**kwargs: Any) -> ExecutionEnvironment:
    return job(**kwargs).environment()


RULES: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    # id, policy sections, job kwargs, rule
    ("image-not-allowed", {}, {"image": "debian:12"}, "images.allowed"),
    ("image-tag-normalized", {"images": {"allowed": ["corral/busybox:1.*"]}}, {}, "images.allowed"),
    (
        "image-pinned-elsewhere",
        {"images": {"pinned": {"corral/busybox:latest": PIN}}},
        {"image": f"corral/busybox:latest@{OTHER}"},
        "images.pinned",
    ),
    ("image-needs-digest", {"images": {"require_digest": True}}, {}, "images.require_digest"),
    ("mount-unknown-alias", {}, {"mounts": ["data:/data"]}, "mounts.aliases"),
    (
        "mount-read-only-alias-writable",
        {"mounts": {"data": {"path": "/srv/data"}}},
        {"mounts": ["data:/data:rw"]},
        "mounts.modes",
    ),
    ("cpus", {"limits": {"max_cpus": 1}}, {"cpus": 1.5}, "limits.max_cpus"),
    ("memory", {"limits": {"max_memory_mb": 256}}, {"memory_mb": 257}, "limits.max_memory_mb"),
    ("timeout", {"limits": {"max_timeout_ms": 1000}}, {"timeout_ms": 1001}, "limits.max_timeout_ms"),
    ("pids", {"limits": {"max_process_count": 10}}, {"process_count": 11}, "limits.max_process_count"),
    ("network", {"network": {"allowed_modes": ["disabled"]}}, {"network": "allowlist"}, "network.allowed_modes"),
    ("detach-planned", {"detach": {"allowed": False}}, {"allow_detach": True}, "detach.allowed"),
]


@pytest.mark.parametrize(("sections", "kwargs", "rule"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_each_environment_rule_denies_with_its_name(
    sections: dict[str, Any], kwargs: dict[str, Any], rule: str
) -> None:
    policy = policy_with(**sections)
    assert denied_rule(check_environment, policy, env_of(**kwargs)) == rule


def test_limits_at_the_maximum_are_allowed_and_scratch_is_limited() -> None:
    policy = policy_with(limits={"max_cpus": 2, "max_memory_mb": 256, "max_process_count": 10, "max_scratch_mb": 64})
    env = env_of(cpus=2, memory_mb=256, process_count=10)
    check_environment(policy, env)
    big = env.model_copy(
        update={
            "spec": env.spec.model_copy(
                update={"filesystem": env.spec.filesystem.model_copy(update={"scratch_mb": 65})}
            )
        }
    )
    assert denied_rule(check_environment, policy, big) == "limits.max_scratch_mb"


def test_images_by_pattern_pin_and_digest() -> None:
    policy = policy_with(images={"allowed": ["corral/*"], "digests": [OTHER], "pinned": {"tools/x:1": PIN}})
    check_image(policy, ImageRequest(image_ref="corral/busybox"))  # :latest added, matches corral/*
    check_image(policy, ImageRequest(image_ref="tools/x:1"))  # pinned names are allowed
    check_image(policy, ImageRequest(image_ref=f"tools/x:1@{PIN}"))
    check_image(policy, ImageRequest(image_ref="elsewhere/y:2", expected_digest=OTHER))  # allowed by digest
    assert denied_rule(check_image, policy, ImageRequest(image_ref="elsewhere/y:2")) == "images.allowed"
    assert (
        denied_rule(check_image, policy, ImageRequest(image_ref="tools/x:1", expected_digest=OTHER)) == "images.pinned"
    )
    assert image_name("registry.local:5000/a/b") == "registry.local:5000/a/b:latest"
    assert image_name(f"a/b:2@{PIN}") == "a/b:2"


def test_a_resolution_must_be_the_pin_or_an_allowed_digest() -> None:
    policy = policy_with(images={"digests": [OTHER], "pinned": {"tools/x:1": PIN}})
    pinned = ImageRequest(image_ref="tools/x:1")
    check_resolution(policy, pinned, ImageResolution(image_ref="tools/x:1", digest=PIN))
    assert (
        denied_rule(check_resolution, policy, pinned, ImageResolution(image_ref="tools/x:1", digest=OTHER))
        == "images.pinned"
    )
    by_digest = ImageRequest(image_ref="else/y:1", expected_digest=OTHER)
    check_resolution(policy, by_digest, ImageResolution(image_ref="else/y:1", digest=OTHER))
    assert (
        denied_rule(check_resolution, policy, by_digest, ImageResolution(image_ref="else/y:1", digest=PIN))
        == "images.digests"
    )
    check_resolution(policy, ImageRequest(image_ref="corral/a:1"), ImageResolution(image_ref="corral/a:1", digest=PIN))


@pytest.mark.parametrize(
    ("users", "user", "rule"),
    [
        ({}, "root", "users.allow_root"),
        ({}, "0", "users.allow_root"),
        ({}, "000", "users.allow_root"),
        ({}, "nobody:root", "users.allow_root"),
        ({}, "1000:0", "users.allow_root"),
        ({"allow_root": True}, "root", None),
        ({"allow_unset": False}, None, "users.allow_unset"),
        ({}, None, None),
        ({}, "nobody", None),
        ({"allowed_users": ["app"]}, "app:app", None),
        ({"allowed_users": ["app"]}, "nobody", "users.allowed"),
        ({"allowed_uids": [[1000, 1999]]}, "1500:1500", None),
        ({"allowed_uids": [[1000, 1999]]}, "2000", "users.allowed"),
        ({"allowed_uids": [[1000, 1999]]}, "app", None),  # a name: judged on the uid it resolves to in the image
        ({"allow_root": True, "allowed_uids": [[1000, 1999]]}, "0", "users.allowed"),
    ],
)
def test_user_rules(users: dict[str, Any], user: str | None, rule: str | None) -> None:
    policy = policy_with(users=users)
    if rule is None:
        check_user(policy, user)
    else:
        assert denied_rule(check_user, policy, user) == rule


def test_a_process_timeout_is_bounded_by_the_host_maximum() -> None:
    j = job(timeout_ms=5_000)
    policy = policy_with(limits={"max_timeout_ms": 5_000})
    check_process(policy, j.environment(), j.process())
    longer = j.process().model_copy(update={"timeout_ms": 5_001})
    assert denied_rule(check_process, policy, j.environment(), longer) == "limits.max_timeout_ms"


@pytest.mark.parametrize(
    "ownership",
    [
        ProcessOwnershipPolicy(ownership_class=ProcessOwnershipClass.detached_by_intent),
        ProcessOwnershipPolicy(on_parent_complete="preserve_by_policy"),
        ProcessOwnershipPolicy(on_parent_cancel="preserve_by_policy"),
    ],
)
def test_environments_that_plan_to_detach_are_refused_where_detach_is_not_allowed(
    ownership: ProcessOwnershipPolicy,
) -> None:
    assert denied_rule(check_ownership, policy_with(detach={"allowed": False}), ownership) == "detach.allowed"
    check_ownership(HostPolicy(), ownership)


# -- the coordinator: denied before any adapter call, journaled -----------------------------------------


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url) as r:
        yield r


def set_policy(rig: Rig, **sections: Any) -> None:
    rig.coordinator.policy = fixed(policy_with(**sections))


def denials(rig: Rig, env_id: str) -> list[dict[str, str]]:
    return [r.fields for r in rig.records(env_id) if r.kind == "denial"]


@pytest.mark.redis
def test_prepare_session_denial_is_journaled_and_calls_no_adapter(rig: Rig) -> None:
    set_policy(rig, limits={"max_memory_mb": 128})
    j = job(memory_mb=512, env={"PLAIN": "ENV-VALUE-MARKER"}, argv=["echo", "ARGV-MARKER"])
    with pytest.raises(PolicyDenial) as info:
        rig.run_chain(j)
    assert info.value.context["rule"] == "limits.max_memory_mb"
    assert sum(rig.runtime.calls.values()) == 0
    assert rig.store.session(j.environment_id) == {}
    assert rig.kinds(j.environment_id) == [("denial", "prepare_session")]
    (record,) = denials(rig, j.environment_id)
    assert record["rule"] == "limits.max_memory_mb" and record["host"] == HOST
    assert "512" in record["summary"] and "128" in record["summary"]
    assert set(record) == {"kind", "op", "host", "ts_ms", "rule", "summary"}
    blob = json.dumps(record)
    assert "ENV-VALUE-MARKER" not in blob and "ARGV-MARKER" not in blob


@pytest.mark.redis
@pytest.mark.parametrize(("sections", "kwargs", "rule"), [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_every_environment_rule_stops_the_chain_at_prepare_session(
    rig: Rig, sections: dict[str, Any], kwargs: dict[str, Any], rule: str
) -> None:
    set_policy(rig, **sections)
    j = job(**kwargs)
    with pytest.raises(PolicyDenial):
        rig.run_chain(j)
    assert sum(rig.runtime.calls.values()) == 0
    assert [d["rule"] for d in denials(rig, j.environment_id)] == [rule]
    assert ("intent", "prepare_session") not in rig.kinds(j.environment_id)


@pytest.mark.redis
def test_a_bad_policy_file_denies_everything_but_teardown(rig: Rig, tmp_path: Path) -> None:
    j = job()
    results = rig.run_chain(j)
    bad = tmp_path / "policy.toml"
    bad.write_text("[limits\n")
    rig.coordinator.policy = PolicySource(bad)
    other = job()
    with pytest.raises(PolicyDenial) as info:
        rig.coordinator.prepare_session(request_of(other, "prepare_session"))
    assert info.value.context["rule"] == "policy.file"
    assert denials(rig, other.environment_id)[0]["rule"] == "policy.file"
    # removing what exists is never refused by policy
    process_ref = started(results).process_ref
    rig.coordinator.signal_process(
        ProcessSignalRequest(process_ref=process_ref, signal=ProcessSignal.kill, grace_ms=5_000)
    )
    rig.coordinator.cleanup(CleanupRequest(environment=j.environment(), cleanup_plan_ref="plan-x"))
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned


@pytest.mark.redis
def test_a_policy_tightened_mid_chain_stops_the_next_step(rig: Rig) -> None:
    j = job(memory_mb=512)
    rig.run_chain(j, upto="configure_network")
    set_policy(rig, limits={"max_memory_mb": 256})
    with pytest.raises(PolicyDenial):
        rig.coordinator.prepare_secrets(request_of(j, "prepare_secrets"))
    assert rig.runtime.calls["prepare_secrets"] == 0
    assert denials(rig, j.environment_id)[-1]["op"] == "prepare_secrets"
    # an earlier step's replay is still answered from its record (no effect happens)
    rig.coordinator.configure_network(request_of(j, "configure_network"))
    assert rig.kinds(j.environment_id)[-1] == ("replay", "configure_network")


@pytest.mark.redis
def test_the_user_is_checked_where_the_process_spec_is_carried(rig: Rig) -> None:
    j = job(user="root")
    rig.run_chain(j, upto="prepare_secrets")  # no process spec yet: nothing to say about the user
    with pytest.raises(PolicyDenial) as info:
        rig.coordinator.prepare_environment(request_of(j, "prepare_environment"))
    assert info.value.context["rule"] == "users.allow_root"
    assert rig.runtime.calls["prepare_environment"] == 0
    set_policy(rig, users={"allow_root": True})
    rig.coordinator.prepare_environment(request_of(j, "prepare_environment"))
    set_policy(rig)  # root forbidden again before the start
    with pytest.raises(PolicyDenial):
        rig.coordinator.start_process(start_request(j))
    assert rig.runtime.calls["start_process"] == 0
    assert [(d["op"], d["rule"]) for d in denials(rig, j.environment_id)] == [
        ("prepare_environment", "users.allow_root"),
        ("start_process", "users.allow_root"),
    ]


@pytest.mark.redis
def test_a_pinned_image_must_resolve_to_its_pin(rig: Rig) -> None:
    set_policy(rig, images={"pinned": {"corral/busybox:latest": PIN}})
    j = job()
    rig.run_chain(j, upto="prepare_session")
    with pytest.raises(PolicyDenial) as info:
        rig.coordinator.resolve_image(request_of(j, "resolve_image"))
    assert info.value.context["rule"] == "images.pinned"
    # the resolution was planning only; it is judged again before anything would use it
    for op in ("prepare_rootfs", "resolve_mounts", "configure_network", "prepare_secrets"):
        getattr(rig.coordinator, op)(request_of(j, op))
    with pytest.raises(PolicyDenial):
        rig.coordinator.prepare_environment(request_of(j, "prepare_environment"))
    assert rig.runtime.calls["prepare_environment"] == 0
    set_policy(rig, images={"pinned": {"corral/busybox:latest": FAKE_DIGEST}})
    rig.coordinator.prepare_environment(request_of(j, "prepare_environment"))


@pytest.mark.redis
def test_detach_rules_come_from_the_host_policy(rig: Rig) -> None:
    j = job(allow_detach=True)
    rig.run_chain(j)
    set_policy(rig, detach={"max_ttl_ms": 10_000})
    request = DetachTransferRequest(environment=j.environment(), ttl_ms=10_001)
    assert denied_rule(rig.coordinator.detach, request) == "detach.max_ttl_ms"
    set_policy(rig, detach={"allowed": False})
    assert denied_rule(rig.coordinator.detach, request) == "detach.allowed"
    assert rig.runtime.calls["detach"] == 0
    assert [d["rule"] for d in denials(rig, j.environment_id)] == ["detach.max_ttl_ms", "detach.allowed"]


# -- the coordinator: capability matching before any effect ---------------------------------------------


class ReportRuntime(CountingRuntime):
    def __init__(self, report: IsolationCapabilityReport) -> None:
        super().__init__(HOST)
        self.report = report

    def capability_report(self) -> IsolationCapabilityReport:
        return self.report


def fake_report() -> IsolationCapabilityReport:
    """A host-process runtime's report: the fake's, claiming the host_process class only."""
    report = FakeRuntime(HOST).capability_report()
    return report.model_copy(update={"supported_classes": [IsolationClass.host_process]})


@pytest.mark.redis
def test_a_host_process_runtime_is_refused_for_a_container_job(redis_url: str) -> None:
    with make_rig(redis_url, runtime=ReportRuntime(fake_report())) as rig:
        j = job()
        with pytest.raises(PolicyDenial) as info:
            rig.run_chain(j)
        assert info.value.context["rule"] == "matching"
        assert info.value.context["gaps"] == "class:container"
        assert sum(rig.runtime.calls.values()) == 0
        (record,) = denials(rig, j.environment_id)
        assert record["gaps"] == "class:container" and record["op"] == "prepare_session"


@pytest.mark.redis
def test_an_approved_downgrade_is_accepted_and_an_unapproved_one_is_not(redis_url: str) -> None:
    with make_rig(redis_url, runtime=ReportRuntime(fake_report())) as rig:
        need = requirement(allowed_gaps=["class:container"], policy_ref="dev-host-process")
        listed = job()
        steps = dict(with_requirement(listed, need, HOST))
        with pytest.raises(PolicyDenial, match="no approval 'dev-host-process'"):
            rig.coordinator.prepare_session(steps["prepare_session"])  # type: ignore[arg-type]
        set_policy(
            rig,
            approvals=[approval(["class:container"], ApprovalKind.tool, "dev-host-process").model_dump(mode="json")],
        )
        with pytest.raises(PolicyDenial, match="tool approval"):
            rig.coordinator.prepare_session(steps["prepare_session"])  # type: ignore[arg-type]
        assert rig.runtime.calls["prepare_session"] == 0
        set_policy(
            rig, approvals=[approval(["class:container"], policy_ref="dev-host-process").model_dump(mode="json")]
        )
        rig.coordinator.prepare_session(steps["prepare_session"])  # type: ignore[arg-type]
        assert rig.runtime.calls["prepare_session"] == 1


@pytest.mark.redis
def test_a_degraded_host_is_never_used_silently(redis_url: str) -> None:
    with make_rig(redis_url, runtime=ReportRuntime(report(health=HealthState.degraded))) as rig:
        j = job()
        with pytest.raises(PolicyDenial) as info:
            rig.run_chain(j)
        assert info.value.context["gaps"] == "health:degraded"
        assert sum(rig.runtime.calls.values()) == 0


def test_jobspec_requests_carry_the_rewritten_requirement() -> None:
    need = requirement(IsolationClass.host_process)
    for _op, request in with_requirement(JobSpec(image="corral/busybox:latest", argv=["true"]), need, HOST):
        assert request.environment.spec.requirement == need  # type: ignore[attr-defined]
