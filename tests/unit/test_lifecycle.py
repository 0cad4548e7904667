"""corral.contract.lifecycle: the session state machine as data, checked against an independent statement of the
contract's order (prepare chain, then start, then process operations, detach, cleanup/reclaim)."""

from __future__ import annotations

import pytest

from corral.contract import lifecycle
from corral.contract.errors import InvalidStateTransition
from corral.contract.lifecycle import ALLOWED, NEXT, NO_SESSION
from corral.contract.models import SessionState as S

ALL_STATES = (NO_SESSION, *(s.value for s in S))
PREPARE_STEPS = ("resolve_image", "prepare_rootfs", "resolve_mounts", "configure_network", "prepare_secrets")

# Written out by hand from CONTRACT.md, not derived from ALLOWED.
EXPECTED: dict[str, set[str]] = {
    "prepare_session": {NO_SESSION, "preparing"},
    **{step: {"preparing"} for step in PREPARE_STEPS},
    "prepare_environment": {"preparing", "prepared"},
    "start_process": {"prepared", "running", "exited"},
    "stream_io": {"running", "exited", "detached"},
    "signal_process": {"running", "exited", "detached"},
    "collect_stats": {"running", "exited", "detached"},
    "detach": {"prepared", "running", "exited", "detached"},
    "cleanup": set(ALL_STATES),
    "reclaim": set(ALL_STATES),
}

TABLE = [(op, state, state in EXPECTED[op]) for op in sorted(EXPECTED) for state in ALL_STATES]


def test_allowed_covers_exactly_the_coordinator_operations() -> None:
    assert set(ALLOWED) == set(EXPECTED)


@pytest.mark.parametrize(("op", "state", "allowed"), TABLE, ids=[f"{o}-{s}" for o, s, _ in TABLE])
def test_check_allows_exactly_the_contract_transitions(op: str, state: str, allowed: bool) -> None:
    if allowed:
        lifecycle.check(op, state)
    else:
        with pytest.raises(InvalidStateTransition) as info:
            lifecycle.check(op, state)
        assert info.value.context == {"operation": op, "state": state}


@pytest.mark.parametrize("op", sorted(EXPECTED))
def test_check_treats_missing_state_as_no_session(op: str) -> None:
    for missing in (None, ""):
        if NO_SESSION in EXPECTED[op]:
            lifecycle.check(op, missing)
        else:
            with pytest.raises(InvalidStateTransition):
                lifecycle.check(op, missing)


def test_nothing_but_cleanup_and_reclaim_runs_on_a_finished_session() -> None:
    for state in ("cleaning", "cleaned", "repair_needed"):
        runnable = {op for op in ALLOWED if state in ALLOWED[op]}
        assert runnable == {"cleanup", "reclaim"}, state


def test_start_process_is_never_allowed_before_prepared() -> None:
    for state in (NO_SESSION, "preparing"):
        with pytest.raises(InvalidStateTransition):
            lifecycle.check("start_process", state)


def test_next_states_follow_the_chain() -> None:
    assert {
        "prepare_session": S.preparing,
        "prepare_environment": S.prepared,
        "start_process": S.running,
        "detach": S.detached,
    } == NEXT
    # an operation's target state is one it may be replayed from
    for op, target in NEXT.items():
        lifecycle.check(op, target)


def test_check_unknown_operation_raises() -> None:
    with pytest.raises(KeyError):
        lifecycle.check("format_disk", "running")
