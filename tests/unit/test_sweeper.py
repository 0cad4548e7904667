"""corral.host.sweeper: due detach tickets are sent to their host once per resend period, concurrent sweeps
never double-send, and a reclaim through the coordinator closes the ticket."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from corral.contract.models import DetachTransferRequest, DetachTransferResult, ReclaimRequest, SessionState
from corral.host.sweeper import sweep
from corral.state import store as keys
from corral.state.store import Store
from tests.unit.helpers import HOST, OTHER_HOST, ManualClock, Rig, client_for, job, make_rig

pytestmark = pytest.mark.redis

RESEND = 30_000
TTL = 60_000


class Outbox:
    """Collects what a sweep sends: (host, request)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, ReclaimRequest]] = []
        self.lock = threading.Lock()

    def __call__(self, host: str, request: ReclaimRequest) -> None:
        with self.lock:
            self.sent.append((host, request))

    def refs(self) -> list[str]:
        return [r.ticket_ref for _, r in self.sent]


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url) as r:
        yield r


def _detached(rig: Rig, ttl_ms: int = TTL) -> DetachTransferResult:
    j = job(allow_detach=True)
    rig.run_chain(j)
    return rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=ttl_ms))


def test_sweep_does_not_send_tickets_before_their_deadline(rig: Rig) -> None:
    ticket = _detached(rig)
    out = Outbox()
    rig.clock.advance(TTL - 1)
    report = sweep(rig.store, rig.clock, out, resend_after_ms=RESEND)
    assert report.sent == [] and out.sent == []
    assert rig.store.ticket(ticket.ticket_ref)["state"] == "detached"
    assert "attempts" not in rig.store.ticket(ticket.ticket_ref)


def test_sweep_sends_a_due_ticket_once_per_resend_period_to_its_host(rig: Rig) -> None:
    ticket = _detached(rig)
    out = Outbox()
    rig.clock.advance(TTL)
    report = sweep(rig.store, rig.clock, out, resend_after_ms=RESEND)
    assert report.sent == [ticket.ticket_ref]
    assert out.sent == [(HOST, ReclaimRequest(ticket_ref=ticket.ticket_ref))]
    # more sweeps inside the resend period send nothing
    for step in (0, 1, RESEND - 2):  # cumulative: RESEND - 1
        rig.clock.advance(step)
        assert sweep(rig.store, rig.clock, out, resend_after_ms=RESEND).sent == []
    assert len(out.sent) == 1


def test_sweep_resends_when_the_ticket_stays_open(rig: Rig) -> None:
    ticket = _detached(rig)
    out = Outbox()
    rig.clock.advance(TTL)
    sweep(rig.store, rig.clock, out, resend_after_ms=RESEND)
    rig.clock.advance(RESEND)
    assert sweep(rig.store, rig.clock, out, resend_after_ms=RESEND).sent == [ticket.ticket_ref]
    rig.clock.advance(RESEND)
    assert sweep(rig.store, rig.clock, out, resend_after_ms=RESEND).sent == [ticket.ticket_ref]
    assert out.refs() == [ticket.ticket_ref] * 3
    assert rig.store.ticket(ticket.ticket_ref)["attempts"] == "3"


def test_sweep_sends_each_ticket_to_its_own_host(redis_url: str) -> None:
    client = client_for(redis_url)
    store = Store(client)
    clock = ManualClock()
    now = clock.now_ms()
    store.put_ticket("tkt-a", {"environment_id": "env-a", "host": HOST}, now)
    store.put_ticket("tkt-b", {"environment_id": "env-b", "host": OTHER_HOST}, now - 5)
    store.put_ticket("tkt-c", {"environment_id": "env-c", "host": OTHER_HOST}, now + 5)
    out = Outbox()
    sweep(store, clock, out, resend_after_ms=RESEND)
    assert sorted((h, r.ticket_ref) for h, r in out.sent) == [(HOST, "tkt-a"), (OTHER_HOST, "tkt-b")]
    client.close()


def test_sweep_skips_a_ticket_without_host(redis_url: str) -> None:
    client = client_for(redis_url)
    store = Store(client)
    clock = ManualClock()
    store.put_ticket("tkt-orphan", {"environment_id": "env-x"}, clock.now_ms())
    out = Outbox()
    assert sweep(store, clock, out).sent == []
    assert out.sent == []
    client.close()


def test_concurrent_sweeps_never_both_send_a_ticket(redis_url: str) -> None:
    setup = client_for(redis_url)
    store = Store(setup)
    clock = ManualClock()
    refs = [f"tkt-{i}" for i in range(40)]
    for ref in refs:
        store.put_ticket(ref, {"environment_id": f"env-{ref}", "host": HOST}, clock.now_ms() - 1)
    out = Outbox()
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def sweeper() -> None:
        c = client_for(redis_url)
        try:
            barrier.wait()
            for _ in range(5):
                sweep(Store(c), clock, out, resend_after_ms=RESEND, limit=4)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=sweeper) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert Counter(out.refs()) == Counter(refs)
    setup.close()


def test_reclaim_after_sweep_closes_the_ticket_and_cleans_the_session(rig: Rig) -> None:
    ticket = _detached(rig)
    env_id = rig.store.ticket(ticket.ticket_ref)["environment_id"]
    assert rig.store.session(env_id)["state"] == SessionState.detached
    out = Outbox()
    rig.clock.advance(TTL)
    sweep(rig.store, rig.clock, out, resend_after_ms=RESEND)
    ((host, request),) = out.sent
    assert host == rig.coordinator.host_id
    result = rig.coordinator.reclaim(request)  # what the host's worker does with the message
    assert result.status == "completed"
    assert rig.runtime.effects["reclaim"] == 1
    assert rig.client.zscore(keys.TICKETS_DUE_KEY, ticket.ticket_ref) is None
    assert rig.store.ticket(ticket.ticket_ref)["state"] == "reclaimed"
    assert rig.store.session(env_id)["state"] == SessionState.cleaned
    # closed: never sent again
    rig.clock.advance(10 * RESEND)
    assert sweep(rig.store, rig.clock, out, resend_after_ms=RESEND).sent == []
    # a duplicate delivery of the sent reclaim is a replay, not a second effect
    assert rig.coordinator.reclaim(request) == result
    assert rig.runtime.effects["reclaim"] == 1
