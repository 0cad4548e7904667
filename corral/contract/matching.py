"""Capability matching (CONTRACT.md rule 4): a requirement against a host's capability report, failing closed.

Pure: no I/O, no clock. The coordinator runs it before any effect of ``prepare_session``; the client
runs it to skip hosts during placement. A mismatch is a list of *gaps*, each an exact string::

    class:<needed>          no supported class is at least as strong as the minimum (CLASS_STRENGTH);
                            a host_process adapter is therefore a downgrade for every stronger class
    capability:<name>       a required capability is missing (or the report also lists it as unsupported)
    trust:<field>           a trust field of the report is weaker than required (orders below)
    health:<state>          the host is ``degraded`` or ``unsupported_host``

Every gap denies. A gap is *accepted* only when all of these hold, so that nobody can widen a
requirement alone: the requirement's fallback is upstream's ``allow_if_package_and_policy_approve``
and accepts that gap (the caller agrees: ``class:`` when one of its ``accepted_classes`` is supported,
``capability:X`` for X in ``accepted_capability_downgrades``, ``trust:F`` for F in
``accepted_trust_downgrades``, ``health:degraded`` with corral's ``accept_degraded_host``), it names
``required_policy_refs``, and the host policy holds an approval for every one of them, one of which
lists that exact gap (the host agrees) with a ``kind`` that may accept that kind of gap (scope: an
approval for one gap never approves another). Upstream's ``test_only_host_process`` accepts the
``class:`` gap of a test-only fake adapter that runs host processes, and nothing else::

    downgrade       class:, capability:, trust:   a weaker isolation than asked for
    degraded_host   health:degraded               running on a host that reports a problem
    tool            nothing here                  approves a tool call, never an isolation downgrade
    (none)          health:unsupported_host       never accepted: the host lacks a prerequisite

Trust orders (the report must be at least the requirement)::

    locality          any accepts every report; local and remote must be equal
    tenancy           shared_allowed < dedicated
    cleanup           best_effort accepts every report; required must be equal
    auditability, secret_isolation    none accepts every report; best_effort needs anything but
                      none; required needs required
    data_residency    any accepts every report; local_only must be equal; region(x) must be equal
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import Field, field_validator

from corral.contract.models import (
    CLASS_STRENGTH,
    DataResidencyKind,
    FallbackKind,
    HealthState,
    IsolationCapabilityReport,
    IsolationFallback,
    IsolationRequirement,
    IsolationTrustRequirement,
)
from corral.contract.refs import Ref
from corral.contract.vocabulary import (
    CleanupGuaranteeRequirement,
    IsolationClass,
    IsolationRuntimeKind,
    LocalityRequirement,
    TenantBoundaryRequirement,
)
from corral.contract.wire import Model

_GAP_PREFIXES = ("class:", "capability:", "trust:", "health:")


class ApprovalKind(StrEnum):
    downgrade = "downgrade"
    """May accept ``class:``, ``capability:`` and ``trust:`` gaps."""
    degraded_host = "degraded_host"
    """May accept ``health:degraded`` only."""
    tool = "tool"
    """A tool-use approval: it is not a downgrade approval and accepts no isolation gap."""


class Approval(Model):
    """One policy decision of the host: which exact gaps the decision named ``policy_ref`` accepts."""

    policy_ref: Ref
    kind: ApprovalKind
    gaps: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("gaps")
    @classmethod
    def _gap_shape(cls, value: list[str]) -> list[str]:
        for gap in value:
            if not gap.startswith(_GAP_PREFIXES) or gap.endswith(":"):
                raise ValueError(f"not a gap: {gap[:80]!r} (expected class:, capability:, trust: or health:<name>)")
        return value


_ACCEPTS: dict[ApprovalKind, tuple[str, ...]] = {
    ApprovalKind.downgrade: ("class:", "capability:", "trust:"),
    ApprovalKind.degraded_host: ("health:degraded",),
    ApprovalKind.tool: (),
}
NEVER_APPROVABLE = frozenset({f"health:{HealthState.unsupported_host.value}"})


def kind_accepts(kind: ApprovalKind, gap: str) -> bool:
    """Whether an approval of ``kind`` may accept ``gap`` at all (exact health gaps, prefixes otherwise)."""
    if gap in NEVER_APPROVABLE:
        return False
    return any(gap == p or (p.endswith(":") and gap.startswith(p)) for p in _ACCEPTS[kind])


@dataclass(frozen=True)
class MatchResult:
    gaps: tuple[str, ...]
    """Every gap found, in a stable order (class, capabilities, trust, health)."""
    accepted: tuple[str, ...]
    """Gaps accepted by the requirement's fallback and a host approval."""
    denied: tuple[str, ...]
    reasons: tuple[str, ...]
    """Why each denied gap was not accepted, one line each (same order as ``denied``)."""
    approvals_used: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.denied

    def summary(self) -> str:
        if self.ok:
            return "matches" if not self.accepted else "matches with accepted gaps " + ", ".join(self.accepted)
        return "; ".join(self.reasons)


# -- the gaps --------------------------------------------------------------------------------------


def _level_ok(need: str, have: str) -> bool:
    """Upstream's order for auditability and secret isolation: none < best_effort < required."""
    if need == "none":
        return True
    if need == "best_effort":
        return have != "none"
    return have == "required"


