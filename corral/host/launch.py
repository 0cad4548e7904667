"""``corral.launch``: the prepare-to-start chain run by its host from one message.

Why one message and not a Celery chain of eight: on two cores each Celery hop cost 10 to 23 ms
(publish, broker, the pool's hand-off, the result's store, the ack, four events) against 1 to 3 ms of
corral's own work per step (``bench/profile_start.py``), so the hops were most of a launch's cost
over raw Docker and most of the worker's CPU per sandbox. The guarantees are per step, not per message,
and every step keeps them here: it is the same coordinator operation, with the same derived
idempotency key, its own journal intent and result and its result in the session record. A
redelivered launch (worker killed, visibility timeout) answers the finished steps from their records
and takes over the one in flight, as a redelivered chain step did. Each operation is still its own
Celery task for anyone who calls it alone (``Client.call``).

A step that fails for good is followed by the session's cleanup, as the chain's ``link_error`` did,
and its error is the launch's. A retryable failure (a retryable ``AgentError``, the state store
unavailable) retries the whole launch (``tasks.base``); only the last attempt cleans up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from corral.contract.errors import AgentError
from corral.contract.models import CleanupRequest, ProcessStartResult
from corral.contract.operations import Operation
from corral.contract.refs import cleanup_plan_ref
from corral.fleet.job import LaunchRequest
from corral.host import metrics
from corral.host.coordinator import Coordinator
from corral.trust.identity import Caller

log = logging.getLogger("corral.launch")

R = TypeVar("R")


def launch(coordinator: Coordinator, request: LaunchRequest, caller: Caller, last_attempt: bool) -> ProcessStartResult:
    """Run the eight steps in contract order and return ``start_process``'s result. ``last_attempt``:
    no retry follows this one, so even a retryable failure cleans up."""
    steps = request.steps()
    try:
        # The process's size first, before anything exists: an 8 MiB argv is refused with a denial
        # record and no intent (the cleanup that follows finds no session and returns the reservation).
        coordinator.admit_chained_process(
            Operation.prepare_session, request.environment.environment_id, request.process
        )
        _observed(Operation.prepare_session, lambda: coordinator.prepare_session(steps.prepare_session, caller))
        _observed(Operation.resolve_image, lambda: coordinator.resolve_image(steps.resolve_image, caller))
        _observed(Operation.prepare_rootfs, lambda: coordinator.prepare_rootfs(steps.prepare_rootfs, caller))
        _observed(Operation.resolve_mounts, lambda: coordinator.resolve_mounts(steps.resolve_mounts, caller))
        _observed(Operation.configure_network, lambda: coordinator.configure_network(steps.configure_network, caller))
        _observed(Operation.prepare_secrets, lambda: coordinator.prepare_secrets(steps.prepare_secrets, caller))
        _observed(
            Operation.prepare_environment, lambda: coordinator.prepare_environment(steps.prepare_environment, caller)
        )
        return _observed(Operation.start_process, lambda: coordinator.start_process(steps.start_process, caller))
    except Exception as exc:
        retryable = isinstance(exc, redis.RedisError) or (isinstance(exc, AgentError) and exc.retryable)
        if last_attempt or not retryable:
            _clean_up(coordinator, request, caller)
        raise


def _observed(operation: Operation, call: Callable[[], R]) -> R:
    """Run one step, its outcome and duration counted in the host's metrics under its own name, as
    when it was a task of its own (``tasks.base``)."""
    started = time.monotonic()
    try:
        result = call()
    except AgentError as exc:
        metrics.observe_operation(operation, time.monotonic() - started, "error", exc)
        raise
    metrics.observe_operation(operation, time.monotonic() - started, "ok")
    return result


def _clean_up(coordinator: Coordinator, request: LaunchRequest, caller: Caller) -> None:
    """What the chain's ``link_error`` did: remove whatever the failed launch created (idempotent; a
    session that was never created is nothing to remove). Its own failure is logged and left to the
    reconciler; the caller gets the step's error, not this one."""
    env = request.environment
    try:
        coordinator.cleanup(
            CleanupRequest(environment=env, cleanup_plan_ref=cleanup_plan_ref(env.environment_id)), caller=caller
        )
    except Exception:
        log.warning("cleanup after a failed launch of %s failed; the reconciler will retry", env.environment_id)
