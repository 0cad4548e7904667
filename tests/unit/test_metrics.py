"""corral.host.metrics: the host state read at scrape (sandboxes by state, cap, allocation, queue depth,
refused messages, I/O shims from /proc) and the event metrics. Real Redis, real processes; the
worker-level test (numbers moving while jobs run) is tests/integration/test_metrics.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry

from corral.contract.errors import PolicyDenial
from corral.contract.models import DetachTransferRequest, ProcessStatsRequest, TerminationReason
from corral.contract.refs import process_ref_for
from corral.host import metrics
from tests.unit.helpers import HOST, Rig, job, make_rig, started

pytestmark = pytest.mark.redis


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url) as r:
        yield r


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(f"{redis_url}/0", decode_responses=True)
    yield client
    client.close()


def scrape(rig: Rig, broker: redis.Redis, state_dir: Path, cap: int = 7) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(metrics.HostCollector(HOST, str(state_dir), rig.store, broker, lambda: cap))
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_sandboxes_by_state_cap_and_allocation(rig: Rig, broker: redis.Redis, tmp_path: Path) -> None:
    running = job(cpus=1.5, memory_mb=256)
    started(rig.run_chain(running))
    detached = job(allow_detach=True, cpus=0.5, memory_mb=64)
    started(rig.run_chain(detached))
    rig.coordinator.detach(DetachTransferRequest(environment=detached.environment(), ttl_ms=60_000))
    preparing = job()
    rig.run_chain(preparing, upto="resolve_image")

    registry = scrape(rig, broker, tmp_path)
    assert value(registry, "corral_sandboxes", state="running") == 1
    assert value(registry, "corral_sandboxes", state="detached") == 1
    assert value(registry, "corral_sandboxes", state="preparing") == 1
    assert value(registry, "corral_sandboxes", state="exited") == 0
    assert value(registry, "corral_sandboxes_live") == 3
    assert value(registry, "corral_sandboxes_max") == 7
    assert value(registry, "corral_allocated_cpus") == 1.5 + 0.5 + 1.0
    assert value(registry, "corral_allocated_memory_bytes") == (256 + 64 + 512) * 1024 * 1024
    assert value(registry, "corral_metrics_source_up", source="state_store") == 1

    # The detached one's process ends (its timeout): it moves to exited, still holding its slot.
    process = rig.runtime.processes[process_ref_for(detached.environment_id)]
    process.exit_code, process.reason = 137, TerminationReason.timeout
    rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=process_ref_for(detached.environment_id)))
    registry = scrape(rig, broker, tmp_path)
    assert value(registry, "corral_sandboxes", state="exited") == 1
    assert value(registry, "corral_sandboxes", state="detached") == 0
    assert value(registry, "corral_sandboxes_live") == 3


def test_queue_depth_counts_every_priority_list_of_this_hosts_queues(
    rig: Rig, broker: redis.Redis, tmp_path: Path
) -> None:
    broker.rpush(f"corral.host.{HOST}", "a", "b")
    broker.rpush(f"corral.host.{HOST}\x06\x163", "c")
    broker.rpush("corral.host.elsewhere", "x")
    broker.rpush("corral.fleet", "y")
    registry = scrape(rig, broker, tmp_path)
    assert value(registry, "corral_queue_depth", queue=f"corral.host.{HOST}") == 3
    assert value(registry, "corral_queue_depth", queue="corral.fleet") == 1
    assert value(registry, "corral_queue_depth", queue="corral.host.elsewhere") is None


def test_refused_messages_by_reason(rig: Rig, broker: redis.Redis, tmp_path: Path) -> None:
    rig.store.count_rejection(HOST, "bad_signature")
    rig.store.count_rejection(HOST, "bad_signature")
    registry = scrape(rig, broker, tmp_path)
    assert value(registry, "corral_messages_rejected_total", reason="bad_signature") == 2


def test_io_helpers_are_counted_from_proc_only_when_really_a_shim(
    rig: Rig, broker: redis.Redis, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    shim_dir, impostor_dir = spool / "sess-a", spool / "sess-b"
    shim_dir.mkdir(parents=True)
    impostor_dir.mkdir()
    sleeper = "import time; time.sleep(60)"
    shim = subprocess.Popen([sys.executable, "-c", sleeper, "corral.io.shim", "--spool", str(shim_dir)])
    other = subprocess.Popen([sys.executable, "-c", sleeper])  # a pid in a shim.pid, but not a shim
    try:
        (shim_dir / "shim.pid").write_text(str(shim.pid))
        (impostor_dir / "shim.pid").write_text(str(other.pid))
        registry = scrape(rig, broker, tmp_path)
        assert value(registry, "corral_io_helpers") == 1
        rss = value(registry, "corral_io_helpers_rss_bytes")
        assert rss is not None and 1024 * 1024 < rss < 200 * 1024 * 1024
    finally:
        for proc in (shim, other):
            proc.kill()
            proc.wait()
    assert value(scrape(rig, broker, tmp_path), "corral_io_helpers") == 0


def test_an_unreachable_broker_loses_its_numbers_not_the_scrape(rig: Rig, tmp_path: Path) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    registry = scrape(rig, dead, tmp_path)
    assert value(registry, "corral_metrics_source_up", source="broker") == 0
    assert value(registry, "corral_metrics_source_up", source="state_store") == 1
    assert value(registry, "corral_sandboxes_max") == 7


def test_operation_events_count_outcomes_latency_and_failures_by_kind_and_rule() -> None:
    registry = CollectorRegistry()
    events = metrics.events()
    for collector in (events.operations, events.duration, events.failures):
        registry.register(collector)
    try:
        ok_before = value(registry, "corral_operations_total", operation="probe", outcome="ok") or 0
        metrics.observe_operation("probe", 0.02, "ok")
        denial = PolicyDenial("no", context={"rule": "images.allowed"})
        metrics.observe_operation("probe", 0.3, "error", denial)
        assert value(registry, "corral_operations_total", operation="probe", outcome="ok") == ok_before + 1
        assert value(registry, "corral_operation_duration_seconds_bucket", operation="probe", le="0.025") is not None
        failed = value(
            registry,
            "corral_operation_failures_total",
            operation="probe",
            kind="policy_denial",
            retry="not_retryable",
            rule="images.allowed",
        )
        assert failed is not None and failed >= 1
    finally:
        for collector in (events.operations, events.duration, events.failures):
            registry.unregister(collector)


def test_admission_capacity_and_reservations(rig: Rig, broker: redis.Redis, tmp_path: Path) -> None:
    from corral.fleet.admission import Capacity

    admission = rig.coordinator.admission
    admission.publish_capacity(HOST, Capacity(slots=4, cpus_m=8000, mem_mb=2048), 60_000)
    started(rig.run_chain(job(cpus=1.5, memory_mb=256)))  # prepare_session confirms its allocation
    registry = CollectorRegistry()
    registry.register(metrics.HostCollector(HOST, str(tmp_path), rig.store, broker, lambda: 7, admission))
    assert value(registry, "corral_admission_capacity", resource="slots") == 4
    assert value(registry, "corral_admission_capacity", resource="cpus") == 8
    assert value(registry, "corral_admission_capacity", resource="memory_bytes") == 2048 * 1024 * 1024
    assert value(registry, "corral_admission_reserved", resource="slots") == 1
    assert value(registry, "corral_admission_reserved", resource="cpus") == 1.5
    assert value(registry, "corral_admission_reserved", resource="memory_bytes") == 256 * 1024 * 1024
