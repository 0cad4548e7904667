"""The Docker runtime against the real engine: every one of the 16 operations, no mocks.

Each test gets its own host id (so labels never collide), a tmp state dir, a tmpfs secrets root
under /dev/shm and a teardown that removes everything labeled with that host id. Containers run the
local ``corral/busybox`` image; nothing is pulled.
"""

from __future__ import annotations

import base64
import contextlib
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

import pytest

from corral.contract.errors import InvalidRequest, NotFound, PolicyDenial, Unsupported
from corral.contract.models import (
    CleanupRequest,
    DetachPolicy,
    DetachTransferRequest,
    EnvironmentPrepareRequest,
    EnvironmentSpec,
    ExecutionEnvironment,
    FilesystemIsolationPolicy,
    HealthState,
    ImageRequest,
    ImageResolveRequest,
    IsolatedProcessSpec,
    MountPolicy,
    MountResolveRequest,
    NetworkIsolationPolicy,
    NetworkKind,
    NetworkPrepareRequest,
    ProcessIoCapturePolicy,
    ProcessIoFrame,
    ProcessIoPolicy,
    ProcessIoRequest,
    ProcessOwnershipPolicy,
    ProcessSignalRequest,
    ProcessStartRequest,
    ProcessState,
    ProcessStatsRequest,
    ProcessStatsSnapshot,
    ReclaimRequest,
    ResourceLimits,
    RootfsPrepareRequest,
    SecretEnvPolicy,
    SecretExposurePolicy,
    SecretMountPolicy,
    SecretPrepareRequest,
    SessionPrepareRequest,
    TerminationReason,
)
from corral.contract.refs import process_ref_for, slug
from corral.contract.vocabulary import (
    CleanupStatus,
    IsolationClass,
    IsolationRuntimeKind,
    MountMode,
    ProcessContentCaptureMode,
    ProcessIoStream,
    ProcessSignal,
    RootFilesystemMode,
)
from corral.contract.wire import to_wire
from corral.fleet.job import image_of, rootfs_of
from corral.runtimes.docker.resources import network_name, session_paths
from corral.runtimes.docker.runtime import DockerRuntime
from corral.settings import HostSettings
from tests.harness import docker_runtime, helper_pids

pytestmark = pytest.mark.docker

SECRET_NAME = "api-token"
SECRET_VALUE = b"s3cr3t-" + uuid.uuid4().hex.encode()
RAW = ProcessIoCapturePolicy(default_capture=ProcessContentCaptureMode.raw_content_if_policy_allows)


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def host_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def host(tmp_path: Path, host_id: str) -> Iterator[HostSettings]:
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_text("hello from the host\n")
    (tmp_path / "rw").mkdir()
    (tmp_path / "rw").chmod(0o777)  # the sandbox runs as 65534 by default: a writable alias must let it write
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / SECRET_NAME).write_bytes(SECRET_VALUE)
    secrets_root = Path(f"/dev/shm/corral-test-{host_id}")
    yield HostSettings(
        id=host_id,
        state_dir=str(tmp_path / "state"),
        secrets_root=str(secrets_root),
        secrets_dir=str(secrets_dir),
        mounts={
            "data": str(data),
            "rw": str(tmp_path / "rw"),
            "link": str(tmp_path / "link"),
            "sock": "/var/run/docker.sock",
            "run": "/run",
            "state": str(tmp_path / "state"),
        },
        writable_mounts=["rw"],
    )
    shutil.rmtree(secrets_root, ignore_errors=True)


@pytest.fixture
def runtime(docker_client: Any, host: HostSettings, host_id: str) -> Iterator[DockerRuntime]:
    with docker_runtime(docker_client, host, host_id) as rt:
        yield rt


def count_labeled(docker_client: Any, host_id: str, environment_id: str | None = None) -> dict[str, int]:
    labels = [f"corral.host={host_id}"] + ([f"corral.session={environment_id}"] if environment_id else [])
    return {
        "containers": len(docker_client.containers.list(all=True, filters={"label": labels})),
        "networks": len(docker_client.networks.list(filters={"label": labels})),
    }


# ------------------------------------------------------------------------------------- helpers


def make_env(image: str, **spec: Any) -> ExecutionEnvironment:
    spec.setdefault("io_policy", ProcessIoPolicy(stdout=RAW, stderr=RAW))
    return ExecutionEnvironment(
        environment_id=f"env-{uuid.uuid4().hex[:12]}",
        spec=EnvironmentSpec(image=ImageRequest(image_ref=image), **spec),
    )


def prepare(rt: DockerRuntime, env: ExecutionEnvironment, process: IsolatedProcessSpec) -> None:
    """The whole prepare chain, in contract order (what the coordinator's Celery chain does)."""
    rt.prepare_session(SessionPrepareRequest(environment=env))
    image = rt.resolve_image(ImageResolveRequest(image=image_of(env), environment=env))
    rootfs = rt.prepare_rootfs(RootfsPrepareRequest(rootfs=rootfs_of(env), environment=env))
    mounts = rt.resolve_mounts(MountResolveRequest(environment=env))
    network = rt.configure_network(NetworkPrepareRequest(environment=env))
    secrets = rt.prepare_secrets(SecretPrepareRequest(environment=env))
    rt.prepare_environment(
        EnvironmentPrepareRequest(
            environment=env,
            process=process,
            image=image,
            rootfs=rootfs,
            mounts=mounts,
            network=network,
            secrets=secrets,
        )
    )


def proc_spec(*argv: str, **kwargs: Any) -> IsolatedProcessSpec:
    kwargs.setdefault("grace_ms", 200)  # a terminate escalates to a kill quickly here
    return IsolatedProcessSpec(process_id=f"p-{uuid.uuid4().hex[:8]}", argv=list(argv), **kwargs)


def run(rt: DockerRuntime, env: ExecutionEnvironment, *argv: str, **kwargs: Any) -> str:
    process = proc_spec(*argv, **kwargs)
    prepare(rt, env, process)
    return rt.start_process(ProcessStartRequest(environment=env, process=process)).process_ref


def sh(rt: DockerRuntime, env: ExecutionEnvironment, script: str, **kwargs: Any) -> str:
    return run(rt, env, "sh", "-c", script, **kwargs)