def trust_gaps(need: IsolationTrustRequirement, have: IsolationTrustRequirement) -> list[str]:
    """``trust:<field>`` for every field of ``have`` weaker than ``need`` (orders in the module doc)."""
    gaps = []
    if need.locality != LocalityRequirement.any and have.locality != need.locality:
        gaps.append("trust:locality")
    if need.tenancy != TenantBoundaryRequirement.shared_allowed and have.tenancy != need.tenancy:
        gaps.append("trust:tenancy")
    if not _level_ok(str(need.auditability), str(have.auditability)):
        gaps.append("trust:auditability")
    if need.cleanup != CleanupGuaranteeRequirement.best_effort and have.cleanup != need.cleanup:
        gaps.append("trust:cleanup")
    if need.data_residency.kind != DataResidencyKind.any and have.data_residency != need.data_residency:
        gaps.append("trust:data_residency")
    if not _level_ok(str(need.secret_isolation), str(have.secret_isolation)):
        gaps.append("trust:secret_isolation")
    return gaps


def find_gaps(requirement: IsolationRequirement, report: IsolationCapabilityReport) -> list[str]:
    """Every gap between a requirement and a report, before any fallback."""
    gaps = []
    needed = CLASS_STRENGTH[requirement.minimum_class]
    if not any(CLASS_STRENGTH[c] >= needed for c in report.supported_classes):
        gaps.append(f"class:{requirement.minimum_class.value}")
    # A capability the report also declares unsupported is not relied on: an inconsistent report fails closed.
    unsupported = set(report.unsupported_requirements)
    for cap in requirement.required_capabilities.capabilities:
        if cap not in report.capabilities or f"capability:{cap.value}" in unsupported:
            gaps.append(f"capability:{cap.value}")
    gaps += trust_gaps(requirement.trust, report.trust)
    if report.health.kind is not HealthState.healthy:
        gaps.append(f"health:{report.health.kind.value}")
    return gaps


# -- the decision ----------------------------------------------------------------------------------


def fallback_accepts(fallback: IsolationFallback, gap: str, report: IsolationCapabilityReport) -> bool:
    """Whether the requirement's own fallback agrees to ``gap`` (the caller's half of an acceptance)."""
    kind, _, name = gap.partition(":")
    if fallback.kind is FallbackKind.test_only_host_process:
        return (
            kind == "class"
            and report.adapter_kind is IsolationRuntimeKind.test_only_fake
            and IsolationClass.host_process in report.supported_classes
        )
    if fallback.kind is not FallbackKind.allow_if_package_and_policy_approve:
        return False
    if kind == "class":
        return any(c in report.supported_classes for c in fallback.accepted_classes)
    if kind == "capability":
        return any(c.value == name for c in fallback.accepted_capability_downgrades)
    if kind == "trust":
        return any(f.value == name for f in fallback.accepted_trust_downgrades)
    return gap == f"health:{HealthState.degraded.value}" and fallback.accept_degraded_host


def match(
    requirement: IsolationRequirement, report: IsolationCapabilityReport, approvals: Iterable[Approval] = ()
) -> MatchResult:
    """Compare, then accept only the gaps that both the requirement's fallback and a host approval name."""
    fallback = requirement.fallback
    required = [ref.id for ref in fallback.required_policy_refs]
    decisions = [a for a in approvals if a.policy_ref in required]
    gaps = find_gaps(requirement, report)
    accepted: list[str] = []
    denied: list[str] = []
    reasons: list[str] = []
    used: dict[str, None] = {}
    for gap in gaps:
        if fallback.kind is FallbackKind.test_only_host_process and fallback_accepts(fallback, gap, report):
            accepted.append(gap)
            continue
        why = _refusal(gap, fallback_accepts(fallback, gap, report), required, decisions)
        if why is None:
            accepted.append(gap)
            used.update(dict.fromkeys(required))
        else:
            denied.append(gap)
            reasons.append(f"{gap}: {why}")
    return MatchResult(tuple(gaps), tuple(accepted), tuple(denied), tuple(reasons), tuple(used))


def _refusal(gap: str, caller_accepts: bool, required: Sequence[str], decisions: list[Approval]) -> str | None:
    """Why ``gap`` is not accepted, or None when it is."""
    if gap in NEVER_APPROVABLE:
        return "an unsupported host is never used, whatever the fallback"
    if not caller_accepts:
        return "the requirement's fallback does not accept it"
    if not required:
        return "the fallback names no required_policy_refs to approve it"
    missing = [ref for ref in required if not any(a.policy_ref == ref for a in decisions)]
    if missing:
        return f"the host policy has no approval {missing[0]!r}"
    naming = [a for a in decisions if gap in a.gaps]
    if not naming:
        return f"no approval of {', '.join(repr(r) for r in required)} covers this gap"
    if not any(kind_accepts(a.kind, gap) for a in naming):
        kinds = ", ".join(sorted({a.kind.value for a in naming}))
        return f"approval {naming[0].policy_ref!r} is a {kinds} approval, which cannot accept this gap"
    return None


def placement_match(requirement: IsolationRequirement, report: IsolationCapabilityReport) -> MatchResult:
    """Matching as a client can do it: it cannot see a host's approvals, so it assumes the most a host
    policy could approve (every gap the requirement's own fallback accepts). The host decides for
    real in ``prepare_session``; this only keeps placement away from hosts that can never match."""
    fallback = requirement.fallback
    if fallback.kind is not FallbackKind.allow_if_package_and_policy_approve or not fallback.required_policy_refs:
        return match(requirement, report)
    listed = [g for g in find_gaps(requirement, report) if fallback_accepts(fallback, g, report)]
    optimistic = [
        Approval(policy_ref=ref.id, kind=kind, gaps=listed)
        for ref in fallback.required_policy_refs
        for kind in (ApprovalKind.downgrade, ApprovalKind.degraded_host)
    ]
    return match(requirement, report, optimistic)
