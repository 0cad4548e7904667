"""corral.state.store: idempotency records and their fencing, sessions, tickets and host heartbeats, against a
real Redis (db 3)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from corral.state import store as keys
from corral.state.store import DueTicket, Store
from tests.unit.helpers import HOST, OTHER_HOST, ManualClock, client_for, job, make_rig

pytestmark = pytest.mark.redis


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = client_for(redis_url)
    yield c
    c.close()


@pytest.fixture
def store(client: redis.Redis) -> Store:
    return Store(client)


NOW = ManualClock().now_ms()


# -- idempotency -----------------------------------------------------------------------------------


def test_idem_begin_new_then_pending_for_a_live_lease(store: Store) -> None:
    assert store.idem_begin("k", "d1", "t1", NOW, 1_000, holder="h/1").status == "new"
    record = store.idem_get("k")
    assert record == {
        "digest": "d1",
        "state": "pending",
        "token": "t1",
        "lease_until": str(NOW + 1_000),
        "holder": "h/1",
    }
    pending = store.idem_begin("k", "d1", "t2", NOW + 500, 1_000, holder="h/2")
    assert (pending.status, pending.payload) == ("pending", "h/1")
    assert store.idem_get("k")["token"] == "t1"


def test_idem_begin_takes_over_a_live_lease_only_from_the_named_dead_holder(store: Store) -> None:
    store.idem_begin("k", "d1", "t1", NOW, 60_000, holder="h/1")
    assert store.idem_begin("k", "d1", "t2", NOW + 1, 60_000, holder="h/2", dead_holder="h/9").status == "pending"
    taken = store.idem_begin("k", "d1", "t3", NOW + 2, 60_000, holder="h/3", dead_holder="h/1")
    assert (taken.status, taken.payload) == ("takeover", "h/1")
    assert (store.idem_get("k")["token"], store.idem_get("k")["holder"]) == ("t3", "h/3")
    assert 0 < store.r.pttl(keys.idem_key("k")) <= store.ttl_ms


def test_idem_begin_other_digest_is_conflict_in_every_state(store: Store) -> None:
    store.idem_begin("k", "d1", "t1", NOW, 1_000)
    assert store.idem_begin("k", "d2", "t2", NOW, 1_000).status == "conflict"
    store.idem_finish("k", "t1", "done", '{"x": 1}')
    assert store.idem_begin("k", "d2", "t2", NOW, 1_000).status == "conflict"
    assert store.idem_get("k")["result"] == '{"x": 1}'


def test_idem_finish_done_and_failed_are_answered_with_their_payload(store: Store) -> None:
    store.idem_begin("a", "d", "t", NOW, 1_000)
    assert store.idem_finish("a", "t", "done", "RESULT")
    assert store.idem_begin("a", "d", "t2", NOW, 1_000) == keys.IdemBegin("done", "RESULT")
    store.idem_begin("b", "d", "t", NOW, 1_000)
    assert store.idem_finish("b", "t", "failed", "ERROR")
    assert store.idem_begin("b", "d", "t2", NOW, 1_000) == keys.IdemBegin("failed", "ERROR")


def test_idem_finish_forget_releases_the_key(store: Store) -> None:
    store.idem_begin("k", "d", "t1", NOW, 1_000)
    assert store.idem_finish("k", "t1", "forget", "")
    assert store.idem_get("k") == {}
    assert store.idem_begin("k", "d", "t2", NOW, 1_000).status == "new"


def test_idem_begin_expired_lease_is_taken_over_by_the_new_token(store: Store) -> None:
    store.idem_begin("k", "d", "t1", NOW, 1_000)
    assert store.idem_begin("k", "d", "t2", NOW + 1_000, 1_000).status == "pending"  # lease_until == now
    assert store.idem_begin("k", "d", "t2", NOW + 1_001, 5_000).status == "takeover"
    record = store.idem_get("k")
    assert record["token"] == "t2"
    assert record["lease_until"] == str(NOW + 1_001 + 5_000)
    assert record["state"] == "pending"


def test_idem_finish_with_stale_token_is_fenced_out(store: Store) -> None:
    store.idem_begin("k", "d", "old", NOW, 1_000)
    store.idem_begin("k", "d", "new", NOW + 2_000, 1_000)  # takeover
    assert store.idem_finish("k", "old", "done", "STALE") is False
    assert store.idem_get("k")["state"] == "pending"
    assert "result" not in store.idem_get("k")
    assert store.idem_finish("k", "old", "forget", "") is False
    assert store.idem_get("k")["token"] == "new"
    assert store.idem_finish("k", "new", "done", "FRESH") is True
    assert store.idem_finish("k", "old", "done", "STALE") is False
    assert store.idem_get("k")["result"] == "FRESH"


def test_idem_begin_concurrent_callers_exactly_one_wins(redis_url: str) -> None:
    statuses: list[str] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        c = client_for(redis_url)
        try:
            barrier.wait()
            statuses.append(Store(c).idem_begin("race", "d", f"t{i}", NOW, 60_000).status)
        finally:
            c.close()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(statuses) == {"new": 1, "pending": 7}


# -- sessions --------------------------------------------------------------------------------------


def test_create_session_is_create_once(store: Store) -> None:
    assert store.create_session("env-1", {"host": HOST, "state": "preparing"}, NOW) is True
    assert store.create_session("env-1", {"host": OTHER_HOST, "state": "cleaned"}, NOW + 5) is False
    record = store.session("env-1")
    assert record == {"host": HOST, "state": "preparing", "created_ms": str(NOW)}
    assert store.r.zscore(keys.SESSIONS_KEY, "env-1") == NOW
    assert 0 < store.r.pttl(keys.session_key("env-1")) <= store.ttl_ms


def test_create_session_is_one_atomic_step_with_ttl_and_index(redis_url: str) -> None:
    """Fields, TTL and the index entry appear together: a failure cannot leave a stub record."""
    with make_rig(redis_url) as rig:
        j = job()
        monitor_before = rig.client.info("commandstats").get("cmdstat_hsetnx", {}).get("calls", 0)
        assert rig.store.create_session(j.environment_id, {"host": HOST, "state": "preparing"}, rig.clock.now_ms())
        assert rig.client.info("commandstats").get("cmdstat_hsetnx", {}).get("calls", 0) == monitor_before
        assert rig.client.pttl(keys.session_key(j.environment_id)) > 0
        assert rig.client.zscore(keys.SESSIONS_KEY, j.environment_id) is not None
        assert rig.store.session(j.environment_id)["host"] == HOST


def test_update_session_merges_fields_and_stamps_updated(store: Store) -> None:
    store.create_session("env-1", {"host": HOST, "state": "preparing"}, NOW)
    store.update_session("env-1", {"state": "prepared", "extra": "x"}, NOW + 7)
    assert store.session("env-1") == {
        "host": HOST,
        "state": "prepared",
        "extra": "x",
        "created_ms": str(NOW),
        "updated_ms": str(NOW + 7),
    }


def test_step_result_round_trips_and_is_none_when_absent(store: Store) -> None:
    store.create_session("env-1", {"host": HOST}, NOW)
    assert store.step_result("env-1", "resolve_image") is None
    store.set_step_result("env-1", "resolve_image", {"digest": "sha256:ab", "n": [1, 2]}, NOW)
    assert store.step_result("env-1", "resolve_image") == {"digest": "sha256:ab", "n": [1, 2]}


def test_list_sessions_newest_first_and_drops_expired_entries(store: Store) -> None:
    for i, env in enumerate(["env-a", "env-b", "env-c"]):
        store.create_session(env, {"host": HOST, "state": "preparing"}, NOW + i)
    store.r.pexpire(keys.session_key("env-b"), 1)
    time.sleep(0.05)
    listed = store.list_sessions()
    assert [s["environment_id"] for s in listed] == ["env-c", "env-a"]
    assert listed[0]["host"] == HOST
    # the expired entry was dropped from the index, not just skipped
    assert store.r.zrange(keys.SESSIONS_KEY, 0, -1) == ["env-a", "env-c"]


def test_list_sessions_respects_limit(store: Store) -> None:
    for i in range(5):
        store.create_session(f"env-{i}", {"host": HOST}, NOW + i)
    assert [s["environment_id"] for s in store.list_sessions(limit=2)] == ["env-4", "env-3"]


def test_bind_process_maps_process_to_environment(store: Store) -> None:
    assert store.environment_of_process("proc-x") is None
    store.bind_process("proc-x", "env-1")
    assert store.environment_of_process("proc-x") == "env-1"
    assert 0 < store.r.pttl(keys.process_key("proc-x")) <= store.ttl_ms


# -- tickets ---------------------------------------------------------------------------------------


def _put(store: Store, ref: str, deadline: int, host: str = HOST) -> None:
    store.put_ticket(ref, {"environment_id": f"env-{ref}", "host": host}, deadline)


def test_put_ticket_records_deadline_state_and_due_score(store: Store) -> None:
    _put(store, "t1", NOW + 1_000)
    assert store.ticket("t1") == {
        "environment_id": "env-t1",
        "host": HOST,
        "deadline_ms": str(NOW + 1_000),
        "state": "detached",
    }
    assert store.r.zscore(keys.TICKETS_DUE_KEY, "t1") == NOW + 1_000


def test_put_ticket_expiry_is_a_bounded_backstop_after_the_deadline(store: Store) -> None:
    deadline = int(time.time() * 1000) + 3_600_000
    _put(store, "t1", deadline)
    pttl = store.r.pttl(keys.ticket_key("t1"))
    # lives past its deadline, but not forever
    assert 3_600_000 < pttl <= 3_600_000 + store.ttl_ms + 1_000


def test_claim_due_tickets_claims_only_due_ones_and_pushes_them_back(store: Store) -> None:
    _put(store, "early", NOW - 10)
    _put(store, "exact", NOW, host=OTHER_HOST)
    _put(store, "later", NOW + 1)
    claimed = store.claim_due_tickets(NOW, 5_000)
    assert sorted(claimed, key=lambda d: d.ticket_ref) == [DueTicket("early", HOST), DueTicket("exact", OTHER_HOST)]
    assert store.r.zscore(keys.TICKETS_DUE_KEY, "early") == NOW + 5_000
    assert store.r.zscore(keys.TICKETS_DUE_KEY, "later") == NOW + 1
    assert store.ticket("early")["state"] == "reclaiming"
    assert store.ticket("early")["attempts"] == "1"
    assert store.ticket("early")["claimed_ms"] == str(NOW)
    assert store.ticket("later")["state"] == "detached"
    # within the resend period nothing is claimed again
    assert [d.ticket_ref for d in store.claim_due_tickets(NOW + 4_999, 5_000)] == ["later"]
    again = store.claim_due_tickets(NOW + 5_000, 5_000)
    assert sorted(d.ticket_ref for d in again) == ["early", "exact"]
    assert store.ticket("early")["attempts"] == "2"


def test_claim_due_tickets_respects_limit(store: Store) -> None:
    for i in range(5):
        _put(store, f"t{i}", NOW - 100 + i)
    first = store.claim_due_tickets(NOW, 60_000, limit=2)
    assert [d.ticket_ref for d in first] == ["t0", "t1"]
    rest = store.claim_due_tickets(NOW, 60_000, limit=10)
    assert [d.ticket_ref for d in rest] == ["t2", "t3", "t4"]


def test_claim_due_tickets_is_atomic_under_concurrency(redis_url: str, store: Store) -> None:
    refs = [f"t{i}" for i in range(50)]
    for ref in refs:
        _put(store, ref, NOW - 1)
    claimed: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def claimer() -> None:
        c = client_for(redis_url)
        try:
            barrier.wait()
            for _ in range(10):
                got = Store(c).claim_due_tickets(NOW, 60_000, limit=3)
                with lock:
                    claimed.extend(d.ticket_ref for d in got)
        finally:
            c.close()

    threads = [threading.Thread(target=claimer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(claimed) == Counter(refs)  # every ticket exactly once
    assert all(store.ticket(ref)["attempts"] == "1" for ref in refs)


def test_close_ticket_removes_it_from_due_and_records_state(store: Store) -> None:
    _put(store, "t1", NOW - 1)
    store.close_ticket("t1", "reclaimed", NOW)
    assert store.r.zscore(keys.TICKETS_DUE_KEY, "t1") is None
    assert store.ticket("t1")["state"] == "reclaimed"
    assert store.ticket("t1")["closed_ms"] == str(NOW)
    assert store.claim_due_tickets(NOW + 10**9, 1) == []
    assert store.list_tickets() == []


def test_list_tickets_lists_open_tickets_by_due_time(store: Store) -> None:
    _put(store, "b", NOW + 2)
    _put(store, "a", NOW + 1)
    listed = store.list_tickets()
    assert [t["ticket_ref"] for t in listed] == ["a", "b"]
    assert listed[0]["environment_id"] == "env-a"


# -- hosts -----------------------------------------------------------------------------------------


def test_publish_host_expires_on_silence_but_stays_known(store: Store) -> None:
    store.publish_host("host-z", {"load": 1, "report": {"adapter_kind": "fake"}}, ttl_ms=150)
    store.publish_host("host-y", {"load": 0}, ttl_ms=60_000)
    assert store.host("host-z") == {"load": 1, "report": {"adapter_kind": "fake"}}
    deadline = time.monotonic() + 5
    while store.host("host-z") is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.host("host-z") is None
    assert store.host("host-y") == {"load": 0}
    assert store.known_hosts() == ["host-y", "host-z"]


def test_publish_host_refreshes_the_record(store: Store) -> None:
    store.publish_host("host-z", {"load": 1}, ttl_ms=60_000)
    store.publish_host("host-z", {"load": 2}, ttl_ms=60_000)
    assert store.host("host-z") == {"load": 2}
    assert store.known_hosts() == ["host-z"]
    assert store.host("host-unknown") is None


def test_transition_applies_only_from_an_allowed_state(store: Store) -> None:
    store.create_session("env-t", {"host": HOST, "state": "prepared"}, NOW)
    assert store.transition("env-t", ("prepared",), {"state": "running", "process_ref": "p"}, NOW + 1)
    assert store.session("env-t")["state"] == "running"
    store.update_session("env-t", {"state": "cleaned"}, NOW + 2)
    # A stale start result arriving after cleanup cannot move the session back.
    assert not store.transition("env-t", ("prepared",), {"state": "running"}, NOW + 3)
    assert store.session("env-t")["state"] == "cleaned"
    assert not store.transition("missing", ("prepared",), {"state": "running"}, NOW)
    assert store.session("missing") == {}