def wait_exit(rt: DockerRuntime, process_ref: str, timeout_s: float = 15) -> ProcessStatsSnapshot:
    deadline = time.monotonic() + timeout_s
    while True:
        snap = rt.collect_stats(ProcessStatsRequest(process_ref=process_ref))
        if snap.state is ProcessState.exited or time.monotonic() > deadline:
            return snap
        time.sleep(0.05)


def frames(
    rt: DockerRuntime, process_ref: str, stream: ProcessIoStream, max_bytes: int = 64 * 1024, cursor: int = 0
) -> list[ProcessIoFrame]:
    out: list[ProcessIoFrame] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        frame = rt.stream_io(
            ProcessIoRequest(process_ref=process_ref, stream=stream, cursor=cursor, max_bytes=max_bytes)
        )
        out.append(frame)
        cursor = frame.cursor
        if frame.eof:
            return out
        if frame.byte_count == 0:
            time.sleep(0.02)
    raise AssertionError("stream did not reach eof")


def content(frame_list: list[ProcessIoFrame]) -> bytes:
    return b"".join(base64.b64decode(f.content_b64 or "") for f in frame_list)


def output(rt: DockerRuntime, process_ref: str, stream: ProcessIoStream = ProcessIoStream.stdout) -> bytes:
    return content(frames(rt, process_ref, stream))


# ------------------------------------------------------------------------------------- 1-2


def test_runtime_ref_names_the_host(runtime: DockerRuntime, host_id: str) -> None:
    # upstream's IsolationRuntimeRef is a bare string; the adapter's kind is in the capability report
    assert runtime.runtime_ref() == f"docker@{host_id}"
    assert runtime.capability_report().adapter_kind is IsolationRuntimeKind.container


def test_capability_report_healthy_and_honest(runtime: DockerRuntime) -> None:
    report = runtime.capability_report()
    assert report.health.kind is HealthState.healthy, report.health
    assert report.supported_classes == [IsolationClass.container]
    assert "no_network_guarantee" in report.capabilities
    assert "egress_allowlist" not in report.capabilities
    assert "capability:egress_allowlist" in report.unsupported_requirements
    assert "capability:content_ref_io" in report.unsupported_requirements
    assert any(w.startswith("env_secrets") for w in report.weaker_features)
    assert report.platform.os == "linux"


def test_capability_report_degraded_when_secrets_root_is_on_disk(
    docker_client: Any, host: HostSettings, host_id: str, tmp_path: Path
) -> None:
    on_disk = host.model_copy(update={"secrets_root": str(tmp_path / "secrets-on-disk")})
    report = DockerRuntime(host_id, on_disk, docker_client).capability_report()
    assert report.health.kind is HealthState.degraded
    assert "tmpfs" in report.health.reason


def test_capability_report_unsupported_host_without_engine(host: HostSettings, host_id: str) -> None:
    import docker

    dead = docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.41", timeout=2)
    report = DockerRuntime(host_id, host, dead).capability_report()
    assert report.health.kind is HealthState.unsupported_host
    [missing] = report.health.missing_prerequisites
    assert missing.startswith("docker engine")


# ------------------------------------------------------------------------------------- 3-8


def test_prepare_session_creates_labeled_spool_idempotently(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings, host_id: str
) -> None:
    env = make_env(busybox_image)
    first = runtime.prepare_session(SessionPrepareRequest(environment=env))
    second = runtime.prepare_session(SessionPrepareRequest(environment=env))
    assert first == second
    assert first == f"sess-{slug(env.environment_id)}"
    spool = session_paths(host, slug(env.environment_id)).spool
    labels = json.loads(spool.labels.read_text())
    assert labels["corral.host"] == host_id and labels["corral.session"] == env.environment_id
    assert stat.S_IMODE(spool.root.stat().st_mode) == 0o700


def test_resolve_image_returns_local_digest_and_architecture(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any
) -> None:
    env = make_env(busybox_image)
    resolved = runtime.resolve_image(ImageResolveRequest(image=image_of(env), environment=env))
    assert resolved.digest == docker_client.images.get(busybox_image).id
    assert resolved.architecture == "amd64" or resolved.architecture
    pinned = env.model_copy(
        update={
            "spec": env.spec.model_copy(
                update={
                    "image": ImageRequest(
                        image_ref=busybox_image,
                        expected_digest=resolved.digest,
                        expected_architecture=resolved.architecture,
                    )
                }
            )
        }
    )
    assert (
        runtime.resolve_image(ImageResolveRequest(image=image_of(pinned), environment=pinned)).digest == resolved.digest
    )


def test_resolve_image_digest_mismatch_is_denied(runtime: DockerRuntime, busybox_image: str) -> None:
    env = make_env(busybox_image)
    wrong = env.model_copy(
        update={
            "spec": env.spec.model_copy(
                update={"image": ImageRequest(image_ref=busybox_image, expected_digest="sha256:" + "0" * 64)}
            )
        }
    )
    with pytest.raises(PolicyDenial):
        runtime.resolve_image(ImageResolveRequest(image=image_of(wrong), environment=wrong))


def test_resolve_image_unknown_image_is_not_found(runtime: DockerRuntime) -> None:
    missing = make_env("corral/does-not-exist:never")
    with pytest.raises(NotFound):
        runtime.resolve_image(ImageResolveRequest(image=image_of(missing), environment=missing))


def test_resolve_image_without_image_is_invalid(runtime: DockerRuntime) -> None:
    with pytest.raises(InvalidRequest):
        runtime.resolve_image(ImageResolveRequest(image=ImageRequest(image_ref="BusyBox;reboot")))


def test_prepare_rootfs_read_only_unless_writable_layer(runtime: DockerRuntime, busybox_image: str) -> None:
    env = make_env(busybox_image)
    # the ref is upstream's bare string; read-only-ness and scratch come from the spec at create time
    assert runtime.prepare_rootfs(RootfsPrepareRequest(rootfs=rootfs_of(env), environment=env)) == (
        f"rootfs-{slug(env.environment_id)}"
    )
    assert env.spec.root_read_only and rootfs_of(env).read_only
    writable = make_env(
        busybox_image, filesystem=FilesystemIsolationPolicy(root=RootFilesystemMode.writable_layer, scratch_mb=16)
    )
    assert not writable.spec.root_read_only and not rootfs_of(writable).read_only
    mounts = "grep -q ' / overlay rw,' /proc/mounts && grep ' /tmp ' /proc/mounts | grep -q size=16384k"
    assert wait_exit(runtime, sh(runtime, writable, mounts)).exit_code == 0


