"""What fleet operations answer that is corral's own, not the contract's: the reconciler's report.

Clients parse it (``corral reconcile``); host workers produce it (``corral.host.reconciler``).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Action(StrEnum):
    keep = "keep"
    wait = "wait"
    """Unowned, but not yet for the whole grace period."""
    reclaim = "reclaim"
    register_ticket = "register_ticket"
    mark_lost = "mark_lost"
    record_exit = "record_exit"
    """The process exited but the session still says running: ask the adapter, record the exit."""
    error = "error"
    """The environment could not be judged (a malformed session record): nothing was done, the reason
    says why, and the rest of the pass went on. The next pass looks again."""


class Finding(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    environment_id: str
    resources: list[str] = Field(default_factory=list)
    """Kinds found on the host: container, network, secret_dir, spool_dir, mount_dir (pinned mount sources), ticket."""
    state: str
    action: Action
    reason: str
    outcome: str = ""


class ReconcileReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    host_id: str
    dry_run: bool
    findings: list[Finding]

    def count(self, action: Action) -> int:
        return sum(1 for f in self.findings if f.action is action)
