"""``corral.reconcile`` (per host) and ``corral.reconcile_fleet`` (beat: fan out to live hosts)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import current_app, shared_task

from corral.celeryconf import FLEET_QUEUE, queue_for_host, task_kwargs, task_name
from corral.fleet.reports import ReconcileReport
from corral.host.reconciler import Reconciler
from corral.host.services import coordinator
from corral.host.tenancy import check_operator
from corral.settings import load_settings
from corral.state.services import state_services
from tasks.base import CorralTask

_register_host: Callable[[Callable[..., dict[str, Any]]], Any] = shared_task(
    bind=True, base=CorralTask, name="corral.reconcile"
)
_register_fleet: Callable[[Callable[..., dict[str, Any]]], Any] = shared_task(
    bind=True, base=CorralTask, name="corral.reconcile_fleet", queue=FLEET_QUEUE
)


@_register_host
def reconcile(
    self: CorralTask, request: Any = None, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    dry_run = bool((request or {}).get("dry_run", False))
    settings = load_settings()

    def run() -> ReconcileReport:
        check_operator(coordinator().policy.current(), coordinator().caller(caller))
        return Reconciler(
            coordinator(),
            grace_s=settings.host.reconcile_grace_s,
            stale_after_s=settings.host.reconcile_stale_after_s,
        ).run(dry_run=dry_run)

    return self.run_operation(host, run)


@_register_fleet
def reconcile_fleet(self: CorralTask, *, host: str | None = None, caller: str | None = None) -> dict[str, Any]:
    # Each reconcile it sends carries this worker's own identity (an operator): only an operator asks.
    check_operator(coordinator().policy.current(), coordinator().caller(caller))
    store = state_services().store
    live = [h for h in store.known_hosts() if store.host(h)]
    for host_id in live:
        current_app.send_task(
            task_name("reconcile"),
            args=[{"dry_run": False}],
            kwargs=task_kwargs(load_settings(), host_id),
            queue=queue_for_host(host_id),
        )
    return {"sent": live}
