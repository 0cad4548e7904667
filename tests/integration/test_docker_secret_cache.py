"""Secret values for redaction are asked of the providers once per session, not for every output
frame, and teardown drops them: a real container that prints its secret, read frame by frame through
``DockerRuntime.stream_io`` with a provider that counts what it is asked."""

from __future__ import annotations

import base64
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.contract.models import CleanupRequest, ProcessIoFrame, ProcessIoRequest, ProcessState, ProcessStatsRequest
from corral.contract.vocabulary import ProcessIoStream
from corral.fleet.job import JobSpec
from corral.runtimes.docker.runtime import DockerRuntime
from corral.sandbox.redact import MARKER
from corral.sandbox.secrets import DirectoryProvider
from corral.settings import HostSettings
from tests.harness import docker_runtime

pytestmark = pytest.mark.docker

ASKED: Counter[str] = Counter()
"""Every name a CountingProvider was asked for, in this test process."""


class CountingProvider:
    """The host's secret directory, counting each lookup (a plug-in, named in ``host.secret_providers``)."""

    def __init__(self, directory: str) -> None:
        self.inner = DirectoryProvider(directory)

    @classmethod
    def from_settings(cls, settings: HostSettings) -> CountingProvider:
        return cls(settings.secrets_dir)

    def resolve(self, name: str) -> bytes | None:
        ASKED[name] += 1
        return self.inner.resolve(name)


SECRET_NAME = "api-token"
SECRET_VALUE = b"s3cr3t-" + uuid.uuid4().hex.encode()


@pytest.fixture
def counted(docker_client: Any, tmp_path: Path) -> Iterator[DockerRuntime]:
    host_id = f"t-{uuid.uuid4().hex[:12]}"
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / SECRET_NAME).write_bytes(SECRET_VALUE)
    secrets_root = Path(f"/dev/shm/corral-test-{host_id}")
    settings = HostSettings(
        id=host_id,
        state_dir=str(tmp_path / "state"),
        secrets_root=str(secrets_root),
        secrets_dir=str(tmp_path / "secrets"),
        secret_providers=[f"{__name__}:CountingProvider"],
    )
    with docker_runtime(docker_client, settings, host_id) as rt:
        yield rt
    shutil.rmtree(secrets_root, ignore_errors=True)


def _frame(rt: DockerRuntime, process_ref: str, cursor: int) -> ProcessIoFrame:
    return rt.stream_io(
        ProcessIoRequest(process_ref=process_ref, stream=ProcessIoStream.stdout, cursor=cursor, max_bytes=16)
    )


def test_frames_do_not_ask_the_providers_again_and_cleanup_drops_the_values(
    counted: DockerRuntime, busybox_image: str
) -> None:
    job = JobSpec(
        image=busybox_image,
        argv=["sh", "-c", 'for i in 1 2 3 4 5 6; do echo "line $i $TOKEN"; done'],
        env_secrets={"TOKEN": SECRET_NAME},
        memory_mb=64,
    )
    env = job.environment()
    ref = ""
    for op, request in job.requests(counted.host_id):  # the chain on the adapter itself
        ref = getattr(getattr(counted, op)(request), "process_ref", ref)
    deadline = time.monotonic() + 15
    while counted.collect_stats(ProcessStatsRequest(process_ref=ref)).state is not ProcessState.exited:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first = _frame(counted, ref, 0)
    after_first = ASKED[SECRET_NAME]
    assert after_first >= 1  # the session's values were resolved (for the start, or for this frame)
    frames = [first]
    while not frames[-1].eof:
        frames.append(_frame(counted, ref, frames[-1].cursor))
    assert len(frames) > 5
    assert ASKED[SECRET_NAME] == after_first  # no provider call for any later frame
    text = b"".join(base64.b64decode(f.content_b64 or "") for f in frames)
    assert SECRET_VALUE not in text and text.count(MARKER) == 6  # still redacted, from the kept values

    # Another process of the worker (its own runtime) resolves once, then reads from memory too.
    other = DockerRuntime(counted.host_id, counted.host, counted.client)
    _frame(other, ref, 0)
    _frame(other, ref, 16)
    assert ASKED[SECRET_NAME] == after_first + 1

    spool_root = str(counted.paths_of(env.environment_id).spool.root)
    assert spool_root in counted._session_secrets  # what cleanup must drop
    counted.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="plan-1"))
    assert spool_root not in counted._session_secrets
    assert not Path(spool_root).exists()
