"""Root by name (issue 7, escape 4), performed on the real engine.

An image built here by ``docker import`` maps ``admin`` to uid 0, has a group ``wheel`` with gid 0
that lists ``bob`` as a member, and lines runc reads as uid 0 (``wrap`` 4294967296, ``junk`` abc,
``dup``, ``neg``). Every spelling that ends as uid 0, gid 0 or a supplementary gid 0 is refused at
``prepare_environment`` on a default host policy, before any container exists; every other user
really runs with the identity corral computed (read from ``/proc/self/status`` inside); and with
``allow_root`` the root spellings run with exactly the identity the mirror predicted, so the host
check and Docker cannot disagree on this table.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.contract.errors import InvalidRequest, PolicyDenial
from corral.contract.models import ExecutionEnvironment, ProcessStartRequest
from corral.runtimes.docker.runtime import DockerRuntime
from corral.sandbox.policy import HostPolicy, UserRules
from corral.settings import HostSettings
from tests.conftest import missing
from tests.harness import docker_runtime, leftovers
from tests.integration.test_cli import corral
from tests.integration.test_docker_runtime import count_labeled, make_env, output, prepare, proc_spec, wait_exit
from tests.unit.test_userspec import GROUP, PASSWD, RESOLVED, SAFE

pytestmark = pytest.mark.docker

STATUS = "grep -E '^(Uid|Gid|Groups):' /proc/self/status"
ROOT_SPELLINGS = sorted(set(RESOLVED) - SAFE)


def _rootfs_tar() -> bytes:
    """A busybox-static rootfs with the attack's passwd and group files."""
    busybox = shutil.which("busybox")
    if busybox is None:
        missing("busybox-static")
    assert busybox is not None
    blob = io.BytesIO()
    with tarfile.open(fileobj=blob, mode="w") as tar:

        def add(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))

        for directory in ("bin", "etc", "tmp", "proc", "sys", "dev"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        add("bin/busybox", Path(busybox).read_bytes(), 0o755)
        for applet in ("sh", "grep", "cat", "id", "true"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        add("etc/passwd", PASSWD.encode())
        add("etc/group", GROUP.encode())
    return blob.getvalue()


@pytest.fixture(scope="module")
def evil_image(docker_client: Any) -> Iterator[str]:
    """``corral/evil-users-<random>:latest`` (``corral/*`` is allowed by the default policy), removed after."""
    name = f"corral/evil-users-{uuid.uuid4().hex[:10]}:latest"
    repository = name.split(":")[0]
    docker_client.api.import_image_from_data(
        _rootfs_tar(), repository=repository, tag="latest", changes=["ENV PATH=/bin"]
    )
    try:
        yield name
    finally:
        docker_client.images.remove(name, force=True)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[HostSettings]:
    host_id = f"u-{uuid.uuid4().hex[:12]}"
    secrets_root = Path(f"/dev/shm/corral-test-{host_id}")
    yield HostSettings(id=host_id, state_dir=str(tmp_path / "state"), secrets_root=str(secrets_root))
    shutil.rmtree(secrets_root, ignore_errors=True)


@pytest.fixture
def runtime(docker_client: Any, host: HostSettings) -> Iterator[DockerRuntime]:
    """A runtime on a host with the default policy (root denied)."""
    with docker_runtime(docker_client, host, host.id) as rt:
        yield rt


def identity(rt: DockerRuntime, env: ExecutionEnvironment, user: str) -> tuple[int, int, set[int]]:
    """(uid, gid, groups) of a process started as ``user``, read from the kernel inside."""
    process = proc_spec("sh", "-c", STATUS, user=user)
    prepare(rt, env, process)
    ref = rt.start_process(ProcessStartRequest(environment=env, process=process)).process_ref
    assert wait_exit(rt, ref).exit_code == 0
    fields = {line.split(":")[0]: line.split(":")[1].split() for line in output(rt, ref).decode().splitlines()}
    return int(fields["Uid"][0]), int(fields["Gid"][0]), {int(g) for g in fields["Groups"]}


@pytest.mark.parametrize("user", ROOT_SPELLINGS)
def test_root_by_any_spelling_is_refused_before_a_container_exists(
    runtime: DockerRuntime, evil_image: str, docker_client: Any, host: HostSettings, user: str
) -> None:
    env = make_env(evil_image)
    with pytest.raises(PolicyDenial) as info:
        prepare(runtime, env, proc_spec("id", user=user))
    assert info.value.context["rule"] == "users.allow_root"
    assert count_labeled(docker_client, host.id, env.environment_id)["containers"] == 0


@pytest.mark.parametrize("user", ["nosuch", "bob:nosuch", "nosuch:1000"])
def test_a_name_the_image_does_not_know_is_refused(
    runtime: DockerRuntime, evil_image: str, docker_client: Any, host: HostSettings, user: str
) -> None:
    env = make_env(evil_image)
    with pytest.raises(InvalidRequest):
        prepare(runtime, env, proc_spec("id", user=user))
    assert count_labeled(docker_client, host.id, env.environment_id)["containers"] == 0


@pytest.mark.parametrize("user", sorted(SAFE))
def test_an_allowed_user_runs_with_the_resolved_identity(runtime: DockerRuntime, evil_image: str, user: str) -> None:
    uid, gid, groups = RESOLVED[user]
    assert identity(runtime, make_env(evil_image), user) == (uid, gid, {gid, *groups})


@pytest.mark.parametrize("user", ROOT_SPELLINGS)
def test_with_allow_root_docker_runs_exactly_what_the_host_predicted(
    runtime: DockerRuntime, evil_image: str, user: str
) -> None:
    runtime.policy = lambda: HostPolicy(users=UserRules(allow_root=True))
    uid, gid, groups = RESOLVED[user]
    assert identity(runtime, make_env(evil_image), user) == (uid, gid, {gid, *groups})


def test_allowed_uids_are_judged_on_the_uid_in_the_image(runtime: DockerRuntime, evil_image: str) -> None:
    runtime.policy = lambda: HostPolicy(users=UserRules(allowed_uids=[(1001, 1999)]))
    assert identity(runtime, make_env(evil_image), "carol")[0] == 1001  # a name that resolves into the range
    with pytest.raises(PolicyDenial) as info:
        prepare(runtime, make_env(evil_image), proc_spec("id", user="nobody"))
    assert info.value.context["rule"] == "users.allowed"


def test_the_default_busybox_image_agrees(runtime: DockerRuntime, busybox_image: str) -> None:
    # the shared test image: 65534 by default, and nobody resolves through its passwd
    assert identity(runtime, make_env(busybox_image), "nobody") == (65534, 65534, {65534})
    with pytest.raises(PolicyDenial):
        prepare(runtime, make_env(busybox_image), proc_spec("id", user="1234"))  # no passwd line: gid 0


@pytest.mark.redis
@pytest.mark.worker
def test_corral_run_as_admin_is_refused_through_a_worker(
    worker_factory: Any, corral_env: dict[str, str], evil_image: str, docker_client: Any, tmp_path: Path
) -> None:
    """End to end: the worker's runtime judges the user by the host policy file the coordinator reads."""
    worker = worker_factory()
    done = corral(corral_env, "run", "--host", worker.host_id, "--user", "admin", evil_image, "--", "id", "-u")
    assert done.returncode == 125, done.stderr
    assert b"policy_denial" in done.stderr and b"uid 0" in done.stderr
    assert leftovers(docker_client, worker.host_id, corral_env)["containers"] == 0
    policy = tmp_path / "root-ok" / "policy.toml"
    policy.parent.mkdir()
    policy.write_text("[users]\nallow_root = true\n")
    allowing = worker_factory(None, env={"CORRAL_HOST__POLICY_FILE": str(policy)})
    done = corral(corral_env, "run", "--host", allowing.host_id, "--user", "admin", evil_image, "--", "id", "-u")
    assert (done.returncode, done.stdout) == (0, b"0\n"), done.stderr
