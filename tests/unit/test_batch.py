"""corral.fleet.batch and corral.host.dispatcher without Celery: parsing and bad input, retry decisions, the batch
Lua transitions against a real Redis (db 3), and a dispatcher tick over fake host records with the
chain sender replaced by a recorder."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from corral.contract.errors import InvalidRequest
from corral.contract.models import dump
from corral.fleet.admission import Admission, Capacity
from corral.fleet.batch import (
    ArraySpec,
    BatchStore,
    BatchSubmitRequest,
    JobTemplate,
    attempt_env_id,
    parse_array,
    parse_env_id,
    parse_jobs_file,
    parse_retry,
    should_retry,
    wait_exit_code,
)
from corral.fleet.job import JobSpec
from corral.host.dispatcher import Dispatcher, decide, ended_record
from corral.state.store import Store
from tests.unit.helpers import IMAGE, ManualClock, client_for
from tests.unit.policy_helpers import report

TEMPLATE = JobTemplate(image=IMAGE, argv=["true"], cpus=1.0, memory_mb=64)


# -- parsing and bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30", (0, 29, None)), ("0-99%10", (0, 99, 10)), ("5-5", (5, 5, None)), ("4%2", (0, 3, 2))],
)
def test_array_forms(text: str, expected: tuple[int, int, int | None]) -> None:
    spec = parse_array(text)
    assert (spec.first, spec.last, spec.throttle) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [("0", "empty"), ("9-3", "reversed"), ("0-9%0", "never run"), ("a-b", "is not"), ("-3", "is not"), ("", "is not")],
)
def test_bad_arrays_are_invalid_requests(text: str, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        parse_array(text)


def test_retry_rules_parse_and_match_first_wins() -> None:
    rules = [parse_retry("exit:3,4"), parse_retry("reason:oom,host_lost")]
    assert [str(r) for r in rules] == ["exit:3,4", "reason:oom,host_lost"]
    assert should_retry(rules, 3, "exit", attempt=1, max_attempts=3)
    assert should_retry(rules, None, "oom", attempt=2, max_attempts=3)
    assert not should_retry(rules, 5, "exit", attempt=1, max_attempts=3)  # no match: fails
    assert not should_retry(rules, 3, "exit", attempt=3, max_attempts=3)  # this index's budget is spent
    assert not should_retry(rules, None, "timeout", attempt=1, max_attempts=3)


@pytest.mark.parametrize("text", ["exit:", "exit:x", "exit:256", "reason:bored", "exitcode:3", "oom"])
def test_bad_retry_rules_are_invalid_requests(text: str) -> None:
    with pytest.raises(InvalidRequest, match="does not parse"):
        parse_retry(text)


def test_a_jobs_file_names_its_first_bad_line() -> None:
    good = json.dumps({"image": IMAGE, "argv": ["true"]})
    assert len(parse_jobs_file(f"{good}\n\n{good}\n")) == 2
    for bad, what in [
        ('{"image": "x", "argv": ["a"], "colour": 1}', "colour"),
        ("not json", "line 2"),
        ('{"image": "x", "argv": []}', "argv"),
        ('{"image": "x", "argv": ["a"], "network": "moon"}', "line 2"),
    ]:
        with pytest.raises(InvalidRequest, match="line 2") as info:
            parse_jobs_file(f"{good}\n{bad}\n")
        assert what in info.value.message
    with pytest.raises(InvalidRequest, match="no job"):
        parse_jobs_file("\n")


def test_submission_checks_size_deadline_and_shape() -> None:
    now = ManualClock().now_ms()
    BatchSubmitRequest(template=TEMPLATE, array=ArraySpec(first=0, last=9)).check(now, 10)
    with pytest.raises(InvalidRequest, match=r"limits\.max_batch_jobs"):
        BatchSubmitRequest(template=TEMPLATE, array=ArraySpec(first=0, last=10)).check(now, 10)
    with pytest.raises(InvalidRequest, match="in the past"):
        BatchSubmitRequest(template=TEMPLATE, deadline_ms=now - 1).check(now, 10)
    with pytest.raises(InvalidRequest, match="not both"):
        BatchSubmitRequest(template=TEMPLATE, jobs=[TEMPLATE]).check(now, 10)


def test_env_ids_round_trip_and_wait_exit_codes() -> None:
    env_id = attempt_env_id("bat-0123456789ab", 17, 2)
    assert parse_env_id(env_id) == ("bat-0123456789ab", 17, 2)
    assert parse_env_id("job-0123456789ab") is None
    assert wait_exit_code({"succeeded": "3", "failed": "0"}) == 0
    assert wait_exit_code({"succeeded": "2", "failed": "1"}) == 1
    assert wait_exit_code({"failed": "1", "unplaceable": "1"}) == 2


# -- the Lua transitions ---------------------------------------------------------------------------


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = client_for(redis_url)
    yield c
    c.close()


@pytest.fixture
def batches(client: redis.Redis) -> BatchStore:
    return BatchStore(client)


NOW = ManualClock().now_ms()


def submit(batches: BatchStore, **kw: Any) -> str:
    kw.setdefault("template", TEMPLATE)
    kw.setdefault("array", ArraySpec(first=0, last=2))
    return batches.submit(BatchSubmitRequest(**kw), "tenant-a", "alice", NOW).batch_id


@pytest.mark.redis
def test_submit_is_one_call_and_an_idempotency_key_creates_nothing_twice(batches: BatchStore) -> None:
    first = batches.submit(
        BatchSubmitRequest(template=TEMPLATE, array=ArraySpec(first=0, last=9999), idempotency_key="k"),
        "tenant-a",
        "alice",
        NOW,
    )
    assert first.created
    again = batches.submit(BatchSubmitRequest(template=TEMPLATE, idempotency_key="k"), "tenant-a", "alice", NOW)
    assert (again.batch_id, again.created) == (first.batch_id, False)
    other_tenant = batches.submit(BatchSubmitRequest(template=TEMPLATE, idempotency_key="k"), "tenant-b", "bob", NOW)
    assert other_tenant.created and other_tenant.batch_id != first.batch_id
    batch = batches.batch(first.batch_id)
    assert batch is not None and (batch.count("total"), batch.count("queued")) == (10_000, 10_000)
    assert (batch.caller, batch.tenant) == ("alice", "tenant-a")
    assert batches.pending(first.batch_id, 3) == [0, 1, 2]


@pytest.mark.redis
def test_counters_move_once_per_attempt_and_a_retry_goes_back_to_pending(batches: BatchStore) -> None:
    bid = submit(batches, retry=["exit:3"], max_attempts=2)
    batch = batches.batch(bid)
    assert batch is not None
    envs = {i: attempt_env_id(bid, i, 1) for i in range(3)}
    for i, env in envs.items():
        assert batches.start(bid, i, env, "h0", {"attempt": 1})
    assert not batches.start(bid, 0, envs[0], "h0", {})  # not pending any more: once only
    assert batches.running_on("h0") == {env: bid for env in envs.values()}
    assert batches.finish(batch, 0, envs[0], "h0", "succeeded", {"state": "succeeded"}, NOW) == 0
    assert batches.finish(batch, 0, envs[0], "h0", "succeeded", {}, NOW) == -1  # a duplicate end changes nothing
    batches.finish(batch, 1, envs[1], "h0", "retry", {"state": "queued", "attempt": 1}, NOW)
    batches.finish(batch, 2, envs[2], "h0", "failed", {"state": "failed"}, NOW)
    batch = batches.batch(bid)
    assert batch is not None
    counts = {k: batch.count(k) for k in ("queued", "running", "succeeded", "failed")}
    assert counts == {"queued": 1, "running": 0, "succeeded": 1, "failed": 1}
    assert batches.pending(bid, 10) == [1] and batch.state == "active"
    retry_env = attempt_env_id(bid, 1, 2)
    batches.start(bid, 1, retry_env, "h1", {"attempt": 2})
    assert batches.finish(batch, 1, retry_env, "h1", "succeeded", {"state": "succeeded"}, NOW) == 1  # over
    done = batches.batch(bid)
    assert done is not None and done.state == "finished" and bid not in batches.active()
    assert (done.count("succeeded"), done.count("failed"), wait_exit_code(done.raw)) == (2, 1, 1)
    assert batches.r.pttl(f"corral:batch:{bid}") <= done.retention_ms


@pytest.mark.redis
def test_cancel_empties_pending_and_a_finished_batch_says_so(batches: BatchStore) -> None:
    bid = submit(batches)
    batch = batches.batch(bid)
    assert batch is not None
    batches.start(bid, 0, attempt_env_id(bid, 0, 1), "h0", {})
    assert batches.cancel(batch, "test", NOW) == ["cancelled", "2"]
    batch = batches.batch(bid)
    assert batch is not None and batch.state == "cancelled" and batch.count("cancelled") == 2
    # The running attempt ends after the cancel: it counts as cancelled, is not retried, and ends the batch.
    assert batches.finish(batch, 0, attempt_env_id(bid, 0, 1), "h0", "retry", {}, NOW) == 1
    over = batches.batch(bid)
    assert over is not None and over.count("cancelled") == 3 and wait_exit_code(over.raw) == 1
    assert batches.cancel(over, "again", NOW) == ["cancelled"]  # already over: a no-op naming its state


@pytest.mark.redis
def test_cancel_with_every_job_running(batches: BatchStore) -> None:
    """Nothing pending (Airflow's on_kill of a one-job batch): Lua's -0 once made HINCRBY fail."""
    bid = submit(batches, array=ArraySpec(first=0, last=0))
    batches.start(bid, 0, attempt_env_id(bid, 0, 1), "h0", {})
    batch = batches.batch(bid)
    assert batch is not None
    assert batches.cancel(batch, "test", NOW) == ["cancelled", "0"]
    batch = batches.batch(bid)
    assert batch is not None and batch.state == "cancelled" and batch.count("queued") == 0


# -- decisions and the dispatcher ------------------------------------------------------------------


@pytest.mark.redis
def test_decide_applies_rules_budget_deadline_and_host_loss(batches: BatchStore) -> None:
    batch = batches.batch(submit(batches, retry=["reason:oom"], max_attempts=2, deadline_ms=NOW + 1000))
    assert batch is not None
    assert decide(batch, 0, "exit", 1, NOW) == "succeeded"
    assert decide(batch, None, "oom", 1, NOW) == "retry"
    assert decide(batch, None, "oom", 2, NOW) == "failed"
    assert decide(batch, 1, "exit", 1, NOW) == "failed"
    assert decide(batch, None, "host_lost", 2, NOW) == "retry"  # not the job's fault: 3 attempts at least
    assert decide(batch, None, "host_lost", 3, NOW) == "failed"
    assert decide(batch, None, "oom", 1, NOW + 1000) == "failed"  # past the deadline: no retry
    record = ended_record({"attempt": 1, "host": "h0", "started_ms": 1}, 3, "exit", "retry", 5)
    assert record["state"] == "queued" and record["history"] == [
        {"attempt": 1, "host": "h0", "exit_code": 3, "reason": "exit", "started_ms": 1, "ended_ms": 5}
    ]


def publish(store: Store, admission: Admission, host: str, slots: int) -> None:
    store.publish_host(host, {"host_id": host, "report": dump(report())}, 60_000)
    admission.publish_capacity(host, Capacity(slots, 64_000, 64_000), 60_000)


@pytest.mark.redis
def test_a_tick_sends_chains_only_for_reservations_within_the_throttle(client: redis.Redis) -> None:
    store, admission, batches = Store(client), Admission(client), BatchStore(client)
    for host in ("h0", "h1"):
        publish(store, admission, host, slots=2)
    sent: list[tuple[JobSpec, str, str]] = []
    reaped: list[str] = []
    clock = ManualClock(NOW)
    tick = Dispatcher(store, batches, admission, clock, lambda j, h, c: sent.append((j, h, c)), reaped.append).tick
    throttled = submit(batches, array=ArraySpec(first=0, last=9, throttle=3))
    tick()
    assert len(sent) == 3  # 4 slots free; the throttle keeps it to 3
    big = submit(batches, array=ArraySpec(first=0, last=9))
    tick()
    by_batch = Counter(j.environment_id.split(".")[0] for j, _, _ in sent)
    assert by_batch[throttled] == 3 and by_batch[big] == 1  # the last slot; nothing piles onto full hosts
    assert Counter(h for _, h, _ in sent) == {"h0": 2, "h1": 2}  # spread
    assert {c for _, _, c in sent} == {"alice"}  # the submitter's verified caller rides along
    job, _, _ = sent[0]
    assert job.env["CORRAL_BATCH_ID"] == throttled and job.env["CORRAL_ATTEMPT"] == "1"
    assert job.env["CORRAL_ARRAY_INDEX"] == "0"
    waiting = batches.batch(big)
    assert waiting is not None and waiting.raw["reason"] == "2 hosts full"
    tick()
    assert len(sent) == 4 and set(reaped) == {"h0", "h1"}  # nothing freed; the hosts are asked to reap
    # A host stops heartbeating: its attempts end as host_lost and go back to pending.
    client.delete("corral:host:h1")
    client.hdel("corral:capacity", "h1")
    tick()
    lost = [rec for b in (throttled, big) for rec in batches.jobs(b).values() if rec.get("reason") == "host_lost"]
    assert len(lost) == 2 and all(rec["state"] == "queued" for rec in lost)
    assert admission.used("h1").slots == 0


@pytest.mark.redis
def test_a_job_larger_than_every_host_fails_as_unplaceable(client: redis.Redis) -> None:
    store, admission, batches = Store(client), Admission(client), BatchStore(client)
    publish(store, admission, "h0", slots=4)
    huge = JobTemplate(image=IMAGE, argv=["true"], cpus=100.0, memory_mb=64)
    bid = submit(batches, template=huge, array=ArraySpec(first=0, last=1))
    sent: list[Any] = []
    Dispatcher(store, batches, admission, ManualClock(NOW), lambda *a: sent.append(a), lambda h: None).tick()
    batch = batches.batch(bid)
    assert sent == [] and batch is not None
    assert (batch.state, batch.count("unplaceable"), wait_exit_code(batch.raw)) == ("finished", 2, 2)
    assert "too small" in batches.jobs(bid)[0]["why"]


@pytest.mark.redis
def test_with_no_live_host_a_batch_waits_with_the_reason_and_others_still_go(client: redis.Redis) -> None:
    store, admission, batches = Store(client), Admission(client), BatchStore(client)
    sent: list[Any] = []
    tick = Dispatcher(store, batches, admission, ManualClock(NOW), lambda *a: sent.append(a), lambda h: None).tick
    bid = submit(batches)
    tick()
    batch = batches.batch(bid)
    assert sent == [] and batch is not None and batch.state == "active"
    assert "no live host" in batch.raw["reason"]
    publish(store, admission, "h0", slots=4)
    tick()
    assert len(sent) == 3
