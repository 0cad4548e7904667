"""corral.host.views: ps / tickets / journal show the caller's tenant only (operators see all); another
tenant's journal answers like a missing session. A real Redis and the fake runtime."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.contract.errors import PolicyDenial
from corral.contract.models import DetachTransferRequest
from corral.host import views
from tests.unit.helpers import Rig, job, make_rig
from tests.unit.policy_helpers import fixed, policy_with
from tests.unit.test_coordinator_tenancy import POLICY, as_, run_as

pytestmark = pytest.mark.redis


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url, policy=fixed(POLICY)) as r:
        yield r


def test_each_tenant_sees_only_its_sessions_and_tickets_operators_see_all(rig: Rig) -> None:
    a, b = job(allow_detach=True), job(allow_detach=True)
    run_as(rig, a, as_(rig, "alice"))
    run_as(rig, b, as_(rig, "bob"))
    for j, who in ((a, "alice"), (b, "bob")):
        rig.coordinator.detach(DetachTransferRequest(environment=j.environment(), ttl_ms=60_000), caller=as_(rig, who))

    def ids(identity: str) -> tuple[set[str], set[str]]:
        caller = as_(rig, identity)
        sessions = {s["environment_id"] for s in views.sessions(rig.store, caller).rows}
        tickets = {t["environment_id"] for t in views.tickets(rig.store, caller).rows}
        return sessions, tickets

    assert ids("alice") == ({a.environment_id}, {a.environment_id})
    assert ids("alan") == ({a.environment_id}, {a.environment_id})
    assert ids("bob") == ({b.environment_id}, {b.environment_id})
    assert ids("olga") == ({a.environment_id, b.environment_id}, {a.environment_id, b.environment_id})


def test_journal_of_another_tenant_is_the_missing_session_answer(rig: Rig) -> None:
    a = job()
    run_as(rig, a, as_(rig, "alice"))
    assert views.journal(rig.store, rig.journal, as_(rig, "alice"), a.environment_id).rows
    bob = as_(rig, "bob")
    with pytest.raises(PolicyDenial) as foreign:
        views.journal(rig.store, rig.journal, bob, a.environment_id)
    with pytest.raises(PolicyDenial) as missing:
        views.journal(rig.store, rig.journal, bob, "job-missing")
    assert foreign.value.message.replace(a.environment_id, "X") == missing.value.message.replace("job-missing", "X")
    assert views.journal(rig.store, rig.journal, as_(rig, "olga"), a.environment_id).rows


def test_without_tenants_everyone_sees_everything_as_before(redis_url: str) -> None:
    with make_rig(redis_url, policy=fixed(policy_with())) as rig:
        j = job()
        run_as(rig, j, rig.coordinator.caller("someone"))
        assert [s["environment_id"] for s in views.sessions(rig.store, rig.coordinator.caller(None)).rows] == [
            j.environment_id
        ]
