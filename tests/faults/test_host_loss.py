"""Host loss and worker shutdown: a stopped host's tickets wait and are reclaimed when it returns;
``corral hosts`` shows it down once its heartbeat expires; a soft shutdown requeues the running
task at once (no visibility-timeout wait)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.client.client import Client
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.harness import count_labeled, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 90}))
    yield c
    c.close()


def test_a_stopped_hosts_ticket_waits_and_is_reclaimed_when_the_host_returns(
    worker_factory, client, docker_client, busybox_image
) -> None:
    host_a = worker_factory(None, "--no-fleet")  # owns the sandbox
    worker_factory(None, "--beat")  # another host runs the sweeper on the fleet queue
    handle = client.submit(
        JobSpec(image=busybox_image, argv=["sleep", "120"], memory_mb=64, allow_detach=True), host=host_a.host_id
    )
    client.wait(handle)
    ticket = client.detach(handle, ttl_ms=1_000)
    host_a.stop()
    status = {h.host_id: h.up for h in client.hosts()}
    assert wait_until(lambda: {h.host_id: h.up for h in client.hosts()}[host_a.host_id] is False, 15), status
    # The sweeper sends the reclaim to A's queue; nobody serves it, so the sandbox waits.
    assert wait_until(lambda: client.services.store.ticket(ticket.ticket_ref).get("state") == "reclaiming", 15)
    time.sleep(2)
    assert count_labeled(docker_client, host_a.host_id)["containers"] == 1
    worker_factory(host_a.host_id, "--no-fleet")  # the host comes back and serves its queue
    assert wait_until(lambda: client.services.store.ticket(ticket.ticket_ref).get("state") == "reclaimed", 30)
    assert count_labeled(docker_client, host_a.host_id)["containers"] == 0


def test_soft_shutdown_requeues_the_running_task_at_once(
    worker_factory, client, docker_client, busybox_image, tmp_path: Path
) -> None:
    faults = tmp_path / "faults"
    faults.mkdir()
    stalling = {
        "CORRAL_TESTING__FAULTS": "start_process:before_adapter!sleep=30",
        "CORRAL_TESTING__FAULT_DIR": str(faults),
        "REMAP_SIGTERM": "SIGQUIT",
        "CORRAL_CELERY__SOFT_SHUTDOWN_TIMEOUT_S": "1",
    }
    first = worker_factory(None, env=stalling)
    handle = client.submit(JobSpec(image=busybox_image, argv=["sleep", "60"], memory_mb=64), host=first.host_id)
    assert wait_until(lambda: (faults / "start_process__before_adapter").exists(), 60)
    assert first.proc is not None
    os.kill(first.proc.pid, signal.SIGTERM)  # systemd KillMode=mixed: main process only; REMAP_SIGTERM -> soft
    first.proc.wait(30)
    worker_factory(first.host_id)  # the visibility timeout is an hour: only a requeue can finish in time
    started = time.monotonic()
    client.wait(handle, timeout=60)
    assert time.monotonic() - started < 60
    containers = docker_client.containers.list(all=True, filters={"label": f"corral.host={first.host_id}"})
    assert [c.status for c in containers] == ["running"]
    client.cleanup(handle)
