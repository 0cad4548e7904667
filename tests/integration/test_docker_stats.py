"""collect_stats reports upstream's filesystem_bytes and network_bytes from real containers, cheaply:
a sandbox that writes a file into its scratch tmpfs, one that moves bytes over its loopback (the only
interface of ``network_mode: none``), and one with a writable root layer."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.contract.errors import IsolationFailure
from corral.contract.models import CleanupRequest, ProcessState, ProcessStatsRequest, ProcessStatsSnapshot
from corral.fleet.job import JobSpec
from corral.runtimes.docker.runtime import DockerRuntime
from corral.runtimes.docker.usage import network_bytes, tmpfs_bytes
from corral.sandbox.policy import HostPolicy, UserRules
from corral.settings import HostSettings
from tests.harness import docker_runtime

pytestmark = pytest.mark.docker

MB = 1_000_000


@pytest.fixture
def runtime(docker_client: Any, tmp_path: Path) -> Iterator[DockerRuntime]:
    host_id = f"t-{uuid.uuid4().hex[:12]}"
    secrets_root = Path(f"/dev/shm/corral-test-{host_id}")
    settings = HostSettings(id=host_id, state_dir=str(tmp_path / "state"), secrets_root=str(secrets_root))
    with docker_runtime(docker_client, settings, host_id) as rt:
        yield rt
    shutil.rmtree(secrets_root, ignore_errors=True)


def _start(rt: DockerRuntime, script: str, **job: Any) -> str:
    """Run a job's prepare-to-start chain on the adapter itself (no coordinator, no Celery)."""
    spec = JobSpec(image=job.pop("image"), argv=["sh", "-c", script], memory_mb=64, **job)
    result: Any = None
    for op, request in spec.requests(rt.host_id):
        result = getattr(rt, op)(request)
    _JOBS[result.process_ref] = spec
    return str(result.process_ref)


_JOBS: dict[str, JobSpec] = {}
"""The job behind each started process ref (its environment for cleanup, its spool for output)."""


