"""``corral.sweep_tickets``: runs on the fleet queue, scheduled by beat (redbeat)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import current_app, shared_task

from corral.celeryconf import FLEET_QUEUE, queue_for_host, task_kwargs, task_name
from corral.contract.models import ReclaimRequest, dump
from corral.contract.operations import Operation
from corral.host.effects import SystemClock
from corral.host.sweeper import sweep
from corral.settings import load_settings
from corral.state.services import state_services
from tasks.base import CorralTask


def _send_reclaim(host: str, request: ReclaimRequest) -> None:
    current_app.send_task(
        task_name(Operation.reclaim),
        args=[dump(request)],
        kwargs=task_kwargs(load_settings(), host),
        queue=queue_for_host(host),
    )


_register: Callable[[Callable[..., dict[str, Any]]], Any] = shared_task(
    bind=True, base=CorralTask, name="corral.sweep_tickets", queue=FLEET_QUEUE
)


@_register
def sweep_tickets(self: CorralTask, *, host: str | None = None, caller: str | None = None) -> dict[str, Any]:
    report = sweep(state_services().store, SystemClock(), _send_reclaim)
    return {"sent": report.sent}
