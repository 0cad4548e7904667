"""corral.host.coordinator: the effect protocol (intent before effect, idempotency, replay, conflict, leases,
recovery markers), the session state machine as the coordinator enforces it, detach and reclaim.

FakeRuntime (wrapped to count every adapter call) + a real Redis; no Celery, no Docker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from corral.contract.errors import (
    AgentError,
    Conflict,
    InProgress,
    InvalidRequest,
    InvalidStateTransition,
    IsolationFailure,
    JournalFailure,
    NotFound,
    NotRetryable,
    PolicyDenial,
)
from corral.contract.models import (
    CleanupRequest,
    CleanupResult,
    DetachTransferRequest,
    ExecutionEnvironment,
    ImageResolveRequest,
    ProcessIoRequest,
    ProcessSignalRequest,
    ProcessStartRequest,
    ProcessStartResult,
    ProcessStatsRequest,
    ReclaimRequest,
    SessionPrepareRequest,
    SessionState,
    dump,
)
from corral.contract.refs import process_ref_for
from corral.contract.vocabulary import CleanupStatus, ProcessIoStream, ProcessSignal
from corral.contract.wire import to_wire
from corral.fleet.job import JobSpec, image_of
from corral.host.effects import digest_of
from corral.state import store as keys
from tests.unit.helpers import (
    CHAIN_OPS,
    HOST,
    OTHER_HOST,
    FlakyJournal,
    Rig,
    client_for,
    job,
    make_rig,
    other_process,
    prepare_env_request,
    request_of,
    start_key,
    start_request,
    started,
)
from tests.unit.policy_helpers import fixed, policy_with

pytestmark = pytest.mark.redis


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url) as r:
        yield r


def _started_rig(rig: Rig, **job_kwargs: object) -> tuple[JobSpec, ProcessStartResult]:
    j = job(**job_kwargs)  # type: ignore[arg-type]
    return j, started(rig.run_chain(j))


# -- the full chain ------------------------------------------------------------------------------


def test_chain_journals_intent_then_result_for_every_step_in_contract_order(rig: Rig) -> None:
    j = job()
    rig.run_chain(j)
    expected = [(kind, op) for op in CHAIN_OPS for kind in ("intent", "result")]
    assert rig.kinds(j.environment_id) == expected
    records = rig.records(j.environment_id)
    for intent, result in zip(records[0::2], records[1::2], strict=True):
        assert intent.fields["key"] == result.fields["key"]
        assert intent.fields["effect_id"] == result.fields["effect_id"]
        assert result.fields["status"] == "ok"
        assert intent.fields["host"] == HOST
    # record ids are strictly increasing (Redis stream order is the journal order)
    ids = [tuple(int(p) for p in r.record_id.split("-")) for r in records]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_chain_session_state_goes_preparing_prepared_running(rig: Rig) -> None:
    j = job()
    seen: list[tuple[str, str]] = []
    for op, request in j.requests(HOST):
        getattr(rig.coordinator, op)(request)
        seen.append((op, rig.store.session(j.environment_id)["state"]))
    assert seen == [
        ("prepare_session", "preparing"),
        ("resolve_image", "preparing"),
        ("prepare_rootfs", "preparing"),
        ("resolve_mounts", "preparing"),
        ("configure_network", "preparing"),
        ("prepare_secrets", "preparing"),
        ("prepare_environment", "prepared"),
        ("start_process", "running"),
    ]
    record = rig.store.session(j.environment_id)
    assert record["host"] == HOST
    assert record["process_ref"] == process_ref_for(j.environment_id)
    assert int(record["deadline_ms"]) == rig.clock.now_ms() + j.timeout_ms
    assert rig.store.environment_of_process(record["process_ref"]) == j.environment_id


def test_chain_step_results_are_stored_on_the_session(rig: Rig) -> None:
    j = job()
    results = rig.run_chain(j)
    for op in CHAIN_OPS[:-1]:
        assert rig.store.step_result(j.environment_id, op) == to_wire(results[op]), op
    assert rig.runtime.effects["prepare_session"] == 1
    assert rig.runtime.effects["create_container"] == 1
    assert rig.runtime.effects["start_process"] == 1


def test_prepare_environment_receives_the_recorded_earlier_results(rig: Rig) -> None:
    j = job()
    seen = []
    original = object.__getattribute__(rig.runtime, "prepare_environment")

    def spy(request):  # type: ignore[no-untyped-def]
        seen.append(request)
        return original(request)

    rig.runtime.prepare_environment = spy  # type: ignore[method-assign]
    results = rig.run_chain(j, upto="prepare_environment")
    (full,) = seen
    assert full.image == results["resolve_image"]
    assert full.rootfs == results["prepare_rootfs"]
    assert full.mounts == results["resolve_mounts"]
    assert full.network == results["configure_network"]
    assert full.secrets == results["prepare_secrets"]


def test_start_process_hands_the_adapter_an_effect_intent(rig: Rig) -> None:
    j = job()
    seen: list[ProcessStartRequest] = []
    original = object.__getattribute__(rig.runtime, "start_process")

    def spy(request: ProcessStartRequest) -> ProcessStartResult:
        seen.append(request)
        return original(request)

    rig.runtime.start_process = spy  # type: ignore[method-assign]
    rig.run_chain(j)
    (full,) = seen
    assert full.effect_intent is not None
    assert full.effect_intent.idempotency_key == f"idempotency.{j.process().process_id}"
    assert full.effect_intent.dedupe_key == start_key(j.environment_id, j.process().process_id)


# -- replay ----------------------------------------------------------------------------------------


def test_start_process_replay_does_not_start_twice(rig: Rig) -> None:
    j, first = _started_rig(rig)
    second = rig.coordinator.start_process(start_request(j))
    assert second == first
    assert rig.runtime.effects["start_process"] == 1
    assert rig.runtime.calls["start_process"] == 1
    last = rig.records(j.environment_id)[-1]
    assert (last.kind, last.fields["op"], last.fields["status"]) == ("replay", "start_process", "done")
    # the replay wrote no second intent
    assert rig.kinds(j.environment_id).count(("intent", "start_process")) == 1


def test_prepare_environment_replay_creates_one_container(rig: Rig) -> None:
    j = job()
    first = rig.run_chain(j, upto="prepare_environment")["prepare_environment"]
    second = rig.coordinator.prepare_environment(prepare_env_request(j))
    assert second == first
    assert rig.runtime.effects["create_container"] == 1
    assert rig.runtime.calls["prepare_environment"] == 1
    assert rig.kinds(j.environment_id)[-1] == ("replay", "prepare_environment")
    assert rig.store.session(j.environment_id)["state"] == SessionState.prepared


def test_prepare_session_replay_calls_the_adapter_once(rig: Rig) -> None:
    j = job()
    request = request_of(j, "prepare_session")
    first = rig.coordinator.prepare_session(request)
    second = rig.coordinator.prepare_session(request)
    assert first == second
    assert rig.runtime.calls["prepare_session"] == 1
    assert rig.kinds(j.environment_id) == [
        ("intent", "prepare_session"),
        ("result", "prepare_session"),
        ("replay", "prepare_session"),
    ]


def test_prepare_step_replay_calls_the_adapter_once(rig: Rig) -> None:
    j = job()
    rig.run_chain(j, upto="resolve_image")
    again = rig.coordinator.resolve_image(request_of(j, "resolve_image"))
    assert again.digest.startswith("sha256:")
    assert rig.runtime.calls["resolve_image"] == 1
    assert rig.kinds(j.environment_id)[-1] == ("replay", "resolve_image")


def test_prepare_step_replay_after_the_chain_moved_on_returns_the_recorded_result(rig: Rig) -> None:
    j = job()
    results = rig.run_chain(j)
    assert rig.coordinator.resolve_image(request_of(j, "resolve_image")) == results["resolve_image"]
    assert rig.coordinator.prepare_session(request_of(j, "prepare_session")) == results["prepare_session"]
    assert rig.runtime.calls["resolve_image"] == 1


def test_cleanup_replay_calls_the_adapter_once(rig: Rig) -> None:
    j, _ = _started_rig(rig)
    request = CleanupRequest(environment=j.environment(), cleanup_plan_ref="plan-1")
    first = rig.coordinator.cleanup(request)
    second = rig.coordinator.cleanup(request)
    assert first == second
    assert first.status == "completed"
    assert rig.runtime.calls["cleanup"] == 1
    assert rig.runtime.effects["remove_container"] == 1
    assert rig.kinds(j.environment_id)[-3:] == [("intent", "cleanup"), ("result", "cleanup"), ("replay", "cleanup")]
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned


def test_cleanup_without_a_session_is_journaled_and_completes(rig: Rig) -> None:
    env = ExecutionEnvironment(environment_id="env-never-prepared")
    result = rig.coordinator.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="plan-x"))
    assert result.status == "completed"
    assert rig.kinds(env.environment_id) == [("intent", "cleanup"), ("result", "cleanup")]
    assert rig.store.session(env.environment_id) == {}


def test_cleanup_repair_needed_sets_session_state_repair_needed(rig: Rig) -> None:
    j, _ = _started_rig(rig)
    original = object.__getattribute__(rig.runtime, "cleanup")

    def half_cleanup(request: CleanupRequest) -> CleanupResult:
        return original(request).model_copy(update={"status": CleanupStatus.repair_needed, "redacted_summary": "stuck"})

    rig.runtime.cleanup = half_cleanup  # type: ignore[method-assign]
    result = rig.coordinator.cleanup(CleanupRequest(environment=j.environment(), cleanup_plan_ref="plan-1"))
    assert result.status == "repair_needed"
    assert rig.store.session(j.environment_id)["state"] == SessionState.repair_needed
    last = rig.records(j.environment_id)[-1]
    assert last.kind == "result" and last.fields["status"] == "ok"
    assert "repair_needed" in last.fields["summary"]


def test_detach_replay_calls_the_adapter_once_and_keeps_the_deadline(redis_url: str) -> None:
    with make_rig(redis_url) as rig:
        j, _ = _started_rig(rig, allow_detach=True)
        request = DetachTransferRequest(environment=j.environment(), ttl_ms=60_000)
        first = rig.coordinator.detach(request)
        rig.clock.advance(5_000)
        second = rig.coordinator.detach(request)
        assert second == first
        assert rig.runtime.effects["detach"] == 1
        assert rig.runtime.calls["detach"] == 1
        assert rig.kinds(j.environment_id)[-1] == ("replay", "detach")
        assert int(rig.store.ticket(first.ticket_ref)["deadline_ms"]) == first.deadline_ms


def test_reclaim_replay_calls_the_adapter_once(redis_url: str) -> None:
    with make_rig(redis_url) as rig:
        j, _ = _started_rig(rig, allow_detach=True)
        ticket = rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=60_000))
        request = ReclaimRequest(ticket_ref=ticket.ticket_ref)
        first = rig.coordinator.reclaim(request)
        second = rig.coordinator.reclaim(request)
        assert first == second
        assert rig.runtime.effects["reclaim"] == 1
        assert rig.runtime.calls["reclaim"] == 1
        assert rig.kinds(j.environment_id)[-3:] == [("intent", "reclaim"), ("result", "reclaim"), ("replay", "reclaim")]


def test_signal_process_same_delivery_is_replayed_new_delivery_runs(rig: Rig) -> None:
    _, result = _started_rig(rig)
    rig.runtime.processes[result.process_ref].exit_code = None  # keep the fake process "running"
    request = ProcessSignalRequest(process_ref=result.process_ref, signal=ProcessSignal.terminate, grace_ms=5_000)
    a = rig.coordinator.signal_process(request, delivery_id="task-1")
    b = rig.coordinator.signal_process(request, delivery_id="task-1")
    assert a == b and a.delivered
    assert rig.runtime.effects["signal_terminate"] == 1
    rig.coordinator.signal_process(request, delivery_id="task-2")
    assert rig.runtime.effects["signal_terminate"] == 2


def test_stdin_write_same_delivery_writes_once(rig: Rig) -> None:
    _, result = _started_rig(rig, stdin=True)
    request = ProcessIoRequest(process_ref=result.process_ref, stream=ProcessIoStream.stdin, data_b64="aGk=")
    a = rig.coordinator.stream_io(request, delivery_id="task-1")
    b = rig.coordinator.stream_io(request, delivery_id="task-1")
    assert a == b
    assert rig.runtime.effects["stdin_write"] == 1
    assert bytes(rig.runtime.processes[result.process_ref].stdin) == b"hi"


# -- conflict --------------------------------------------------------------------------------------


def test_prepare_session_reused_environment_id_with_other_spec_conflicts(rig: Rig) -> None:
    j = job()
    rig.coordinator.prepare_session(request_of(j, "prepare_session"))
    other = job(environment_id=j.environment_id, memory_mb=1024)
    with pytest.raises(Conflict):
        rig.coordinator.prepare_session(request_of(other, "prepare_session"))
    assert rig.runtime.calls["prepare_session"] == 1
    assert json.loads(rig.store.session(j.environment_id)["environment"]) == dump(j.environment())


def test_prepare_session_same_key_other_body_conflicts(rig: Rig) -> None:
    j = job()
    rig.coordinator.prepare_session(request_of(j, "prepare_session"))
    # same environment, but the request body differs (no host named): same key, other digest
    with pytest.raises(Conflict):
        rig.coordinator.prepare_session(SessionPrepareRequest(environment=j.environment()))
    assert rig.runtime.calls["prepare_session"] == 1


def test_start_process_with_other_process_than_prepared_conflicts(rig: Rig) -> None:
    j = job()
    rig.run_chain(j, upto="prepare_environment")
    request = ProcessStartRequest(environment=j.environment(), process=other_process(j, ["rm", "-rf", "/"]))
    with pytest.raises(Conflict):
        rig.coordinator.start_process(request)
    assert rig.runtime.calls["start_process"] == 0
    assert ("intent", "start_process") not in rig.kinds(j.environment_id)


def test_step_with_other_environment_than_prepared_conflicts(rig: Rig) -> None:
    j = job()
    rig.coordinator.prepare_session(request_of(j, "prepare_session"))
    other = job(environment_id=j.environment_id, image="corral/other:latest")
    with pytest.raises(Conflict):
        rig.coordinator.resolve_image(request_of(other, "resolve_image"))
    assert rig.runtime.calls["resolve_image"] == 0


def test_prepare_environment_with_other_process_after_prepared_conflicts(rig: Rig) -> None:
    j = job()
    rig.run_chain(j, upto="prepare_environment")
    request = prepare_env_request(j).model_copy(update={"process": other_process(j, ["true"])})
    with pytest.raises(Conflict):
        rig.coordinator.prepare_environment(request)
    assert rig.runtime.calls["prepare_environment"] == 1


# -- intent before effect --------------------------------------------------------------------------


def test_intent_append_failure_skips_the_effect_and_releases_the_key(redis_url: str) -> None:
    journal = FlakyJournal(client_for(redis_url))
    with make_rig(redis_url, journal=journal) as rig:
        j = job()
        rig.run_chain(j, upto="prepare_environment")
        journal.fail_kinds = {"intent"}
        with pytest.raises(JournalFailure):
            rig.coordinator.start_process(start_request(j))
        assert journal.refused == ["intent"]
        assert rig.runtime.calls["start_process"] == 0
        assert rig.runtime.effects["start_process"] == 0
        assert rig.store.idem_get(start_key(j.environment_id, j.process().process_id)) == {}
        assert rig.store.session(j.environment_id)["state"] == SessionState.prepared

        journal.fail_kinds = set()
        rig.coordinator.start_process(start_request(j))
        assert rig.runtime.effects["start_process"] == 1
        assert rig.kinds(j.environment_id)[-2:] == [("intent", "start_process"), ("result", "start_process")]
    journal.r.close()


def test_intent_append_failure_on_prepare_session_creates_no_session(redis_url: str) -> None:
    journal = FlakyJournal(client_for(redis_url), {"intent"})
    with make_rig(redis_url, journal=journal) as rig:
        j = job()
        with pytest.raises(JournalFailure):
            rig.coordinator.prepare_session(request_of(j, "prepare_session"))
        assert rig.runtime.calls["prepare_session"] == 0
        assert rig.store.session(j.environment_id) == {}
        journal.fail_kinds = set()
        rig.coordinator.prepare_session(request_of(j, "prepare_session"))
        assert rig.runtime.effects["prepare_session"] == 1
    journal.r.close()


# -- failed adapter calls --------------------------------------------------------------------------


def test_non_retryable_failure_is_recorded_and_replayed_without_the_adapter(rig: Rig) -> None:
    j = job()
    rig.run_chain(j, upto="prepare_environment")
    rig.runtime.fail_next["start_process"] = PolicyDenial("no starting today", context={"rule": "test"})
    with pytest.raises(PolicyDenial) as first:
        rig.coordinator.start_process(start_request(j))
    last = rig.records(j.environment_id)[-1]
    assert last.kind == "result"
    assert last.fields["status"] == "failed"
    assert last.fields["error_kind"] == "policy_denial"
    assert last.fields["retry"] == "not_retryable"
    key = start_key(j.environment_id, j.process().process_id)
    assert rig.store.idem_get(key)["state"] == "failed"

    with pytest.raises(PolicyDenial) as second:
        rig.coordinator.start_process(start_request(j))
    assert rig.runtime.calls["start_process"] == 1
    assert second.value.message == first.value.message
    assert second.value.context == {"rule": "test"}
    last = rig.records(j.environment_id)[-1]
    assert (last.kind, last.fields["status"]) == ("replay", "failed")


def test_retryable_failure_is_forgotten_and_the_next_call_runs(rig: Rig) -> None:
    j = job()
    rig.run_chain(j, upto="prepare_environment")
    rig.runtime.fail_next["start_process"] = IsolationFailure("docker hiccup")
    with pytest.raises(IsolationFailure):
        rig.coordinator.start_process(start_request(j))
    key = start_key(j.environment_id, j.process().process_id)
    assert rig.store.idem_get(key) == {}
    failed = rig.records(j.environment_id)[-1]
    assert (failed.kind, failed.fields["status"], failed.fields["error_kind"], failed.fields["retry"]) == (
        "result",
        "failed",
        "isolation_failure",
        "retryable",
    )

    result = rig.coordinator.start_process(start_request(j))
    assert rig.runtime.calls["start_process"] == 2
    assert rig.runtime.effects["start_process"] == 1
    assert rig.store.idem_get(key)["state"] == "done"
    assert ProcessStartResult.model_validate_json(rig.store.idem_get(key)["result"]) == result
    assert rig.store.session(j.environment_id)["state"] == SessionState.running


def test_unexpected_adapter_exception_becomes_retryable_isolation_failure(rig: Rig) -> None:
    j = job()
    rig.run_chain(j, upto="prepare_environment")
    rig.runtime.fail_next["start_process"] = RuntimeError("boom")
    with pytest.raises(IsolationFailure) as info:
        rig.coordinator.start_process(start_request(j))
    assert "RuntimeError" in info.value.message
    assert isinstance(info.value.__cause__, RuntimeError)
    last = rig.records(j.environment_id)[-1]
    assert (last.fields["status"], last.fields["error_kind"]) == ("failed", "isolation_failure")
    assert rig.store.idem_get(start_key(j.environment_id, j.process().process_id)) == {}


def test_failed_prepare_step_is_journaled_and_leaves_no_step_result(rig: Rig) -> None:
    j = job(image="corral/absent:latest")
    rig.coordinator.prepare_session(request_of(j, "prepare_session"))
    with pytest.raises(NotFound):
        rig.coordinator.resolve_image(request_of(j, "resolve_image"))
    assert rig.kinds(j.environment_id)[-2:] == [("intent", "resolve_image"), ("result", "resolve_image")]
    assert rig.records(j.environment_id)[-1].fields["error_kind"] == "not_found"
    assert rig.store.step_result(j.environment_id, "resolve_image") is None


# -- result append failure: recovery marker --------------------------------------------------------


def test_result_append_failure_flags_recovery_and_still_records_the_result(redis_url: str) -> None:
    journal = FlakyJournal(client_for(redis_url))
    with make_rig(redis_url, journal=journal) as rig:
        j = job()
        rig.run_chain(j, upto="prepare_environment")
        journal.fail_kinds = {"result"}
        result = rig.coordinator.start_process(start_request(j))
        assert result.process_ref == process_ref_for(j.environment_id)
        assert rig.runtime.effects["start_process"] == 1

        key = start_key(j.environment_id, j.process().process_id)
        session = rig.store.session(j.environment_id)
        assert session["recovery_needed"] == "1"
        assert session[f"recovery:{key}"] == "start_process"
        record = rig.store.idem_get(key)
        assert record["state"] == "done"
        assert ProcessStartResult.model_validate_json(record["result"]) == result

        journal.fail_kinds = set()
        assert rig.coordinator.start_process(start_request(j)) == result
        assert rig.runtime.calls["start_process"] == 1
    journal.r.close()


def test_failed_result_append_failure_also_flags_recovery(redis_url: str) -> None:
    journal = FlakyJournal(client_for(redis_url))
    with make_rig(redis_url, journal=journal) as rig:
        j = job()
        rig.run_chain(j, upto="prepare_environment")
        journal.fail_kinds = {"result"}
        rig.runtime.fail_next["start_process"] = PolicyDenial("no")
        with pytest.raises(PolicyDenial):
            rig.coordinator.start_process(start_request(j))
        key = start_key(j.environment_id, j.process().process_id)
        assert rig.store.session(j.environment_id)[f"recovery:{key}"] == "start_process"
        assert rig.store.idem_get(key)["state"] == "failed"
    journal.r.close()


# -- pending leases and takeover -------------------------------------------------------------------


def test_live_foreign_lease_raises_in_progress_after_the_wait(rig: Rig) -> None:
    j = job()
    rig.run_chain(j, upto="prepare_environment")
    request = start_request(j)
    key = start_key(j.environment_id, j.process().process_id)
    assert rig.store.idem_begin(key, digest_of(request), "exe-other", rig.clock.now_ms(), 10**9).status == "new"
    t0 = time.monotonic()
    with pytest.raises(InProgress):
        rig.coordinator.start_process(request)
    assert time.monotonic() - t0 >= 0.2
    assert rig.runtime.calls["start_process"] == 0
    assert rig.store.idem_get(key)["token"] == "exe-other"
    assert ("intent", "start_process") not in rig.kinds(j.environment_id)


def test_waiting_delivery_gets_the_other_holders_result(redis_url: str) -> None:
    with make_rig(redis_url, pending_wait_s=10.0) as rig:
        j = job()
        rig.run_chain(j, upto="prepare_environment")
        request = start_request(j)
        key = start_key(j.environment_id, j.process().process_id)
        rig.store.idem_begin(key, digest_of(request), "exe-other", rig.clock.now_ms(), 10**9)
        recorded = ProcessStartResult(process_ref="proc-recorded")

        def finish_later() -> None:
            time.sleep(0.2)
            rig.store.idem_finish(key, "exe-other", "done", recorded.model_dump_json())

        thread = threading.Thread(target=finish_later)
        thread.start()
        got = rig.coordinator.start_process(request)
        thread.join()
        assert got == recorded
        assert rig.runtime.calls["start_process"] == 0
        assert rig.kinds(j.environment_id)[-1] == ("replay", "start_process")


def test_expired_foreign_lease_is_taken_over_and_the_effect_runs(redis_url: str) -> None:
    with make_rig(redis_url, lease_ms=1_000) as rig:
        j = job()
        rig.run_chain(j, upto="prepare_environment")
        request = start_request(j)
        key = start_key(j.environment_id, j.process().process_id)
        rig.store.idem_begin(key, digest_of(request), "exe-dead", rig.clock.now_ms(), 1_000)
        rig.clock.advance(1_001)
        result = rig.coordinator.start_process(request)
        assert rig.runtime.effects["start_process"] == 1
        tail = rig.records(j.environment_id)[-3:]
        assert [r.kind for r in tail] == ["recovery", "intent", "result"]
        assert tail[0].fields["action"] == "takeover"
        assert tail[0].fields["key"] == key
        record = rig.store.idem_get(key)
        assert record["state"] == "done" and record["token"] != "exe-dead"
        assert ProcessStartResult.model_validate_json(record["result"]) == result


def test_lease_not_yet_expired_is_not_taken_over(redis_url: str) -> None:
    with make_rig(redis_url, lease_ms=1_000) as rig:
        j = job()
        rig.run_chain(j, upto="prepare_environment")
        request = start_request(j)
        key = start_key(j.environment_id, j.process().process_id)
        rig.store.idem_begin(key, digest_of(request), "exe-slow", rig.clock.now_ms(), 1_000)
        rig.clock.advance(1_000)  # lease_until == now: still held
        with pytest.raises(InProgress):
            rig.coordinator.start_process(request)
        assert rig.runtime.calls["start_process"] == 0


# -- state machine ---------------------------------------------------------------------------------


def test_start_process_before_prepare_environment_is_invalid_transition(rig: Rig) -> None:
    j = job()
    rig.run_chain(j, upto="prepare_secrets")
    with pytest.raises(InvalidStateTransition):
        rig.coordinator.start_process(start_request(j))
    assert rig.runtime.calls["start_process"] == 0


def test_prepare_environment_before_earlier_steps_is_invalid_transition(rig: Rig) -> None:
    j = job()
    rig.run_chain(j, upto="resolve_mounts")
    with pytest.raises(InvalidStateTransition) as info:
        rig.coordinator.prepare_environment(prepare_env_request(j))
    assert info.value.context["missing"] == "configure_network"
    assert rig.runtime.calls["prepare_environment"] == 0
    assert rig.store.session(j.environment_id)["state"] == SessionState.preparing


def test_resolve_image_without_session_is_not_found(rig: Rig) -> None:
    j = job()
    env = j.environment()
    with pytest.raises(NotFound):
        rig.coordinator.resolve_image(ImageResolveRequest(image=image_of(env), environment=env))
    assert rig.runtime.calls["resolve_image"] == 0
    assert rig.records(j.environment_id) == []


def test_step_after_start_is_invalid_transition(rig: Rig) -> None:
    j, _ = _started_rig(rig)
    rig.client.delete(keys.idem_key(f"prepare_rootfs:{j.environment_id}"))  # its record expired
    with pytest.raises(InvalidStateTransition):
        rig.coordinator.prepare_rootfs(request_of(j, "prepare_rootfs"))


@pytest.mark.parametrize("op", CHAIN_OPS[1:])
def test_step_for_session_of_another_host_is_invalid_request(rig: Rig, op: str) -> None:
    j = job()
    rig.run_chain(j, upto="prepare_secrets" if op != "start_process" else "prepare_environment")
    other = rig.coordinator_for(OTHER_HOST)
    with pytest.raises(InvalidRequest):
        getattr(other, op)(request_of(j, op, host=OTHER_HOST))
    assert sum(other.runtime.calls.values()) == 0  # type: ignore[attr-defined]


def test_prepare_session_for_another_host_is_invalid_request(rig: Rig) -> None:
    j = job()
    with pytest.raises(InvalidRequest):
        rig.coordinator.prepare_session(request_of(j, "prepare_session", host=OTHER_HOST))
    assert rig.store.session(j.environment_id) == {}


def test_prepare_session_of_existing_session_on_another_host_is_invalid_request(rig: Rig) -> None:
    j = job()
    rig.coordinator.prepare_session(request_of(j, "prepare_session"))
    other = rig.coordinator_for(OTHER_HOST)
    with pytest.raises(InvalidRequest):
        other.prepare_session(SessionPrepareRequest(environment=j.environment()))


def test_process_operations_for_another_host_are_invalid_request(rig: Rig) -> None:
    j, result = _started_rig(rig)
    other = rig.coordinator_for(OTHER_HOST)
    with pytest.raises(InvalidRequest):
        other.collect_stats(ProcessStatsRequest(process_ref=result.process_ref))
    with pytest.raises(InvalidRequest):
        other.signal_process(
            ProcessSignalRequest(process_ref=result.process_ref, signal=ProcessSignal.kill, grace_ms=5_000)
        )
    with pytest.raises(InvalidRequest):
        other.cleanup(CleanupRequest(environment=j.environment(), cleanup_plan_ref="plan-1"))
    assert sum(other.runtime.calls.values()) == 0  # type: ignore[attr-defined]


def test_stream_io_and_collect_stats_for_unknown_process_are_not_found(rig: Rig) -> None:
    with pytest.raises(NotFound):
        rig.coordinator.stream_io(ProcessIoRequest(process_ref="proc-0000000000000000", stream=ProcessIoStream.stdout))
    with pytest.raises(NotFound):
        rig.coordinator.collect_stats(ProcessStatsRequest(process_ref="proc-0000000000000000"))
    with pytest.raises(NotFound):
        rig.coordinator.signal_process(
            ProcessSignalRequest(process_ref="proc-0000000000000000", signal=ProcessSignal.kill, grace_ms=5_000)
        )
    assert sum(rig.runtime.calls.values()) == 0


# -- process observation ---------------------------------------------------------------------------


def test_collect_stats_on_exited_process_sets_exited_with_exit_code(rig: Rig) -> None:
    j, result = _started_rig(rig)
    rig.runtime.processes[result.process_ref].exit_code = 3
    snapshot = rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=result.process_ref))
    assert snapshot.state == "exited" and snapshot.exit_code == 3
    record = rig.store.session(j.environment_id)
    assert record["state"] == SessionState.exited
    assert record["exit_code"] == "3"
    assert record["reason"] == "exit"
    # read-only: nothing journaled for stats but the exit, once, with upstream's stats record
    rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=result.process_ref))
    assert rig.kinds(j.environment_id)[-2:] == [("result", "start_process"), ("exit", "collect_stats")]
    assert json.loads(rig.records(j.environment_id)[-1].fields["record"]) == {
        "record_type": "process_stats_snapshot",
        "record": {
            "environment_id": j.environment_id,
            "snapshot_ref": snapshot.snapshot_ref,
            "redacted_summary": f"process {result.process_ref} ended exit 3 (exit)",
        },
    }


def test_collect_stats_on_running_process_keeps_running(rig: Rig) -> None:
    j, result = _started_rig(rig)
    rig.runtime.processes[result.process_ref].exit_code = None
    snapshot = rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=result.process_ref))
    assert snapshot.state == "running"
    assert rig.store.session(j.environment_id)["state"] == SessionState.running
    assert "exit_code" not in rig.store.session(j.environment_id)


def test_stream_io_stdout_eof_marks_session_exited(redis_url: str) -> None:
    with make_rig(redis_url) as rig:
        rig.runtime.output["echo"] = b"hello\n"
        j, result = _started_rig(rig)
        frame = rig.coordinator.stream_io(
            ProcessIoRequest(process_ref=result.process_ref, stream=ProcessIoStream.stdout, max_bytes=3)
        )
        assert not frame.eof and frame.cursor == 3
        assert rig.store.session(j.environment_id)["state"] == SessionState.running
        frame = rig.coordinator.stream_io(
            ProcessIoRequest(process_ref=result.process_ref, stream=ProcessIoStream.stdout, cursor=frame.cursor)
        )
        assert frame.eof and frame.cursor == 6
        assert rig.store.session(j.environment_id)["state"] == SessionState.exited
        assert rig.kinds(j.environment_id)[-1] == ("result", "start_process")


# -- detach ----------------------------------------------------------------------------------------


def test_detach_denied_when_policy_disallows_it(rig: Rig) -> None:
    j, _ = _started_rig(rig)  # allow_detach defaults to False
    with pytest.raises(PolicyDenial):
        rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=60_000))
    assert rig.runtime.calls["detach"] == 0
    assert rig.store.session(j.environment_id)["state"] == SessionState.running
    assert rig.store.list_tickets() == []
    assert ("intent", "detach") not in rig.kinds(j.environment_id)


def test_detach_denied_when_ttl_exceeds_host_maximum(redis_url: str) -> None:
    # The host maximum is the host policy's [detach] max_ttl_ms (it was settings.limits.max_detach_ttl_ms).
    with make_rig(redis_url, policy=fixed(policy_with(detach={"max_ttl_ms": 10_000}))) as rig:
        j, _ = _started_rig(rig, allow_detach=True)
        with pytest.raises(PolicyDenial) as info:
            rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=10_001))
        assert info.value.context["rule"] == "detach.max_ttl_ms"
        assert rig.runtime.calls["detach"] == 0
        assert rig.store.list_tickets() == []
        # exactly at the maximum is allowed
        rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=10_000))
        assert rig.runtime.effects["detach"] == 1


def test_detach_allowed_puts_a_due_ticket_and_marks_session_detached(rig: Rig) -> None:
    j, _ = _started_rig(rig, allow_detach=True)
    now = rig.clock.now_ms()
    result = rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=60_000))
    assert result.deadline_ms == now + 60_000
    ticket = rig.store.ticket(result.ticket_ref)
    assert ticket["environment_id"] == j.environment_id
    assert ticket["host"] == HOST
    assert ticket["state"] == "detached"
    assert ticket["host_ack_ref"] == result.host_ack_ref
    assert int(ticket["deadline_ms"]) == now + 60_000
    assert rig.client.zscore(keys.TICKETS_DUE_KEY, result.ticket_ref) == now + 60_000
    session = rig.store.session(j.environment_id)
    assert session["state"] == SessionState.detached
    assert session["ticket_ref"] == result.ticket_ref
    assert rig.kinds(j.environment_id)[-2:] == [("intent", "detach"), ("result", "detach")]


def test_detach_before_prepared_is_invalid_transition(rig: Rig) -> None:
    j = job(allow_detach=True)
    rig.run_chain(j, upto="prepare_secrets")
    with pytest.raises(InvalidStateTransition):
        rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=60_000))
    assert rig.runtime.calls["detach"] == 0


# -- reclaim ---------------------------------------------------------------------------------------


def test_reclaim_closes_the_ticket_and_cleans_the_session(rig: Rig) -> None:
    j, _ = _started_rig(rig, allow_detach=True)
    ticket = rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=60_000))
    result = rig.coordinator.reclaim(ReclaimRequest(ticket_ref=ticket.ticket_ref))
    assert result.status == "completed"
    assert rig.runtime.effects["reclaim"] == 1
    assert rig.client.zscore(keys.TICKETS_DUE_KEY, ticket.ticket_ref) is None
    assert rig.store.ticket(ticket.ticket_ref)["state"] == "reclaimed"
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned
    assert j.environment_id not in rig.runtime.containers


def test_reclaim_unknown_ticket_is_not_found(rig: Rig) -> None:
    with pytest.raises(NotFound):
        rig.coordinator.reclaim(ReclaimRequest(ticket_ref="tkt-unknown"))
    assert rig.runtime.calls["reclaim"] == 0


def test_reclaim_of_another_hosts_ticket_is_invalid_request(rig: Rig) -> None:
    j, _ = _started_rig(rig, allow_detach=True)
    ticket = rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=60_000))
    other = rig.coordinator_for(OTHER_HOST)
    with pytest.raises(InvalidRequest):
        other.reclaim(ReclaimRequest(ticket_ref=ticket.ticket_ref))
    assert rig.store.ticket(ticket.ticket_ref)["state"] == "detached"


def test_reclaim_with_environment_id_other_than_the_tickets_is_refused(rig: Rig) -> None:
    a, _ = _started_rig(rig, allow_detach=True)
    ticket = rig.coordinator.detach(DetachTransferRequest(environment=a.environment(), ttl_ms=60_000))
    b, _ = _started_rig(rig)
    with pytest.raises(NotRetryable):
        rig.coordinator.reclaim(ReclaimRequest(ticket_ref=ticket.ticket_ref, environment_id=b.environment_id))
    assert rig.store.session(b.environment_id)["state"] == SessionState.running
    assert rig.store.ticket(ticket.ticket_ref)["state"] == "detached"


def test_cleanup_of_detached_session_closes_its_ticket(rig: Rig) -> None:
    j, _ = _started_rig(rig, allow_detach=True)
    ticket = rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=60_000))
    rig.coordinator.cleanup(CleanupRequest(environment=j.environment(), cleanup_plan_ref="plan-1"))
    assert rig.store.ticket(ticket.ticket_ref)["state"] == "cleaned"
    assert rig.client.zscore(keys.TICKETS_DUE_KEY, ticket.ticket_ref) is None
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned


# -- redaction -------------------------------------------------------------------------------------


def test_journal_records_never_contain_request_bodies(redis_url: str) -> None:
    # the host policy must know the mount alias and grant the secret (a tenant rule), or prepare_session
    # denies the job before any effect
    policy = policy_with(
        mounts={"data": {"path": "/srv/data"}}, tenants={"default": {"identities": ["*"], "secrets": ["token"]}}
    )
    with make_rig(redis_url, policy=fixed(policy)) as rig:
        j = job(
            argv=["echo", "ARGV-MARKER"],
            env={"PLAIN": "NOT-A-SECRET-MARKER"},
            allow_detach=True,
            mounts=["data:/data"],
            secrets=["token"],
        )
        result = started(rig.run_chain(j))
        rig.coordinator.start_process(start_request(j))  # a replay record
        rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=result.process_ref))
        rig.runtime.fail_next["cleanup"] = PolicyDenial("refused")  # a failed result record
        with pytest.raises(PolicyDenial):
            rig.coordinator.cleanup(CleanupRequest(environment=j.environment(), cleanup_plan_ref="plan-1"))
        records = rig.records(j.environment_id)
        assert {r.kind for r in records} == {"intent", "result", "replay", "exit"}  # exit: the echo ended
        assert any(r.fields.get("status") == "failed" for r in records)
        assert any(r.record is not None for r in records)  # upstream's records are checked too
        for record in records:
            blob = json.dumps(record.fields)
            assert "NOT-A-SECRET-MARKER" not in blob
            assert "ARGV-MARKER" not in blob
        # the markers did reach the state store, so the check above is not vacuous
        process_json = rig.store.session(j.environment_id)["process"]
        assert "ARGV-MARKER" in process_json and "NOT-A-SECRET-MARKER" in process_json


def test_replayed_failure_is_the_same_typed_error_class(rig: Rig) -> None:
    j = job()
    rig.run_chain(j, upto="prepare_environment")
    rig.runtime.fail_next["start_process"] = InvalidRequest("bad argv")
    for _ in range(2):
        with pytest.raises(AgentError) as info:
            rig.coordinator.start_process(start_request(j))
        assert type(info.value) is InvalidRequest
    assert rig.runtime.calls["start_process"] == 1


def test_a_start_that_finishes_after_cleanup_cannot_move_the_session_back(rig: Rig) -> None:
    j = job()
    rig.run_chain(j, upto="prepare_environment")
    real_start = rig.runtime.start_process

    def slow_start(request: ProcessStartRequest) -> ProcessStartResult:
        result = real_start(request)
        # While this (stale) start was in the adapter, the session was cleaned up.
        rig.store.update_session(j.environment_id, {"state": SessionState.cleaned}, rig.clock.now_ms())
        return result

    rig.runtime.start_process = slow_start  # type: ignore[method-assign]
    rig.coordinator.start_process(request_of(j, "start_process"))
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned


def test_reads_look_up_a_process_binding_once_but_read_its_session_every_time(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, result = _started_rig(rig, argv=["sleep", "60"])
    lookups: list[str] = []
    real = rig.store.environment_of_process

    def counted(process_ref: str) -> str | None:
        lookups.append(process_ref)
        return real(process_ref)

    monkeypatch.setattr(rig.store, "environment_of_process", counted)
    for _ in range(3):
        rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=result.process_ref))
    assert lookups == [result.process_ref]  # the binding never changes: looked up once
    env_id = rig.store.environment_of_process(result.process_ref)
    assert env_id is not None
    rig.client.delete(keys.session_key(env_id))  # the session (owner, state) is still read every time
    with pytest.raises(NotFound):
        rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=result.process_ref))
