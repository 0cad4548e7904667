"""corral.contract.matching: fail-closed capability matching (CONTRACT.md rule 4), as a table over the matrix:
class strength, each capability, each trust field, health, and the approval scope of a fallback.

Then placement: placement.filter_hosts skips hosts whose published report does not match, and a requested
host that does not match is a PolicyDenial naming the gaps (real Redis, no worker)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pydantic import ValidationError

from corral.client.client import Client
from corral.contract.errors import NotFound, PolicyDenial
from corral.contract.matching import Approval, ApprovalKind, find_gaps, kind_accepts, match, placement_match
from corral.contract.models import (
    CLASS_STRENGTH,
    DataResidencyRequirement,
    HealthState,
    IsolationRequirement,
    IsolationTrustRequirement,
    dump,
)
from corral.contract.vocabulary import (
    AuditabilityRequirement,
    IsolationCapability,
    IsolationClass,
    LocalityRequirement,
    TenantBoundaryRequirement,
)
from corral.fleet.placement import filter_hosts, health_of, host_statuses
from corral.settings import Settings
from corral.state.journal import Journal
from corral.state.services import Services
from corral.state.store import Store
from tests.unit.policy_helpers import STRONG_TRUST, approval, report, requirement

C = IsolationClass
ORDER = [C.host_process, C.sandbox, C.container, C.remote_sandbox, C.lightweight_vm]
"""The strength order the contract vocabulary states (weakest first)."""


# -- class ---------------------------------------------------------------------------------------


def test_class_strength_order_is_the_documented_one() -> None:
    assert sorted(CLASS_STRENGTH, key=CLASS_STRENGTH.__getitem__) == ORDER


@pytest.mark.parametrize("needed", ORDER)
@pytest.mark.parametrize("offered", ORDER)
def test_class_gap_iff_no_supported_class_is_as_strong(needed: IsolationClass, offered: IsolationClass) -> None:
    result = match(requirement(needed), report(classes=[offered]))
    if ORDER.index(offered) >= ORDER.index(needed):
        assert result.ok and result.gaps == ()
    else:
        assert result.denied == (f"class:{needed.value}",)


@pytest.mark.parametrize("needed", ORDER[1:])
def test_host_process_adapter_is_a_downgrade_for_every_stronger_class(needed: IsolationClass) -> None:
    result = match(requirement(needed), report(classes=[C.host_process]))
    assert result.denied == (f"class:{needed.value}",)
    approved = match(
        requirement(needed, allowed_gaps=[f"class:{needed.value}"], policy_ref="dec-1"),
        report(classes=[C.host_process]),
        [approval([f"class:{needed.value}"])],
    )
    assert approved.ok and approved.accepted == (f"class:{needed.value}",)


def test_the_strongest_supported_class_counts_and_no_class_at_all_is_a_gap() -> None:
    assert match(requirement(C.container), report(classes=[C.host_process, C.lightweight_vm])).ok
    assert match(requirement(C.host_process), report(classes=[])).denied == ("class:host_process",)


# -- capabilities --------------------------------------------------------------------------------


@pytest.mark.parametrize("cap", list(IsolationCapability))
def test_each_missing_capability_is_its_own_gap(cap: IsolationCapability) -> None:
    others = [c for c in IsolationCapability if c is not cap]
    result = match(requirement(capabilities=[cap]), report(capabilities=others))
    assert result.denied == (f"capability:{cap.value}",)
    assert match(requirement(capabilities=[cap]), report(capabilities=[cap])).ok


@pytest.mark.parametrize("cap", list(IsolationCapability))
def test_a_capability_also_declared_unsupported_is_not_relied_on(cap: IsolationCapability) -> None:
    inconsistent = report(unsupported_requirements=[f"capability:{cap.value}"])
    assert match(requirement(capabilities=[cap]), inconsistent).denied == (f"capability:{cap.value}",)


def test_every_missing_capability_is_listed_once_in_order() -> None:
    need = [IsolationCapability.audit_log, IsolationCapability.egress_allowlist, IsolationCapability.audit_log]
    result = match(requirement(capabilities=need), report(capabilities=[IsolationCapability.cleanup]))
    # upstream's capability set is a BTreeSet: one entry each, in declaration order
    assert result.denied == ("capability:egress_allowlist", "capability:audit_log")


# -- trust ---------------------------------------------------------------------------------------

LEVELS = ["none", "best_effort", "required"]


def dr(value: Any) -> DataResidencyRequirement:
    return DataResidencyRequirement.model_validate(value)


TRUST_TABLE: list[tuple[str, Any, Any, bool]] = [
    # field, required, reported, gap?
    ("locality", LocalityRequirement.any, LocalityRequirement.any, False),
    ("locality", LocalityRequirement.any, LocalityRequirement.local, False),
    ("locality", LocalityRequirement.any, LocalityRequirement.remote, False),
    ("locality", LocalityRequirement.local, LocalityRequirement.local, False),
    ("locality", LocalityRequirement.local, LocalityRequirement.remote, True),
    ("locality", LocalityRequirement.local, LocalityRequirement.any, True),
    ("locality", LocalityRequirement.remote, LocalityRequirement.remote, False),
    ("locality", LocalityRequirement.remote, LocalityRequirement.local, True),
    ("tenancy", TenantBoundaryRequirement.shared_allowed, TenantBoundaryRequirement.shared_allowed, False),
    ("tenancy", TenantBoundaryRequirement.shared_allowed, TenantBoundaryRequirement.dedicated, False),
    ("tenancy", TenantBoundaryRequirement.dedicated, TenantBoundaryRequirement.dedicated, False),
    ("tenancy", TenantBoundaryRequirement.dedicated, TenantBoundaryRequirement.shared_allowed, True),
    # upstream: none accepts anything, best_effort anything but none, required only required
    *[
        (name, need, have, LEVELS.index(have) < LEVELS.index(need))
        for name in ("auditability", "secret_isolation")
        for need in LEVELS
        for have in LEVELS
    ],
    # upstream's cleanup guarantee has no "none": best_effort accepts anything, required needs required
    ("cleanup", "best_effort", "best_effort", False),
    ("cleanup", "best_effort", "required", False),
    ("cleanup", "required", "required", False),
    ("cleanup", "required", "best_effort", True),
    ("data_residency", dr("any"), dr("any"), False),
    ("data_residency", dr("any"), dr("local_only"), False),
    ("data_residency", dr("any"), dr({"region": "eu-1"}), False),
    ("data_residency", dr("local_only"), dr("local_only"), False),
    ("data_residency", dr("local_only"), dr("any"), True),
    ("data_residency", dr("local_only"), dr({"region": "eu-1"}), True),
    ("data_residency", dr({"region": "eu-1"}), dr({"region": "eu-1"}), False),
    ("data_residency", dr({"region": "eu-1"}), dr({"region": "us-1"}), True),
    ("data_residency", dr({"region": "eu-1"}), dr("local_only"), True),
    ("data_residency", dr({"region": "eu-1"}), dr("any"), True),
]


@pytest.mark.parametrize(
    ("field", "need", "have", "gap"), TRUST_TABLE, ids=[f"{f}-{n}-{h}" for f, n, h, _ in TRUST_TABLE]
)
def test_trust_field_order(field: str, need: Any, have: Any, gap: bool) -> None:
    # everything else required is the weakest value and reported is the strongest, so only `field` varies
    weakest = {"locality": "any", "tenancy": "shared_allowed", "data_residency": "any", "cleanup": "best_effort"} | {
        n: "none" for n in ("auditability", "secret_isolation")
    }
    need_trust = {**weakest, field: need}
    have_trust = STRONG_TRUST.model_copy(update={field: have})
    result = match(requirement(**need_trust), report(trust=have_trust))
    assert result.denied == ((f"trust:{field}",) if gap else ())


def test_trust_gaps_are_listed_per_field() -> None:
    weak = IsolationTrustRequirement(locality=LocalityRequirement.remote, auditability=AuditabilityRequirement.none)
    result = match(
        requirement(locality="local", auditability="required", secret_isolation="best_effort"), report(trust=weak)
    )
    assert result.denied == ("trust:locality", "trust:auditability", "trust:secret_isolation")


# -- health --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "gaps"),
    [
        (HealthState.healthy, ()),
        (HealthState.degraded, ("health:degraded",)),
        (HealthState.unsupported_host, ("health:unsupported_host",)),
    ],
)
def test_health_state_gap(state: HealthState, gaps: tuple[str, ...]) -> None:
    assert match(requirement(), report(health=state)).denied == gaps


def test_degraded_host_needs_a_degraded_host_approval_not_a_downgrade_one() -> None:
    need = requirement(allowed_gaps=["health:degraded"], policy_ref="dec-1")
    degraded = report(health=HealthState.degraded)
    assert match(need, degraded, [approval(["health:degraded"], ApprovalKind.degraded_host)]).accepted == (
        "health:degraded",
    )
    for kind in (ApprovalKind.downgrade, ApprovalKind.tool):
        result = match(need, degraded, [approval(["health:degraded"], kind)])
        assert result.denied == ("health:degraded",), kind
        assert f"is a {kind.value} approval" in result.summary()


def test_unsupported_host_is_never_accepted_whatever_the_fallback() -> None:
    need = requirement(allowed_gaps=["health:unsupported_host"], policy_ref="dec-1")
    every_kind = [approval(["health:unsupported_host"], kind) for kind in ApprovalKind]
    result = match(need, report(health=HealthState.unsupported_host), every_kind)
    assert result.denied == ("health:unsupported_host",)
    assert "never used" in result.summary()
    assert not any(kind_accepts(kind, "health:unsupported_host") for kind in ApprovalKind)


# -- fallback and approval scope -------------------------------------------------------------------

GAP = "capability:audit_log"
NO_AUDIT = [c for c in IsolationCapability if c is not IsolationCapability.audit_log]

SCOPE_TABLE: list[tuple[str, list[str], str | None, list[Approval], bool]] = [
    # id, fallback.allowed_gaps, fallback.policy_ref, host approvals, accepted?
    ("listed+approved", [GAP], "dec-1", [approval([GAP])], True),
    ("not-listed", [], "dec-1", [approval([GAP])], False),
    ("listed-no-policy-ref", [GAP], None, [approval([GAP])], False),
    ("listed-no-approval", [GAP], "dec-1", [], False),
    ("approval-of-another-ref", [GAP], "dec-1", [approval([GAP], policy_ref="dec-2")], False),
    ("approval-of-another-gap", [GAP], "dec-1", [approval(["capability:egress_allowlist"])], False),
    ("listed-other-gap-only", ["capability:egress_allowlist"], "dec-1", [approval([GAP])], False),
    ("tool-approval", [GAP], "dec-1", [approval([GAP], ApprovalKind.tool)], False),
    ("degraded-host-approval", [GAP], "dec-1", [approval([GAP], ApprovalKind.degraded_host)], False),
    (
        "tool-names-gap-downgrade-does-not",
        [GAP],
        "dec-1",
        [approval([GAP], ApprovalKind.tool), approval(["class:container"])],
        False,
    ),
    ("tool-and-downgrade-both-name-it", [GAP], "dec-1", [approval([GAP], ApprovalKind.tool), approval([GAP])], True),
]


@pytest.mark.parametrize(
    ("allowed", "policy_ref", "approvals", "accepted"),
    [row[1:] for row in SCOPE_TABLE],
    ids=[r[0] for r in SCOPE_TABLE],
)
def test_a_gap_is_accepted_only_when_listed_and_approved_for_exactly_that_gap(
    allowed: list[str], policy_ref: str | None, approvals: list[Approval], accepted: bool
) -> None:
    need = requirement(capabilities=[IsolationCapability.audit_log], allowed_gaps=allowed, policy_ref=policy_ref)
    result = match(need, report(capabilities=NO_AUDIT), approvals)
    assert result.gaps == (GAP,)
    assert result.ok is accepted
    assert result.accepted == ((GAP,) if accepted else ())
    assert result.denied == (() if accepted else (GAP,))
    assert result.approvals_used == (("dec-1",) if accepted else ())


def test_an_approval_for_one_gap_does_not_approve_another() -> None:
    need = requirement(
        capabilities=[IsolationCapability.audit_log, IsolationCapability.egress_allowlist],
        allowed_gaps=[GAP, "capability:egress_allowlist"],
        policy_ref="dec-1",
    )
    result = match(need, report(capabilities=[IsolationCapability.cleanup]), [approval([GAP])])
    assert result.accepted == (GAP,)
    assert result.denied == ("capability:egress_allowlist",)
    assert "no approval of 'dec-1' covers this gap" in result.summary()


@pytest.mark.parametrize("gap", ["class:lightweight_vm", "capability:audit_log", "trust:tenancy"])
def test_downgrade_approval_accepts_class_capability_and_trust_gaps(gap: str) -> None:
    need = requirement(
        C.lightweight_vm,
        capabilities=[IsolationCapability.audit_log],
        tenancy="dedicated",
        allowed_gaps=[gap],
        policy_ref="dec-1",
    )
    weak = report(
        capabilities=NO_AUDIT,
        trust=STRONG_TRUST.model_copy(update={"tenancy": TenantBoundaryRequirement.shared_allowed}),
    )
    result = match(need, weak, [approval([gap])])
    assert set(result.gaps) == {"class:lightweight_vm", "capability:audit_log", "trust:tenancy"}
    assert result.accepted == (gap,)
    assert len(result.denied) == 2


@pytest.mark.parametrize(
    ("kind", "gap", "accepts"),
    [
        (ApprovalKind.downgrade, "class:container", True),
        (ApprovalKind.downgrade, "capability:audit_log", True),
        (ApprovalKind.downgrade, "trust:locality", True),
        (ApprovalKind.downgrade, "health:degraded", False),
        (ApprovalKind.degraded_host, "health:degraded", True),
        (ApprovalKind.degraded_host, "class:container", False),
        (ApprovalKind.degraded_host, "health:unsupported_host", False),
        (ApprovalKind.tool, "class:container", False),
        (ApprovalKind.tool, "capability:audit_log", False),
        (ApprovalKind.tool, "trust:locality", False),
        (ApprovalKind.tool, "health:degraded", False),
    ],
)
def test_approval_kind_scope(kind: ApprovalKind, gap: str, accepts: bool) -> None:
    assert kind_accepts(kind, gap) is accepts


@pytest.mark.parametrize("bad", ["audit_log", "capability:", "class", "health", "weird:thing", ""])
def test_an_approval_names_gaps_in_the_gap_vocabulary(bad: str) -> None:
    with pytest.raises(ValidationError):
        Approval(policy_ref="dec-1", kind=ApprovalKind.downgrade, gaps=[bad])


def test_a_perfect_match_has_no_gaps_and_says_so() -> None:
    result = match(requirement(capabilities=list(IsolationCapability), **STRONG_TRUST.model_dump()), report())
    assert result.ok and result.gaps == () and result.summary() == "matches"
    assert find_gaps(requirement(), report()) == []


# -- placement matching (no approvals visible) ------------------------------------------------------


def test_placement_assumes_only_the_gaps_the_requirement_lists_could_be_approved() -> None:
    weak = report(classes=[C.host_process], capabilities=NO_AUDIT)
    listed = requirement(capabilities=[IsolationCapability.audit_log], allowed_gaps=[GAP], policy_ref="dec-1")
    assert placement_match(listed, report(capabilities=NO_AUDIT)).ok
    partly = placement_match(listed, weak)
    assert partly.denied == ("class:container",) and partly.accepted == (GAP,)
    assert not placement_match(
        requirement(capabilities=[IsolationCapability.audit_log]), report(capabilities=NO_AUDIT)
    ).ok
    no_ref = requirement(capabilities=[IsolationCapability.audit_log], allowed_gaps=[GAP])
    assert not placement_match(no_ref, report(capabilities=NO_AUDIT)).ok


def test_placement_never_assumes_an_unsupported_host_could_be_used() -> None:
    need = requirement(allowed_gaps=["health:unsupported_host", "health:degraded"], policy_ref="dec-1")
    assert not placement_match(need, report(health=HealthState.unsupported_host)).ok
    assert placement_match(need, report(health=HealthState.degraded)).ok


# -- placement.filter_hosts (the capability half of placement) ----------------------------------------


@pytest.fixture
def client(redis_url: str) -> Iterator[Client]:
    settings = Settings(redis={"url": redis_url})
    r = redis.Redis.from_url(f"{redis_url}/3", decode_responses=True)
    c = Client(settings, Services(settings, Store(r), Journal(r)))
    yield c
    c.close()
    r.close()


def pick(c: Client, need: IsolationRequirement | None = None, requested: str | None = None) -> str:
    """The first candidate placement would hand to the admission script."""
    return filter_hosts(host_statuses(c.services.store), need, requested).hosts[0]


def _publish(c: Client, host: str, **report_kwargs: Any) -> None:
    c.services.store.publish_host(host, {"host_id": host, "report": dump(report(**report_kwargs))}, 60_000)


@pytest.mark.redis
def test_filter_hosts_skips_hosts_whose_report_does_not_match(client: Client) -> None:
    _publish(client, "weak", classes=[C.host_process])
    _publish(client, "sick", health=HealthState.degraded)
    _publish(client, "good")
    assert pick(client) == "good"
    client.services.store.r.delete("corral:host:good")
    with pytest.raises(NotFound, match="no live host matches") as info:
        pick(client)
    assert "weak: class:container" in info.value.message and "sick: health:degraded" in info.value.message


@pytest.mark.redis
def test_filter_hosts_prefers_a_host_needing_no_approval(client: Client) -> None:
    _publish(client, "a-weak", classes=[C.host_process])
    _publish(client, "b-good")
    fallback = requirement(allowed_gaps=["class:container"], policy_ref="dec-1")
    assert pick(client, fallback) == "b-good"
    client.services.store.r.delete("corral:host:b-good")
    assert pick(client, fallback) == "a-weak"


@pytest.mark.redis
def test_requested_host_that_does_not_match_is_a_policy_denial_naming_the_gaps(client: Client) -> None:
    _publish(client, "weak", classes=[C.host_process], capabilities=NO_AUDIT)
    need = requirement(capabilities=[IsolationCapability.audit_log])
    with pytest.raises(PolicyDenial) as info:
        pick(client, need, "weak")
    assert info.value.context["gaps"] == "class:container,capability:audit_log"
    assert info.value.context["rule"] == "matching"
    _publish(client, "fine")
    assert pick(client, need, "fine") == "fine"


@pytest.mark.redis
def test_requested_host_with_an_unreadable_report_is_denied(client: Client) -> None:
    for host, bad in (("odd", {"nonsense": True}), ("odder", {"health": {"state": "healthy"}, "capabilities": 1})):
        client.services.store.publish_host(host, {"host_id": host, "report": bad}, 60_000)
        with pytest.raises(PolicyDenial, match="report:unreadable"):
            pick(client, None, host)
    client.services.store.publish_host("none", {"host_id": "none"}, 60_000)
    with pytest.raises(PolicyDenial, match="report:unreadable"):
        pick(client, None, "none")
    with pytest.raises(NotFound, match="none: report:unreadable"):
        pick(client)


def test_health_of_reads_upstreams_tagged_health() -> None:
    """``corral hosts`` and placement read the report's health as upstream tags it."""
    assert health_of({"report": {"health": "healthy"}}) == HealthState.healthy
    assert health_of({"report": {"health": {"degraded": {"reason": "slow engine"}}}}) == HealthState.degraded
    assert health_of({"report": {"health": {"unsupported_host": {"missing_prerequisites": []}}}}) == "unsupported_host"
    assert health_of(None) == "" and health_of({"report": {}}) == ""