def _mounts(image: str, *mounts: MountPolicy) -> ExecutionEnvironment:
    return make_env(image, filesystem=FilesystemIsolationPolicy(mounts=list(mounts)))


def test_resolve_mounts_plans_aliases_without_host_paths(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    env = _mounts(
        busybox_image,
        MountPolicy(mount_ref="m1", source_alias="data", destination_path="/data"),
        MountPolicy(mount_ref="m2", source_alias="rw", destination_path="/out", mode=MountMode.writable),
    )
    plan = runtime.resolve_mounts(MountResolveRequest(environment=env))
    assert plan.mounts == ["m1", "m2"]  # upstream's MountRef: the mount's ref, nothing of the host
    assert len(plan.expanded_exposure_audits) == 2
    assert host.mounts["data"] not in plan.model_dump_json()


@pytest.mark.parametrize(
    ("alias", "destination", "mode"),
    [
        ("nope", "/data", MountMode.read_only),  # unknown alias
        ("data", "/data", MountMode.writable),  # alias not writable by host policy
        ("sock", "/var/run/docker.sock", MountMode.read_only),  # the Docker socket
        ("run", "/hostrun", MountMode.read_only),  # a directory holding the Docker socket
        ("link", "/data", MountMode.read_only),  # resolves through a symlink: escapes the alias
        ("state", "/state", MountMode.read_only),  # corral's own spool and tickets
        ("data", "/proc/x", MountMode.read_only),  # a kernel destination
    ],
)
def test_resolve_mounts_denies_unsafe_requests(
    runtime: DockerRuntime, busybox_image: str, alias: str, destination: str, mode: MountMode
) -> None:
    env = _mounts(
        busybox_image, MountPolicy(mount_ref="m", source_alias=alias, destination_path=destination, mode=mode)
    )
    with pytest.raises(PolicyDenial):
        runtime.resolve_mounts(MountResolveRequest(environment=env))


def test_configure_network_disabled_means_no_network_object(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any, host_id: str
) -> None:
    env = make_env(busybox_image)
    ref = runtime.configure_network(NetworkPrepareRequest(environment=env))
    assert ref == f"net-none-{slug(env.environment_id)}"
    assert count_labeled(docker_client, host_id)["networks"] == 0


@pytest.mark.parametrize(
    "network",
    [
        NetworkIsolationPolicy(kind=NetworkKind.adapter_defined_denied),
        NetworkIsolationPolicy(kind=NetworkKind.allowlist),
        NetworkIsolationPolicy(kind=NetworkKind.egress_scoped),
    ],
)
def test_configure_network_without_egress_creates_no_network(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any, host_id: str, network: NetworkIsolationPolicy
) -> None:
    # formerly an internal bridge, which still routes to the host (issue 7, escape 5): now none
    env = make_env(busybox_image, network=network)
    first = runtime.configure_network(NetworkPrepareRequest(environment=env))
    assert first == runtime.configure_network(NetworkPrepareRequest(environment=env))
    assert first == f"net-none-{slug(env.environment_id)}"
    assert docker_client.networks.list(filters={"label": f"corral.session={env.environment_id}"}) == []
    assert count_labeled(docker_client, host_id)["networks"] == 0


def test_configure_network_unenforceable_allowlist_is_unsupported(runtime: DockerRuntime, busybox_image: str) -> None:
    env = make_env(busybox_image, network=NetworkIsolationPolicy(kind=NetworkKind.allowlist, hosts=["example.org"]))
    with pytest.raises(Unsupported):
        runtime.configure_network(NetworkPrepareRequest(environment=env))


def _secret_env(image: str, **kwargs: Any) -> ExecutionEnvironment:
    return make_env(
        image,
        secrets=SecretExposurePolicy(
            secret_mounts=[
                SecretMountPolicy(secret_ref=SECRET_NAME, mount_ref="s1", path=f"/run/secrets/{SECRET_NAME}")
            ],
            env_secrets=[SecretEnvPolicy(secret_ref=SECRET_NAME, env_key="TOKEN")],
        ),
        **kwargs,
    )


def test_prepare_secrets_writes_private_files_and_returns_refs_only(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    env = _secret_env(busybox_image)
    plan = runtime.prepare_secrets(SecretPrepareRequest(environment=env))
    assert plan.env_secret_keys == ["TOKEN"]
    assert plan.secret_mount_refs == ["s1"]
    assert SECRET_VALUE.decode() not in plan.model_dump_json()
    secret_dir = session_paths(host, slug(env.environment_id)).secret_dir
    secret_file = secret_dir / SECRET_NAME
    assert secret_file.read_bytes() == SECRET_VALUE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o400
    assert stat.S_IMODE(secret_dir.stat().st_mode) == 0o700
    assert runtime.prepare_secrets(SecretPrepareRequest(environment=env)) == plan


def test_prepare_secrets_unknown_secret_is_not_found(runtime: DockerRuntime, busybox_image: str) -> None:
    env = make_env(
        busybox_image, secrets=SecretExposurePolicy(env_secrets=[SecretEnvPolicy(secret_ref="missing", env_key="X")])
    )
    with pytest.raises(NotFound) as info:
        runtime.prepare_secrets(SecretPrepareRequest(environment=env))
    assert info.value.context["secret"] == "missing"


# ------------------------------------------------------------------------------------- 9-10


def test_prepare_environment_creates_one_unstarted_container(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any, host_id: str
) -> None:
    env = make_env(busybox_image)
    process = proc_spec("true")
    prepare(runtime, env, process)
    prepare(runtime, env, process)
    containers = docker_client.containers.list(all=True, filters={"label": f"corral.session={env.environment_id}"})
    assert len(containers) == 1
    assert containers[0].status == "created"
    host_config = containers[0].attrs["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True and host_config["CapDrop"] == ["ALL"]
    assert host_config["NetworkMode"] == "none" and host_config["LogConfig"]["Type"] == "none"


def test_prepare_environment_replaces_a_stale_container_and_refuses_a_started_one(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any
) -> None:
    """The create goes first; the name's conflict says what is there: the same settings (a replay)
    are reused, a never-started one with other settings is replaced, a started one is a conflict."""
    from corral.contract.errors import Conflict

    env = make_env(busybox_image)
    first = proc_spec("true")
    prepare(runtime, env, first)
    [old] = docker_client.containers.list(all=True, filters={"label": f"corral.session={env.environment_id}"})
    prepare(runtime, env, proc_spec("echo", "other"))  # other settings, never started: replaced
    [new] = docker_client.containers.list(all=True, filters={"label": f"corral.session={env.environment_id}"})
    assert new.id != old.id and new.attrs["Config"]["Cmd"] == ["echo", "other"]
    new.start()
    with pytest.raises(Conflict, match="already started"):
        prepare(runtime, env, first)


def test_start_process_exit_code_propagates(runtime: DockerRuntime, busybox_image: str) -> None:
    process_ref = sh(runtime, make_env(busybox_image), "exit 7")
    snap = wait_exit(runtime, process_ref)
    assert (snap.state, snap.exit_code, snap.reason) == (ProcessState.exited, 7, TerminationReason.exit)


def test_start_process_replay_makes_one_container_and_one_shim(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any, host: HostSettings
) -> None:
    env = make_env(busybox_image)
    process = proc_spec("sh", "-c", "echo once; sleep 1")
    prepare(runtime, env, process)
    first = runtime.start_process(ProcessStartRequest(environment=env, process=process))
    prepare(runtime, env, process)  # a replayed chain, too
    second = runtime.start_process(ProcessStartRequest(environment=env, process=process))
    assert first == second
    assert count_labeled(docker_client, host.id, env.environment_id)["containers"] == 1
    spool = str(session_paths(host, slug(env.environment_id)).spool.root).encode()
    shims = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, spool)]
    assert len(shims) == 1
    assert output(runtime, first.process_ref) == b"once\n"


def _cmdline_has(proc_dir: Path, needle: bytes) -> bool:
    try:
        cmdline = (proc_dir / "cmdline").read_bytes()
    except OSError:
        return False
    return b"corral.io.shim" in cmdline and needle in cmdline


def test_start_process_without_environment_is_not_found(runtime: DockerRuntime, busybox_image: str) -> None:
    with pytest.raises(NotFound):
        runtime.start_process(ProcessStartRequest(environment=make_env(busybox_image), process=proc_spec("true")))


def test_start_process_timeout_kills_without_anyone_polling(runtime: DockerRuntime, busybox_image: str) -> None:
    process_ref = run(runtime, make_env(busybox_image), "sleep", "100", timeout_ms=500)
    time.sleep(1.5)  # nobody polls meanwhile: the shim enforces the deadline itself
    snap = wait_exit(runtime, process_ref, timeout_s=5)
    assert snap.state is ProcessState.exited
    assert snap.reason is TerminationReason.timeout


# ------------------------------------------------------------------------------------- 11 stream_io


def test_stream_io_stdout_and_stderr_are_byte_exact(runtime: DockerRuntime, busybox_image: str) -> None:
    process_ref = sh(runtime, make_env(busybox_image), r"printf '\377\376 out'; printf '\000\001 err' >&2")
    wait_exit(runtime, process_ref)
    assert output(runtime, process_ref, ProcessIoStream.stdout) == b"\xff\xfe out"
    assert output(runtime, process_ref, ProcessIoStream.stderr) == b"\x00\x01 err"


def test_stream_io_reads_10mb_in_64k_frames_byte_exact(runtime: DockerRuntime, busybox_image: str) -> None:
    size = 10 * 1024 * 1024
    process_ref = sh(
        runtime,
        make_env(busybox_image),
        f"head -c {size} /dev/urandom > /tmp/blob && cat /tmp/blob && sha256sum /tmp/blob >&2",
    )
    wait_exit(runtime, process_ref)
    got = frames(runtime, process_ref, ProcessIoStream.stdout)
    data = content(got)
    assert len(data) == size
    expected = output(runtime, process_ref, ProcessIoStream.stderr).split()[0].decode()
    assert hashlib.sha256(data).hexdigest() == expected
    assert all(f.byte_count <= 64 * 1024 for f in got)
    assert got[-1].eof and not any(f.eof for f in got[:-1])
    assert all(
        f.content_hash == "sha256:" + hashlib.sha256(base64.b64decode(f.content_b64 or "")).hexdigest() for f in got[:3]
    )


def test_stream_io_resumes_from_any_returned_cursor(runtime: DockerRuntime, busybox_image: str) -> None:
    process_ref = sh(runtime, make_env(busybox_image), "seq 1 3000")
    wait_exit(runtime, process_ref)
    whole = content(frames(runtime, process_ref, ProcessIoStream.stdout, max_bytes=1000))
    first = frames(runtime, process_ref, ProcessIoStream.stdout, max_bytes=1000)
    for frame in first[::3]:
        assert (
            content(frames(runtime, process_ref, ProcessIoStream.stdout, max_bytes=777, cursor=frame.cursor))
            == whole[frame.cursor :]
        )
        again = runtime.stream_io(
            ProcessIoRequest(
                process_ref=process_ref, stream=ProcessIoStream.stdout, cursor=frame.start_cursor, max_bytes=1000
            )
        )
        assert again == frame


def test_stream_io_stdin_round_trips_through_cat(runtime: DockerRuntime, busybox_image: str) -> None:
    process_ref = run(runtime, make_env(busybox_image), "cat", stdin_open=True)
    payload = b"line one\n\xff binary \x00\n"
    first = runtime.stream_io(
        ProcessIoRequest(
            process_ref=process_ref, stream=ProcessIoStream.stdin, data_b64=base64.b64encode(payload[:5]).decode()
        )
    )
    second = runtime.stream_io(
        ProcessIoRequest(
            process_ref=process_ref,
            stream=ProcessIoStream.stdin,
            data_b64=base64.b64encode(payload[5:]).decode(),
            close_stdin=True,
        )
    )
    assert (first.start_cursor, first.cursor, second.cursor, second.eof) == (0, 5, len(payload), True)
    snap = wait_exit(runtime, process_ref)
    assert snap.exit_code == 0
    assert output(runtime, process_ref) == payload
    with pytest.raises(InvalidRequest):
        runtime.stream_io(ProcessIoRequest(process_ref=process_ref, stream=ProcessIoStream.stdin, data_b64="eA=="))


def test_stream_io_stdin_on_closed_stdin_is_invalid(runtime: DockerRuntime, busybox_image: str) -> None:
    process_ref = run(runtime, make_env(busybox_image), "true")
    with pytest.raises(InvalidRequest):
        runtime.stream_io(ProcessIoRequest(process_ref=process_ref, stream=ProcessIoStream.stdin, data_b64="eA=="))


def test_stream_io_caps_the_spool_and_marks_truncation(runtime: DockerRuntime, busybox_image: str) -> None:
    capped = ProcessIoCapturePolicy(
        default_capture=ProcessContentCaptureMode.raw_content_if_policy_allows, max_bytes=1000
    )
    process_ref = sh(
        runtime, make_env(busybox_image, io_policy=ProcessIoPolicy(stdout=capped)), "head -c 5000 /dev/zero"
    )
    wait_exit(runtime, process_ref)
    got = frames(runtime, process_ref, ProcessIoStream.stdout)
    assert len(content(got)) == 1000
    assert got[-1].truncated and got[-1].dropped_bytes == 4000


def test_stream_io_metadata_only_returns_no_content(runtime: DockerRuntime, busybox_image: str) -> None:
    process_ref = sh(runtime, make_env(busybox_image, io_policy=ProcessIoPolicy()), "echo private")
    wait_exit(runtime, process_ref)
    frame = frames(runtime, process_ref, ProcessIoStream.stdout)[0]
    assert frame.raw_content_present is False and frame.content_b64 is None
    assert frame.byte_count == 8 and frame.content_hash == "sha256:" + hashlib.sha256(b"private\n").hexdigest()


def test_stream_io_unknown_process_is_not_found(runtime: DockerRuntime) -> None:
    with pytest.raises(NotFound):
        runtime.stream_io(ProcessIoRequest(process_ref=process_ref_for("env-nowhere"), stream=ProcessIoStream.stdout))
    with pytest.raises(NotFound):
        runtime.stream_io(ProcessIoRequest(process_ref="not-a-process", stream=ProcessIoStream.stdout))


# ------------------------------------------------------------------------------------- 12-13


def test_signal_process_terminate_escalates_to_kill(runtime: DockerRuntime, busybox_image: str) -> None:
    process_ref = sh(runtime, make_env(busybox_image), "trap '' TERM; sleep 100")
    started = time.monotonic()
    result = runtime.signal_process(
        ProcessSignalRequest(process_ref=process_ref, signal=ProcessSignal.terminate, grace_ms=300)
    )
    assert result.delivered
    assert time.monotonic() - started < 1.0  # the escalation does not block the call
    snap = wait_exit(runtime, process_ref, timeout_s=5)
    assert snap.state is ProcessState.exited
    assert snap.exit_code == 137 and snap.reason is TerminationReason.signal


def test_signal_process_interrupt_reaches_the_process(runtime: DockerRuntime, busybox_image: str) -> None:
    process_ref = run(runtime, make_env(busybox_image), "sleep", "100")
    result = runtime.signal_process(
        ProcessSignalRequest(process_ref=process_ref, signal=ProcessSignal.interrupt, grace_ms=5_000)
    )
    assert result.delivered
    snap = wait_exit(runtime, process_ref, timeout_s=5)
    assert snap.exit_code == 128 + signal.SIGINT and snap.reason is TerminationReason.signal
    again = runtime.signal_process(
        ProcessSignalRequest(process_ref=process_ref, signal=ProcessSignal.kill, grace_ms=5_000)
    )
    assert again.delivered is False


def test_signal_process_unknown_is_not_found(runtime: DockerRuntime) -> None:
    with pytest.raises(NotFound):
        runtime.signal_process(
            ProcessSignalRequest(process_ref=process_ref_for("env-nowhere"), signal=ProcessSignal.kill, grace_ms=5_000)
        )


def test_collect_stats_reads_cgroup_counters_while_running(runtime: DockerRuntime, busybox_image: str) -> None:
    process_ref = sh(runtime, make_env(busybox_image), "sleep 2 & sleep 2 & wait")
    started = time.monotonic()
    snap = runtime.collect_stats(ProcessStatsRequest(process_ref=process_ref))
    assert time.monotonic() - started < 0.5  # not docker's ~1 s stats API
    assert snap.state is ProcessState.running
    assert snap.cpu_millis is not None and snap.memory_bytes and snap.memory_bytes > 0
    for _ in range(40):  # start_process returns once the container runs, maybe before sh forked both
        if snap.process_count is not None and snap.process_count >= 3:
            break
        time.sleep(0.05)
        snap = runtime.collect_stats(ProcessStatsRequest(process_ref=process_ref))
    assert snap.process_count is not None and snap.process_count >= 3


def test_collect_stats_reports_oom(runtime: DockerRuntime, busybox_image: str) -> None:
    env = make_env(busybox_image, resources=ResourceLimits(memory_mb=8))
    # A short pause first: the shim's kernel OOM listener starts right after the container does;
    # an OOM within the first milliseconds is reported by Docker's own (event-based) flag only.
    process_ref = sh(runtime, env, "sleep 0.2; tail /dev/zero")
    snap = wait_exit(runtime, process_ref, timeout_s=10)
    assert snap.oom_killed is True and snap.reason is TerminationReason.oom


def test_collect_stats_unknown_is_not_found(runtime: DockerRuntime) -> None:
    with pytest.raises(NotFound):
        runtime.collect_stats(ProcessStatsRequest(process_ref=process_ref_for("env-nowhere")))


# ------------------------------------------------------------------------------------- enforcement


def test_prepare_environment_locks_the_container_down(runtime: DockerRuntime, busybox_image: str) -> None:
    script = (
        "touch /x 2>/dev/null; echo root=$?; touch /tmp/y && echo tmp=ok; grep CapEff /proc/self/status; "
        "ls /sys/class/net | tr '\\n' ' '"
    )
    process_ref = sh(runtime, make_env(busybox_image), script)
    wait_exit(runtime, process_ref)
    out = output(runtime, process_ref).decode()
    assert "root=1" in out and "tmp=ok" in out
    assert "CapEff:\t0000000000000000" in out
    assert out.rstrip().endswith("lo")  # no network: loopback only


def test_prepare_environment_enforces_the_pids_limit(runtime: DockerRuntime, busybox_image: str) -> None:
    env = make_env(busybox_image, resources=ResourceLimits(process_count=6))
    process_ref = sh(runtime, env, "for i in 1 2 3 4 5 6 7 8 9 10; do sleep 3 & done; wait")
    snap = wait_exit(runtime, process_ref)
    assert snap.state is ProcessState.exited
    assert b"fork" in output(runtime, process_ref, ProcessIoStream.stderr)


def test_prepare_environment_mount_is_read_only_inside(runtime: DockerRuntime, busybox_image: str) -> None:
    env = _mounts(
        busybox_image,
        MountPolicy(mount_ref="m1", source_alias="data", destination_path="/data"),
        MountPolicy(mount_ref="m2", source_alias="rw", destination_path="/out", mode=MountMode.writable),
    )
    process_ref = sh(
        runtime,
        env,
        "cat /data/hello.txt; touch /data/z 2>/dev/null; echo ro=$?; echo written > /out/result && echo rw=ok",
    )
    wait_exit(runtime, process_ref)
    assert output(runtime, process_ref) == b"hello from the host\nro=1\nrw=ok\n"


def test_prepare_secrets_visible_inside_and_never_in_results(runtime: DockerRuntime, busybox_image: str) -> None:
    env = _secret_env(busybox_image)
    process = proc_spec(
        "sh", "-c", f"sha256sum /run/secrets/{SECRET_NAME}; cat /run/secrets/{SECRET_NAME}; echo; echo $TOKEN"
    )
    results: list[Any] = [
        runtime.prepare_session(SessionPrepareRequest(environment=env)),
        runtime.prepare_secrets(SecretPrepareRequest(environment=env)),
    ]
    prepare(runtime, env, process)
    results.append(runtime.start_process(ProcessStartRequest(environment=env, process=process)))
    process_ref = results[-1].process_ref
    results.append(wait_exit(runtime, process_ref))
    got = frames(runtime, process_ref, ProcessIoStream.stdout)
    results += got
    text = content(got)
    assert text.split()[0].decode() == hashlib.sha256(SECRET_VALUE).hexdigest()  # the value, inside
    assert text.count(b"[REDACTED]") == 2 and sum(f.redaction_count for f in got) == 2
    results.append(runtime.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="c")))
    for result in results:
        assert SECRET_VALUE.decode() not in json.dumps(to_wire(result))


