"""Pure host-policy rules of the Docker runtime and the shim's deadline logic (no Docker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.contract.errors import HostConfigurationNeeded, InvalidRequest, PolicyDenial, Unsupported
from corral.contract.models import (
    FilesystemIsolationPolicy,
    IsolatedProcessSpec,
    MountPolicy,
    NetworkIsolationPolicy,
    NetworkKind,
    RedactedEnvVar,
    ResourceLimits,
)
from corral.contract.vocabulary import MountMode, SymlinkPolicy, TerminalMode
from corral.io.shim import Enforcer, exit_reason
from corral.runtimes.docker import mounts as docker_mounts
from corral.runtimes.docker.capabilities import fs_type
from corral.runtimes.docker.policy import (
    ContainerPlan,
    ResolvedMount,
    check_process,
    config_digest,
    create_kwargs,
    env_secret_text,
    forbidden_sources,
    network_mode,
    resolve_mounts,
    within,
)
from corral.settings import HostSettings


@pytest.fixture
def host(tmp_path: Path) -> HostSettings:
    (tmp_path / "data").mkdir()
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    return HostSettings(
        state_dir=str(tmp_path / "state"),
        secrets_root=str(tmp_path / "shm"),
        mounts={
            "data": str(tmp_path / "data"),
            "file": str(tmp_path / "file.txt"),
            "link": str(tmp_path / "link"),
            "gone": str(tmp_path / "gone"),
            "rel": "relative/path",
            "root": "/",
            "state": str(tmp_path),
            "sock": "/run/docker.sock",
        },
        writable_mounts=["data"],
    )


def mounts(*items: MountPolicy, symlinks: SymlinkPolicy = SymlinkPolicy.deny_escapes) -> FilesystemIsolationPolicy:
    return FilesystemIsolationPolicy(mounts=list(items), symlink_policy=symlinks)


def mp(alias: str, dest: str = "/m", mode: MountMode = MountMode.read_only) -> MountPolicy:
    return MountPolicy(mount_ref=f"m-{alias}", source_alias=alias, destination_path=dest, mode=mode)


def test_within() -> None:
    assert within("/a/b", "/a") and within("/a", "/a") and within("/x", "/")
    assert not within("/ab", "/a")


def checked(fs: FilesystemIsolationPolicy, host: HostSettings) -> list[ResolvedMount]:
    """What ``resolve_mounts`` allows, then each source opened and checked (``docker_mounts``)."""
    return [docker_mounts.check(m, forbidden_sources(host)) for m in resolve_mounts(fs, host)]


def test_resolve_mounts_binds_read_only_by_default(host: HostSettings) -> None:
    [mount] = checked(mounts(mp("data")), host)
    assert mount.bind() == f"{host.mounts['data']}:/m:ro"
    assert "whole directory tree" in mount.audit() and host.mounts["data"] not in mount.audit()
    [writable] = checked(mounts(mp("data", mode=MountMode.writable)), host)
    assert writable.bind().endswith(":rw")


def test_resolve_mounts_audits_a_single_file(host: HostSettings) -> None:
    [mount] = checked(mounts(mp("file")), host)
    assert "single file" in mount.audit()


@pytest.mark.parametrize("requested", list(SymlinkPolicy))
def test_a_request_never_makes_the_host_follow_a_symlink(host: HostSettings, requested: SymlinkPolicy) -> None:
    """The host alias says deny (the default): whatever the request asks, the symlinked path is refused."""
    with pytest.raises(PolicyDenial, match="symlink"):
        checked(mounts(mp("link"), symlinks=requested), host)


@pytest.mark.parametrize("requested", list(SymlinkPolicy))
def test_a_within_alias_host_alias_follows_only_inside_its_root(
    host: HostSettings, tmp_path: Path, requested: SymlinkPolicy
) -> None:
    host.use_mount_aliases(host.mounts, host.writable_mounts, {"link": str(tmp_path)})
    [mount] = checked(mounts(mp("link"), symlinks=requested), host)
    assert mount.symlink_root == str(tmp_path) and not mount.is_file
    # the same link judged against a root it leaves (its target is a sibling of the root)
    (tmp_path / "box").mkdir()
    (tmp_path / "box" / "out").symlink_to(tmp_path / "data")
    host.mounts["out"] = str(tmp_path / "box" / "out")
    host.use_mount_aliases(host.mounts, host.writable_mounts, {"out": str(tmp_path / "box")})
    with pytest.raises(PolicyDenial, match="out of its root"):
        checked(mounts(mp("out"), symlinks=requested), host)


@pytest.mark.parametrize(
    ("alias", "dest", "error"),
    [
        ("nope", "/m", PolicyDenial),
        ("file", "/m", PolicyDenial),  # writable requested below for this one
        ("root", "/m", PolicyDenial),
        ("state", "/m", PolicyDenial),
        ("sock", "/m", PolicyDenial),
        ("data", "/sys/fs", PolicyDenial),
        ("data", "/tmp/x", PolicyDenial),
        ("gone", "/m", HostConfigurationNeeded),
        ("rel", "/m", HostConfigurationNeeded),
    ],
)
def test_resolve_mounts_denials(host: HostSettings, alias: str, dest: str, error: type[Exception]) -> None:
    mode = MountMode.writable if alias == "file" else MountMode.read_only
    with pytest.raises(error):
        checked(mounts(mp(alias, dest, mode)), host)


@pytest.mark.parametrize(
    "policy",
    [
        NetworkIsolationPolicy(),
        NetworkIsolationPolicy(kind=NetworkKind.adapter_defined_denied),
        NetworkIsolationPolicy(kind=NetworkKind.allowlist),
        NetworkIsolationPolicy(kind=NetworkKind.egress_scoped),
    ],
)
def test_every_mode_without_egress_runs_with_no_network(policy: NetworkIsolationPolicy) -> None:
    # never an internal bridge: it still has a default route to the host (issue 7, escape 5)
    assert network_mode(policy) == "none"


@pytest.mark.parametrize(
    "policy",
    [
        NetworkIsolationPolicy(kind=NetworkKind.allowlist, hosts=["example.org"]),
        NetworkIsolationPolicy(kind=NetworkKind.egress_scoped, rules=["tcp:443"]),
        NetworkIsolationPolicy(kind=NetworkKind.socket_relay),
        NetworkIsolationPolicy(kind=NetworkKind.exposed_ports, ports=[8080]),
        NetworkIsolationPolicy(kind=NetworkKind.exposed_ports),
    ],
)
def test_network_modes_not_enforceable_are_unsupported(policy: NetworkIsolationPolicy) -> None:
    with pytest.raises(Unsupported):
        network_mode(policy)


def spec(**kwargs: object) -> IsolatedProcessSpec:
    return IsolatedProcessSpec(process_id="p", argv=["true"], **kwargs)  # type: ignore[arg-type]


def test_check_process_refuses_what_is_not_enforced() -> None:
    with pytest.raises(Unsupported):
        check_process(spec(terminal_mode=TerminalMode.pty))
    with pytest.raises(Unsupported):
        check_process(spec(env=[RedactedEnvVar(name="X", value_ref="ref-1")]))
    with pytest.raises(InvalidRequest):
        check_process(spec(posix_rlimits={"bogus": 1}))
    check_process(spec(posix_rlimits={"nofile": 64}))


def test_env_secret_text_must_be_utf8_without_nul() -> None:
    assert env_secret_text("K", b"value") == "value"
    with pytest.raises(InvalidRequest) as info:
        env_secret_text("K", b"\xff\xfe")
    assert "\xff" not in info.value.message
    with pytest.raises(InvalidRequest):
        env_secret_text("K", b"a\x00b")


def plan(**kwargs: object) -> ContainerPlan:
    base: dict[str, object] = {
        "name": "corral-x",
        "image": "sha256:" + "1" * 64,
        "labels": {"corral.host": "h"},
        "process": spec(env=[RedactedEnvVar(name="PLAIN", redacted_value="1")], posix_rlimits={"nofile": 64}),
        "resources": ResourceLimits.with_cpus(0.5, memory_mb=64, process_count=16),
        "scratch_mb": 8,
        "read_only": True,
        "network": "none",
        "secret_env": {"TOKEN": "hunter2"},
    }
    base.update(kwargs)
    return ContainerPlan(**base)  # type: ignore[arg-type]


def test_create_kwargs_lock_the_container_down() -> None:
    kwargs = create_kwargs(plan())
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["read_only"] is True and kwargs["privileged"] is False and kwargs["init"] is True
    assert kwargs["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=8m,mode=1777"}
    assert (kwargs["mem_limit"], kwargs["memswap_limit"], kwargs["pids_limit"]) == ("64m", "64m", 16)
    assert kwargs["nano_cpus"] == 500_000_000 and kwargs["network_mode"] == "none"
    assert kwargs["environment"] == ["PLAIN=1", "TOKEN=hunter2"]
    assert kwargs["log_config"] == {"type": "none"}
    assert kwargs["ulimits"] == [{"name": "nofile", "soft": 64, "hard": 64}]
    assert kwargs["user"] == "65534:65534"  # the non-root default


def test_config_digest_hides_secret_values_and_tracks_settings() -> None:
    one = create_kwargs(plan())
    rotated = create_kwargs(plan(secret_env={"TOKEN": "other"}))
    assert config_digest(one, ["TOKEN"]) == config_digest(rotated, ["TOKEN"])
    assert config_digest(one, ["TOKEN"]) != config_digest(create_kwargs(plan(scratch_mb=9)), ["TOKEN"])


def test_fs_type_uses_the_longest_mount_prefix(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    table.write_text("/dev/vda / ext4 rw 0 0\ntmpfs /dev/shm tmpfs rw 0 0\n")
    assert fs_type("/dev/shm/corral/not-yet", str(table)) == "tmpfs"
    assert fs_type("/var/lib/corral", str(table)) == "ext4"


def test_enforcer_timeout_then_grace_then_kill() -> None:
    enforcer = Enforcer(deadline=10.0, grace_s=2.0, timeout_signal="SIGTERM")
    assert enforcer.tick(9.9) == []
    assert enforcer.tick(10.0) == ["SIGTERM"]
    assert enforcer.tick(11.9) == []
    assert enforcer.tick(12.0) == ["SIGKILL"]
    assert enforcer.tick(20.0) == []
    assert exit_reason(enforcer, 137, oom=False, signaled=False) == "timeout"


def test_enforcer_kill_timeout_signal_is_immediate() -> None:
    enforcer = Enforcer(deadline=1.0, grace_s=5.0, timeout_signal="SIGKILL")
    assert enforcer.tick(1.0) == ["SIGKILL"]


def test_enforcer_escalation_request_and_output_limit() -> None:
    enforcer = Enforcer(deadline=None, grace_s=1.0, timeout_signal="SIGTERM")
    assert enforcer.tick(5.0, escalate_at=6.0) == []
    assert enforcer.tick(6.0, escalate_at=6.0) == ["SIGKILL"]
    assert exit_reason(enforcer, 137, oom=False, signaled=True) == "signal"
    limited = Enforcer(deadline=None, grace_s=1.0, timeout_signal="SIGTERM")
    limited.fail_output(3.0)
    assert limited.tick(3.0) == ["SIGKILL"]


@pytest.mark.parametrize(
    ("code", "oom", "signaled", "reason"),
    [
        (0, False, False, "exit"),
        (3, False, False, "exit"),
        (137, True, False, "oom"),
        (130, False, False, "signal"),
        (1, False, True, "signal"),
        (0, False, True, "exit"),
        (None, False, False, "lost"),
    ],
)
def test_exit_reason(code: int | None, oom: bool, signaled: bool, reason: str) -> None:
    assert exit_reason(Enforcer(None, 1.0, "SIGTERM"), code, oom, signaled) == reason


def test_image_volumes_are_covered_by_a_tmpfs_never_an_anonymous_volume() -> None:
    """Read-only with a read-only root, writable (scratch-sized) with a writable one; a path a bind
    covers, the scratch and ``/`` are left alone."""
    volumes = ["/vol", "data/", "/tmp/x", "/", "/r"]
    taken = plan(image_volumes=volumes, secret_binds=[("/host/secret", "/r")])
    kwargs = create_kwargs(taken)
    assert kwargs["tmpfs"] == {
        "/tmp": "rw,nosuid,nodev,size=8m,mode=1777",
        "/vol": "ro,nosuid,nodev,size=8m,mode=1777",
        "/data": "ro,nosuid,nodev,size=8m,mode=1777",
    }
    writable = create_kwargs(plan(image_volumes=["/vol"], read_only=False))
    assert writable["tmpfs"]["/vol"] == "rw,nosuid,nodev,size=8m,mode=1777"
