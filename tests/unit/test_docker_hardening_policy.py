"""Pure parts of the Docker hardening (no Docker): the last gate before ``containers.create``, the
secret file owner as Docker would resolve the user, secret files on disk, and the report helpers."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from corral.contract.errors import HostConfigurationNeeded, PolicyDenial
from corral.contract.models import IsolatedProcessSpec, ResourceLimits
from corral.runtimes.docker.capabilities import engine_problems, hardening, security_options, weaker
from corral.runtimes.docker.environment import check_secrets_root, write_secret_file
from corral.runtimes.docker.policy import (
    DEFAULT_USER,
    ContainerPlan,
    UserTables,
    check_hardened,
    create_kwargs,
    needs_user_tables,
    sandbox_owner,
)
from corral.settings import HostSettings

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\napp:x:1000:1001::/:/bin/sh\n"
GROUP = "root:x:0:\nnogroup:x:65534:\nstaff:x:50:\n"
TABLES = UserTables.parse(PASSWD, GROUP)


def kwargs_for(user: str | None = None, **plan: Any) -> dict[str, Any]:
    process = IsolatedProcessSpec(process_id="p", argv=["true"], user=user)
    base: dict[str, Any] = {
        "name": "corral-x",
        "image": "sha256:" + "1" * 64,
        "labels": {},
        "process": process,
        "resources": ResourceLimits(process_count=7),
        "scratch_mb": 8,
        "read_only": True,
        "network": "none",
    }
    base.update(plan)
    return create_kwargs(ContainerPlan(**base))


def test_create_kwargs_are_hardened_by_default() -> None:
    kwargs = kwargs_for()
    check_hardened(kwargs)
    assert kwargs["user"] == DEFAULT_USER == "65534:65534"
    assert kwargs["cap_drop"] == ["ALL"] and "cap_add" not in kwargs
    assert kwargs["security_opt"] == ["no-new-privileges"]  # no seccomp option: Docker's default profile
    assert kwargs["privileged"] is False and kwargs["read_only"] is True
    assert kwargs["ipc_mode"] == "private" and kwargs["cgroupns"] == "private" and kwargs["devices"] == []
    assert kwargs["network_mode"] == "none" and kwargs["pids_limit"] == 7
    assert not {"pid_mode", "uts_mode", "userns_mode"} & set(kwargs)


def test_explicit_root_keeps_every_other_default() -> None:
    kwargs = kwargs_for("root")
    check_hardened(kwargs)
    assert kwargs["user"] == "root" and kwargs["cap_drop"] == ["ALL"]


@pytest.mark.parametrize(
    ("change", "violation"),
    [
        ({"cap_drop": []}, "capabilities"),
        ({"cap_add": ["SYS_ADMIN"]}, "capabilities"),
        ({"privileged": True}, "privileged"),
        ({"security_opt": []}, "no-new-privileges"),
        ({"security_opt": ["no-new-privileges", "seccomp=unconfined"]}, "seccomp"),
        ({"security_opt": ["no-new-privileges", "seccomp:/tmp/profile.json"]}, "seccomp"),
        ({"security_opt": ["no-new-privileges", "apparmor=unconfined"]}, "seccomp"),
        ({"user": ""}, "user"),
        ({"pids_limit": None}, "pids_limit"),
        ({"pids_limit": 0}, "pids_limit"),
        ({"network_mode": "host"}, "network namespace"),
        ({"network_mode": "bridge"}, "network namespace"),
        ({"network_mode": "container:abc"}, "network namespace"),
        ({"network_mode": "corral-abc"}, "network namespace"),  # an internal bridge still routes to the host
        ({"network_mode": None}, "network namespace"),
        ({"ipc_mode": "host"}, "ipc namespace"),
        ({"ipc_mode": "shareable"}, "ipc namespace"),
        ({"pid_mode": "host"}, "pid_mode"),
        ({"uts_mode": "host"}, "uts_mode"),
        ({"userns_mode": "host"}, "userns_mode"),
        ({"cgroupns": "host"}, "cgroup namespace"),
        ({"devices": ["/dev/sda:/dev/sda:rwm"]}, "devices"),
        ({"device_cgroup_rules": ["c 1:3 rwm"]}, "devices"),
        ({"volumes": ["/var/run/docker.sock:/var/run/docker.sock:ro"]}, "the Docker socket"),
        ({"volumes": ["/run:/hostrun:ro"]}, "the Docker socket"),
        ({"volumes": ["/srv/data:/run/docker.sock:ro"]}, "the Docker socket"),
    ],
)
def test_check_hardened_refuses_each_violation(change: dict[str, Any], violation: str) -> None:
    kwargs = {**kwargs_for(), **change}
    with pytest.raises(PolicyDenial) as info:
        check_hardened(kwargs)
    assert violation in info.value.context["violations"]


def test_check_hardened_accepts_binds(tmp_path: Path) -> None:
    check_hardened({**kwargs_for(), "volumes": [f"{tmp_path}:/data:ro"]})


# ------------------------------------------------------------------------------------- owners


@pytest.mark.parametrize(
    ("user", "tables", "owner"),
    [
        ("65534:65534", None, (65534, 65534)),
        ("1000", TABLES, (1000, 1001)),  # a uid's primary group from passwd
        ("4242", TABLES, (4242, 0)),  # a uid without a passwd entry gets gid 0, like runc
        ("4242", None, None),  # unreadable tables: only UID:GID resolves
        ("nobody", TABLES, (65534, 65534)),
        ("app", TABLES, (1000, 1001)),
        ("app:staff", TABLES, (1000, 50)),
        ("app:7", TABLES, (1000, 7)),
        ("1000:staff", TABLES, (1000, 50)),
        ("root", TABLES, (0, 0)),
        ("root", None, None),
        ("ghost", TABLES, None),  # Docker would refuse to start it; so does prepare_environment
        ("nobody", None, None),  # a passwd that is not a plain file
        ("app:ghosts", TABLES, None),
        ("1000:staff", None, None),
    ],
)
def test_sandbox_owner_resolves_like_docker(
    user: str, tables: UserTables | None, owner: tuple[int, int] | None
) -> None:
    assert sandbox_owner(user, tables) == owner


def test_only_numeric_user_and_group_skip_the_image_lookup() -> None:
    assert not needs_user_tables("65534:65534")
    assert needs_user_tables("65534") and needs_user_tables("nobody") and needs_user_tables("1:staff")


# ------------------------------------------------------------------------------------- secret files


def _mode_owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_write_secret_file_0400_owned_by_the_sandbox_user(tmp_path: Path) -> None:
    write_secret_file(tmp_path, "s", b"v1", (65534, 65534))
    assert _mode_owner(tmp_path / "s") == (0o400, 65534, 65534)
    write_secret_file(tmp_path, "s", b"v2", (1234, 0))  # replaced, never appended or left writable
    assert (tmp_path / "s").read_bytes() == b"v2" and _mode_owner(tmp_path / "s") == (0o400, 1234, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no temporary file left


def test_write_secret_file_without_owner_is_world_readable(tmp_path: Path) -> None:
    write_secret_file(tmp_path, "s", b"v", None)
    assert _mode_owner(tmp_path / "s")[0] == 0o444


def test_write_secret_file_for_the_worker_itself(tmp_path: Path) -> None:
    write_secret_file(tmp_path, "s", b"v", (os.geteuid(), os.getegid()))
    assert _mode_owner(tmp_path / "s") == (0o400, os.geteuid(), os.getegid())


def test_write_secret_file_does_not_follow_a_planted_temp_link(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"untouched")
    tmp_name = f".s.{os.getpid()}.{__import__('threading').get_ident()}.tmp"
    (tmp_path / tmp_name).symlink_to(target)
    write_secret_file(tmp_path, "s", b"v", None)
    assert target.read_bytes() == b"untouched" and (tmp_path / "s").read_bytes() == b"v"


def test_check_secrets_root_refuses_disk_unless_allowed(tmp_path: Path) -> None:
    check_secrets_root("/dev/shm/corral-anything", False)  # /dev/shm is a tmpfs on any Linux host
    with pytest.raises(HostConfigurationNeeded) as info:
        check_secrets_root(str(tmp_path / "on-disk"), False)
    assert info.value.context["filesystem"] not in ("tmpfs", "ramfs")
    check_secrets_root(str(tmp_path / "on-disk"), True)


# ------------------------------------------------------------------------------------- report helpers


def test_security_options_parse() -> None:
    info = {"SecurityOptions": ["name=seccomp,profile=default", "name=apparmor", "name=cgroupns"]}
    assert security_options(info) == {"seccomp": {"profile": "default"}, "apparmor": {}, "cgroupns": {}}


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ([], "no seccomp support"),
        (["name=seccomp,profile=unconfined"], "'unconfined'"),
        (["name=seccomp,profile=/etc/custom.json"], "not Docker's default"),
        (["name=seccomp,profile=default", "name=userns"], "userns-remap"),
        (["name=seccomp,profile=builtin", "name=rootless"], "rootless"),
    ],
)
def test_engine_problems_degrade_the_host(options: list[str], problem: str) -> None:
    problems = engine_problems({"SecurityOptions": options})
    assert any(problem in p for p in problems), problems


def test_healthy_engine_has_no_problem_and_reports_seccomp() -> None:
    info = {"SecurityOptions": ["name=seccomp,profile=default"]}
    assert engine_problems(info) == []
    assert any(item.startswith("seccomp:docker-default") for item in hardening(info))
    unconfined = {"SecurityOptions": ["name=seccomp,profile=unconfined"]}
    assert not any(item.startswith("seccomp") for item in hardening(unconfined))
    assert any(item.startswith("apparmor") for item in hardening({"SecurityOptions": ["name=apparmor"]}))


def test_weaker_features_follow_the_host(tmp_path: Path) -> None:
    items = weaker(HostSettings(secrets_root="/dev/shm/x"), {"SecurityOptions": []})
    assert any(w.startswith("env_secrets") and "docker inspect" in w for w in items)
    assert any(w.startswith("apparmor") for w in items)
    assert not any("allow_secrets_off_tmpfs" in w for w in items)
    off = HostSettings(secrets_root=str(tmp_path), allow_secrets_off_tmpfs=True)
    assert any("allow_secrets_off_tmpfs" in w for w in weaker(off, {"SecurityOptions": ["name=apparmor"]}))
