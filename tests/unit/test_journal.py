"""corral.state.journal: append/read order, the ``after`` cursor, failures as ``JournalFailure``, and that
records built by the coordinator never carry request bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from corral.contract.errors import JournalFailure, RetryClass
from corral.contract.models import CleanupRequest, DetachTransferRequest, ProcessStatsRequest, ReclaimRequest
from corral.state import store as keys
from corral.state.journal import Journal
from tests.unit.helpers import client_for, closed_port, job, make_rig, started

pytestmark = pytest.mark.redis


@pytest.fixture
def journal(redis_url: str) -> Iterator[Journal]:
    c = client_for(redis_url)
    yield Journal(c, ttl_s=3600)
    c.close()


def test_append_then_read_returns_records_in_order(journal: Journal) -> None:
    ids = [
        journal.append("env-1", kind, {"op": f"op{i}", "n": i})  # type: ignore[dict-item]
        for i, kind in enumerate(["intent", "result", "replay", "recovery"])
    ]
    records = journal.read("env-1")
    assert [r.record_id for r in records] == ids
    assert [r.kind for r in records] == ["intent", "result", "replay", "recovery"]
    assert records[1].fields == {"kind": "result", "op": "op1", "n": "1"}  # values stored as strings


def test_read_after_cursor_is_exclusive(journal: Journal) -> None:
    ids = [journal.append("env-1", "intent", {"i": str(i)}) for i in range(5)]
    assert [r.fields["i"] for r in journal.read("env-1", after=ids[1])] == ["2", "3", "4"]
    assert journal.read("env-1", after=ids[-1]) == []
    assert [r.fields["i"] for r in journal.read("env-1", after=ids[0], count=2)] == ["1", "2"]


def test_journals_are_per_environment(journal: Journal) -> None:
    journal.append("env-1", "intent", {"op": "a"})
    journal.append("env-2", "intent", {"op": "b"})
    assert [r.fields["op"] for r in journal.read("env-1")] == ["a"]
    assert [r.fields["op"] for r in journal.read("env-2")] == ["b"]
    assert journal.read("env-3") == []


def test_append_sets_a_ttl_on_the_stream(journal: Journal) -> None:
    journal.append("env-1", "intent", {"op": "a"})
    assert 0 < journal.r.ttl(keys.journal_key("env-1")) <= 3600


def test_record_kind_is_the_kind_field(journal: Journal) -> None:
    journal.append("env-1", "intent", {"op": "a"})
    (record,) = journal.read("env-1")
    assert record.kind == "intent"
    assert record.fields["kind"] == "intent"


def test_append_on_broken_connection_raises_journal_failure() -> None:
    client = redis.Redis(
        host="127.0.0.1",
        port=closed_port(),
        socket_connect_timeout=0.5,
        socket_timeout=0.5,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    try:
        with pytest.raises(JournalFailure) as info:
            Journal(client).append("env-1", "intent", {"op": "start_process"})
    finally:
        client.close()
    assert info.value.retry is RetryClass.retryable
    assert info.value.context == {"kind": "intent"}
    assert isinstance(info.value.__cause__, redis.RedisError)


def test_append_on_wrong_key_type_raises_journal_failure(journal: Journal) -> None:
    journal.r.set(keys.journal_key("env-1"), "not a stream")
    with pytest.raises(JournalFailure):
        journal.append("env-1", "result", {"op": "x"})


def test_records_of_a_full_lifecycle_never_contain_request_bodies(redis_url: str) -> None:
    with make_rig(redis_url) as rig:
        j = job(argv=["sh", "-c", "echo ARGV-MARKER"], env={"PLAIN": "NOT-A-SECRET-MARKER"}, allow_detach=True)
        result = started(rig.run_chain(j))
        rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=result.process_ref))
        ticket = rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=60_000))
        rig.coordinator.reclaim(ReclaimRequest(ticket_ref=ticket.ticket_ref))
        rig.coordinator.cleanup(CleanupRequest(environment=j.environment(), cleanup_plan_ref="plan-1"))
        records = rig.records(j.environment_id)
        ops = {r.fields["op"] for r in records}
        assert ops >= {"prepare_session", "start_process", "detach", "reclaim", "cleanup"}
        for record in records:
            text = json.dumps(record.fields)
            assert "NOT-A-SECRET-MARKER" not in text, record
            assert "ARGV-MARKER" not in text, record
            assert "PLAIN" not in text, record
            # flat protocol fields, and upstream's isolation records built from refs and summaries
            # (never a serialized request: corral.host.journal_records)
            assert set(record.fields) <= {
                "kind",
                "op",
                "key",
                "host",
                "ts_ms",
                "effect_id",
                "status",
                "error_kind",
                "retry",
                "summary",
                "action",
                "record",
                "network_record",
            }, record
            if "record" in record.fields:
                assert record.record is not None and record.record.model_dump_json() == record.fields["record"]
        typed = {r.record.record_type for r in records if r.record}
        assert typed >= {"requested", "process_start_intent", "cleanup_result"}


def test_append_and_finish_writes_the_record_and_the_key_in_one_call(journal: Journal) -> None:
    store = keys.Store(journal.r)
    store.idem_begin("k", "d", "t1", 1_000, 60_000)
    commands = journal.r.info("stats")["total_commands_processed"]
    assert journal.append_and_finish(store, "env-1", "result", {"op": "x", "status": "ok"}, "k", "t1", "done", "R")
    assert journal.r.info("stats")["total_commands_processed"] - commands <= 1 + 6  # INFO + EVALSHA and its calls
    assert [(r.kind, r.fields["status"]) for r in journal.read("env-1")] == [("result", "ok")]
    assert 0 < journal.r.ttl(keys.journal_key("env-1")) <= 3600
    assert store.idem_get("k")["state"] == "done" and store.idem_get("k")["result"] == "R"


def test_append_and_finish_with_a_stale_token_appends_but_leaves_the_key(journal: Journal) -> None:
    store = keys.Store(journal.r)
    store.idem_begin("k", "d", "old", 1_000, 1_000)
    store.idem_begin("k", "d", "new", 3_000, 1_000)  # taken over
    assert not journal.append_and_finish(store, "env-1", "result", {"op": "x"}, "k", "old", "done", "STALE")
    assert [r.kind for r in journal.read("env-1")] == ["result"]  # as a separate append would have
    assert store.idem_get("k")["state"] == "pending" and store.idem_get("k")["token"] == "new"


def test_append_and_finish_that_cannot_append_writes_neither(journal: Journal) -> None:
    store = keys.Store(journal.r)
    store.idem_begin("k", "d", "t1", 1_000, 60_000)
    journal.r.set(keys.journal_key("env-1"), "not a stream")
    with pytest.raises(JournalFailure):
        journal.append_and_finish(store, "env-1", "result", {"op": "x"}, "k", "t1", "done", "R")
    assert store.idem_get("k")["state"] == "pending"  # the caller finishes it alone after flagging recovery
