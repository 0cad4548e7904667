"""Hardened defaults and file secrets of the Docker runtime, proven from inside the sandbox, from
``docker inspect`` and from the host (issue 4, parts 1, 2 and 6). Real engine, no mocks.

Inside: ``id`` is 65534 by default, no capability, NoNewPrivs 1, Seccomp 2 (filter mode: Docker's
default profile), a read-only root, only the default device nodes, no Docker socket. Inspect:
not privileged, no network, private ipc/pid/uts/cgroup namespaces, no-new-privileges and no
seccomp override, every capability dropped, read-only root. Secrets: 0400 files owned by the
sandbox user, read-only inside, never in ``docker inspect``, gone after cleanup and reclaim (also
when the shim was killed), and refused outright when the secrets root is not a tmpfs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from corral.contract.errors import HostConfigurationNeeded, NotFound
from corral.contract.models import (
    CleanupRequest,
    DetachPolicy,
    DetachTransferRequest,
    ExecutionEnvironment,
    FilesystemIsolationPolicy,
    HealthState,
    NetworkIsolationPolicy,
    NetworkKind,
    ProcessOwnershipPolicy,
    ProcessStartRequest,
    ReclaimRequest,
    ResourceLimits,
    SecretEnvPolicy,
    SecretExposurePolicy,
    SecretMountPolicy,
    SecretPrepareRequest,
    SessionPrepareRequest,
)
from corral.contract.refs import slug
from corral.contract.vocabulary import CleanupStatus, ProcessIoStream, RootFilesystemMode
from corral.contract.wire import to_wire
from corral.runtimes.docker.environment import PROBE_LABEL, PROBE_PREFIX
from corral.runtimes.docker.resources import container_name, session_paths
from corral.runtimes.docker.runtime import DockerRuntime
from corral.sandbox.policy import HostPolicy, UserRules
from corral.settings import HostSettings
from tests.harness import docker_runtime, wait_until
from tests.integration.test_docker_runtime import make_env, output, prepare, proc_spec, sh, wait_exit

pytestmark = pytest.mark.docker

FILE_SECRET = "db-password"
FILE_VALUE = b"f1le-" + uuid.uuid4().hex.encode()
ENV_SECRET = "api-key"
ENV_VALUE = b"env-" + uuid.uuid4().hex.encode()
PLUGIN_SECRET = "from-plugin"
PLUGIN_VALUE = b"plug-" + uuid.uuid4().hex.encode()
DEFAULT_DEV = {"core", "console", "fd", "full", "mqueue", "null", "ptmx", "pts", "random", "shm"} | {
    "stderr",
    "stdin",
    "stdout",
    "tty",
    "urandom",
    "zero",
}
DEFAULT_CHAR_DEVICES = {"/dev/full", "/dev/null", "/dev/ptmx", "/dev/random", "/dev/tty", "/dev/urandom"} | {
    "/dev/zero",
    "/dev/pts/ptmx",
    "/dev/console",
}


class PluginProvider:
    """A secret-provider plug-in, loaded by import path from the host settings."""

    def resolve(self, name: str) -> bytes | None:
        return PLUGIN_VALUE if name == PLUGIN_SECRET else None


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def host_id() -> str:
    return f"h-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def host(tmp_path: Path, host_id: str) -> Iterator[HostSettings]:
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / FILE_SECRET).write_bytes(FILE_VALUE)
    (secrets_dir / ENV_SECRET).write_bytes(ENV_VALUE)
    secrets_root = Path(f"/dev/shm/corral-hardening-{host_id}")
    yield HostSettings(
        id=host_id,
        state_dir=str(tmp_path / "state"),
        secrets_root=str(secrets_root),
        secrets_dir=str(secrets_dir),
        secret_providers=[
            "corral.sandbox.secrets:DirectoryProvider",
            "corral.sandbox.secrets:EnvironmentProvider",
            f"{__name__}:PluginProvider",
        ],
    )
    shutil.rmtree(secrets_root, ignore_errors=True)


@pytest.fixture
def runtime(docker_client: Any, host: HostSettings, host_id: str) -> Iterator[DockerRuntime]:
    with docker_runtime(docker_client, host, host_id) as rt:
        yield rt


@pytest.fixture
def root_runtime(runtime: DockerRuntime) -> DockerRuntime:
    """The runtime of a host whose policy allows root (``users.allow_root``; denied by default)."""
    runtime.policy = lambda: HostPolicy(users=UserRules(allow_root=True))
    return runtime


def secret_env(image: str, *names: str, env_secret: bool = False, **spec: Any) -> ExecutionEnvironment:
    return make_env(
        image,
        secrets=SecretExposurePolicy(
            secret_mounts=[
                SecretMountPolicy(secret_ref=n, mount_ref=f"s-{n}", path=f"/run/secrets/{n}") for n in names
            ],
            env_secrets=[SecretEnvPolicy(secret_ref=ENV_SECRET, env_key="API_KEY")] if env_secret else [],
        ),
        **spec,
    )


def inspect(docker_client: Any, env: ExecutionEnvironment) -> dict[str, Any]:
    return dict(docker_client.api.inspect_container(container_name(slug(env.environment_id))))


def lines(rt: DockerRuntime, process_ref: str) -> dict[str, str]:
    """``key=value`` lines of a process's stdout."""
    assert wait_exit(rt, process_ref).exit_code == 0, output(rt, process_ref)
    out: dict[str, str] = {}
    for line in output(rt, process_ref).decode().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