# ------------------------------------------------------------------------------------- 14-16


def test_cleanup_removes_everything_and_twice_is_fine(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any, host: HostSettings
) -> None:
    env = _secret_env(busybox_image, network=NetworkIsolationPolicy(kind=NetworkKind.allowlist))
    process_ref = sh(runtime, env, "sleep 100")
    # the per-session bridge an older corral made for an empty allowlist: cleanup still removes such leftovers
    docker_client.networks.create(
        network_name(slug(env.environment_id)), driver="bridge", internal=True, labels=runtime.labels_of(env)
    )
    paths = session_paths(host, slug(env.environment_id))
    assert count_labeled(docker_client, host.id, env.environment_id) == {"containers": 1, "networks": 1}
    assert paths.secret_dir.is_dir() and paths.spool.root.is_dir()
    first = runtime.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="c1"))
    assert first.status is CleanupStatus.completed, first.redacted_summary
    assert count_labeled(docker_client, host.id, env.environment_id) == {"containers": 0, "networks": 0}
    assert not paths.secret_dir.exists() and not paths.spool.root.exists()
    assert runtime.list_labeled() == {
        "containers": [],
        "networks": [],
        "secret_dirs": [],
        "spool_dirs": [],
        "mount_dirs": [],
        "tickets": [],
    }
    second = runtime.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="c1"))
    assert second.status is CleanupStatus.completed
    with pytest.raises(NotFound):
        runtime.collect_stats(ProcessStatsRequest(process_ref=process_ref))


