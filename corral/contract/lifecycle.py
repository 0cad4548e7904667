"""The session state machine, as data: which operation may run in which state, and where it leads.

Pure: the coordinator asks ``check`` before any adapter call and, after it, applies the operation's
``Transition`` (``Store.transition`` with its sources and fields). Every state change of a session record
is one of the transitions named here; nothing else writes a session's ``state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from corral.contract.errors import Conflict, InvalidStateTransition
from corral.contract.models import SessionState as S
from corral.contract.operations import PREPARE_STEPS, Operation

NO_SESSION = "none"

WITH_PROCESS = (S.running, S.exited, S.detached)
LIVE = (S.preparing, S.prepared, S.running, S.exited, S.detached, S.cleaning)
"""States of a session that still holds something on its host (not cleaned, not given up)."""

ALLOWED: dict[Operation, tuple[str, ...]] = {
    Operation.prepare_session: (NO_SESSION, S.preparing),
    **{step: (S.preparing,) for step in PREPARE_STEPS},
    Operation.prepare_environment: (S.preparing, S.prepared),
    Operation.start_process: (S.prepared, S.running, S.exited),
    Operation.stream_io: WITH_PROCESS,
    Operation.signal_process: WITH_PROCESS,
    Operation.collect_stats: WITH_PROCESS,
    Operation.detach: (S.prepared, S.running, S.exited, S.detached),
    Operation.cleanup: (NO_SESSION, *S),
    Operation.reclaim: (NO_SESSION, *S),
}
"""States each operation may start from (a replay may arrive after the transition happened)."""


class Transition(NamedTuple):
    """One state change of a session record: applied only from ``sources`` (a compare-and-set, so a late
    or stale operation never moves a session back), leading to ``target``."""

    sources: tuple[S, ...]
    target: S

    def fields(self, **extra: str) -> dict[str, str]:
        """The session fields this transition writes: the new state, and what the caller records with it."""
        return {"state": self.target, **extra}


CREATED = Transition((), S.preparing)
"""``prepare_session`` creates the record in this state (no record before: nothing to compare)."""
ENVIRONMENT_PREPARED = Transition((S.preparing, S.prepared), S.prepared)
PROCESS_STARTED = Transition((S.prepared,), S.running)
PROCESS_EXITED = Transition((S.running,), S.exited)
"""Seen by ``stream_io`` (end of output), ``collect_stats`` or the reconciler (process lost)."""
DETACHED = Transition((S.prepared, S.running, S.exited, S.detached), S.detached)
CLEANUP_BEGUN = Transition(tuple(s for s in S if s is not S.cleaned), S.cleaning)
"""Written once the cleanup intent is journaled, from any state but ``cleaned``: cleanup is idempotent,
but a session another cleanup finished is not moved back (it would count as live on its host again)."""
CLEANED = Transition((S.cleaning,), S.cleaned)
CLEANUP_FAILED = Transition((S.cleaning, S.cleaned), S.repair_needed)
"""A cleanup that left something behind, even of a session cleaned before (the reconciler's cleanup of
leftovers), makes it visible for repair."""
RECLAIMED = Transition(tuple(s for s in S if s is not S.cleaned), S.cleaned)
RECLAIM_FAILED = Transition(tuple(s for s in S if s is not S.cleaned), S.repair_needed)
HOST_LOST = Transition(LIVE, S.repair_needed)
"""The fleet saw the host's heartbeat expire with the session on it: its reconciler reclaims the rest."""

NEXT: dict[Operation, Transition] = {
    Operation.prepare_session: CREATED,
    Operation.prepare_environment: ENVIRONMENT_PREPARED,
    Operation.start_process: PROCESS_STARTED,
    Operation.detach: DETACHED,
}
"""The transition an operation's success makes (cleanup and reclaim: ``ended``)."""


def ended(op: Operation, completed: bool) -> Transition:
    """Where a cleanup or reclaim leaves the session: cleaned, or repair_needed when removal failed."""
    if op is Operation.cleanup:
        return CLEANED if completed else CLEANUP_FAILED
    if op is Operation.reclaim:
        return RECLAIMED if completed else RECLAIM_FAILED
    raise ValueError(f"{op} does not end a session")


def check(op: Operation, state: str | None) -> None:
    """Raise ``InvalidStateTransition`` unless ``op`` may run on a session in ``state``."""
    current = state or NO_SESSION
    if current not in ALLOWED[op]:
        raise InvalidStateTransition(
            f"{op} is not allowed on a session in state {current}",
            context={"operation": str(op), "state": current},
        )


TORN_DOWN = (S.cleaning, S.cleaned, S.repair_needed)
"""States in which nothing of the session may be assumed to exist any more."""


def check_replay(op: Operation, state: str | None, environment_id: str) -> None:
    """Raise ``Conflict`` when a recorded success of ``op`` may not be replayed on a session in
    ``state``: once torn down, a step that needs the session alive (anything but the teardown
    operations) would answer for resources that are gone, say report a removed process as running.
    The recorded answer stays in the idempotency record; the caller submits under a new id."""
    current = state or NO_SESSION
    if current in TORN_DOWN and current not in ALLOWED[op]:
        raise Conflict(
            f"environment {environment_id} was torn down ({current}); its recorded {op} answer no longer "
            "holds: submit the job again under a new environment id",
            context={"operation": str(op), "state": current, "environment_id": environment_id},
        )


def shown_state(record: Mapping[str, str]) -> str:
    """The state a person (``corral ps``, the metrics) should see: a detached sandbox whose process
    ended (``exited_ms`` recorded by ``collect_stats``) is ``exited``; the session itself stays
    ``detached`` under its ticket until reclaimed."""
    state = record.get("state", "")
    return "exited" if state == S.detached and record.get("exited_ms") else state