PROBE = r"""
echo uid=$(id -u); echo gid=$(id -g)
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status | sed 's/:[[:space:]]*/=/'
touch /rootfs-probe 2>/dev/null; echo root_write=$?
touch /tmp/scratch-probe && echo tmp_write=0
echo dev=$(ls -A /dev | tr '\n' ' ')
echo chars=$(find /dev -type c 2>/dev/null | tr '\n' ' ')
echo blocks=$(find /dev -type b 2>/dev/null | wc -l)
for s in /var/run/docker.sock /run/docker.sock; do test -e $s && echo sock=$s; done
echo sock_search=$(find / -xdev -name docker.sock 2>/dev/null | wc -l)
echo pid1=$(cat /proc/1/comm)
"""


def _check_inside(got: dict[str, str], uid: str) -> None:
    assert got["uid"] == uid and got["gid"] == uid
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert got[cap] == "0000000000000000", (cap, got[cap])
    assert got["NoNewPrivs"] == "1"
    assert got["Seccomp"] == "2"  # filter mode: Docker's default profile is loaded
    assert got["root_write"] == "1" and got["tmp_write"] == "0"
    assert set(got["dev"].split()) <= DEFAULT_DEV, got["dev"]
    assert set(got["chars"].split()) <= DEFAULT_CHAR_DEVICES, got["chars"]
    assert got["blocks"] == "0"
    assert "sock" not in got and got["sock_search"] == "0"
    assert got["pid1"] == "docker-init"  # the init reaps zombies; the process is never pid 1


# ------------------------------------------------------------------------------------- inside


def test_default_process_is_unprivileged_from_inside(runtime: DockerRuntime, busybox_image: str) -> None:
    _check_inside(lines(runtime, sh(runtime, make_env(busybox_image), PROBE)), "65534")


def test_explicit_root_still_has_no_capability(root_runtime: DockerRuntime, busybox_image: str) -> None:
    runtime = root_runtime
    got = lines(runtime, sh(runtime, make_env(busybox_image), PROBE, user="root"))
    _check_inside(got, "0")


def test_root_cannot_regain_privileges(root_runtime: DockerRuntime, busybox_image: str) -> None:
    runtime = root_runtime
    script = (
        "mount -t tmpfs none /mnt 2>/dev/null; echo mount=$?; "
        "chown 65534 /tmp 2>/dev/null; echo chown=$?; "
        "mknod /tmp/sda b 8 0 2>/dev/null; echo mknod=$?; "
        "cat /proc/kcore >/dev/null 2>&1; echo kcore=$?; "
        "ip link add x type dummy 2>/dev/null; echo netadmin=$?"
    )
    got = lines(runtime, sh(runtime, make_env(busybox_image), script, user="root"))
    assert all(got[k] != "0" for k in ("mount", "chown", "mknod", "kcore", "netadmin")), got


