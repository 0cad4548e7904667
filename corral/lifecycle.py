"""The session state machine, as data: which operation may run in which state, and where it leads.

Pure: the coordinator asks ``check`` before any adapter call and records ``next_state`` after.
"""

from __future__ import annotations

from collections.abc import Mapping

from corral.errors import InvalidStateTransition
from corral.models import SessionState as S

NO_SESSION = "none"

_PREPARE_STEPS = ("resolve_image", "prepare_rootfs", "resolve_mounts", "configure_network", "prepare_secrets")
WITH_PROCESS = (S.running, S.exited, S.detached)

ALLOWED: dict[str, tuple[str, ...]] = {
    "prepare_session": (NO_SESSION, S.preparing),
    **{step: (S.preparing,) for step in _PREPARE_STEPS},
    "prepare_environment": (S.preparing, S.prepared),
    "start_process": (S.prepared, S.running, S.exited),
    "stream_io": WITH_PROCESS,
    "signal_process": WITH_PROCESS,
    "collect_stats": WITH_PROCESS,
    "detach": (S.prepared, S.running, S.exited, S.detached),
    "cleanup": (NO_SESSION, *S),
    "reclaim": (NO_SESSION, *S),
}
"""States each operation may start from (a replay may arrive after the transition happened)."""

NEXT: dict[str, S] = {
    "prepare_session": S.preparing,
    "prepare_environment": S.prepared,
    "start_process": S.running,
    "detach": S.detached,
}


def check(op: str, state: str | None) -> None:
    """Raise ``InvalidStateTransition`` unless ``op`` may run on a session in ``state``."""
    current = state or NO_SESSION
    if current not in ALLOWED[op]:
        raise InvalidStateTransition(
            f"{op} is not allowed on a session in state {current}",
            context={"operation": op, "state": current},
        )


def shown_state(record: Mapping[str, str]) -> str:
    """The state a person (``corral ps``, the metrics) should see: a detached sandbox whose process
    ended (``exited_ms`` recorded by ``collect_stats``) is ``exited``; the session itself stays
    ``detached`` under its ticket until reclaimed."""
    state = record.get("state", "")
    return "exited" if state == S.detached and record.get("exited_ms") else state
