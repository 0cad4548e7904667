"""Output redaction against a real container: a process prints its secret in many encodings, each
split across separate writes with sleeps between, on stdout and stderr, while a reader pulls tiny
frames. No frame may carry the secret or any encoding of it, and the frames must add up to the
redaction of the whole spool.

The runtime fixture comes from ``tests/harness.py``; the rest are small local helpers.
"""

from __future__ import annotations

import base64
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.contract.models import (
    EnvironmentPrepareRequest,
    EnvironmentSpec,
    ExecutionEnvironment,
    FilesystemIsolationPolicy,
    ImageRequest,
    ImageResolveRequest,
    IsolatedProcessSpec,
    MountPolicy,
    MountResolveRequest,
    NetworkPrepareRequest,
    ProcessIoCapturePolicy,
    ProcessIoFrame,
    ProcessIoPolicy,
    ProcessIoRequest,
    ProcessStartRequest,
    RootfsPrepareRequest,
    SecretEnvPolicy,
    SecretExposurePolicy,
    SecretMountPolicy,
    SecretPrepareRequest,
    SessionPrepareRequest,
)
from corral.contract.refs import slug
from corral.contract.vocabulary import ProcessContentCaptureMode, ProcessIoStream
from corral.fleet.job import image_of, rootfs_of
from corral.runtimes.docker.resources import session_paths
from corral.runtimes.docker.runtime import DockerRuntime
from corral.sandbox.redact import MARKER, Redactor
from corral.settings import HostSettings
from tests.harness import docker_runtime

pytestmark = pytest.mark.docker

SECRET_NAME = "api-token"
SECRET_VALUE = b"s3cr3t/" + uuid.uuid4().hex.encode() + b"+p@ss w=rd"
"""Slash, plus, at, space and equals: its URL and JSON forms differ from the exact value."""
RAW = ProcessIoCapturePolicy(default_capture=ProcessContentCaptureMode.raw_content_if_policy_allows)
FRAME_BYTES = 7

SCRIPT = r"""
S=/run/secrets/api-token
both() { printf '%s' "$1"; printf '%s' "$1" >&2; }
split() { half=$((${#1} / 2)); both "${1:0:$half}"; sleep 0.15; both "${1:$half}"; both "
"; }
# the mounted file itself, split by head/tail into two writes
head -c 9 $S; head -c 9 $S >&2; sleep 0.2; tail -c +10 $S; tail -c +10 $S >&2; both "
"
# encodings computed inside the sandbox
split "$(base64 $S)"
split "$(xxd -p $S | tr -d '\n')"
split "$(od -An -tx1 $S | tr -d ' \n' | tr a-f A-F)"
split "$TOKEN"
# encodings computed on the host (URL, JSON, base64 variants), one per line
while IFS= read -r line; do split "$line"; done < /forms/forms.txt
"""


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def host_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def host(tmp_path: Path, host_id: str) -> Iterator[HostSettings]:
    forms = tmp_path / "forms"
    forms.mkdir()
    variants = sorted(v for v in Redactor([SECRET_VALUE]).variants if b"\n" not in v)
    (forms / "forms.txt").write_bytes(b"".join(v + b"\n" for v in variants))
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / SECRET_NAME).write_bytes(SECRET_VALUE)
    secrets_root = Path(f"/dev/shm/corral-test-{host_id}")
    yield HostSettings(
        id=host_id,
        state_dir=str(tmp_path / "state"),
        secrets_root=str(secrets_root),
        secrets_dir=str(secrets_dir),
        mounts={"forms": str(forms)},
    )
    shutil.rmtree(secrets_root, ignore_errors=True)


@pytest.fixture
def runtime(docker_client: Any, host: HostSettings, host_id: str) -> Iterator[DockerRuntime]:
    with docker_runtime(docker_client, host, host_id) as rt:
        yield rt


# ------------------------------------------------------------------------------------- helpers


