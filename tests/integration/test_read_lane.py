"""The reads lane with real parts: a host whose lifecycle pool is fully occupied still answers stats and
output frames, because those go to ``corral.host.<id>.reads`` and its own threads pool (``workers.reads``);
the lane is restarted when it dies and exits with its worker."""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from corral.celeryconf import queue_for_host
from corral.client.client import Client
from corral.contract.models import IsolationCapabilityReport, IsolationRuntimeRef, ProcessSignalRequest, ProcessState
from corral.contract.operations import Operation
from corral.contract.vocabulary import ProcessIoStream, ProcessSignal
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.harness import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    yield c
    c.close()


def reads_lanes(worker_pid: int) -> list[int]:
    """Pids of the reads lane processes whose parent is ``worker_pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        argv = cmdline.split(b"\0")
        # Celery retitles its processes (setproctitle): "[celeryd: corral-reads@<host>:MainProcess] ...".
        if ppid == worker_pid and (b"corral-reads@" in cmdline or (b"workers.main" in argv and b"reads" in argv)):
            found.append(int(entry.name))
    return found


def test_stats_and_frames_are_answered_while_the_lifecycle_pool_is_fully_occupied(
    worker_factory, client, busybox_image, tmp_path: Path
) -> None:
    faults = tmp_path / "faults"
    faults.mkdir()
    # One lifecycle pool process; the first signal_process stalls in it (after its intent) for 15 s.
    stall = {
        "CORRAL_TESTING__FAULTS": "signal_process:before_adapter!sleep=15",
        "CORRAL_TESTING__FAULT_DIR": str(faults),
    }
    worker = worker_factory(None, "--concurrency", "1", env=stall)
    spec = JobSpec(image=busybox_image, argv=["sh", "-c", "echo ready; sleep 60"], memory_mb=64)
    running = client.submit(spec, host=worker.host_id)
    client.wait(running)
    assert wait_until(
        lambda: client.read_frame(worker.host_id, running.process_ref, ProcessIoStream.stdout, 0).byte_count, 20
    )

    stalled = client.send(
        Operation.signal_process,
        ProcessSignalRequest(process_ref=running.process_ref, signal=ProcessSignal.terminate, grace_ms=0),
        worker.host_id,
    )
    assert wait_until((faults / "signal_process__before_adapter").exists, 30), worker.log()
    # Straight to the host's queue (placement runs on the fleet queue, which this busy pool serves too).
    queued = client.send_job(JobSpec(image=busybox_image, argv=["true"], memory_mb=64), worker.host_id)

    # The lifecycle lane is busy (its only process sleeps inside signal_process) and has work queued...
    stats = client.stats(running)
    frame = client.read_frame(worker.host_id, running.process_ref, ProcessIoStream.stdout, 0)
    report = client.call(Operation.capability_report, None, worker.host_id, IsolationCapabilityReport)
    sessions = client.view_sessions()  # a fleet view (corral ps): the fleet's reads queue, this host's reads lane
    # ...and it still is, after the reads were answered.
    assert not stalled.ready() and not client.app.AsyncResult(queued.launch_id).ready()
    assert stats.state is ProcessState.running
    assert base64.b64decode(frame.content_b64 or "") == b"ready\n"
    assert report.report_ref
    assert running.environment_id in {row["environment_id"] for row in sessions}
    broker = redis.Redis.from_url(client.settings.redis_url(client.settings.redis.broker_db))
    assert broker.llen(queue_for_host(worker.host_id)) >= 1  # the queued chain waits in the lifecycle queue
    broker.close()

    assert client.app.AsyncResult(stalled.id).get(timeout=60)["delivered"] is True
    client.wait(queued, timeout=60)
    client.cleanup(queued)
    client.cleanup(running)


def test_the_reads_lane_is_restarted_when_it_dies_and_exits_with_its_worker(worker_factory, client) -> None:
    worker = worker_factory(None, env={"CORRAL_HOST__RUNTIME": "fake"})
    assert worker.proc is not None
    assert wait_until(lambda: len(reads_lanes(worker.proc.pid)) == 1, 30), worker.log()
    [first] = reads_lanes(worker.proc.pid)
    os.kill(first, signal.SIGKILL)
    assert wait_until(lambda: reads_lanes(worker.proc.pid) not in ([], [first]), 30), worker.log()
    assert client.call(Operation.runtime_ref, None, worker.host_id, IsolationRuntimeRef)  # by the new lane
    [second] = reads_lanes(worker.proc.pid)
    os.kill(worker.proc.pid, signal.SIGKILL)  # the worker dies without stopping its lane
    worker.proc.wait(10)
    assert wait_until(lambda: not Path(f"/proc/{second}").exists(), 30)  # PR_SET_PDEATHSIG: it stops too


def test_the_reads_lane_is_scheduled_ahead_of_the_engine_and_the_lifecycle_pool(worker_factory) -> None:
    """Its nice value and, across sessions (kernel autogroups), its own session's group's: a nice
    value alone only orders the processes of one session."""
    worker = worker_factory(None)
    assert worker.proc is not None
    assert wait_until(lambda: reads_lanes(worker.proc.pid), 30), worker.log()
    [lane] = reads_lanes(worker.proc.pid)
    assert os.getpriority(os.PRIO_PROCESS, lane) == -5
    assert os.getpriority(os.PRIO_PROCESS, worker.proc.pid) == 0
    assert os.getsid(lane) == lane and os.getsid(lane) != os.getsid(worker.proc.pid)
    enabled = Path("/proc/sys/kernel/sched_autogroup_enabled")
    if enabled.exists() and enabled.read_text().strip() == "1":  # Debian's default, and this machine's
        autogroup = Path(f"/proc/{lane}/autogroup").read_text()
        assert autogroup.split()[-1] == "-5", autogroup


def test_a_read_is_held_only_by_the_reads_lane(worker_factory, client, busybox_image) -> None:
    """A held read keeps a thread of the reads lane; sent to the lifecycle queue instead (a signed
    client may publish anywhere) it would keep a pool process from every tenant's launches: there it
    is answered at once."""
    import time

    from corral.celeryconf import task_name
    from corral.contract.models import ProcessIoFrame, ProcessIoRequest, dump

    worker = worker_factory(None, "--concurrency", "1")
    quiet = client.submit(JobSpec(image=busybox_image, argv=["sleep", "60"], memory_mb=64), host=worker.host_id)
    client.wait(quiet)
    request = ProcessIoRequest(process_ref=quiet.process_ref, stream=ProcessIoStream.stdout, wait_ms=1500)

    began = time.monotonic()
    frame = client.call(Operation.stream_io, request, worker.host_id, ProcessIoFrame)  # its reads lane: held
    assert frame.byte_count == 0 and time.monotonic() - began >= 1.4

    lifecycle = [
        client.app.send_task(
            task_name(Operation.stream_io),
            args=[dump(request)],
            kwargs=client._kwargs(worker.host_id),
            queue=queue_for_host(worker.host_id),
        )
        for _ in range(4)
    ]
    began = time.monotonic()
    for result in lifecycle:
        assert result.get(timeout=30)["byte_count"] == 0
    assert time.monotonic() - began < 1.4 * 2, "held in the lifecycle pool"
    client.cleanup(quiet)
