"""corral.host.coordinator after teardown: a resubmitted chain of a cleaned-up session is refused (not
replayed), and cleanup changes the session's state only by compare-and-set (``Store.transition``).

FakeRuntime (wrapped to count adapter calls) + a real Redis, as in test_coordinator.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from corral.contract.errors import Conflict, InvalidRequest, InvalidStateTransition
from corral.contract.models import CleanupRequest, CleanupResult, ProcessStatsRequest, SessionState
from corral.contract.vocabulary import CleanupStatus
from corral.state import store as keys
from tests.unit.helpers import CHAIN_OPS, Rig, job, make_rig, request_of, started

pytestmark = pytest.mark.redis


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url) as r:
        yield r


def _cleanup(rig: Rig, env_id_job: object, plan: str = "plan-1") -> CleanupResult:
    return rig.coordinator.cleanup(CleanupRequest(environment=env_id_job.environment(), cleanup_plan_ref=plan))  # type: ignore[attr-defined]


# -- resubmitting after cleanup ---------------------------------------------------------------------


@pytest.mark.parametrize("op", CHAIN_OPS)
def test_a_chain_step_resubmitted_after_cleanup_is_a_conflict_not_a_replay(rig: Rig, op: str) -> None:
    j = job()
    started(rig.run_chain(j))
    assert _cleanup(rig, j).status == "completed"
    calls = dict(rig.runtime.calls)
    with pytest.raises(Conflict) as info:
        getattr(rig.coordinator, op)(request_of(j, op))
    assert info.value.context["state"] == SessionState.cleaned
    assert info.value.context["environment_id"] == j.environment_id
    assert dict(rig.runtime.calls) == calls  # no adapter call, no effect
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned
    assert ("replay", op) not in rig.kinds(j.environment_id)


def test_resubmitting_a_cleaned_job_never_reports_the_gone_process_as_running(rig: Rig) -> None:
    j = job()
    first = started(rig.run_chain(j))
    assert first.process_status is not None and first.process_status.state == "running"
    _cleanup(rig, j)
    # The whole chain again, as a scheduler resubmitting the same job would send it: the first step
    # already refuses, so nothing downstream can answer "running".
    with pytest.raises(Conflict):
        rig.run_chain(j)
    with pytest.raises(InvalidStateTransition):  # and nothing pretends the process is there
        rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=first.process_ref))


def test_a_recorded_failure_is_still_replayed_after_cleanup(rig: Rig) -> None:
    # Only a success would claim something exists; the recorded failure stays the honest answer.
    j = job()
    rig.run_chain(j, upto="prepare_environment")
    rig.runtime.fail_next["start_process"] = InvalidRequest("bad argv")
    with pytest.raises(InvalidRequest):
        rig.coordinator.start_process(request_of(j, "start_process"))
    _cleanup(rig, j)
    with pytest.raises(InvalidRequest):
        rig.coordinator.start_process(request_of(j, "start_process"))
    assert rig.runtime.calls["start_process"] == 1


def test_cleanup_replay_after_cleanup_is_still_answered(rig: Rig) -> None:
    j = job()
    rig.run_chain(j)
    first = _cleanup(rig, j)
    assert _cleanup(rig, j) == first
    assert rig.runtime.calls["cleanup"] == 1


# -- cleanup changes state by compare-and-set ---------------------------------------------------------


def test_a_second_cleanup_never_moves_a_cleaned_session_back_to_live(rig: Rig) -> None:
    j = job()
    rig.run_chain(j)
    assert _cleanup(rig, j, "plan-1").status == "completed"
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned
    seen: list[tuple[str, int]] = []
    original = object.__getattribute__(rig.runtime, "cleanup")

    def observing(request: CleanupRequest) -> CleanupResult:
        # While the second cleanup (another plan, say the reconciler's) is in the adapter.
        seen.append((rig.store.session(j.environment_id)["state"], rig.store.live_sessions(rig.coordinator.host_id)))
        return original(request)

    rig.runtime.cleanup = observing  # type: ignore[method-assign]
    assert _cleanup(rig, j, "plan-2").status == "completed"
    assert seen == [(SessionState.cleaned, 0)]  # before the fix: ("cleaning", 1), a live sandbox again
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned


def test_concurrent_cleanups_end_cleaned_and_the_adapter_ran_for_both(rig: Rig) -> None:
    j = job()
    rig.run_chain(j)
    original = object.__getattribute__(rig.runtime, "cleanup")
    both_in = threading.Barrier(2, timeout=10)

    def meeting(request: CleanupRequest) -> CleanupResult:
        both_in.wait()  # both cleanups have begun (cleaning) before either finishes
        return original(request)

    rig.runtime.cleanup = meeting  # type: ignore[method-assign]
    results: list[CleanupResult] = []
    threads = [threading.Thread(target=lambda p=p: results.append(_cleanup(rig, j, p))) for p in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(r.status for r in results) == ["completed", "completed"]
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned


def test_a_cleanup_whose_session_record_vanished_does_not_recreate_it(rig: Rig) -> None:
    # The record is read, then (TTL backstop, an operator's FLUSH of one key) it is gone before the
    # cleanup's state change: a direct write would leave a stub record with a state and nothing else.
    j = job()
    rig.run_chain(j)
    original_append = rig.journal.append

    def append(environment_id: str, kind: str, fields: dict[str, str]) -> str:
        if kind == "intent" and fields.get("op") == "cleanup":
            rig.client.delete(keys.session_key(environment_id))
        return original_append(environment_id, kind, fields)

    rig.journal.append = append  # type: ignore[method-assign]
    assert _cleanup(rig, j).status == "completed"
    assert rig.store.session(j.environment_id) == {}
    assert rig.runtime.calls["cleanup"] == 1  # the removal itself still ran


def test_a_failed_cleanup_of_a_cleaned_session_with_leftovers_is_repair_needed(rig: Rig) -> None:
    j = job()
    rig.run_chain(j)
    _cleanup(rig, j, "plan-1")
    original = object.__getattribute__(rig.runtime, "cleanup")

    def stuck(request: CleanupRequest) -> CleanupResult:
        return original(request).model_copy(update={"status": CleanupStatus.repair_needed, "redacted_summary": "stuck"})

    rig.runtime.cleanup = stuck  # type: ignore[method-assign]
    assert _cleanup(rig, j, "plan-2").status == "repair_needed"
    assert rig.store.session(j.environment_id)["state"] == SessionState.repair_needed