def secret_env(image: str) -> ExecutionEnvironment:
    secrets = SecretExposurePolicy(
        secret_mounts=[SecretMountPolicy(secret_ref=SECRET_NAME, mount_ref="s1", path=f"/run/secrets/{SECRET_NAME}")],
        env_secrets=[SecretEnvPolicy(secret_ref=SECRET_NAME, env_key="TOKEN")],
    )
    return ExecutionEnvironment(
        environment_id=f"env-{uuid.uuid4().hex[:12]}",
        spec=EnvironmentSpec(
            image=ImageRequest(image_ref=image),
            io_policy=ProcessIoPolicy(stdout=RAW, stderr=RAW),
            secrets=secrets,
            filesystem=FilesystemIsolationPolicy(
                mounts=[MountPolicy(mount_ref="m1", source_alias="forms", destination_path="/forms")]
            ),
        ),
    )


def start(rt: DockerRuntime, env: ExecutionEnvironment, process: IsolatedProcessSpec) -> str:
    """The whole prepare chain in contract order, then start."""
    rt.prepare_session(SessionPrepareRequest(environment=env))
    rt.prepare_environment(
        EnvironmentPrepareRequest(
            environment=env,
            process=process,
            image=rt.resolve_image(ImageResolveRequest(image=image_of(env), environment=env)),
            rootfs=rt.prepare_rootfs(RootfsPrepareRequest(rootfs=rootfs_of(env), environment=env)),
            mounts=rt.resolve_mounts(MountResolveRequest(environment=env)),
            network=rt.configure_network(NetworkPrepareRequest(environment=env)),
            secrets=rt.prepare_secrets(SecretPrepareRequest(environment=env)),
        )
    )
    return rt.start_process(ProcessStartRequest(environment=env, process=process)).process_ref


def read_both_live(
    rt: DockerRuntime, process_ref: str, timeout_s: float = 60
) -> dict[ProcessIoStream, list[ProcessIoFrame]]:
    """Alternate tiny frames of stdout and stderr while the process runs, until both reach eof."""
    got: dict[ProcessIoStream, list[ProcessIoFrame]] = {ProcessIoStream.stdout: [], ProcessIoStream.stderr: []}
    cursors = dict.fromkeys(got, 0)
    deadline = time.monotonic() + timeout_s
    while not all(frames and frames[-1].eof for frames in got.values()):
        assert time.monotonic() < deadline, "streams did not reach eof"
        progressed = False
        for stream, frames in got.items():
            if frames and frames[-1].eof:
                continue
            request = ProcessIoRequest(
                process_ref=process_ref, stream=stream, cursor=cursors[stream], max_bytes=FRAME_BYTES
            )
            frame = rt.stream_io(request)
            frames.append(frame)
            cursors[stream] = frame.cursor
            progressed = progressed or frame.byte_count > 0
        if not progressed:
            time.sleep(0.01)
    return got


def content(frames: list[ProcessIoFrame]) -> bytes:
    return b"".join(base64.b64decode(f.content_b64 or "") for f in frames)


# ------------------------------------------------------------------------------------- test


def test_split_and_encoded_secret_never_leaves_in_small_live_frames(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    env = secret_env(busybox_image)
    process = IsolatedProcessSpec(process_id=f"p-{uuid.uuid4().hex[:8]}", argv=["sh", "-c", SCRIPT])
    process_ref = start(runtime, env, process)
    got = read_both_live(runtime, process_ref)
    redactor = Redactor([SECRET_VALUE])
    spool = session_paths(host, slug(env.environment_id)).spool
    for stream, frames in got.items():
        raw = spool.stream(stream.value).read_bytes()
        assert SECRET_VALUE in raw and raw.count(b"\n") > 20, "the process did print its secret"
        shown = content(frames)
        assert [v for v in redactor.variants for part in shown.split(MARKER) if v in part] == []
        whole, count = redactor.redact(raw)
        assert shown == whole, stream
        assert sum(f.redaction_count for f in frames) == count == shown.count(MARKER) > 20
        assert all(f.byte_count <= FRAME_BYTES for f in frames)
        assert any(not f.eof and f.byte_count for f in frames), "frames were read while the process ran"
        for frame in frames:
            assert SECRET_VALUE.decode() not in frame.model_dump_json()
