"""Placement: filter live hosts on their published capability report, then reserve atomically.

``filter_hosts`` is the capability half (pure: the fail-closed matching of ``corral.contract.matching`` on each
host's heartbeat record); ``place`` hands the matching hosts to the admission script
(``corral.fleet.admission``), which filters on free capacity, scores and reserves in one Redis call. It runs
in a fleet worker (``corral.place``, the batch dispatcher): only workers may write admission state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pydantic import Field, ValidationError

from corral.contract.errors import NotFound, PolicyDenial
from corral.contract.matching import MatchResult, placement_match
from corral.contract.models import HealthState, IsolationCapabilityReport, IsolationRequirement
from corral.contract.wire import Model
from corral.fleet.admission import Admission, Demand, Mode, Placed, Queued
from corral.state.store import Store, host_key


@dataclass(frozen=True)
class HostStatus:
    host_id: str
    up: bool
    healthy: bool
    record: dict[str, Any] | None
    raw: str = field(default="", compare=False, repr=False)
    """The heartbeat record as stored (keys the matching cache)."""


def health_of(record: dict[str, Any] | None) -> str:
    """The health variant of a heartbeat's capability report (upstream's tagged enum: ``"healthy"`` or
    ``{"degraded": {...}}``); ``""`` when the record has none."""
    health = ((record or {}).get("report") or {}).get("health")
    if isinstance(health, str):
        return health
    return next(iter(health), "") if isinstance(health, dict) and len(health) == 1 else ""


def host_statuses(store: Store) -> list[HostStatus]:
    """Every known host's heartbeat record, in two round trips (the set of hosts, one MGET)."""
    ids = store.known_hosts()
    raws = cast(list[str | None], store.r.mget([host_key(h) for h in ids])) if ids else []
    out = []
    for host_id, raw in zip(ids, raws, strict=True):
        record = cast(dict[str, Any], json.loads(raw)) if raw else None
        healthy = health_of(record) == HealthState.healthy
        out.append(HostStatus(host_id, record is not None, healthy, record, raw or ""))
    return out


_MATCHES: dict[tuple[str, str], MatchResult] = {}
"""(requirement, heartbeat record as stored) -> the match: a host's report is validated and matched
once per heartbeat, not once per decision (matching 100 reports costs more than the decision)."""


def host_match(requirement: IsolationRequirement, status: HostStatus, requirement_key: str = "") -> MatchResult:
    """Placement matching on a host's published report; an unreadable report is a gap, never a pass."""
    key = (requirement_key or requirement.model_dump_json(), status.raw)
    if status.raw and key in _MATCHES:
        return _MATCHES[key]
    try:
        report = IsolationCapabilityReport.model_validate((status.record or {}).get("report"))
    except ValidationError:
        gap = ("report:unreadable",)
        result = MatchResult(gap, (), gap, ("report:unreadable: no valid report",))
    else:
        result = placement_match(requirement, report)
    if status.raw:
        if len(_MATCHES) >= 10_000:
            _MATCHES.clear()
        _MATCHES[key] = result
    return result


@dataclass(frozen=True)
class Candidates:
    hosts: list[str]
    """Matching live hosts, those needing no approved gap first, then by id."""
    unmatched: dict[str, MatchResult]
    preferred: int | None = None
    """How many of ``hosts`` (the first ones) need no approved gap; None: all of them."""


def filter_hosts(
    statuses: list[HostStatus], requirement: IsolationRequirement | None = None, requested: str | None = None
) -> Candidates:
    """The requested host if it is up and its report matches the requirement (else ``NotFound`` or
    ``PolicyDenial`` naming the gaps); otherwise every live host whose report matches.

    The client cannot see a host's approvals, so a gap the requirement's fallback lists counts as
    possibly approved here (``corral.contract.matching.placement_match``); the host decides for real, fail
    closed, in ``prepare_session``."""
    need = requirement or IsolationRequirement()
    need_key = need.model_dump_json()
    by_id = {h.host_id: h for h in statuses}
    if requested is not None:
        status = by_id.get(requested)
        if status is None:
            raise NotFound(f"unknown host {requested}", context={"host": requested})
        if not status.up:
            raise NotFound(f"host {requested} is down (no heartbeat)", context={"host": requested})
        result = host_match(need, status, need_key)
        if not result.ok:
            raise PolicyDenial(
                f"host {requested} does not match the isolation requirement: {result.summary()}",
                context={"rule": "matching", "gaps": ",".join(result.denied), "host": requested},
            )
        return Candidates([requested], {})
    matching = {h.host_id: host_match(need, h, need_key) for h in by_id.values() if h.up}
    live = [host for host, result in matching.items() if result.ok]
    if not live:
        seen = "; ".join(f"{host}: {', '.join(r.denied)}" for host, r in sorted(matching.items()))
        raise NotFound(
            "no live host matches the isolation requirement"
            + (f" ({seen})" if seen else ": start one with `corral worker --host NAME` or `corral dev`")
        )
    ordered = sorted(live, key=lambda h: (bool(matching[h].accepted), h))
    preferred = sum(1 for h in live if not matching[h].accepted)
    return Candidates(ordered, {h: r for h, r in matching.items() if not r.ok}, preferred)


def place(
    store: Store,
    admission: Admission,
    environment_id: str,
    requirement: IsolationRequirement | None,
    demand: Demand,
    now_ms: int,
    mode: Mode = "spread",
    requested: str | None = None,
    lease_ms: int | None = None,
    statuses: list[HostStatus] | None = None,
) -> Placed | Queued:
    """Filter, then score and reserve in one atomic step; ``Queued`` (with its reason) when nothing fits.
    ``statuses``: the hosts' heartbeat records already read (the dispatcher reads them once per pass;
    liveness is re-checked inside the atomic step anyway)."""
    found = filter_hosts(statuses if statuses is not None else host_statuses(store), requirement, requested)
    return admission.reserve(
        environment_id,
        demand,
        found.hosts,
        now_ms,
        mode,
        unmatched=len(found.unmatched),
        lease_ms=lease_ms,
        preferred=found.preferred,
    )


class PlaceRequest(Model):
    """``corral.place``: reserve room for one job (a fleet task; the caller is verified)."""

    environment_id: str = Field(max_length=200)
    requirement: IsolationRequirement | None = None
    cpus: float = Field(default=1.0, ge=0, le=4096)
    memory_mb: int = Field(default=512, ge=0, le=1 << 30)
    mode: Mode = "spread"
    host: str | None = Field(default=None, max_length=200)
    """Only this host (``corral run --host``); it is still admitted against its capacity."""


class PlaceResult(Model):
    status: Literal["placed", "queued"]
    host: str | None = None
    reason: str | None = None
    unplaceable: bool = False
    """Queued and no live host could ever fit the job (it is larger than each of them)."""

    @classmethod
    def of(cls, decision: Placed | Queued) -> PlaceResult:
        if isinstance(decision, Placed):
            return cls(status="placed", host=decision.host)
        return cls(status="queued", reason=decision.reason, unplaceable=decision.unplaceable)