def _running_stats(rt: DockerRuntime, ref: str, ready: str, timeout_s: float = 20) -> ProcessStatsSnapshot:
    """Stats once the sandbox printed ``ready`` (its work is done; it then sleeps, still running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = rt.paths_of(_JOBS[ref].environment_id).spool.stream("stdout")
        if ready.encode() in (out.read_bytes() if out.exists() else b""):
            snap = rt.collect_stats(ProcessStatsRequest(process_ref=ref))
            assert snap.state is ProcessState.running
            return snap
        time.sleep(0.05)
    raise AssertionError(f"sandbox never printed {ready!r}")


def test_a_file_written_to_scratch_counts_as_filesystem_bytes(runtime: DockerRuntime, busybox_image: str) -> None:
    idle = _start(runtime, "echo ready; sleep 30", image=busybox_image)
    writer = _start(
        runtime,
        "dd if=/dev/zero of=/tmp/blob bs=1000 count=3000 2>/dev/null; echo ready; sleep 30",
        image=busybox_image,
    )
    quiet, wrote = _running_stats(runtime, idle, "ready"), _running_stats(runtime, writer, "ready")
    assert quiet.filesystem_bytes is not None and quiet.filesystem_bytes < MB
    assert wrote.filesystem_bytes is not None and 3 * MB <= wrote.filesystem_bytes < 3 * MB + MB
    assert quiet.network_bytes == 0  # network_mode none: only lo, and nothing used it
    started = time.monotonic()
    runtime.collect_stats(ProcessStatsRequest(process_ref=writer))
    assert time.monotonic() - started < 0.5  # no docker stats(stream=False), which takes ~1 s


def test_a_writable_root_layer_counts_too(runtime: DockerRuntime, busybox_image: str) -> None:
    # Only root may write to the image's own directories (still without any capability).
    runtime.policy = lambda: HostPolicy(users=UserRules(allow_root=True))
    script = "dd if=/dev/zero of=/blob bs=1000 count=2000 2>/dev/null; echo ready; sleep 30"
    ref = _start(runtime, script, image=busybox_image, writable_root=True, user="0:0")
    snap = _running_stats(runtime, ref, "ready")
    assert snap.filesystem_bytes is not None and 2 * MB <= snap.filesystem_bytes < 3 * MB


def test_loopback_traffic_counts_as_network_bytes(runtime: DockerRuntime, busybox_image: str) -> None:
    script = (
        "dd if=/dev/zero of=/tmp/f bs=1000 count=500 2>/dev/null; httpd -p 127.0.0.1:8080 -h /tmp; sleep 0.2; "
        "wget -q -O /dev/null http://127.0.0.1:8080/f && echo ready; sleep 30"
    )
    ref = _start(runtime, script, image=busybox_image)
    snap = _running_stats(runtime, ref, "ready")
    # 500 kB served over lo: each byte is sent and received once on the same interface.
    assert snap.network_bytes is not None and 2 * 500_000 <= snap.network_bytes < 2 * 500_000 + 100_000


def test_an_exited_sandbox_reports_no_counters(runtime: DockerRuntime, busybox_image: str) -> None:
    ref = _start(runtime, "true", image=busybox_image)
    deadline = time.monotonic() + 15
    snap = runtime.collect_stats(ProcessStatsRequest(process_ref=ref))
    while snap.state is not ProcessState.exited and time.monotonic() < deadline:
        time.sleep(0.05)
        snap = runtime.collect_stats(ProcessStatsRequest(process_ref=ref))
    assert (snap.state, snap.filesystem_bytes, snap.network_bytes) == (ProcessState.exited, None, None)
    runtime.cleanup(CleanupRequest(environment=_JOBS[ref].environment(), cleanup_plan_ref="plan-1"))


def test_readers_of_a_missing_process_or_namespace_say_unknown(tmp_path: Any) -> None:
    assert network_bytes(0) is None
    assert network_bytes(2**22 + 12345) is None
    assert tmpfs_bytes("0" * 64, root=tmp_path) is None
    with pytest.raises(ValueError, match="64 hex digits"):
        tmpfs_bytes("../../etc")


class _NoEngine:
    """A Docker client whose every use fails the test: what must be answered without the engine."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the engine was asked ({name})")


def test_a_running_sandboxs_stats_never_ask_the_engine(runtime: DockerRuntime, busybox_image: str) -> None:
    """A host busy starting sandboxes answered each inspect in tens of ms: a running sandbox's stats
    come from its spool, its cgroup and /proc alone."""
    ref = _start(
        runtime,
        "dd if=/dev/zero of=/tmp/blob bs=1000 count=1000 2>/dev/null; echo ready; sleep 30",
        image=busybox_image,
    )
    expected = _running_stats(runtime, ref, "ready")
    engine, runtime._client = runtime._client, _NoEngine()
    try:
        snap = runtime.collect_stats(ProcessStatsRequest(process_ref=ref))
    finally:
        runtime._client = engine
    assert snap.state is ProcessState.running
    assert snap.memory_bytes and snap.process_count and snap.cpu_millis is not None
    assert snap.filesystem_bytes is not None and MB <= snap.filesystem_bytes < 2 * MB
    assert snap.network_bytes == expected.network_bytes == 0


def test_stats_ask_the_engine_once_the_process_ended_or_its_shim_died(
    runtime: DockerRuntime, busybox_image: str
) -> None:
    import os
    import signal

    from corral.runtimes.docker.resources import shim_pid

    ref = _start(runtime, "echo ready; sleep 30", image=busybox_image)
    _running_stats(runtime, ref, "ready")
    layout = runtime.paths_of(_JOBS[ref].environment_id).spool
    pid = shim_pid(layout)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    engine, runtime._client = runtime._client, _NoEngine()
    try:
        with pytest.raises(IsolationFailure, match="AssertionError"):  # it went to the engine
            runtime.collect_stats(ProcessStatsRequest(process_ref=ref))
    finally:
        runtime._client = engine
    snap = runtime.collect_stats(ProcessStatsRequest(process_ref=ref))  # the engine's answer; a supervisor revived
    assert snap.state is ProcessState.running
    assert shim_pid(layout) is not None