def test_cleanup_reports_repair_needed_when_engine_is_gone(
    busybox_image: str, host: HostSettings, host_id: str
) -> None:
    import docker

    dead = docker.DockerClient(base_url="tcp://127.0.0.1:9", version="1.41", timeout=2)
    result = DockerRuntime(host_id, host, dead).cleanup(
        CleanupRequest(environment=make_env(busybox_image), cleanup_plan_ref="c")
    )
    assert result.status is CleanupStatus.repair_needed
    assert "docker" in result.redacted_summary


def test_detach_without_policy_is_denied(runtime: DockerRuntime, busybox_image: str) -> None:
    with pytest.raises(PolicyDenial):
        runtime.detach(DetachTransferRequest(environment=make_env(busybox_image), ticket_ref="t-1"))


def test_detach_then_reclaim_removes_everything(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any, host: HostSettings
) -> None:
    env = make_env(busybox_image, ownership=ProcessOwnershipPolicy(detach_policy=DetachPolicy(allowed=True)))
    process_ref = sh(runtime, env, "sleep 100")
    before = int(time.time() * 1000)
    ack = runtime.detach(DetachTransferRequest(environment=env, ticket_ref="ticket/1", ttl_ms=60_000))
    assert ack.ticket_ref == "ticket/1" and ack.host_ack_ref == f"ack-{slug('ticket/1')}"
    assert before + 60_000 <= ack.deadline_ms <= time.time() * 1000 + 60_000
    assert runtime.collect_stats(ProcessStatsRequest(process_ref=process_ref)).state is ProcessState.running
    assert len(runtime.list_labeled()["tickets"]) == 1
    result = runtime.reclaim(ReclaimRequest(ticket_ref="ticket/1"))
    assert result.status is CleanupStatus.completed, result.redacted_summary
    assert count_labeled(docker_client, host.id, env.environment_id) == {"containers": 0, "networks": 0}
    assert not session_paths(host, slug(env.environment_id)).spool.root.exists()
    assert runtime.list_labeled()["tickets"] == []
    again = runtime.reclaim(ReclaimRequest(ticket_ref="ticket/1", environment_id=env.environment_id))
    assert again.status is CleanupStatus.completed


