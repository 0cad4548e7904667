"""Admission with real parts: several host workers (distinct host ids) on this machine's Docker, real
Redis, signed messages, and clients in threads submitting at the same time, like schedulers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from corral.client.client import Client, JobHandle
from corral.contract.errors import AgentError, InvalidRequest, TimeoutFailure
from corral.fleet.admission import Admission, Demand, Placed, Queued
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


def test_a_chain_waiting_longer_than_the_lease_keeps_its_reservation(
    worker_factory, client, busybox_image, redis_url, tmp_path
) -> None:
    """Two reservations (lease 2 s) on a 2-slot host with one pool process; the first chain stalls 8 s in
    prepare_session before confirming, the second waits in the queue behind it. The host's heartbeat
    renews both leases while it has work: a third job is queued (the host is full), never placed on
    top. Once the host is idle, a reservation whose chain never came expires as before."""
    faults = tmp_path / "faults"
    faults.mkdir()
    env = {
        "CORRAL_HOST__ADMISSION_LEASE_S": "2",
        "CORRAL_TESTING__FAULTS": "prepare_session:before_intent!sleep=8",
        "CORRAL_TESTING__FAULT_DIR": str(faults),
    }
    worker = worker_factory("adm-slow", "--slots", "2", "--concurrency", "1", env=env)
    host = worker.host_id
    admin = redis.Redis.from_url(f"{redis_url}/3", decode_responses=True)
    admission = Admission(admin, lease_ms=2000)  # the fleet worker's side, driven from here
    demand = Demand.of(0.25, 64)
    jobs = [job(busybox_image, "true"), job(busybox_image, "true")]
    for j in jobs:
        assert admission.reserve(j.environment_id, demand, [host], int(time.time() * 1000)) == Placed(host)
    handles = [client.send_job(j, host) for j in jobs]
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], admission.used(host).slots)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        time.sleep(5)  # both leases would have run out 3 s ago
        assert (faults / "prepare_session__before_intent").exists(), worker.log()
        assert all(admission.leased(j.environment_id) for j in jobs)
        third = admission.reserve("third", demand, [host], int(time.time() * 1000))
        assert third == Queued("1 host full")
        for h in handles:
            client.wait(h, timeout=60)  # the chain ran: prepare_session confirmed, the process started
    finally:
        done.set()
        watcher.join()
    assert peak[0] == 2
    assert not any(admission.leased(j.environment_id) for j in jobs)  # confirmed by their sessions
    for h in handles:
        client.cleanup(h)
    assert admission.used(host).slots == 0
    # Idle host: a reservation whose chain never comes returns after its lease, as before.
    assert admission.reserve("dead", demand, [host], int(time.time() * 1000)) == Placed(host)
    time.sleep(4)
    admission.reserve("probe", demand, [host], int(time.time() * 1000))
    assert admission.allocation_host("dead") is None
    admin.close()
