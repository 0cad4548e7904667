"""``corral.host.launch``: the prepare-to-start chain run from one message keeps every step's
guarantees (its journal records, its idempotency key, its replay) and cleans up after a failure
the way the chain's ``link_error`` did."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.contract.errors import IsolationFailure, PolicyDenial
from corral.contract.models import ProcessStartResult, SessionState
from corral.contract.operations import CHAIN, Operation
from corral.fleet.job import LaunchRequest
from corral.host.coordinator import LOCAL_CALLER
from corral.host.launch import launch
from tests.unit.helpers import CHAIN_OPS, HOST, Rig, job, make_rig

pytestmark = pytest.mark.redis


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url) as r:
        yield r


def _launch(rig: Rig, request: LaunchRequest, last_attempt: bool = False) -> ProcessStartResult:
    return launch(rig.coordinator, request, LOCAL_CALLER, last_attempt=last_attempt)


def test_the_launch_requests_are_the_chain_requests_a_client_would_send_one_by_one() -> None:
    j = job(env={"A": "1"}, secrets=["token"])
    assert [(op, request) for op, request in j.launch(HOST).requests()] == j.requests(HOST)
    assert [op for op, _ in j.launch(HOST).requests()] == list(CHAIN)


def test_a_launch_journals_every_step_in_contract_order_and_starts_the_process(rig: Rig) -> None:
    j = job()
    result = _launch(rig, j.launch(HOST))
    assert rig.kinds(j.environment_id) == [(kind, op) for op in CHAIN_OPS for kind in ("intent", "result")]
    assert rig.store.session(j.environment_id)["state"] == SessionState.running
    assert result.process_ref == rig.store.session(j.environment_id)["process_ref"]
    assert all(rig.runtime.calls[op] == 1 for op in CHAIN_OPS)


def test_a_redelivered_launch_replays_every_step_without_the_adapter(rig: Rig) -> None:
    j = job()
    first = _launch(rig, j.launch(HOST))
    again = _launch(rig, j.launch(HOST))
    assert again == first
    assert all(rig.runtime.calls[op] == 1 for op in CHAIN_OPS)
    assert rig.kinds(j.environment_id)[-len(CHAIN_OPS) :] == [("replay", op) for op in CHAIN_OPS]


def test_a_launch_after_some_steps_ran_alone_runs_only_the_rest(rig: Rig) -> None:
    """The launch's steps have the keys of the tasks of the same name: a client that sent the first
    steps one by one (or a chain cut short) and then the launch gets each effect once."""
    j = job()
    rig.run_chain(j, upto="prepare_rootfs")
    _launch(rig, j.launch(HOST))
    assert all(rig.runtime.calls[op] == 1 for op in CHAIN_OPS)
    assert rig.store.session(j.environment_id)["state"] == SessionState.running


def test_a_retryable_step_failure_keeps_what_was_prepared_and_the_retry_finishes(rig: Rig) -> None:
    j = job()
    rig.runtime.fail_next[Operation.prepare_environment] = IsolationFailure("docker hiccup")
    with pytest.raises(IsolationFailure):
        _launch(rig, j.launch(HOST))
    assert rig.store.session(j.environment_id)["state"] == SessionState.preparing  # no cleanup ran
    assert ("intent", "cleanup") not in rig.kinds(j.environment_id)

    _launch(rig, j.launch(HOST))  # the task's retry
    assert rig.store.session(j.environment_id)["state"] == SessionState.running
    assert rig.runtime.calls[Operation.resolve_image] == 1
    assert rig.runtime.calls[Operation.prepare_environment] == 2
    assert rig.runtime.effects["create_container"] == 1


def test_a_failure_for_good_cleans_up_and_raises_the_steps_error(rig: Rig) -> None:
    j = job()
    rig.runtime.fail_next[Operation.configure_network] = PolicyDenial("no network today", context={"rule": "test"})
    with pytest.raises(PolicyDenial, match="no network today"):
        _launch(rig, j.launch(HOST))
    kinds = rig.kinds(j.environment_id)
    assert kinds[-2:] == [("intent", "cleanup"), ("result", "cleanup")]
    assert ("intent", "prepare_secrets") not in kinds  # nothing after the failed step ran
    assert rig.runtime.calls[Operation.cleanup] == 1
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned


def test_the_last_attempt_cleans_up_after_a_retryable_failure_too(rig: Rig) -> None:
    j = job()
    rig.runtime.fail_next[Operation.start_process] = IsolationFailure("docker hiccup")
    with pytest.raises(IsolationFailure):
        _launch(rig, j.launch(HOST), last_attempt=True)
    assert rig.kinds(j.environment_id)[-2:] == [("intent", "cleanup"), ("result", "cleanup")]
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned


def test_a_failed_cleanup_does_not_hide_the_steps_error(rig: Rig) -> None:
    j = job()
    rig.runtime.fail_next[Operation.resolve_image] = PolicyDenial("image refused", context={"rule": "test"})
    rig.runtime.fail_next[Operation.cleanup] = RuntimeError("engine gone")
    with pytest.raises(PolicyDenial, match="image refused"):
        _launch(rig, j.launch(HOST))
    assert rig.runtime.calls[Operation.cleanup] == 1


def test_a_launch_refused_for_its_process_size_returns_its_reservation(rig: Rig) -> None:
    from corral.fleet.admission import Capacity, Demand

    admission = rig.coordinator.admission
    admission.publish_capacity(HOST, Capacity(4, 4000, 8192), 3_600_000)
    j = job(argv=["x" * (100 * 1024)] * 3, memory_mb=256)  # 300 KiB of argv: over max_argv_bytes
    admission.reserve(j.environment_id, Demand.of(1, 256), [HOST], rig.clock.now_ms())
    assert admission.leased(j.environment_id)
    with pytest.raises(PolicyDenial, match="argv"):
        _launch(rig, j.launch(HOST))
    assert not admission.leased(j.environment_id) and admission.allocation_host(j.environment_id) is None
    kinds = rig.kinds(j.environment_id)
    assert kinds[0] == ("denial", "prepare_session")
    assert not [op for kind, op in kinds if kind == "intent" and op in CHAIN_OPS]  # no step was attempted
