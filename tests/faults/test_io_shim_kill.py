"""The I/O shim SIGKILLed mid-stream under a real worker: the sandbox runs on, the spool stays
byte-exact up to the kill, the worker's heartbeat (``Reconciler.record_exits`` ->
``DockerRuntime.supervise_io``) starts a supervisor that still enforces the timeout with nobody
polling, and ``corral logs`` prints what was captured and says what was not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.client.client import Client
from corral.contract.refs import slug
from corral.fleet.job import JobSpec
from corral.io import files
from corral.io.spool import SpoolLayout
from corral.runtimes.docker.resources import shim_pid
from corral.settings import Settings
from tests.harness import REPO, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]

TICKER = "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.02; done"


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 90}))
    yield c
    c.close()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_io_shim_killed_mid_stream(worker_factory, client, corral_env, docker_client, busybox_image) -> None:
    """I/O shim SIGKILLed mid-stream: sandbox runs on, spool exact, timeout enforced, logs tell the loss"""
    worker = worker_factory()
    handle = client.submit(
        JobSpec(image=busybox_image, argv=["sh", "-c", TICKER], memory_mb=64, timeout_ms=8000), host=worker.host_id
    )
    client.wait(handle)
    started = time.monotonic()
    layout = SpoolLayout(Path(corral_env["CORRAL_HOST__STATE_DIR"]) / "spool" / slug(handle.environment_id))
    stdout = layout.stream("stdout")
    assert wait_until(lambda: stdout.exists() and stdout.read_bytes().count(b"\n") >= 30, 15, step=0.02)
    pid = shim_pid(layout)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not _alive(pid), 5, step=0.01)
    at_kill = stdout.read_bytes()
    assert at_kill == b"".join(b"line-%d\n" % i for i in range(1, at_kill.count(b"\n") + 1))

    label = f"corral.session={handle.environment_id}"
    (container,) = docker_client.containers.list(all=True, filters={"label": label})
    assert container.status == "running"

    # Nobody asks anything: the worker's heartbeat alone must bring the timeout about.
    assert wait_until(lambda: layout.exit.exists(), 30, step=0.2)
    record = files.read_json(layout.exit)
    assert (record["reason"], record["output_lost"]) == ("timeout", True)
    assert time.monotonic() - started < 8 + 10  # the deadline, plus a heartbeat and the grace at most
    container.reload()
    assert container.status == "exited"
    assert stdout.read_bytes() == at_kill

    env = {**corral_env, "PYTHONPATH": str(REPO)}
    logs = subprocess.run(
        [sys.executable, "-m", "corral", "logs", handle.environment_id, "--stream", "stdout"],
        env=env,
        cwd=REPO,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == at_kill
    assert f"stdout after byte {len(at_kill)} was not captured".encode() in logs.stderr
    client.cleanup(handle)
