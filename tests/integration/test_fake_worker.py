"""A worker with ``host.runtime = "fake"`` serves default jobs, as documented: a real Celery worker (its
prefork pool and its reads lane, each building its own FakeRuntime over one state file), real Redis,
and ``corral run`` as a user runs it. No Docker involved."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.client.client import Client
from corral.contract.models import IsolationCapabilityReport
from corral.contract.operations import Operation
from corral.contract.vocabulary import IsolationClass, ProcessIoStream
from corral.fleet.job import JobSpec
from corral.runtimes.fake import FAKE_NOTICE, FakeRuntime
from corral.settings import Settings
from tests.conftest import TEST_HOST_IDENTITY, TEST_IMAGE, suite_fleet
from tests.harness import REPO, WorkerProc

pytestmark = [pytest.mark.redis, pytest.mark.worker]


@pytest.fixture
def fake_worker(corral_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProc]:
    host = f"fk-{uuid.uuid4().hex[:8]}"
    env = {**corral_env, **suite_fleet().role_env("worker", TEST_HOST_IDENTITY), "CORRAL_HOST__RUNTIME": "fake"}
    worker = WorkerProc(host, env, tmp_path / f"worker-{host}.log")
    worker.start(env["CORRAL_REDIS__URL"])
    yield worker
    worker.stop()


def corral(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], env=env, cwd=REPO, capture_output=True, timeout=90, check=False
    )


def test_corral_run_of_a_default_job_on_a_fake_worker(fake_worker: WorkerProc, corral_env: dict[str, str]) -> None:
    done = corral(corral_env, "run", "--json", "--host", fake_worker.host_id, TEST_IMAGE, "--", "echo", "hi", "there")
    assert done.returncode == 0, (done.stderr, fake_worker.log())
    outcome = json.loads(done.stdout)
    assert base64.b64decode(outcome["stdout_b64"]) == b"hi there\n"
    assert outcome["exit_code"] == 0
    assert outcome["cleanup"] == "completed"

    failed = corral(corral_env, "run", "--host", fake_worker.host_id, TEST_IMAGE, "--", "false")
    assert failed.returncode == 1, (failed.stderr, fake_worker.log())


def test_a_fake_worker_says_it_is_a_fake_and_is_placed_for_default_jobs(
    fake_worker: WorkerProc, corral_env: dict[str, str]
) -> None:
    client = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    try:
        report = client.call(Operation.capability_report, None, fake_worker.host_id, IsolationCapabilityReport)
        assert report.adapter_kind == FakeRuntime("any").capability_report().adapter_kind  # a fake, said so
        assert report.supported_classes == [IsolationClass.container]
        assert FAKE_NOTICE in report.unsupported_requirements
        # Placement (no host named) picks the fake host for a default job: it is the only live host.
        handle = client.submit(JobSpec(image=TEST_IMAGE, argv=["echo", "placed"]))
        assert handle.host == fake_worker.host_id
        client.wait(handle, timeout=30)
        assert client.stats(handle).exit_code == 0  # answered by the reads lane, another process
        frames = list(client.frames(handle, ProcessIoStream.stdout))
        assert b"".join(base64.b64decode(f.content_b64 or "") for f in frames) == b"placed\n"
        assert client.cleanup(handle).status == "completed"
    finally:
        client.close()
