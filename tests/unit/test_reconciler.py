"""The recovery table as a pure decision, row by row."""

from __future__ import annotations

import pytest

from corral.host.reconciler import Action, Observed, decide, group_by_environment, plan

HOST = "h1"
NOW = 1_800_000_000_000
SEEN = Observed(kinds=("container", "spool_dir"), ticket=None)
WITH_TICKET = Observed(kinds=("container", "ticket"), ticket={"ticket_ref": "tkt-1", "deadline_ms": str(NOW)})


def rec(state: str, host: str = HOST, updated_ms: int = NOW) -> dict[str, str]:
    return {"state": state, "host": host, "updated_ms": str(updated_ms)}


@pytest.mark.parametrize(
    ("seen", "record", "unowned_ms", "expected"),
    [
        (SEEN, rec("running"), 0, Action.keep),
        (Observed(("container",), None, "exited"), rec("running"), 0, Action.record_exit),  # result missing
        (Observed(("container",), None, "running"), rec("running"), 0, Action.keep),
        (SEEN, rec("exited"), 10**9, Action.keep),
        (WITH_TICKET, rec("detached"), 10**9, Action.keep),
        (SEEN, {}, 0, Action.wait),  # orphan, not yet unowned for the grace
        (SEEN, {}, 60_000, Action.reclaim),  # orphan past the grace
        (WITH_TICKET, {}, 0, Action.register_ticket),  # Redis lost the ticket: the host's ack restores it
        (SEEN, rec("cleaned"), 60_000, Action.reclaim),  # cleanup missing: anti-entropy cleans
        (SEEN, rec("repair_needed"), 60_000, Action.reclaim),  # cleanup failed: retried
        (SEEN, rec("cleaned"), 1_000, Action.wait),
        (WITH_TICKET, rec("cleaned"), 60_000, Action.reclaim),  # a detach ack left after cleanup
        (SEEN, rec("running", host="h2"), 60_000, Action.reclaim),  # labeled here, owned elsewhere
        (SEEN, rec("preparing", updated_ms=NOW - 1_000), 0, Action.keep),  # chain in flight
        (SEEN, rec("preparing", updated_ms=NOW - 900_000), 0, Action.reclaim),  # chain died
        (SEEN, rec("prepared", updated_ms=NOW - 900_000), 0, Action.reclaim),  # next step missing
        (SEEN, rec("cleaning", updated_ms=NOW - 900_000), 0, Action.reclaim),  # cleanup died
    ],
)
def test_decide_follows_the_recovery_table(
    seen: Observed, record: dict[str, str], unowned_ms: int, expected: Action
) -> None:
    action, reason = decide(HOST, seen, record, unowned_ms, NOW, grace_s=60, stale_after_s=900)
    assert action is expected, reason


def test_plan_marks_a_running_session_without_resources_lost_after_the_grace() -> None:
    sessions = {
        "gone": {"state": "running", "host": HOST, "started_ms": str(NOW - 120_000)},
        "young": {"state": "running", "host": HOST, "started_ms": str(NOW - 1_000)},
        "elsewhere": {"state": "running", "host": "h2", "started_ms": str(NOW - 120_000)},
    }
    findings = plan(HOST, {}, sessions, {}, NOW, grace_s=60, stale_after_s=900)
    assert [(f.environment_id, f.action) for f in findings] == [("gone", Action.mark_lost)]


def test_plan_uses_first_seen_for_the_grace() -> None:
    observed = {"a": SEEN, "b": SEEN}
    findings = plan(HOST, observed, {}, {"a": NOW - 61_000, "b": NOW - 1_000}, NOW, grace_s=60, stale_after_s=900)
    assert {f.environment_id: f.action for f in findings} == {"a": Action.reclaim, "b": Action.wait}


def test_group_by_environment_collects_kinds_and_ticket_acks() -> None:
    labeled = {
        "containers": [{"corral.session": "e1", "name": "corral-x"}],
        "networks": [{"corral.session": "e1"}],
        "secret_dirs": [{"corral.session": "e2"}],
        "spool_dirs": [],
        "mount_dirs": [{"corral.session": "e3", "path": "/var/lib/corral/mounts/x"}],
        "tickets": [{"environment_id": "e1", "ticket_ref": "tkt-1", "deadline_ms": "1"}],
    }
    grouped = group_by_environment(labeled)
    assert grouped["e3"] == Observed(kinds=("mount_dir",), ticket=None)  # a pin alone is reclaimable
    assert grouped["e1"].kinds == ("container", "network", "ticket")
    assert grouped["e1"].ticket is not None and grouped["e1"].ticket["ticket_ref"] == "tkt-1"
    assert grouped["e2"] == Observed(kinds=("secret_dir",), ticket=None)
    assert grouped["e1"].container_status == ""
