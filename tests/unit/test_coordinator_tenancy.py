"""corral.host.coordinator with tenants: sessions record their owner, another tenant's session answers exactly
like a session that does not exist (and is touched by nothing), an environment id is single-use across
tenants, per-tenant rules are enforced at admission, operators and components act on any session.

FakeRuntime (counting adapter calls) + a real Redis; no Celery, no Docker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from corral.contract.errors import AgentError, PolicyDenial
from corral.contract.models import (
    CleanupRequest,
    DetachTransferRequest,
    ProcessIoRequest,
    ProcessSignalRequest,
    ProcessStartResult,
    ProcessStatsRequest,
    ReclaimRequest,
    SessionState,
)
from corral.contract.vocabulary import ProcessIoStream, ProcessSignal
from corral.fleet.job import JobSpec
from corral.trust.identity import Caller
from tests.unit.helpers import HOST, Rig, job, make_rig, request_of
from tests.unit.policy_helpers import fixed, policy_with

pytestmark = pytest.mark.redis

POLICY = policy_with(
    mounts={"data": {"path": "/srv/data"}, "models": {"path": "/srv/models"}},
    tenants={
        "acme": {"identities": ["alice", "alan"], "secrets": ["acme-*"], "mounts": ["data"]},
        "globex": {"identities": ["bob"], "limits": {"max_sandboxes": 1}},
        "ops": {"identities": ["olga"], "operator": True},
    },
)


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url, policy=fixed(POLICY)) as r:
        yield r


def as_(rig: Rig, identity: str) -> Caller:
    return rig.coordinator.caller(identity)


def run_as(rig: Rig, j: JobSpec, caller: Caller, upto: str = "start_process") -> dict[str, BaseModel]:
    results: dict[str, BaseModel] = {}
    for op, request in j.requests(HOST):
        results[op] = getattr(rig.coordinator, op)(request, caller=caller)
        if op == upto:
            break
    return results


def started_as(rig: Rig, identity: str, **kwargs: object) -> tuple[JobSpec, str]:
    j = job(**kwargs)
    result = run_as(rig, j, as_(rig, identity))["start_process"]
    assert isinstance(result, ProcessStartResult)
    return j, result.process_ref


def error_of(call: object) -> AgentError:
    assert callable(call)
    with pytest.raises(AgentError) as info:
        call()
    return info.value


def shape(error: AgentError, ref: str) -> tuple[str, str, str, dict[str, str]]:
    """What the caller sees, with the ref it sent itself masked."""
    context = {k: v.replace(ref, "REF") for k, v in error.context.items()}
    return type(error).__name__, error.kind, error.message.replace(ref, "REF"), context


# -- ownership is recorded ----------------------------------------------------------------------


def test_session_records_its_tenant_and_identity(rig: Rig) -> None:
    j, _ = started_as(rig, "alice")
    record = rig.store.session(j.environment_id)
    assert (record["tenant"], record["identity"]) == ("acme", "alice")


def test_an_identity_of_no_tenant_is_refused_before_anything(rig: Rig) -> None:
    denial = error_of(lambda: as_(rig, "mallory"))
    assert isinstance(denial, PolicyDenial) and denial.context["rule"] == "tenants.identities"
    assert error_of(lambda: as_(rig, None)).context["rule"] == "tenants.identities"  # type: ignore[arg-type]


def test_a_member_of_the_same_tenant_may_act_on_the_session(rig: Rig) -> None:
    _, process_ref = started_as(rig, "alice")
    rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=process_ref), caller=as_(rig, "alan"))


# -- another tenant's session: the answer of a session that does not exist --------------------------


@pytest.mark.parametrize("op", ["stdout", "stdin", "signal", "stats"])
def test_process_operations_on_another_tenants_process_answer_like_a_missing_one(rig: Rig, op: str) -> None:
    j, process_ref = started_as(rig, "alice", stdin=True)
    bob = as_(rig, "bob")
    missing = "proc-0123456789abcdef"

    def call(ref: str) -> object:
        c = rig.coordinator
        if op == "stdout":
            return lambda: c.stream_io(ProcessIoRequest(process_ref=ref, stream=ProcessIoStream.stdout), caller=bob)
        if op == "stdin":
            request = ProcessIoRequest(process_ref=ref, stream=ProcessIoStream.stdin, data_b64="aGk=")
            return lambda: c.stream_io(request, "d1", caller=bob)
        if op == "signal":
            request = ProcessSignalRequest(process_ref=ref, signal=ProcessSignal.kill, grace_ms=5_000)
            return lambda: c.signal_process(request, "d1", caller=bob)
        return lambda: c.collect_stats(ProcessStatsRequest(process_ref=ref), caller=bob)

    calls_before = sum(rig.runtime.calls.values())
    foreign = error_of(call(process_ref))
    absent = error_of(call(missing))
    assert isinstance(foreign, PolicyDenial)
    assert shape(foreign, process_ref) == shape(absent, missing)
    assert "acme" not in foreign.message and j.environment_id not in foreign.message
    assert sum(rig.runtime.calls.values()) == calls_before, "the runtime was never asked"
    assert rig.store.session(j.environment_id)["state"] == SessionState.running


def test_cleanup_and_detach_of_another_tenants_session_answer_like_a_missing_one(rig: Rig) -> None:
    j, _ = started_as(rig, "alice", allow_detach=True)
    ghost = job(allow_detach=True)
    bob = as_(rig, "bob")
    c = rig.coordinator
    for make in (
        lambda e: lambda: c.cleanup(CleanupRequest(environment=e, cleanup_plan_ref="plan-x"), caller=bob),
        lambda e: lambda: c.detach(DetachTransferRequest(environment=e, ttl_ms=60_000), caller=bob),
    ):
        foreign = error_of(make(j.environment()))
        absent = error_of(make(ghost.environment()))
        assert isinstance(foreign, PolicyDenial)
        assert shape(foreign, j.environment_id) == shape(absent, ghost.environment_id)
    assert rig.runtime.calls["cleanup"] == 0 and rig.runtime.calls["detach"] == 0
    assert rig.store.session(j.environment_id)["state"] == SessionState.running


def test_reclaim_of_another_tenants_ticket_answers_like_a_missing_ticket(rig: Rig) -> None:
    j, _ = started_as(rig, "alice", allow_detach=True)
    ack = rig.coordinator.detach(
        DetachTransferRequest(environment=j.environment(), ttl_ms=60_000), caller=as_(rig, "alice")
    )
    bob = as_(rig, "bob")
    foreign = error_of(lambda: rig.coordinator.reclaim(ReclaimRequest(ticket_ref=ack.ticket_ref), caller=bob))
    absent = error_of(lambda: rig.coordinator.reclaim(ReclaimRequest(ticket_ref="tkt-nothing"), caller=bob))
    assert shape(foreign, ack.ticket_ref) == shape(absent, "tkt-nothing")
    # naming the environment too (the lost-ticket path) changes nothing
    with_env = ReclaimRequest(ticket_ref=ack.ticket_ref, environment_id=j.environment_id)
    assert shape(error_of(lambda: rig.coordinator.reclaim(with_env, caller=bob)), ack.ticket_ref) == shape(
        absent, "tkt-nothing"
    )
    assert rig.runtime.calls["reclaim"] == 0
    assert rig.store.ticket(ack.ticket_ref)["state"] == "detached"
    assert rig.store.ticket(ack.ticket_ref)["tenant"] == "acme"


def test_chain_steps_of_another_tenants_environment_get_no_replay(rig: Rig) -> None:
    j = job()
    run_as(rig, j, as_(rig, "alice"), upto="resolve_mounts")
    bob = as_(rig, "bob")
    for op in ("resolve_image", "prepare_rootfs", "configure_network", "prepare_environment", "start_process"):
        denial = error_of(lambda op=op: getattr(rig.coordinator, op)(request_of(j, op), caller=bob))  # type: ignore[misc]
        assert isinstance(denial, PolicyDenial) and denial.context["rule"] == "tenants.sessions", op
        assert denial.message == f"no session {j.environment_id} for this caller"


def test_resubmitting_another_tenants_environment_id_is_no_replay(rig: Rig) -> None:
    j = job()
    run_as(rig, j, as_(rig, "alice"), upto="prepare_session")
    calls = rig.runtime.calls["prepare_session"]
    denial = error_of(lambda: rig.coordinator.prepare_session(request_of(j, "prepare_session"), caller=as_(rig, "bob")))
    assert isinstance(denial, PolicyDenial) and denial.context["rule"] == "tenants.sessions"
    assert "acme" not in denial.message and "alice" not in denial.message
    assert rig.runtime.calls["prepare_session"] == calls
    assert "replay" not in {r.kind for r in rig.records(j.environment_id)}
    # the owner's own re-submission still is a replay
    rig.coordinator.prepare_session(request_of(j, "prepare_session"), caller=as_(rig, "alan"))
    assert "replay" in {r.kind for r in rig.records(j.environment_id)}


def test_foreign_attempts_are_journaled_for_operators_not_in_the_victims_journal(rig: Rig) -> None:
    j, process_ref = started_as(rig, "alice")
    error_of(
        lambda: rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=process_ref), caller=as_(rig, "bob"))
    )
    assert all("bob" not in str(r.fields) for r in rig.records(j.environment_id))
    host_records = rig.journal.read_host(HOST)
    assert [(r.kind, r.fields["identity"], r.fields["tenant"], r.fields["environment_id"]) for r in host_records] == [
        ("denial", "bob", "globex", j.environment_id)
    ]


# -- operators and components -------------------------------------------------------------------


def test_operators_and_components_act_on_any_tenants_session(rig: Rig) -> None:
    j, process_ref = started_as(rig, "alice", allow_detach=True)
    rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=process_ref), caller=as_(rig, "olga"))
    ack = rig.coordinator.detach(
        DetachTransferRequest(environment=j.environment(), ttl_ms=60_000), caller=as_(rig, "olga")
    )
    assert rig.store.ticket(ack.ticket_ref)["tenant"] == "acme", "the ticket keeps the session's tenant"
    rig.coordinator.reclaim(ReclaimRequest(ticket_ref=ack.ticket_ref), caller=as_(rig, "corral-beat"))
    assert rig.store.session(j.environment_id)["state"] == SessionState.cleaned


def test_a_component_cannot_create_a_session(rig: Rig) -> None:
    denial = error_of(lambda: run_as(rig, job(), as_(rig, "corral-host-x"), upto="prepare_session"))
    assert denial.context["rule"] == "tenants.identities"


def test_cleanup_without_a_record_is_for_operators_only(rig: Rig) -> None:
    ghost = job()
    request = CleanupRequest(environment=ghost.environment(), cleanup_plan_ref="plan-x")
    assert error_of(lambda: rig.coordinator.cleanup(request, caller=as_(rig, "bob"))).context["rule"] == (
        "tenants.sessions"
    )
    rig.coordinator.cleanup(request, caller=as_(rig, "olga"))
    assert rig.runtime.calls["cleanup"] == 1


# -- per-tenant rules at admission --------------------------------------------------------------


def test_secret_granted_to_one_tenant_only(rig: Rig) -> None:
    run_as(rig, job(secrets=["acme-token"]), as_(rig, "alice"))
    denial = error_of(lambda: run_as(rig, job(secrets=["acme-token"]), as_(rig, "bob"), upto="prepare_session"))
    assert denial.context["rule"] == "tenants.globex.secrets"
    assert rig.runtime.calls["prepare_session"] == 1, "only alice's session reached the runtime"


def test_mount_alias_narrowed_per_tenant(rig: Rig) -> None:
    denial = error_of(lambda: run_as(rig, job(mounts=["models:/m"]), as_(rig, "alice"), upto="prepare_session"))
    assert denial.context["rule"] == "tenants.acme.mounts"
    run_as(rig, job(mounts=["models:/m"]), as_(rig, "bob"), upto="prepare_session")


def test_tenant_sandbox_limit_counts_only_that_tenants_live_sessions(rig: Rig) -> None:
    started_as(rig, "alice")
    first, _ = started_as(rig, "bob")
    denial = error_of(lambda: run_as(rig, job(), as_(rig, "bob"), upto="prepare_session"))
    assert denial.context["rule"] == "tenants.globex.limits.max_sandboxes"
    rig.coordinator.cleanup(
        CleanupRequest(environment=first.environment(), cleanup_plan_ref="plan-1"), caller=as_(rig, "bob")
    )
    started_as(rig, "bob")
