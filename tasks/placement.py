"""``corral.place`` (fleet queue): admission for one job, for the verified caller.

A client's Redis role may not write admission state, so it asks a fleet worker: the worker resolves
the caller to a tenant (an identity no tenant knows is refused), filters the live hosts on their
capability reports and reserves in one Lua call (``corral.fleet.placement``). The answer is the host (the
client then sends the chain there, within the reservation's lease) or ``queued`` with its reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery import shared_task

from corral.celeryconf import FLEET_QUEUE
from corral.fleet.admission import Admission, Demand
from corral.fleet.placement import PlaceRequest, PlaceResult, place
from corral.host.services import coordinator
from tasks.base import CorralTask

_register: Callable[[Callable[..., dict[str, Any]]], Any] = shared_task(
    bind=True, base=CorralTask, name="corral.place", queue=FLEET_QUEUE
)


@_register
def place_job(
    self: CorralTask, request: Any = None, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    def run() -> PlaceResult:
        c = coordinator()
        c.caller(caller)  # a caller no tenant knows places nothing
        req = self.parse(PlaceRequest, request)
        admission: Admission = c.admission
        decision = place(
            c.store,
            admission,
            req.environment_id,
            req.requirement,
            Demand.of(req.cpus, req.memory_mb),
            int(time.time() * 1000),
            req.mode,
            requested=req.host,
        )
        return PlaceResult.of(decision)

    return self.run_operation(host, run)
