"""Celery-level behaviour of corral's tasks, on pytest-celery's non-container worker.

pytest-celery's plugin serves ``celery.contrib.pytest`` and its embedded worker
(``celery.contrib.testing.worker.start_worker``, behind the pre-1.0 ``celery_worker`` fixture; 1.x
names its container worker so): a real Celery ``WorkController`` (solo pool, in a thread of this
process), here for corral's own app (``workers.app.create_app``: signed messages, the guard
consumer, acks late, the host heartbeat) consuming its host queue (and the fleet queue) of the
suite's Redis, with this machine's Docker. Its container mode (broker and worker containers from
local images) is ``tests/integration/test_celery_containers.py``; here the worker is in-process so
a test can reach into it (Celery's signals, a runtime that fails once) and kill another worker
process of the host.

What is exercised through real Celery components: routing to a host queue (nothing runs on another
host's worker), a job's launch running the chain's steps in contract order, a retry of a retryable
error (a new message with a countdown, the finished steps replayed, then success), and redelivery
of an unacked task of a worker killed mid-task (SIGKILL), run by the next worker of that host after
the visibility timeout.

This process signs as the suite's host component (``corral-host-test``): kombu's serializer
registry is per process, so the embedded worker and the test's client share one signer; the client
states the suite's client identity as the caller (a component's stated caller is kept).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.signals import task_prerun, task_retry

from corral.celeryconf import FLEET_QUEUE, queue_for_host
from corral.client.client import Client
from corral.contract.errors import IsolationFailure
from corral.contract.operations import CHAIN
from corral.fleet.job import JobSpec
from corral.host import services
from corral.settings import load_settings
from tasks.launch import LAUNCH
from tests.conftest import TEST_CLIENT, TEST_HOST_IDENTITY, TEST_IMAGE, suite_fleet
from tests.harness import kill_shims, remove_labeled, unpin_all, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.docker, pytest.mark.worker]

FAST_REDELIVERY = {"CORRAL_CELERY__VISIBILITY_TIMEOUT_S": "5", "CORRAL_CELERY__RESTORE_INTERVAL_S": "1"}


@pytest.fixture
def host() -> str:
    return f"pc-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def worker_settings(
    corral_env: dict[str, str], host: str, monkeypatch: pytest.MonkeyPatch, docker_client: Any, busybox_image: str
) -> Iterator[dict[str, str]]:
    """This process as a worker of ``host`` (this machine's Docker, no metrics port), with the
    visibility timeout every worker of the redelivery test shares; afterwards nothing of it is left."""
    env = {
        **corral_env,
        **suite_fleet().role_env("worker", TEST_HOST_IDENTITY),
        "CORRAL_HOST__ID": host,
        "CORRAL_METRICS__PORT": "0",
        **FAST_REDELIVERY,
    }
    for key in [k for k in __import__("os").environ if k.startswith("CORRAL_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    load_settings.cache_clear()
    services._coordinators.clear()
    yield env
    load_settings.cache_clear()
    services._coordinators.clear()
    kill_shims(env["CORRAL_HOST__STATE_DIR"])
    remove_labeled(docker_client, host)
    unpin_all(env["CORRAL_HOST__STATE_DIR"])


# -- the embedded worker, given corral's app and one host queue ------------------------------------


@pytest.fixture
def corral_app(worker_settings: dict[str, str]) -> Celery:
    from workers.app import create_app

    return create_app()


@pytest.fixture
def worker_parameters(host: str) -> dict[str, Any]:
    # No ping check: its task is unsigned JSON sent to the default queue, which corral workers refuse.
    return {"queues": [queue_for_host(host), FLEET_QUEUE], "hostname": f"corral@{host}", "perform_ping_check": False}


@pytest.fixture
def host_worker(corral_app: Celery, worker_parameters: dict[str, Any]) -> Iterator[Any]:
    """The plugin's embedded worker (what its pre-1.0 ``celery_worker`` fixture starts) for ``host``."""
    with start_worker(corral_app, pool="solo", **worker_parameters) as worker:
        yield worker


@pytest.fixture
def ran() -> Iterator[list[tuple[str, str, int]]]:
    """(task name, queue it was delivered from, retries) of every task the embedded worker starts."""
    seen: list[tuple[str, str, int]] = []
    lock = threading.Lock()

    def record(sender: Any = None, task: Any = None, **_: Any) -> None:
        info = task.request.delivery_info or {}
        with lock:
            seen.append((task.name, str(info.get("routing_key")), int(task.request.retries or 0)))

    task_prerun.connect(record, weak=False, dispatch_uid="celery-level-ran")
    yield seen
    task_prerun.disconnect(dispatch_uid="celery-level-ran")


@pytest.fixture
def client(worker_settings: dict[str, str]) -> Iterator[Client]:
    c = Client()
    # Signed as the host component (one signer per process), acting for the suite's client: a
    # component's stated caller is kept, as for placement and beat (a client's would be re-stamped).
    c.identity = TEST_CLIENT
    yield c
    c.close()


def launches(ran: list[tuple[str, str, int]]) -> list[tuple[str, int]]:
    """(queue, retries) of each ``corral.launch`` delivery the embedded worker started."""
    return [(queue, retries) for name, queue, retries in ran if name == LAUNCH]


def steps_run(client: Client, environment_id: str) -> list[str]:
    """The chain steps the host ran for a job (each a result record of its own in the journal), in order."""
    return [r.fields["op"] for r in client.journal(environment_id) if r.kind == "result" and r.fields["op"] in CHAIN]


def spec() -> JobSpec:
    return JobSpec(image=TEST_IMAGE, argv=["true"], memory_mb=64)


# -- the tests --------------------------------------------------------------------------------------


def test_a_job_chain_runs_in_order_on_its_host_queue_only(
    host_worker: Any, client: Client, host: str, redis_url: str, ran: list[tuple[str, str, int]]
) -> None:
    handle = client.submit(spec(), host=host)
    result = client.wait(handle, timeout=60)
    assert result.process_ref == handle.process_ref
    assert launches(ran) == [(queue_for_host(host), 0)]  # one message, from this host's queue
    assert steps_run(client, handle.environment_id) == list(CHAIN)  # each step once, in contract order

    # Routing: a task addressed to another host waits in that host's queue; this worker never takes it.
    other = f"pc-{uuid.uuid4().hex[:8]}"
    before = len(ran)
    client.send("collect_stats", None, other, payload={"process_ref": "nope"})
    admin = redis.Redis.from_url(f"{redis_url}/0")
    # (a read: that host's reads lane, corral.celeryconf.lane_of)
    assert wait_until(lambda: admin.llen(queue_for_host(other, "reads")) == 1, 10)
    assert admin.llen(FLEET_QUEUE) == 0
    assert len(ran) == before
    admin.delete(queue_for_host(other, "reads"))


def test_a_retryable_error_is_retried_by_celery_and_the_chain_completes(
    host_worker: Any, client: Client, host: str, ran: list[tuple[str, str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    retried: list[str] = []
    runtime = services.coordinator().runtime  # the embedded worker's: same process
    real = runtime.prepare_rootfs
    calls: list[str] = []

    def blip_once(request: Any) -> Any:
        calls.append(request.environment.environment_id)
        if len(calls) == 1:
            raise IsolationFailure("the backend blipped")  # a Retryable error
        return real(request)

    monkeypatch.setattr(runtime, "prepare_rootfs", blip_once)
    task_retry.connect(lambda request=None, **_: retried.append(request.task), weak=False, dispatch_uid="cl-retry")
    try:
        handle = client.submit(spec(), host=host)
        client.wait(handle, timeout=60)
    finally:
        task_retry.disconnect(dispatch_uid="cl-retry")
    assert retried == [LAUNCH]
    assert [retries for _, retries in launches(ran)] == [0, 1]  # the failed delivery, then Celery's retry
    # The retry replayed the two finished steps from their records and ran the rest: the rootfs twice
    # (it failed once), every other step once.
    assert steps_run(client, handle.environment_id) == [*CHAIN[:3], *CHAIN[2:]]
    replayed = [r.fields["op"] for r in client.journal(handle.environment_id) if r.kind == "replay"]
    assert replayed == list(CHAIN[:2])
    assert calls == [handle.environment_id] * 2


def test_an_unacked_task_of_a_killed_worker_is_redelivered_to_the_next_worker_of_its_host(
    worker_factory: Any,
    worker_settings: dict[str, str],
    corral_app: Celery,
    worker_parameters: dict[str, Any],
    client: Client,
    host: str,
    tmp_path: Path,
    ran: list[tuple[str, str, int]],
) -> None:
    # A worker process of this host that SIGKILLs itself (pool and parent) inside prepare_session,
    # before acking: the message stays in Redis' unacked set.
    faults = tmp_path / "faults"
    faults.mkdir()
    env = {
        "CORRAL_METRICS__PORT": "0",
        "CORRAL_TESTING__FAULTS": "prepare_session:before_intent!worker",
        "CORRAL_TESTING__FAULT_DIR": str(faults),
        **FAST_REDELIVERY,
    }
    doomed = worker_factory(host, env=env)
    handle = client.submit(spec(), host=host)
    assert doomed.proc is not None
    assert wait_until(lambda: doomed.proc.poll() is not None, 30), doomed.log()
    assert (faults / "prepare_session__before_intent").exists()
    admin = redis.Redis.from_url(f"{worker_settings['CORRAL_REDIS__URL']}/0")
    assert admin.hlen("unacked") == 1

    # pytest-celery's worker for the same host restores it after the visibility timeout and runs it.
    with start_worker(corral_app, pool="solo", **worker_parameters):
        client.wait(handle, timeout=60)
    assert launches(ran) == [(queue_for_host(host), 0)]
    assert steps_run(client, handle.environment_id) == list(CHAIN)
    assert admin.hlen("unacked") == 0
