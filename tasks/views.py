"""Fleet tasks behind ``corral ps``, ``corral tickets`` and ``corral journal``: the state store's
read-only views filtered for the verified caller's tenant (``corral.host.views``). Any host's reads lane
serving the fleet's reads queue (``corral.fleet.reads``) answers, with its host policy's tenant table
(keep it the same on every host)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import shared_task

from corral.celeryconf import fleet_queue
from corral.host import views
from corral.host.services import coordinator
from tasks.base import CorralTask


def _view(name: str) -> Callable[[Callable[..., dict[str, Any]]], Any]:
    decorator: Callable[[Callable[..., dict[str, Any]]], Any] = shared_task(
        bind=True, base=CorralTask, name=f"corral.{name}", queue=fleet_queue("reads")
    )
    return decorator


@_view("list_sessions")
def list_sessions(
    self: CorralTask, request: Any = None, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    def run() -> views.Rows:
        c = coordinator()
        return views.sessions(c.store, c.caller(caller), self.parse(views.SessionsView, request or {}).limit)

    return self.run_operation(host, run)


@_view("list_tickets")
def list_tickets(
    self: CorralTask, request: Any = None, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    def run() -> views.Rows:
        c = coordinator()
        return views.tickets(c.store, c.caller(caller))

    return self.run_operation(host, run)


@_view("read_journal")
def read_journal(
    self: CorralTask, request: Any = None, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    def run() -> views.Rows:
        c = coordinator()
        view = self.parse(views.JournalView, request)
        return views.journal(c.store, c.journal, c.caller(caller), view.environment_id)

    return self.run_operation(host, run)
