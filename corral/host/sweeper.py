"""The detach-ticket sweeper: find expired tickets and send their reclaim to the owning host.

Claiming is one Lua script (``Store.claim_due_tickets``): a claimed ticket is pushed
``resend_after_ms`` into the future, so two sweepers (or two beats) never both send it in one
period, and a reclaim lost with its host is sent again later. Reclaim itself is idempotent per
ticket, so a second send is harmless.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from corral.contract.models import ReclaimRequest
from corral.host.effects import Clock
from corral.state.store import Store

DEFAULT_RESEND_AFTER_MS = 60_000


@dataclass(frozen=True)
class SweepReport:
    sent: list[str]
    """Ticket refs whose reclaim was sent."""


def sweep(
    store: Store,
    clock: Clock,
    send: Callable[[str, ReclaimRequest], None],
    resend_after_ms: int = DEFAULT_RESEND_AFTER_MS,
    limit: int = 100,
) -> SweepReport:
    sent = []
    for due in store.claim_due_tickets(clock.now_ms(), resend_after_ms, limit):
        if not due.host:
            continue
        send(due.host, ReclaimRequest(ticket_ref=due.ticket_ref))
        sent.append(due.ticket_ref)
    return SweepReport(sent)
