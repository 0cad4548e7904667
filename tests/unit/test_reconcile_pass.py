"""corral.host.reconciler.Reconciler.run on a real Redis with a fake runtime that lists what it holds:
one malformed session record or one adapter failure is a finding of its own, and the pass goes on."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.contract.models import ProcessStatsRequest, ProcessStatsSnapshot, SessionState
from corral.contract.refs import process_ref_for
from corral.fleet.reports import Action
from corral.host.reconciler import Reconciler
from corral.state import store as keys
from tests.unit.helpers import HOST, CountingRuntime, Rig, job, make_rig

pytestmark = pytest.mark.redis


class ListingRuntime(CountingRuntime):
    """A fake runtime that says which environments it holds (``list_labeled``) and whose stats fail
    outside the contract (a raw library error, not an ``AgentError``) for the listed environments."""

    def __init__(self) -> None:
        super().__init__(HOST)
        self.holding: dict[str, str] = {}
        self.broken_stats: set[str] = set()

    def list_labeled(self) -> dict[str, list[dict[str, str]]]:
        return {
            "containers": [
                {"corral.session": env_id, "status": status} for env_id, status in sorted(self.holding.items())
            ]
        }

    def collect_stats(self, request: ProcessStatsRequest) -> ProcessStatsSnapshot:
        if any(process_ref_for(env_id) == request.process_ref for env_id in self.broken_stats):
            raise RuntimeError("engine said something unexpected")
        return super().collect_stats(request)


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url, runtime=ListingRuntime()) as r:
        yield r


def _started(rig: Rig, status: str = "running") -> str:
    j = job()
    rig.run_chain(j)
    runtime = rig.runtime
    assert isinstance(runtime, ListingRuntime)
    runtime.holding[j.environment_id] = status
    return j.environment_id


def test_one_bad_record_and_one_adapter_error_do_not_stop_the_pass(rig: Rig) -> None:
    runtime = rig.runtime
    assert isinstance(runtime, ListingRuntime)
    garbled = _started(rig)  # stuck "preparing" with an updated_ms that is no number
    rig.client.hset(keys.session_key(garbled), mapping={"state": "preparing", "updated_ms": "yesterday"})
    unreadable = _started(rig)  # cleaned, leftovers, and an environment record that is no JSON
    rig.client.hset(keys.session_key(unreadable), mapping={"state": "cleaned", "environment": "{not json"})
    broken = _started(rig, status="exited")  # its process ended; the adapter fails to say how
    runtime.broken_stats.add(broken)
    healthy = _started(rig)  # cleaned with leftovers: the pass must still reach it
    rig.client.hset(keys.session_key(healthy), "state", "cleaned")

    report = Reconciler(rig.coordinator, grace_s=0, stale_after_s=0).run()

    found = {f.environment_id: (f.action, f.outcome) for f in report.findings}
    assert found[garbled][0] is Action.error
    assert "malformed session record" in next(f.reason for f in report.findings if f.environment_id == garbled)
    assert found[unreadable] == (Action.reclaim, "cleanup completed (environment record unreadable: cleaned up by id)")
    assert found[broken] == (Action.record_exit, "failed: RuntimeError")
    assert found[healthy] == (Action.reclaim, "cleanup completed")
    assert rig.store.session(healthy)["state"] == SessionState.cleaned
    assert rig.store.session(garbled)["state"] == "preparing"  # judged by nobody: left alone
    assert rig.runtime.calls["cleanup"] == 2


def test_a_record_naming_another_environment_is_cleaned_up_only_by_its_own_id(rig: Rig) -> None:
    victim = _started(rig)  # running, owned: kept
    leftover = _started(rig)
    victim_env = rig.client.hget(keys.session_key(victim), "environment")
    rig.client.hset(keys.session_key(leftover), mapping={"state": "cleaned", "environment": victim_env or ""})
    report = Reconciler(rig.coordinator, grace_s=0, stale_after_s=0).run()
    found = {f.environment_id: (f.action, f.outcome) for f in report.findings}
    assert found == {
        victim: (Action.keep, ""),
        leftover: (Action.reclaim, "cleanup completed (environment record names another id: cleaned up by id)"),
    }
    assert rig.store.session(victim)["state"] == SessionState.running


def test_record_exits_goes_on_after_an_adapter_error(rig: Rig) -> None:
    runtime = rig.runtime
    assert isinstance(runtime, ListingRuntime)
    first, second = sorted([_started(rig, status="exited"), _started(rig, status="exited")])
    runtime.broken_stats.add(first)  # sorted first, so it is met first
    assert Reconciler(rig.coordinator).record_exits() == 1
    assert rig.store.session(second)["state"] == SessionState.exited
