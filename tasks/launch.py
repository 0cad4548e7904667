"""``corral.launch``: prepare and start one sandbox on this host from one message (``corral.host.launch``).

Routed to the host's lifecycle queue like the steps it runs; its result is ``start_process``'s."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import shared_task

from corral.celeryconf import task_name
from corral.contract.models import ProcessStartResult
from corral.contract.wire import WireResult
from corral.fleet.job import LaunchRequest
from corral.host.launch import launch as run_launch
from corral.host.services import coordinator
from corral.sandbox.policy import MAX_REQUEST_BYTES
from corral.trust.identity import Caller
from tasks.base import CorralTask

LAUNCH = task_name("launch")


_register: Callable[[Callable[..., WireResult]], Any] = shared_task(bind=True, base=CorralTask, name=LAUNCH)


@_register
def launch(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> WireResult:
    def run() -> ProcessStartResult:
        # An environment and a process, each of which could be one request document on its own.
        parsed = self.parse(LaunchRequest, request, max_bytes=2 * MAX_REQUEST_BYTES)
        who: Caller = coordinator().caller(caller)
        return run_launch(coordinator(), parsed, who, last_attempt=self.last_attempt())

    return self.run_operation(host, run)