def test_pids_limit_applies_to_root_too(root_runtime: DockerRuntime, busybox_image: str) -> None:
    runtime = root_runtime
    env = make_env(busybox_image, resources=ResourceLimits(process_count=5))
    process_ref = sh(runtime, env, "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done; wait", user="root")
    wait_exit(runtime, process_ref)
    assert b"fork" in output(runtime, process_ref, ProcessIoStream.stderr)


# ------------------------------------------------------------------------------------- inspect


def _check_host_config(attrs: dict[str, Any], process_count: int) -> None:
    hc = attrs["HostConfig"]
    assert hc["Privileged"] is False
    assert hc["CapDrop"] == ["ALL"] and not hc.get("CapAdd")
    assert hc["ReadonlyRootfs"] is True
    opts = hc.get("SecurityOpt") or []
    assert "no-new-privileges" in opts
    assert not any("seccomp" in o or "unconfined" in o for o in opts), opts
    assert hc["IpcMode"] in ("private", "none")
    assert hc["PidMode"] == "" and hc["UTSMode"] == "" and hc["UsernsMode"] == ""
    assert hc.get("CgroupnsMode") == "private"
    assert not hc.get("Devices") and not hc.get("DeviceCgroupRules") and not hc.get("DeviceRequests")
    assert hc["PidsLimit"] == process_count
    for bind in hc.get("Binds") or []:
        assert "docker.sock" not in bind
    for mount in attrs.get("Mounts") or []:
        assert "docker.sock" not in str(mount.get("Source")) + str(mount.get("Destination"))


def test_inspect_shows_every_hardened_default(runtime: DockerRuntime, busybox_image: str, docker_client: Any) -> None:
    env = make_env(busybox_image, resources=ResourceLimits(process_count=12))
    process = proc_spec("true")
    prepare(runtime, env, process)
    attrs = inspect(docker_client, env)
    _check_host_config(attrs, 12)
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    assert attrs["Config"]["User"] == "65534:65534"


def test_inspect_with_empty_allowlist_and_root(
    root_runtime: DockerRuntime, busybox_image: str, docker_client: Any
) -> None:
    runtime = root_runtime
    env = make_env(busybox_image, network=NetworkIsolationPolicy(kind=NetworkKind.allowlist))
    prepare(runtime, env, proc_spec("true", user="root"))
    attrs = inspect(docker_client, env)
    _check_host_config(attrs, 32)
    assert attrs["HostConfig"]["NetworkMode"] == "none"  # no egress promised: no network at all, not a bridge
    assert docker_client.networks.list(filters={"label": f"corral.session={env.environment_id}"}) == []
    assert attrs["Config"]["User"] == "root"


def test_writable_layer_only_when_asked(runtime: DockerRuntime, busybox_image: str, docker_client: Any) -> None:
    env = make_env(busybox_image, filesystem=FilesystemIsolationPolicy(root=RootFilesystemMode.writable_layer))
    prepare(runtime, env, proc_spec("true"))
    hc = inspect(docker_client, env)["HostConfig"]
    assert hc["ReadonlyRootfs"] is False
    assert hc["CapDrop"] == ["ALL"] and hc["Privileged"] is False  # everything else stays hardened


# ------------------------------------------------------------------------------------- the report


def test_capability_report_lists_the_hardening(runtime: DockerRuntime) -> None:
    report = runtime.capability_report()
    assert report.health.kind is HealthState.healthy, report.health
    keys = {item.split(" ", 1)[0] for item in report.hardening}
    assert {
        "cap_drop:ALL",
        "no_new_privileges",
        "read_only_root",
        "non_root_user:65534:65534",
        "pids_limit",
        "seccomp:docker-default",
        "privileged:never",
        "namespaces:private",
        "devices:none",
        "docker_socket:never",
    } <= keys, report.hardening
    env_item = next(w for w in report.weaker_features if w.startswith("env_secrets"))
    assert "docker inspect" in env_item
    assert not any("/etc/passwd" in w for w in report.weaker_features)  # an unresolvable user is refused now
    assert any(h.startswith("root_by_any_name:denied") for h in report.hardening)


