"""The pinned mount source (``corral.runtimes.docker.mounts``) on the real filesystem, no Docker.

Opening and checking need no privilege; pinning makes real bind mounts and so needs root (skipped
otherwise). The attacks through real containers are in ``tests/integration/test_mount_pinning.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.contract.errors import HostConfigurationNeeded, PolicyDenial
from corral.contract.vocabulary import MountMode
from corral.runtimes.docker import mounts as pins
from corral.runtimes.docker.policy import ResolvedMount, check_source, forbidden_sources
from corral.sandbox.policy import MountAlias, symlink_roots
from corral.settings import HostSettings

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root")


@pytest.fixture
def host(tmp_path: Path) -> Iterator[HostSettings]:
    (tmp_path / "srv" / "data").mkdir(parents=True)
    (tmp_path / "srv" / "data" / "real.txt").write_text("real")
    (tmp_path / "srv" / "file.txt").write_text("one file")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "canary.txt").write_text("CANARY")
    settings = HostSettings(
        state_dir=str(tmp_path / "state"),
        secrets_root=str(tmp_path / "shm"),
        secrets_dir=str(tmp_path / "secrets"),
    )
    yield settings
    for point in reversed(pins.pinned_mounts(settings)):  # a failed test never leaves a bind behind
        os.system(f"umount -l '{point}'")


def rm(path: str, mode: MountMode = MountMode.read_only, root: str | None = None) -> ResolvedMount:
    return ResolvedMount("m1", "alias", path, "/m", mode, symlink_root=root)


def test_a_symlink_anywhere_in_the_path_is_refused(host: HostSettings, tmp_path: Path) -> None:
    (tmp_path / "hop").symlink_to(tmp_path / "srv")
    (tmp_path / "srv" / "last").symlink_to(tmp_path / "srv" / "data")
    forbidden = forbidden_sources(host)
    for path in (tmp_path / "hop" / "data", tmp_path / "srv" / "last", tmp_path / "hop" / "file.txt"):
        with pytest.raises(PolicyDenial, match="symlink"):
            pins.check(rm(str(path)), forbidden)
    assert pins.check(rm(str(tmp_path / "srv" / "data")), forbidden).is_file is False
    assert pins.check(rm(str(tmp_path / "srv" / "file.txt")), forbidden).is_file is True


def test_within_alias_follows_only_to_targets_inside_the_root(host: HostSettings, tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    (srv / "current").symlink_to(srv / "data")
    (srv / "escape").symlink_to(tmp_path / "outside")
    (srv / "dotdot").symlink_to("../outside")
    forbidden = forbidden_sources(host)
    assert pins.check(rm(str(srv / "current"), root=str(srv)), forbidden).symlink_root == str(srv)
    for name in ("escape", "dotdot"):
        with pytest.raises(PolicyDenial, match="out of its root"):
            pins.check(rm(str(srv / name), root=str(srv)), forbidden)
    (tmp_path / "hop").symlink_to(srv)  # the root itself is walked without following symlinks
    with pytest.raises(PolicyDenial, match="symlink"):
        pins.check(rm(str(tmp_path / "hop" / "current"), root=str(tmp_path / "hop")), forbidden)


def test_the_root_is_the_policy_files_and_validated() -> None:
    alias = MountAlias(path="/srv/data/current", symlinks="within_alias", root="/srv/data")
    assert alias.root == "/srv/data"
    for bad in (
        {"path": "/srv/data", "symlinks": "within_alias"},  # no root
        {"path": "/srv/data", "symlinks": "within_alias", "root": "/"},
        {"path": "/srv/data", "symlinks": "within_alias", "root": "/opt"},  # path not under root
        {"path": "/srv/data", "root": "/srv"},  # a root without within_alias
    ):
        with pytest.raises(ValidationError, match=r"root|within"):
            MountAlias.model_validate(bad)


def test_symlink_roots_come_from_the_policy_only() -> None:
    from corral.sandbox.policy import HostPolicy

    policy = HostPolicy.model_validate(
        {
            "mounts": {
                "a": {"path": "/srv/a"},
                "b": {"path": "/srv/b/cur", "symlinks": "within_alias", "root": "/srv/b"},
            }
        }
    )
    assert symlink_roots(policy) == {"b": "/srv/b"}
    host = HostSettings()
    host.use_mount_aliases({"a": "/srv/a", "b": "/srv/b/cur"}, [], symlink_roots(policy))
    assert host.symlink_root("b") == "/srv/b" and host.symlink_root("a") is None


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/proc",
        "/dev/shm",
        "/var/lib/docker",
        "/var/lib/docker/overlay2",
        "/var/lib",  # above Docker's data root
        "/run/containerd",
        "/run/docker.sock",
        "/run/docker",
        "/run/docker.pid",
        "/run",
        "/run/runc/x",
        "/etc/docker",
        "/etc/corral/secrets",
        "/etc",  # above /etc/docker and /etc/corral
        "/custom/docker-root/volumes",
    ],
)
def test_forbidden_sources_refuse_the_engine_and_everything_above_it(path: str) -> None:
    forbidden = forbidden_sources(HostSettings(state_dir="/srv/corral"), "/custom/docker-root")
    with pytest.raises(PolicyDenial):
        check_source("a", path, forbidden)


def test_forbidden_sources_include_corral_dirs(host: HostSettings, tmp_path: Path) -> None:
    forbidden = forbidden_sources(host.model_copy(update={"policy_file": str(tmp_path / "pol" / "policy.toml")}))
    for path in ("state", "state/mounts", "shm", "secrets", "pol", ""):
        with pytest.raises(PolicyDenial):
            check_source("a", str(tmp_path / path) if path else str(tmp_path), forbidden)
    check_source("a", str(tmp_path / "srv" / "data"), forbidden)  # a sibling is fine
    check_source("a", "/srv/docker-data", forbidden)  # a name like docker* is only refused in /run


def test_a_socket_or_device_is_never_a_source(host: HostSettings, tmp_path: Path) -> None:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "srv" / "app.sock"))
        with pytest.raises(PolicyDenial, match="neither a directory nor a regular file"):
            pins.check(rm(str(tmp_path / "srv" / "app.sock")), forbidden_sources(host))


def test_a_missing_source_needs_host_configuration(host: HostSettings, tmp_path: Path) -> None:
    with pytest.raises(HostConfigurationNeeded, match="does not exist"):
        pins.check(rm(str(tmp_path / "srv" / "nope")), forbidden_sources(host))


def test_a_worker_that_is_not_root_refuses_to_pin(
    host: HostSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(HostConfigurationNeeded, match="root worker"):
        pins.pin(host, "s1", {}, rm(str(tmp_path / "srv" / "data")), forbidden_sources(host))
    assert pins.pinned_mounts(host) == []


def test_mountinfo_escapes_are_decoded(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "36 35 98:0 /a /srv/with\\040space rw,nosuid - ext3 /dev/root rw\n37 35 98:0 /b /other ro - ext3 /dev/root rw\n"
    )
    assert pins.mount_points("/srv", str(table)) == {"/srv/with space": "rw,nosuid"}


@needs_root
def test_the_pin_shows_what_was_opened_even_after_the_path_is_swapped(host: HostSettings, tmp_path: Path) -> None:
    data = tmp_path / "srv" / "data"
    pinned = pins.pin(host, "s1", {"corral.host": "h"}, rm(str(data)), forbidden_sources(host))
    target = Path(pinned.host_path)
    assert target.parent == Path(host.state_dir) / "mounts" / "s1"
    options = pins.mount_points(str(target))[str(target)].split(",")
    assert {"ro", "nosuid", "nodev"} <= set(options)
    data.rename(tmp_path / "srv" / "data.moved")
    data.symlink_to(tmp_path / "outside")  # the attack: the alias path is now a symlink out
    assert (target / "real.txt").read_text() == "real"
    assert not (target / "canary.txt").exists()
    # a replay reuses the pin it finds (a read-only mount point), without opening the path again
    data.unlink()
    (tmp_path / "srv" / "data.moved").rename(data)
    assert pins.pin(host, "s1", {"corral.host": "h"}, rm(str(data)), forbidden_sources(host)) == pinned
    assert pins.pinned_mounts(host) == [str(target)]
    with pytest.raises(OSError, match="Read-only file system"):
        (target / "new.txt").write_text("read-only")
    assert pins.unpin_session(host, "s1") == []
    assert pins.pinned_mounts(host) == [] and not (Path(host.state_dir) / "mounts" / "s1").exists()
    assert (data / "real.txt").read_text() == "real"  # unpinning never touches the source


@needs_root
def test_a_single_file_alias_is_pinned_on_an_empty_file(host: HostSettings, tmp_path: Path) -> None:
    source = tmp_path / "srv" / "file.txt"
    pinned = pins.pin(host, "s2", {}, rm(str(source), MountMode.writable), forbidden_sources(host))
    assert pinned.is_file and Path(pinned.host_path).read_text() == "one file"
    assert "ro" not in pins.mount_points(pinned.host_path)[pinned.host_path].split(",")
    Path(pinned.host_path).write_text("written through the pin")
    assert source.read_text() == "written through the pin"
    assert pins.unpin_session(host, "s2") == []
    assert pins.pinned_mounts(host) == [] and source.exists()


@needs_root
def test_a_refused_source_leaves_no_pin(host: HostSettings, tmp_path: Path) -> None:
    (tmp_path / "srv" / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(PolicyDenial):
        pins.pin(host, "s3", {}, rm(str(tmp_path / "srv" / "link")), forbidden_sources(host))
    assert pins.pinned_mounts(host) == []
    assert pins.unpin_session(host, "s3") == []
    assert not (Path(host.state_dir) / "mounts" / "s3").exists()


def test_the_capability_report_says_how_mounts_are_pinned_and_when_they_are_refused(
    host: HostSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.runtimes.docker import capabilities as caps

    assert any(item.startswith("mount_sources:pinned") for item in caps.HARDENING)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert caps.NON_ROOT_MOUNTS in caps.weaker(host, None)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert caps.NON_ROOT_MOUNTS not in caps.weaker(host, None)


def test_fs_location_sees_through_bind_mounts() -> None:
    """Where a path lies in its filesystem: a bind of /disk/secrets at /etc/corral/secrets and the
    directory /disk/secrets itself are one place; the deepest mount point wins, the last on top."""
    from corral.runtimes.docker.mounts import fs_location

    table = [
        ("/", "8:1", "/"),
        ("/etc/corral/secrets", "8:1", "/disk/secrets"),
        ("/srv", "8:2", "/"),
        ("/srv", "8:3", "/"),  # mounted over the first /srv
    ]
    assert fs_location("/etc/corral/secrets/tok", table) == ("8:1", "/disk/secrets/tok")
    assert fs_location("/disk/secrets", table) == ("8:1", "/disk/secrets")
    assert fs_location("/etc/corral/secrets", table) == ("8:1", "/disk/secrets")
    assert fs_location("/srv/a", table) == ("8:3", "/a")
    assert fs_location("/srvx", table) == ("8:1", "/srvx")
    assert fs_location("/", table) == ("8:1", "/")
