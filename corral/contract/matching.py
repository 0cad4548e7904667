"""Capability matching (CONTRACT.md rule 4): a requirement against a host's capability report, failing closed.

Pure: no I/O, no clock. The coordinator runs it before any effect of ``prepare_session``; the client
runs it to skip hosts during placement. A mismatch is a list of *gaps*, each an exact string::

    class:<needed>          no supported class is at least as strong as the minimum (CLASS_STRENGTH);
                            a host_process adapter is therefore a downgrade for every stronger class
    capability:<name>       a required capability is missing (or the report also lists it as unsupported)
    trust:<field>           a trust field of the report is weaker than required (orders below)
    health:<state>          the host is ``degraded`` or ``unsupported_host``

Every gap denies. A gap is *accepted* only when all of these hold, so that nobody can widen a
requirement alone: the requirement's ``fallback.allowed_gaps`` lists that exact gap (the caller
agrees), ``fallback.policy_ref`` names a decision, and the host policy holds an approval with that
``policy_ref`` whose ``gaps`` list that exact gap (the host agrees) and whose ``kind`` may accept that
kind of gap (scope: an approval for one gap never approves another)::

    downgrade       class:, capability:, trust:   a weaker isolation than asked for
    degraded_host   health:degraded               running on a host that reports a problem
    tool            nothing here                  approves a tool call, never an isolation downgrade
    (none)          health:unsupported_host       never accepted: the host lacks a prerequisite

Trust orders (the report must be at least the requirement)::

    locality          any accepts every report; local and remote must be equal
    tenancy           shared_allowed < dedicated
    auditability, cleanup, secret_isolation    none < best_effort < required
    data_residency    any accepts every report; local_only must be equal; region(x) must be equal
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import Field, field_validator

from corral.contract.models import (
    CLASS_STRENGTH,
    HealthState,
    IsolationCapabilityReport,
    IsolationRequirement,
    Level,
    Locality,
    Model,
    Tenancy,
    TrustVector,
)
from corral.contract.refs import Ref

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

_LEVEL = {Level.none: 0, Level.best_effort: 1, Level.required: 2}
_TENANCY = {Tenancy.shared_allowed: 0, Tenancy.dedicated: 1}


def trust_gaps(need: TrustVector, have: TrustVector) -> list[str]:
    """``trust:<field>`` for every field of ``have`` weaker than ``need`` (orders in the module doc)."""
    gaps = []
    if need.locality is not Locality.any and have.locality is not need.locality:
        gaps.append("trust:locality")
    if _TENANCY[have.tenancy] < _TENANCY[need.tenancy]:
        gaps.append("trust:tenancy")
    for name in ("auditability", "cleanup"):
        if _LEVEL[getattr(have, name)] < _LEVEL[getattr(need, name)]:
            gaps.append(f"trust:{name}")
    if need.data_residency != "any" and have.data_residency != need.data_residency:
        gaps.append("trust:data_residency")
    if _LEVEL[have.secret_isolation] < _LEVEL[need.secret_isolation]:
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
    for cap in dict.fromkeys(requirement.required_capabilities):
        if cap not in report.capabilities or f"capability:{cap.value}" in unsupported:
            gaps.append(f"capability:{cap.value}")
    gaps += trust_gaps(requirement.trust, report.trust)
    if report.health.state is not HealthState.healthy:
        gaps.append(f"health:{report.health.state.value}")
    return gaps


# -- the decision ----------------------------------------------------------------------------------


def match(
    requirement: IsolationRequirement, report: IsolationCapabilityReport, approvals: Iterable[Approval] = ()
) -> MatchResult:
    """Compare, then accept only the gaps that both the requirement's fallback and a host approval name."""
    fallback = requirement.fallback
    decisions = [a for a in approvals if fallback.policy_ref is not None and a.policy_ref == fallback.policy_ref]
    gaps = find_gaps(requirement, report)
    accepted: list[str] = []
    denied: list[str] = []
    reasons: list[str] = []
    used: dict[str, None] = {}
    for gap in gaps:
        why = _refusal(gap, fallback.allowed_gaps, fallback.policy_ref, decisions)
        if why is None:
            accepted.append(gap)
            used[str(fallback.policy_ref)] = None
        else:
            denied.append(gap)
            reasons.append(f"{gap}: {why}")
    return MatchResult(tuple(gaps), tuple(accepted), tuple(denied), tuple(reasons), tuple(used))


def _refusal(gap: str, allowed: Sequence[str], policy_ref: str | None, decisions: list[Approval]) -> str | None:
    """Why ``gap`` is not accepted, or None when it is."""
    if gap in NEVER_APPROVABLE:
        return "an unsupported host is never used, whatever the fallback"
    if gap not in allowed:
        return "not listed in the requirement's fallback.allowed_gaps"
    if policy_ref is None:
        return "the fallback names no policy_ref to approve it"
    if not decisions:
        return f"the host policy has no approval {policy_ref!r}"
    naming = [a for a in decisions if gap in a.gaps]
    if not naming:
        return f"approval {policy_ref!r} does not cover this gap"
    if not any(kind_accepts(a.kind, gap) for a in naming):
        kinds = ", ".join(sorted({a.kind.value for a in naming}))
        return f"approval {policy_ref!r} is a {kinds} approval, which cannot accept this gap"
    return None


def placement_match(requirement: IsolationRequirement, report: IsolationCapabilityReport) -> MatchResult:
    """Matching as a client can do it: it cannot see a host's approvals, so it assumes the most a host
    policy could approve (exactly the gaps the requirement's own fallback lists). The host decides for
    real in ``prepare_session``; this only keeps placement away from hosts that can never match."""
    fallback = requirement.fallback
    if fallback.policy_ref is None:
        return match(requirement, report)
    listed = [g for g in fallback.allowed_gaps if g.startswith(_GAP_PREFIXES) and not g.endswith(":")]
    optimistic = [
        Approval(policy_ref=fallback.policy_ref, kind=kind, gaps=listed)
        for kind in (ApprovalKind.downgrade, ApprovalKind.degraded_host)
    ]
    return match(requirement, report, optimistic)