def test_capability_report_degraded_by_a_broken_plugin(
    docker_client: Any, host: HostSettings, host_id: str, busybox_image: str
) -> None:
    broken = host.model_copy(
        update={"secret_providers": ["corral.sandbox.secrets:DirectoryProvider", "no.such.module:X"]}
    )
    rt = DockerRuntime(host_id, broken, docker_client)
    report = rt.capability_report()
    assert report.health.kind is HealthState.degraded
    assert "no.such.module:X" in (report.health.reason or "")
    with pytest.raises(HostConfigurationNeeded):
        rt.prepare_secrets(SecretPrepareRequest(environment=secret_env(busybox_image, FILE_SECRET)))


# ------------------------------------------------------------------------------------- secret files


def _secret_file(host: HostSettings, env: ExecutionEnvironment, name: str) -> Path:
    return session_paths(host, slug(env.environment_id)).secret_dir / name


def test_secret_file_0400_owned_by_the_default_user(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    env = secret_env(busybox_image, FILE_SECRET)
    script = (
        f"f=/run/secrets/{FILE_SECRET}; echo stat=$(stat -c '%a %u %g' $f); "
        "echo sum=$(sha256sum < $f | cut -d' ' -f1); "
        "echo x >> $f 2>/dev/null; echo append=$?; rm -f $f 2>/dev/null; echo rm=$?; "
        "chmod 600 $f 2>/dev/null; echo chmod=$?; "
        "echo ro=$(grep \" $f \" /proc/mounts | cut -d' ' -f4 | cut -d, -f1)"
    )
    got = lines(runtime, sh(runtime, env, script))
    assert got["stat"] == "400 65534 65534"
    assert got["sum"] == hashlib.sha256(FILE_VALUE).hexdigest()  # readable by the process
    assert got["append"] != "0" and got["rm"] != "0" and got["chmod"] != "0"  # and nothing more
    assert got["ro"] == "ro"
    on_host = _secret_file(host, env, FILE_SECRET).stat()
    assert (stat.S_IMODE(on_host.st_mode), on_host.st_uid, on_host.st_gid) == (0o400, 65534, 65534)
    secret_dir = _secret_file(host, env, FILE_SECRET).parent
    assert stat.S_IMODE(secret_dir.stat().st_mode) == 0o700 and secret_dir.stat().st_uid == os.geteuid()


@pytest.mark.parametrize(
    ("user", "owner"),
    [("nobody", (65534, 65534)), ("nobody:root", (65534, 0)), ("1234", (1234, 0)), ("root", (0, 0))],
)
def test_secret_file_owner_follows_the_process_user(
    root_runtime: DockerRuntime,
    busybox_image: str,
    host: HostSettings,
    docker_client: Any,
    user: str,
    owner: tuple[int, int],
) -> None:
    runtime = root_runtime  # three of these users have uid or gid 0
    env = secret_env(busybox_image, FILE_SECRET)
    got = lines(runtime, sh(runtime, env, f"echo n=$(wc -c < /run/secrets/{FILE_SECRET})", user=user))
    assert got["n"] == str(len(FILE_VALUE))
    on_host = _secret_file(host, env, FILE_SECRET).stat()
    assert (stat.S_IMODE(on_host.st_mode), on_host.st_uid, on_host.st_gid) == (0o400, *owner)
    # the probe is removed: none left (another test's probe may be alive for a moment: xdist runs files
    # side by side, and a probe lives for one archive read)
    # the low-level list: the high-level one inspects each container, and a probe may go in between
    assert wait_until(lambda: docker_client.api.containers(all=True, filters={"label": PROBE_LABEL}) == [], 15)


def test_plugin_provider_supplies_a_file_secret(runtime: DockerRuntime, busybox_image: str) -> None:
    env = secret_env(busybox_image, PLUGIN_SECRET)
    got = lines(runtime, sh(runtime, env, f"echo n=$(wc -c < /run/secrets/{PLUGIN_SECRET})"))
    assert got["n"] == str(len(PLUGIN_VALUE))


def _encodings(value: bytes) -> list[str]:
    return [value.decode(), base64.b64encode(value).decode(), value.hex()]


def test_inspect_of_a_file_secret_container_holds_no_value(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any
) -> None:
    env = secret_env(busybox_image, FILE_SECRET, PLUGIN_SECRET)
    process_ref = sh(runtime, env, f"cat /run/secrets/{FILE_SECRET} >/dev/null")
    wait_exit(runtime, process_ref)
    dumped = json.dumps(inspect(docker_client, env))
    for value in (FILE_VALUE, PLUGIN_VALUE):
        for form in _encodings(value):
            assert form not in dumped


def test_env_secret_is_visible_to_inspect_as_reported(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any
) -> None:
    """The documented weakness, kept honest: the report says env secrets show in docker inspect."""
    env = secret_env(busybox_image, FILE_SECRET, env_secret=True)
    prepare(runtime, env, proc_spec("true"))
    dumped = json.dumps(inspect(docker_client, env))
    assert ENV_VALUE.decode() in dumped and FILE_VALUE.decode() not in dumped


def test_file_secrets_refused_when_secrets_root_is_on_disk(
    docker_client: Any, host: HostSettings, host_id: str, busybox_image: str, tmp_path: Path
) -> None:
    on_disk = tmp_path / "secrets-on-disk"
    rt = DockerRuntime(host_id, host.model_copy(update={"secrets_root": str(on_disk)}), docker_client)
    env = secret_env(busybox_image, FILE_SECRET)
    with pytest.raises(HostConfigurationNeeded) as info:
        rt.prepare_secrets(SecretPrepareRequest(environment=env))
    assert "tmpfs" in info.value.message and FILE_VALUE.decode() not in str(info.value.args)
    with pytest.raises(HostConfigurationNeeded):
        prepare(rt, env, proc_spec("true"))
    assert not on_disk.exists()
    assert "file secrets are refused" in (rt.capability_report().health.reason or "")
    # env-only secrets write nothing to the secrets root: still allowed
    rt.prepare_secrets(SecretPrepareRequest(environment=secret_env(busybox_image, env_secret=True)))
    # the tests-only switch lets file secrets through, and the report says so
    allowed = DockerRuntime(
        host_id,
        host.model_copy(update={"secrets_root": str(on_disk), "allow_secrets_off_tmpfs": True}),
        docker_client,
    )
    allowed.prepare_secrets(SecretPrepareRequest(environment=env))
    assert (on_disk / slug(env.environment_id) / FILE_SECRET).read_bytes() == FILE_VALUE
    report = allowed.capability_report()
    assert report.health.kind is HealthState.degraded
    assert any("allow_secrets_off_tmpfs" in w for w in report.weaker_features)
    allowed.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="c"))
    assert list(on_disk.iterdir()) == []