def test_detach_without_ticket_is_invalid(runtime: DockerRuntime, busybox_image: str) -> None:
    env = make_env(busybox_image, ownership=ProcessOwnershipPolicy(detach_policy=DetachPolicy(allowed=True)))
    with pytest.raises(InvalidRequest):
        runtime.detach(DetachTransferRequest(environment=env))


def test_reclaim_unknown_ticket_is_not_found(runtime: DockerRuntime) -> None:
    with pytest.raises(NotFound):
        runtime.reclaim(ReclaimRequest(ticket_ref="never-issued"))


# ------------------------------------------------------------------------------------- edge cases


def test_start_process_missing_binary_exits_127(runtime: DockerRuntime, busybox_image: str) -> None:
    process_ref = run(runtime, make_env(busybox_image), "/no/such/binary")
    snap = wait_exit(runtime, process_ref)
    assert (snap.state, snap.exit_code) == (ProcessState.exited, 127)


def test_prepare_secrets_readable_by_a_non_root_uid(runtime: DockerRuntime, busybox_image: str) -> None:
    env = _secret_env(busybox_image)
    process_ref = sh(runtime, env, f"id -u; wc -c < /run/secrets/{SECRET_NAME}", user="65534:65534")
    assert wait_exit(runtime, process_ref).exit_code == 0
    assert output(runtime, process_ref).split() == [b"65534", str(len(SECRET_VALUE)).encode()]


