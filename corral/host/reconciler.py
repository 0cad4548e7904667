"""Anti-entropy: compare what a host's runtime has labeled with what the state store says it owns.

Runs on each host (on worker start, periodically from beat, and on demand with
``corral reconcile [--dry-run]``). It implements the recovery table of CONTRACT.md for what is
left on a host after crashes, lost messages or a flushed Redis::

    labeled resources, no session record          orphan        reclaim once unowned for the grace
    session cleaned / repair_needed, leftovers    cleanup missing or failed: reclaim (retries repair)
    session stuck preparing/prepared/cleaning     chain or cleanup died: reclaim after ``stale_after``
    host ack of a detach, no ticket in Redis      detached: keep, re-register the ticket (sweeper)
    session running/exited/detached               owned: keep
    session running here, no resources at all     process lost: session -> exited (reason lost)

"Older than a creation grace" is measured without trusting resource timestamps: the first pass
that sees an environment unowned records the time (``corral:reconcile:seen:<host>``), and only a
later pass at least ``grace_s`` after that reclaims it. ``plan`` is pure; ``Reconciler.run``
performs the plan through the coordinator, so every reclaim is journaled (intent, result). A pass
that acts also returns to admission the capacity of allocations whose session is gone or cleaned
(``corral.fleet.admission``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast

from corral.contract import lifecycle
from corral.contract.errors import AgentError, Unsupported
from corral.contract.models import (
    CleanupRequest,
    ExecutionEnvironment,
    ProcessStatsRequest,
    ReclaimRequest,
    SessionState,
)
from corral.contract.refs import new_ref
from corral.fleet.reports import Action, Finding, ReconcileReport
from corral.host.coordinator import Coordinator

log = logging.getLogger("corral.host.reconciler")

SESSION_LABEL = "corral.session"
OWNED = (SessionState.running, SessionState.exited, SessionState.detached)
STUCK = (SessionState.preparing, SessionState.prepared, SessionState.cleaning)
FINISHED = (SessionState.cleaned, SessionState.repair_needed)


class Inventory(Protocol):
    """What a runtime must offer to be reconciled (``DockerRuntime.list_labeled``)."""

    def list_labeled(self) -> dict[str, list[dict[str, str]]]: ...


@dataclass(frozen=True)
class Observed:
    """The resources and host acks of one environment found on this host."""

    kinds: tuple[str, ...]
    ticket: dict[str, str] | None
    container_status: str = ""


def group_by_environment(labeled: Mapping[str, list[dict[str, str]]]) -> dict[str, Observed]:
    kinds: dict[str, list[str]] = {}
    tickets: dict[str, dict[str, str]] = {}
    statuses: dict[str, str] = {}
    for kind, entries in labeled.items():
        for entry in entries:
            env_id = entry.get(SESSION_LABEL) or entry.get("environment_id")
            if not env_id:
                continue
            if kind == "tickets":
                tickets[env_id] = entry
            if kind == "containers":
                statuses[env_id] = entry.get("status", "")
            kinds.setdefault(env_id, []).append(kind.rstrip("s"))
    return {env: Observed(tuple(sorted(set(k))), tickets.get(env), statuses.get(env, "")) for env, k in kinds.items()}


def decide(
    host_id: str,
    seen: Observed,
    record: Mapping[str, str],
    unowned_for_ms: int,
    now_ms: int,
    grace_s: float,
    stale_after_s: float,
) -> tuple[Action, str]:
    """The recovery-table row for one environment found on this host. Pure."""
    state = record.get("state", "none")
    mine = record.get("host", host_id) == host_id
    past_grace = unowned_for_ms >= grace_s * 1000
    if state == SessionState.running and mine and seen.container_status in ("exited", "dead"):
        return Action.record_exit, "process exited, the session still says running"
    if state in OWNED and mine:
        return Action.keep, f"owned by a {state} session"
    if seen.ticket is not None and not record:
        return Action.register_ticket, "host holds a detach ack the state store lost"
    if not mine or not record or state in FINISHED:
        why = (
            "session belongs to another host"
            if not mine
            else f"left behind after {state}"
            if record
            else ("no session owns it")
        )
        return (Action.reclaim if past_grace else Action.wait), why
    if state in STUCK:
        updated = int(record.get("updated_ms") or record.get("created_ms") or now_ms)
        stale = now_ms - updated >= stale_after_s * 1000
        return (Action.reclaim if stale else Action.keep), f"session {state}, stale={stale}"
    return Action.keep, f"session {state}"


def plan(
    host_id: str,
    observed: Mapping[str, Observed],
    sessions: Mapping[str, Mapping[str, str]],
    first_seen: Mapping[str, int],
    now_ms: int,
    grace_s: float,
    stale_after_s: float,
) -> list[Finding]:
    """Decide what to do with every environment seen on the host or recorded for it. Pure."""
    findings = []
    for env_id, seen in sorted(observed.items()):
        record = sessions.get(env_id) or {}
        unowned_for_ms = now_ms - first_seen.get(env_id, now_ms)
        try:
            action, reason = decide(host_id, seen, record, unowned_for_ms, now_ms, grace_s, stale_after_s)
        except (ValueError, TypeError, KeyError) as exc:  # one malformed record never stops the pass
            action, reason = Action.error, _malformed(exc)
        findings.append(
            Finding(
                environment_id=env_id,
                resources=list(seen.kinds),
                state=str(record.get("state", "none")),
                action=action,
                reason=reason,
            )
        )
    for env_id, record in sorted(sessions.items()):
        if env_id in observed or record.get("host") != host_id or record.get("state") != SessionState.running:
            continue
        try:
            started = int(record.get("started_ms") or now_ms)
        except (ValueError, TypeError) as exc:
            findings.append(
                Finding(environment_id=env_id, state="running", action=Action.error, reason=_malformed(exc))
            )
            continue
        if now_ms - started >= grace_s * 1000:
            findings.append(
                Finding(
                    environment_id=env_id,
                    state="running",
                    action=Action.mark_lost,
                    reason="session says running but the host has nothing for it",
                )
            )
    return findings


def _malformed(exc: Exception) -> str:
    return f"malformed session record ({type(exc).__name__}: {str(exc)[:200]}); left alone"


def exit_unrecorded(host_id: str, record: Mapping[str, str]) -> bool:
    """A session of this host with a process whose end is not recorded yet. Pure."""
    return (
        record.get("host") == host_id
        and bool(record.get("process_ref"))
        and record.get("state") in OWNED
        and not record.get("exited_ms")
    )


class Reconciler:
    def __init__(self, coordinator: Coordinator, *, grace_s: float = 60.0, stale_after_s: float = 900.0) -> None:
        self.coordinator = coordinator
        self.grace_s = grace_s
        self.stale_after_s = stale_after_s

    @property
    def seen_key(self) -> str:
        return f"corral:reconcile:seen:{self.coordinator.host_id}"

    def run(self, dry_run: bool = False) -> ReconcileReport:
        runtime = self.coordinator.runtime
        if not hasattr(runtime, "list_labeled"):
            raise Unsupported(f"runtime {type(runtime).__name__} cannot list what it created")
        observed = group_by_environment(cast(Inventory, runtime).list_labeled())
        store = self.coordinator.store
        host_sessions = [s for s in store.list_sessions(10_000) if s.get("host") == self.coordinator.host_id]
        sessions = {env_id: store.session(env_id) for env_id in observed}
        sessions.update({s["environment_id"]: s for s in host_sessions})
        now = self.coordinator.clock.now_ms()
        first_seen = self._first_seen(observed, sessions, now, dry_run)
        findings = plan(self.coordinator.host_id, observed, sessions, first_seen, now, self.grace_s, self.stale_after_s)
        if not dry_run:
            findings = [self._act(f, observed.get(f.environment_id), sessions.get(f.environment_id)) for f in findings]
            # Capacity held for sessions that no longer exist (or were cleaned) goes back to admission.
            self.coordinator.admission.release_stale(self.coordinator.host_id, now)
        return ReconcileReport(host_id=self.coordinator.host_id, dry_run=dry_run, findings=findings)

    def record_exits(self) -> int:
        """Record the end of every process of this host that stopped while nobody asked (a detached
        one, an attached client that went away): one inventory of the runtime, then ``collect_stats``
        for each stopped container whose session has no exit yet. The worker runs this every
        heartbeat (``workers.observe``), so ``corral ps`` and the metrics show it within seconds.
        First, a runtime that can (``DockerRuntime.supervise_io``) gives every running sandbox whose
        I/O shim died a supervisor that enforces its timeout and records its exit."""
        runtime = self.coordinator.runtime
        supervise = getattr(runtime, "supervise_io", None)
        if callable(supervise):  # a sandbox whose I/O shim died gets a supervisor: its timeout still holds
            try:
                supervise()
            except Exception as exc:
                log.warning("I/O supervision failed: %s", type(exc).__name__)
        if not hasattr(runtime, "list_labeled"):
            return 0
        observed = group_by_environment(cast(Inventory, runtime).list_labeled())
        recorded = 0
        for env_id, seen in sorted(observed.items()):
            if seen.container_status not in ("exited", "dead"):
                continue
            record = self.coordinator.store.session(env_id)
            if not exit_unrecorded(self.coordinator.host_id, record):
                continue
            try:
                self.coordinator.collect_stats(ProcessStatsRequest(process_ref=record["process_ref"]))
                recorded += 1
            except Exception as exc:  # one sandbox's trouble (an adapter error, a bad record) never stops the watch
                log.warning("exit of %s not recorded: %s: %s", env_id, type(exc).__name__, str(exc)[:500])
        return recorded

    def _first_seen(
        self, observed: Mapping[str, Observed], sessions: Mapping[str, Mapping[str, str]], now: int, dry_run: bool
    ) -> dict[str, int]:
        """When each currently-unowned environment was first seen unowned (kept in Redis)."""
        r = self.coordinator.store.r
        recorded = {k: int(v) for k, v in cast(dict[str, str], r.hgetall(self.seen_key)).items() if v.isdigit()}
        unowned = {e for e in observed if sessions.get(e, {}).get("state") not in OWNED}
        if not dry_run:
            pipe = r.pipeline()
            for env_id in unowned - recorded.keys():
                pipe.hsetnx(self.seen_key, env_id, now)
            for env_id in recorded.keys() - unowned:
                pipe.hdel(self.seen_key, env_id)
            pipe.expire(self.seen_key, 7 * 24 * 3600)
            pipe.execute()
        return {e: recorded.get(e, now) for e in unowned}

    def _act(self, finding: Finding, seen: Observed | None, record: Mapping[str, str] | None) -> Finding:
        try:
            outcome = self._perform(finding, seen, record or {})
        except AgentError as exc:
            outcome = f"failed: {exc}"
        except Exception as exc:  # an adapter or a record outside the contract: this finding fails, the pass goes on
            log.warning(
                "reconcile of %s (%s) failed: %s: %s",
                finding.environment_id,
                finding.action,
                type(exc).__name__,
                str(exc)[:500],
            )
            outcome = f"failed: {type(exc).__name__}"
        return finding.model_copy(update={"outcome": outcome})

    def _perform(self, finding: Finding, seen: Observed | None, record: Mapping[str, str]) -> str:
        coordinator = self.coordinator
        env_id = finding.environment_id
        now = coordinator.clock.now_ms()
        if finding.action is Action.reclaim and seen is not None and seen.ticket is not None:
            # A detach ack is left: reclaim by ticket, which removes the ack with the resources.
            reclaimed = coordinator.reclaim(ReclaimRequest(ticket_ref=seen.ticket["ticket_ref"], environment_id=env_id))
            coordinator.store.r.hdel(self.seen_key, env_id)
            return f"reclaim {reclaimed.status}"
        if finding.action is Action.reclaim:
            environment, note = _environment_of(env_id, record)
            result = coordinator.cleanup(CleanupRequest(environment=environment, cleanup_plan_ref=new_ref("reconcile")))
            coordinator.store.r.hdel(self.seen_key, env_id)
            return f"cleanup {result.status}{note}"
        if finding.action is Action.register_ticket and seen is not None and seen.ticket is not None:
            ack = seen.ticket
            coordinator.store.put_ticket(
                ack["ticket_ref"],
                {"environment_id": env_id, "host": coordinator.host_id, "host_ack_ref": "recovered"},
                int(ack["deadline_ms"]),
            )
            coordinator.journal.append(
                env_id,
                "recovery",
                _fields(coordinator.host_id, now, "register_ticket", f"ticket {ack['ticket_ref']} re-registered"),
            )
            return "ticket registered"
        if finding.action is Action.record_exit:
            snapshot = coordinator.collect_stats(ProcessStatsRequest(process_ref=record.get("process_ref") or ""))
            summary = f"exit recorded by reconcile: code {snapshot.exit_code}, reason {snapshot.reason}"
            coordinator.journal.append(env_id, "recovery", _fields(coordinator.host_id, now, "record_exit", summary))
            return summary
        if finding.action is Action.mark_lost:
            if not coordinator.store.advance(env_id, lifecycle.PROCESS_EXITED, now, reason="lost"):
                return "skipped: the session moved on"
            coordinator.journal.append(
                env_id, "recovery", _fields(coordinator.host_id, now, "mark_lost", "no container or spool on the host")
            )
            return "marked exited (lost)"
        return ""


def _environment_of(env_id: str, record: Mapping[str, str]) -> tuple[ExecutionEnvironment, str]:
    """The environment a session record holds; when that JSON is unreadable, the bare id (removal finds
    everything by the id's labels), with a note for the finding's outcome."""
    raw = record.get("environment")
    if not raw:
        return ExecutionEnvironment.by_id(env_id), ""
    try:
        environment = ExecutionEnvironment.model_validate_json(raw)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        log.warning("session %s holds an unreadable environment (%s); cleaning up by id", env_id, type(exc).__name__)
        return ExecutionEnvironment.by_id(env_id), " (environment record unreadable: cleaned up by id)"
    if environment.environment_id != env_id:
        return ExecutionEnvironment.by_id(env_id), " (environment record names another id: cleaned up by id)"
    return environment, ""


def _fields(host_id: str, now: int, action: str, summary: str) -> dict[str, str]:
    return {"op": "reconcile", "host": host_id, "ts_ms": str(now), "action": action, "summary": summary}