def test_unknown_secret_writes_nothing(runtime: DockerRuntime, busybox_image: str, host: HostSettings) -> None:
    env = secret_env(busybox_image, FILE_SECRET, "never-defined")
    with pytest.raises(NotFound) as info:
        runtime.prepare_secrets(SecretPrepareRequest(environment=env))
    assert info.value.context == {"secret": "never-defined"}
    assert not Path(host.secrets_root).exists() or list(Path(host.secrets_root).iterdir()) == []


# ------------------------------------------------------------------------------------- teardown


def _assert_no_secrets_left(host: HostSettings, env: ExecutionEnvironment) -> None:
    assert not _secret_file(host, env, FILE_SECRET).parent.exists()
    root = Path(host.secrets_root)
    assert not root.exists() or list(root.iterdir()) == []


def test_cleanup_removes_the_secret_dir(runtime: DockerRuntime, busybox_image: str, host: HostSettings) -> None:
    env = secret_env(busybox_image, FILE_SECRET, PLUGIN_SECRET)
    sh(runtime, env, "sleep 100")
    assert _secret_file(host, env, FILE_SECRET).exists()
    result = runtime.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="c"))
    assert result.status is CleanupStatus.completed, result.redacted_summary
    _assert_no_secrets_left(host, env)


def _kill_shim_of(host: HostSettings, env: ExecutionEnvironment) -> None:
    spool = session_paths(host, slug(env.environment_id)).spool
    deadline = time.monotonic() + 5
    while not spool.shim_pid.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(int(spool.shim_pid.read_text()), signal.SIGKILL)
    time.sleep(0.1)