def test_stream_io_fail_if_exceeded_kills_the_process(runtime: DockerRuntime, busybox_image: str) -> None:
    strict = ProcessIoCapturePolicy(
        default_capture=ProcessContentCaptureMode.raw_content_if_policy_allows,
        max_bytes=100,
        truncation_policy="fail_if_exceeded",
    )
    process_ref = sh(
        runtime, make_env(busybox_image, io_policy=ProcessIoPolicy(stdout=strict)), "head -c 100000 /dev/zero; sleep 30"
    )
    snap = wait_exit(runtime, process_ref, timeout_s=5)
    assert snap.state is ProcessState.exited and snap.reason is TerminationReason.signal
    last = frames(runtime, process_ref, ProcessIoStream.stdout)[-1]
    assert last.truncated and last.cursor == 100


def test_signal_process_escalates_even_when_the_shim_is_gone(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    env = make_env(busybox_image)
    process_ref = sh(runtime, env, "echo before; trap '' TERM; sleep 100")
    spool = session_paths(host, slug(env.environment_id)).spool
    deadline = time.monotonic() + 5
    while b"before" not in (spool.root / "stdout").read_bytes() and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(int(spool.shim_pid.read_text()), signal.SIGKILL)
    time.sleep(0.1)
    result = runtime.signal_process(
        ProcessSignalRequest(process_ref=process_ref, signal=ProcessSignal.terminate, grace_ms=300)
    )
    assert result.delivered and "helper" in result.redacted_summary
    snap = wait_exit(runtime, process_ref, timeout_s=5)
    assert (snap.state, snap.exit_code, snap.reason) == (ProcessState.exited, 137, TerminationReason.signal)
    assert output(runtime, process_ref) == b"before\n"  # eof without exit.json: the writer is gone


def test_cleanup_of_a_detached_session_removes_its_ack(runtime: DockerRuntime, busybox_image: str) -> None:
    env = make_env(busybox_image, ownership=ProcessOwnershipPolicy(detach_policy=DetachPolicy(allowed=True)))
    sh(runtime, env, "sleep 100")
    runtime.detach(DetachTransferRequest(environment=env, ticket_ref="ticket/2", ttl_ms=60_000))
    assert len(runtime.list_labeled()["tickets"]) == 1
    result = runtime.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="plan-1"))
    assert result.status is CleanupStatus.completed
    assert runtime.list_labeled() == {
        "containers": [],
        "networks": [],
        "secret_dirs": [],
        "spool_dirs": [],
        "mount_dirs": [],
        "tickets": [],
    }


# ------------------------------------------------------------------- held reads (wait_ms)


def _held(rt: DockerRuntime, process_ref: str, stream: ProcessIoStream, wait_ms: int, cursor: int = 0) -> Any:
    began = time.monotonic()
    frame = rt.stream_io(ProcessIoRequest(process_ref=process_ref, stream=stream, cursor=cursor, wait_ms=wait_ms))
    return frame, time.monotonic() - began


def test_a_held_read_answers_when_output_arrives_not_at_its_deadline(
    runtime: DockerRuntime, busybox_image: str
) -> None:
    ref = sh(runtime, make_env(busybox_image), "sleep 0.5; echo late")
    frame, took = _held(runtime, ref, ProcessIoStream.stdout, 2000)
    assert base64.b64decode(frame.content_b64 or "") == b"late\n"
    assert 0.3 < took < 1.5, took


def test_a_held_read_wakes_for_the_other_stream_and_for_the_end(runtime: DockerRuntime, busybox_image: str) -> None:
    ref = sh(runtime, make_env(busybox_image), "sleep 0.4; echo oops >&2; sleep 0.4")
    frame, took = _held(runtime, ref, ProcessIoStream.stdout, 2000)
    assert frame.byte_count == 0 and not frame.eof and 0.25 < took < 0.75, (frame, took)  # stderr moved
    frame, took = _held(runtime, ref, ProcessIoStream.stdout, 2000)
    assert frame.eof and took < 1.0, (frame, took)  # the process ended: stdout is at its end


def test_a_held_read_of_a_quiet_stream_ends_at_its_deadline(runtime: DockerRuntime, busybox_image: str) -> None:
    ref = sh(runtime, make_env(busybox_image), "sleep 30")
    frame, took = _held(runtime, ref, ProcessIoStream.stdout, 300)
    assert frame.byte_count == 0 and not frame.eof
    assert 0.28 < took < 1.0, took


