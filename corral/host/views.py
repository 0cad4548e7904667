"""Read-only views of the state store (``corral ps``, ``tickets``, ``journal``), filtered by tenant.

They run in a worker as fleet tasks (``tasks.views``) for the verified caller: a caller sees the
sessions, tickets and journals of its own tenant only, an operator (or fleet component) sees all
(``corral.host.tenancy``). A journal of another tenant's session answers exactly like a session that does
not exist (``corral.host.coordinator``'s answer).

The filter is as strong as the client's access to the state database: a client whose Redis user may
read ``corral:session:*`` directly can still read other tenants' metadata (never a secret value:
those are not stored). Give clients the ACL role without state-db reads to close that.
"""

from __future__ import annotations

from pydantic import Field

from corral.contract.errors import PolicyDenial
from corral.contract.wire import Model
from corral.host.tenancy import DEFAULT_TENANT, HIDDEN_RULE, may_act, owner_of
from corral.state.journal import Journal
from corral.state.store import Store
from corral.trust.identity import Caller


class Rows(Model):
    rows: list[dict[str, str]] = Field(default_factory=list)


class JournalView(Model):
    environment_id: str = Field(max_length=512)


class SessionsView(Model):
    limit: int = Field(default=200, ge=1, le=10_000)


def sessions(store: Store, caller: Caller, limit: int = 200) -> Rows:
    """The caller's sessions, newest first (``limit`` counts visible ones)."""
    visible = [s for s in store.list_sessions(10_000) if may_act(caller, owner_of(s))]
    return Rows(rows=visible[:limit])


def tickets(store: Store, caller: Caller) -> Rows:
    """Open tickets whose session (or, when its record expired, the ticket itself) is the caller's."""
    out = []
    for ticket in store.list_tickets():
        record = store.session(ticket.get("environment_id", ""))
        owner = owner_of(record) if record else ticket.get("tenant", DEFAULT_TENANT)
        if may_act(caller, owner):
            out.append(ticket)
    return Rows(rows=out)


def journal(store: Store, log: Journal, caller: Caller, environment_id: str) -> Rows:
    """A session's journal records; another tenant's (or a missing) session is the hidden answer."""
    record = store.session(environment_id)
    if not (may_act(caller, owner_of(record)) if record else caller.operator):
        raise PolicyDenial(
            f"no session {environment_id} for this caller", context={"rule": HIDDEN_RULE, "session_ref": environment_id}
        )
    return Rows(rows=[{"record_id": r.record_id, **r.fields} for r in log.read(environment_id)])