def test_cleanup_after_the_shim_died(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings, docker_client: Any
) -> None:
    env = secret_env(busybox_image, FILE_SECRET)
    sh(runtime, env, "sleep 100")
    _kill_shim_of(host, env)
    result = runtime.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="c"))
    assert result.status is CleanupStatus.completed, result.redacted_summary
    _assert_no_secrets_left(host, env)
    assert docker_client.containers.list(all=True, filters={"label": f"corral.session={env.environment_id}"}) == []


@pytest.mark.parametrize("shim_killed", [False, True])
def test_reclaim_removes_the_secret_dir(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings, shim_killed: bool
) -> None:
    env = secret_env(
        busybox_image, FILE_SECRET, ownership=ProcessOwnershipPolicy(detach_policy=DetachPolicy(allowed=True))
    )
    sh(runtime, env, "sleep 100")
    runtime.detach(DetachTransferRequest(environment=env, ticket_ref="tk-1", ttl_ms=60_000))
    if shim_killed:
        _kill_shim_of(host, env)
    assert _secret_file(host, env, FILE_SECRET).exists()
    result = runtime.reclaim(ReclaimRequest(ticket_ref="tk-1"))
    assert result.status is CleanupStatus.completed, result.redacted_summary
    _assert_no_secrets_left(host, env)


def test_secret_values_absent_from_every_result(runtime: DockerRuntime, busybox_image: str, docker_client: Any) -> None:
    env = secret_env(busybox_image, FILE_SECRET, PLUGIN_SECRET, env_secret=True)
    process = proc_spec("true")
    results: list[Any] = [
        runtime.prepare_session(SessionPrepareRequest(environment=env)),
        runtime.prepare_secrets(SecretPrepareRequest(environment=env)),
        runtime.capability_report(),
    ]
    prepare(runtime, env, process)
    results.append(runtime.start_process(ProcessStartRequest(environment=env, process=process)))
    results.append(wait_exit(runtime, results[-1].process_ref))
    results.append(runtime.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="c")))
    dumped = "".join(json.dumps(to_wire(r)) for r in results)
    for value in (FILE_VALUE, PLUGIN_VALUE, ENV_VALUE):
        for form in _encodings(value):
            assert form not in dumped


def test_a_broken_plugin_does_not_touch_sessions_without_secrets(
    docker_client: Any, host: HostSettings, host_id: str, busybox_image: str
) -> None:
    broken = host.model_copy(update={"secret_providers": ["no.such.module:X"]})
    with docker_runtime(docker_client, broken, host_id) as rt:  # torn down like the shared fixture
        process_ref = sh(rt, make_env(busybox_image), "echo fine")
        wait_exit(rt, process_ref)
        assert output(rt, process_ref) == b"fine\n"


def test_stale_probe_containers_are_swept(docker_client: Any, busybox_image: str) -> None:
    from corral.runtimes.docker.environment import _remove_stale_probes

    left = docker_client.containers.create(
        busybox_image, command=["true"], labels={PROBE_LABEL: "passwd"}, name=f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
    )
    _remove_stale_probes(docker_client)
    assert docker_client.containers.get(left.id)  # young: maybe another worker's probe in flight
    # Other test processes' probes live well under a second: a 3 s threshold leaves theirs alone.
    time.sleep(3.5)
    _remove_stale_probes(docker_client, older_than_s=3)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(left.id)
