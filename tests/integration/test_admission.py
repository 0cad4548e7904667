"""Admission with real parts: several host workers (distinct host ids) on this machine's Docker, real
Redis, signed messages, and clients in threads submitting at the same time, like schedulers."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from corral.client.client import Client, JobHandle
from corral.contract.errors import AgentError, InvalidRequest, TimeoutFailure
from corral.fleet.admission import Admission
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.harness import count_labeled

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]


def new_client(corral_env: dict[str, str]) -> Client:
    return Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = new_client(corral_env)
    yield c
    c.close()


def job(image: str, *argv: str, **kw: Any) -> JobSpec:
    kw.setdefault("cpus", 0.25)
    return JobSpec(image=image, argv=list(argv), memory_mb=64, timeout_ms=120_000, **kw)


def test_concurrent_submissions_spread_and_never_exceed_a_hosts_capacity(
    worker_factory, client, corral_env, docker_client, busybox_image
) -> None:
    workers = [worker_factory(f"adm-{i}", "--slots", "2", "--concurrency", "2") for i in range(3)]
    handles: list[JobHandle] = []
    queued: list[str] = []
    errors: list[AgentError] = []
    lock = threading.Lock()

    def submit() -> None:
        c = new_client(corral_env)
        try:
            handle = c.submit(job(busybox_image, "sleep", "60"), queue_timeout_s=4, on_queued=queued.append)
            with lock:
                handles.append(handle)
        except AgentError as exc:
            with lock:
                errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        # 3 hosts x 2 slots: six placed, two per host; the other two waited with a reason, then gave up.
        assert Counter(h.host for h in handles) == {w.host_id: 2 for w in workers}
        assert len(errors) == 2 and all(isinstance(e, TimeoutFailure) for e in errors), errors
        assert "3 hosts full" in queued and all("3 hosts full" in str(e) for e in errors)
        for handle in handles:
            client.wait(handle)
        for w in workers:
            capacity, used = client.usage(w.host_id)
            assert capacity is not None and used.slots == 2 <= capacity.slots
            assert count_labeled(docker_client, w.host_id)["containers"] == 2
    finally:
        for handle in handles:
            client.cleanup_quietly(handle)
    # Cleanup gave the capacity back: the next job is placed at once.
    assert all(client.usage(w.host_id)[1].slots == 0 for w in workers)
    outcome = client.run(job(busybox_image, "true"))
    assert outcome.exit_code == 0


def test_a_dead_clients_reservation_returns(worker_factory, client, busybox_image) -> None:
    worker = worker_factory("adm-lease", "--slots", "1", env={"CORRAL_HOST__ADMISSION_LEASE_S": "2"})
    dead = job(busybox_image, "true")
    assert client.place(dead) == worker.host_id  # reserved; its chain is never sent (the client "died")
    assert client.usage(worker.host_id)[1].slots == 1
    queued: list[str] = []
    # The host is full until the dead client's lease runs out; then the next job gets the slot and runs.
    outcome = client.run(job(busybox_image, "echo", "after"), on_output=lambda s, d: None)
    assert outcome.exit_code == 0 and outcome.host == worker.host_id
    admission = Admission(client.services.store.r)
    assert admission.allocation_host(dead.environment_id) is None
    assert client.usage(worker.host_id)[1].slots == 0  # the job's own allocation went with its cleanup
    assert queued == []


def test_a_job_larger_than_every_host_is_refused_not_queued_forever(worker_factory, client, busybox_image) -> None:
    worker_factory("adm-small", env={"CORRAL_HOST__CAPACITY_CPUS": "1"})
    with pytest.raises(InvalidRequest, match="can never be placed: 1 host too small for 2 CPUs"):
        client.submit(job(busybox_image, "true", cpus=2.0))