def test_held_reads_beyond_the_slots_answer_at_once(runtime: DockerRuntime, busybox_image: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from corral.runtimes.docker.runtime import MAX_HELD_READS

    ref = sh(runtime, make_env(busybox_image), "sleep 30")
    with ThreadPoolExecutor(MAX_HELD_READS + 2) as pool:
        took = sorted(
            t
            for _, t in pool.map(lambda _: _held(runtime, ref, ProcessIoStream.stdout, 800), range(MAX_HELD_READS + 2))
        )
    assert all(t < 0.4 for t in took[:2]), took  # no slot: answered at once
    assert all(t > 0.7 for t in took[2:]), took  # held to the deadline


# ------------------------------------------------------------------------------ the shim template


def _template_pids(state_dir: str) -> list[int]:
    return helper_pids(state_dir, "corral.io.template")


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _shim_of(host: HostSettings, env: ExecutionEnvironment) -> int:
    from corral.runtimes.docker.resources import shim_pid

    pid = shim_pid(session_paths(host, slug(env.environment_id)).spool)
    assert pid is not None
    return pid


def test_shims_are_forked_by_one_template_per_host_and_show_a_shims_command_line(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    first, second = make_env(busybox_image), make_env(busybox_image)
    sh(runtime, first, "sleep 30")
    sh(runtime, second, "sleep 30")
    [template] = _template_pids(host.state_dir)
    for env in (first, second):
        pid = _shim_of(host, env)  # found by its command line, as a shim started on its own would be
        assert _parent(pid) == template
        words = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        assert words[1:4] == [b"-S", b"-m", b"corral.io.shim"], words
        spool = str(session_paths(host, slug(env.environment_id)).spool.root).encode()
        assert spool in words and b"corral.io.template" not in words
        assert Path(f"/proc/{pid}/cgroup").read_text() == Path(f"/proc/{template}/cgroup").read_text()
    socket_dir = Path(host.state_dir) / "io"
    assert socket_dir.stat().st_mode & 0o777 == 0o700
    [sock] = socket_dir.glob("template-*.sock")
    assert sock.stat().st_mode & 0o777 == 0o600


def test_a_killed_template_is_replaced_and_the_shims_it_forked_live_on(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    env = make_env(busybox_image)
    ref = sh(runtime, env, "sleep 1; echo after")
    [template] = _template_pids(host.state_dir)
    os.kill(template, signal.SIGKILL)
    assert output(runtime, ref) == b"after\n"  # its shim is a process of its own
    assert wait_exit(runtime, ref).exit_code == 0
    again = sh(runtime, make_env(busybox_image), "echo again")
    assert output(runtime, again) == b"again\n"
    assert [pid for pid in _template_pids(host.state_dir) if pid != template]


def test_a_template_drops_what_is_not_a_request_and_serves_the_next(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    import socket as sockets
    import struct

    from corral.io.template import encode_request, socket_address

    sh(runtime, make_env(busybox_image), "true")
    [template] = _template_pids(host.state_dir)
    [sock] = (Path(host.state_dir) / "io").glob("template-*.sock")
    attempts = [
        struct.pack(">I", 10) + b"not json!!",
        struct.pack(">I", 1 << 30),
        struct.pack(">I", 2) + b"[]",
        struct.pack(">I", 40) + b'{"argv": ["--bogus"], "log": "/x", "cwd": "/"}'[:40],  # cut short
        encode_request(["--bogus"], "/x", "/"),  # well formed, but not a shim's command line
    ]
    for attempt in attempts:
        conn = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
        dir_fd = os.open(sock.parent, os.O_PATH | os.O_DIRECTORY)
        try:
            conn.connect(socket_address(dir_fd, sock.name))
            conn.settimeout(10)
            conn.sendall(attempt)
            assert conn.recv(64) == b"", attempt  # dropped: never "forked"
        finally:
            conn.close()
            os.close(dir_fd)
    ref = sh(runtime, make_env(busybox_image), "echo served")
    assert output(runtime, ref) == b"served\n"
    assert _template_pids(host.state_dir) == [template]


def test_without_a_template_shims_start_on_their_own(
    docker_client: Any, host: HostSettings, host_id: str, busybox_image: str
) -> None:
    Path(host.state_dir).mkdir(parents=True, exist_ok=True)
    (Path(host.state_dir) / "io").write_text("not a directory: no template can live here\n")
    with docker_runtime(docker_client, host, host_id) as rt:
        env = make_env(busybox_image)
        ref = sh(rt, env, "echo alone; sleep 1")
        assert b"--daemonize" in Path(f"/proc/{_shim_of(host, env)}/cmdline").read_bytes()  # a shim of its own
        assert output(rt, ref) == b"alone\n"
        assert _template_pids(host.state_dir) == []


def test_a_stuck_template_costs_one_launch_a_pause_and_is_replaced(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    import time

    sh(runtime, make_env(busybox_image), "true")
    [template] = _template_pids(host.state_dir)
    os.kill(template, signal.SIGSTOP)  # accepts connections (the kernel does), answers nothing
    try:
        began = time.monotonic()
        ref = sh(runtime, make_env(busybox_image), "echo despite")
        assert time.monotonic() - began < 10
        assert output(runtime, ref) == b"despite\n"  # a shim of its own
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(template, signal.SIGCONT)
    assert wait_until_gone(template)  # killed as stuck
    again = sh(runtime, make_env(busybox_image), "echo again")
    assert output(runtime, again) == b"again\n"
    [replacement] = _template_pids(host.state_dir)
    assert replacement != template


def wait_until_gone(pid: int, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return True
        time.sleep(0.05)
    return False


def test_listing_what_the_host_made_survives_containers_removed_meanwhile(
    runtime: DockerRuntime, docker_client: Any, busybox_image: str, host_id: str
) -> None:
    """The exit watch and the reconciler list the host's containers while cleanups remove them: a
    container gone between the listing and a per-container inspect failed the whole pass (a 404)."""
    from concurrent.futures import ThreadPoolExecutor

    labels = {"corral.host": host_id, "corral.session": "race"}
    made = [docker_client.containers.create(busybox_image, ["true"], labels=labels) for _ in range(12)]
    with ThreadPoolExecutor(4) as pool:
        removals = [pool.submit(c.remove, force=True) for c in made]
        listings = 0
        while not all(r.done() for r in removals) or listings < 5:
            runtime.list_labeled()  # raises on a 404 mid-listing
            runtime.supervise_io()
            listings += 1
        for removal in removals:
            removal.result()
    assert not [c for c in runtime.list_labeled()["containers"] if c.get("corral.session") == "race"]
