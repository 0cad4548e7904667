"""A process's end is kept in its session once (``Coordinator.collect_stats`` → ``Store.record_exit``),
also for a detached sandbox, which ``corral ps`` then shows as ``exited`` with its reason
(``lifecycle.shown_state``); the exit watch (``Reconciler.record_exits``) finds the ones nobody asked
about. FakeRuntime + a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from corral.contract.lifecycle import shown_state
from corral.contract.models import DetachTransferRequest, ProcessStatsRequest, SessionState, TerminationReason
from corral.contract.refs import process_ref_for
from corral.host import metrics
from corral.host.reconciler import Reconciler, exit_unrecorded
from tests.unit.helpers import HOST, Rig, job, make_rig, started

pytestmark = pytest.mark.redis


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url) as r:
        yield r


def exits(reason: str) -> float:
    registry = CollectorRegistry()
    registry.register(metrics.events().exits)
    try:
        return registry.get_sample_value("corral_process_exits_total", {"reason": reason}) or 0.0
    finally:
        registry.unregister(metrics.events().exits)


def _detached_then_timed_out(rig: Rig) -> str:
    j = job(allow_detach=True)
    started(rig.run_chain(j))
    rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=60_000))
    process = rig.runtime.processes[process_ref_for(j.environment_id)]
    process.exit_code, process.reason = 137, TerminationReason.timeout  # the shim's deadline kill
    return j.environment_id


def test_a_detached_sandbox_whose_process_ended_shows_exited_with_its_reason(rig: Rig) -> None:
    env_id = _detached_then_timed_out(rig)
    assert shown_state(rig.store.session(env_id)) == "detached"  # nobody knows yet
    before = exits("timeout")

    rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=process_ref_for(env_id)))

    record = rig.store.session(env_id)
    assert record["state"] == SessionState.detached  # still under its ticket until reclaimed
    assert (record["exit_code"], record["reason"]) == ("137", "timeout")
    assert shown_state(record) == "exited"
    assert exits("timeout") == before + 1


def test_an_exit_is_recorded_and_counted_once(rig: Rig) -> None:
    env_id = _detached_then_timed_out(rig)
    before = exits("timeout")
    for _ in range(3):
        rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=process_ref_for(env_id)))
    first = rig.store.session(env_id)["exited_ms"]
    rig.clock.advance(5_000)
    rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=process_ref_for(env_id)))
    assert rig.store.session(env_id)["exited_ms"] == first
    assert exits("timeout") == before + 1


def test_a_running_session_still_moves_to_exited_with_code_and_reason(rig: Rig) -> None:
    j = job()
    started(rig.run_chain(j))
    rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=process_ref_for(j.environment_id)))
    record = rig.store.session(j.environment_id)
    assert (record["state"], record["exit_code"], record["reason"]) == ("exited", "0", "exit")


def test_record_exit_does_not_create_a_missing_session(rig: Rig) -> None:
    assert not rig.store.record_exit("job-gone", {"reason": "exit"}, 1)
    assert rig.store.session("job-gone") == {}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"host": HOST, "process_ref": "p", "state": "detached"}, True),
        ({"host": HOST, "process_ref": "p", "state": "running"}, True),
        ({"host": HOST, "process_ref": "p", "state": "detached", "exited_ms": "5"}, False),
        ({"host": "elsewhere", "process_ref": "p", "state": "detached"}, False),
        ({"host": HOST, "state": "prepared"}, False),
        ({"host": HOST, "process_ref": "p", "state": "cleaned"}, False),
        ({}, False),
    ],
)
def test_exit_unrecorded(record: dict[str, str], expected: bool) -> None:
    assert exit_unrecorded(HOST, record) is expected


class Inventoried:
    """The fake runtime plus what the Docker runtime's inventory reports (container status)."""

    def __init__(self, runtime: Any, statuses: dict[str, str]) -> None:
        self._runtime = runtime
        self.statuses = statuses

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    def list_labeled(self) -> dict[str, list[dict[str, str]]]:
        return {
            "containers": [
                {"corral.session": env_id, "status": status, "name": env_id} for env_id, status in self.statuses.items()
            ]
        }


def test_the_exit_watch_records_only_stopped_processes_without_an_exit(rig: Rig) -> None:
    ended = _detached_then_timed_out(rig)
    other = job(allow_detach=True)
    started(rig.run_chain(other))
    rig.coordinator.detach(DetachTransferRequest(environment=other.environment(), ttl_ms=60_000))
    rig.runtime.processes[process_ref_for(other.environment_id)].exit_code = None  # still running
    inventory = Inventoried(rig.runtime, {ended: "exited", other.environment_id: "running"})
    rig.coordinator.runtime = inventory  # type: ignore[assignment]

    assert Reconciler(rig.coordinator).record_exits() == 1
    assert shown_state(rig.store.session(ended)) == "exited"
    assert shown_state(rig.store.session(other.environment_id)) == "detached"
    assert Reconciler(rig.coordinator).record_exits() == 0  # already recorded: no second look
