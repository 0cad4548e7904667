"""corral.contract.lifecycle: the session state machine as data, checked against an independent statement of the
contract's order (prepare chain, then start, then process operations, detach, cleanup/reclaim)."""

from __future__ import annotations

import pytest

from corral.contract import lifecycle
from corral.contract.errors import InvalidStateTransition
from corral.contract.lifecycle import ALLOWED, NEXT, NO_SESSION
from corral.contract.models import SessionState as S
from corral.contract.operations import ACCESSORS, OPERATIONS, Operation

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
    assert {op: t.target for op, t in NEXT.items()} == {
        "prepare_session": S.preparing,
        "prepare_environment": S.prepared,
        "start_process": S.running,
        "detach": S.detached,
    }
    # an operation's target state is one it may be replayed from
    for op, transition in NEXT.items():
        lifecycle.check(op, transition.target)
    # and its transition starts from a state it may run in (prepare_session creates: no sources)
    for op, transition in NEXT.items():
        assert set(transition.sources) <= set(ALLOWED[op]), op


def test_allowed_and_expected_are_keyed_by_every_operation_but_the_accessors() -> None:
    assert set(ALLOWED) == set(OPERATIONS) - ACCESSORS
    assert all(isinstance(op, Operation) for op in ALLOWED)


def test_teardown_ends_in_cleaned_or_repair_needed() -> None:
    for op in (Operation.cleanup, Operation.reclaim):
        assert lifecycle.ended(op, True).target is S.cleaned
        assert lifecycle.ended(op, False).target is S.repair_needed
        # a cleaned session is never moved back by a teardown that succeeds again
        assert S.cleaned not in lifecycle.ended(op, True).sources
    with pytest.raises(ValueError, match="does not end a session"):
        lifecycle.ended(Operation.start_process, True)


@pytest.mark.parametrize(
    ("transition", "state", "moves"),
    [
        (lifecycle.PROCESS_STARTED, "prepared", True),
        (lifecycle.PROCESS_STARTED, "cleaned", False),
        (lifecycle.PROCESS_EXITED, "running", True),
        (lifecycle.PROCESS_EXITED, "detached", False),
        (lifecycle.DETACHED, "exited", True),
        (lifecycle.DETACHED, "cleaning", False),
        (lifecycle.CLEANUP_BEGUN, "repair_needed", True),
        (lifecycle.CLEANED, "running", False),
        (lifecycle.HOST_LOST, "running", True),
        (lifecycle.HOST_LOST, "cleaned", False),
        (lifecycle.HOST_LOST, "repair_needed", False),
    ],
)
def test_transitions_are_compare_and_set_over_their_sources(
    transition: lifecycle.Transition, state: str, moves: bool
) -> None:
    assert (state in transition.sources) is moves
    assert transition.fields(reason="lost") == {"state": transition.target, "reason": "lost"}


def test_only_a_cleanup_may_leave_a_cleaned_session() -> None:
    named = [v for v in vars(lifecycle).values() if isinstance(v, lifecycle.Transition)]
    assert len(named) >= 10
    leaving = [t for t in named if S.cleaned in t.sources]
    assert all(t in (lifecycle.CLEANUP_BEGUN, lifecycle.CLEANUP_FAILED) for t in leaving), leaving


def test_check_unknown_operation_raises() -> None:
    with pytest.raises(KeyError):
        lifecycle.check("format_disk", "running")
