"""Batch tasks: ``corral.batch_submit`` / ``corral.batch_control`` (fleet, for the verified caller),
``corral.dispatch`` (fleet: the dispatcher, one at a time) and ``corral.batch_reap`` (host queue).

Submission is a signed task, not a client write: the client Redis role is read-only on ``corral:*``,
and the worker stores the caller it verified from the message's signature with the batch. Every launch
the dispatcher sends later is signed by this worker and carries that caller (kept, as for any message
a fleet component signs), so the host admits the job for the submitting tenant.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from celery import current_app, shared_task

from corral.celeryconf import FLEET_QUEUE, queue_for_host, task_kwargs, task_name
from corral.contract.errors import NotFound, PolicyDenial
from corral.contract.models import dump
from corral.contract.wire import Model
from corral.fleet.batch import (
    DISPATCH_LOCK,
    DISPATCH_NEXT,
    BatchControl,
    BatchRef,
    BatchStore,
    BatchSubmitRequest,
    reap_request_key,
    reaping_key,
)
from corral.fleet.job import JobSpec
from corral.host.dispatcher import Dispatcher, Reaper
from corral.host.services import coordinator
from corral.host.tenancy import HIDDEN_RULE
from corral.host.views import Rows
from corral.settings import load_settings
from corral.trust.identity import CALLER_KWARG, Caller
from tasks.base import CorralTask
from tasks.launch import LAUNCH


def _fleet(name: str) -> Callable[[Callable[..., dict[str, Any]]], Any]:
    decorator: Callable[[Callable[..., dict[str, Any]]], Any] = shared_task(
        bind=True, base=CorralTask, name=f"corral.{name}", queue=FLEET_QUEUE
    )
    return decorator


def _batches() -> BatchStore:
    c = coordinator()
    return BatchStore(c.store.r, c.store.ttl_ms // 1000)


def wake_dispatcher(countdown: float | None = None) -> None:
    settings = load_settings()
    current_app.send_task(
        task_name("dispatch"), kwargs=task_kwargs(settings, ""), queue=FLEET_QUEUE, countdown=countdown
    )


def _send_job(job: JobSpec, host: str, caller: str) -> None:
    """The job's ``corral.launch``, pinned to ``host``'s lifecycle queue, carrying the batch's caller."""
    current_app.send_task(
        LAUNCH, args=[dump(job.launch(host))], kwargs={"host": host, CALLER_KWARG: caller}, queue=queue_for_host(host)
    )


def _send_reap(host: str) -> None:
    r = coordinator().store.r
    if r.set(reap_request_key(host), "1", nx=True, px=2000):  # one reap request in flight per host
        current_app.send_task(
            task_name("batch_reap"), kwargs=task_kwargs(load_settings(), host), queue=queue_for_host(host)
        )


def _visible(caller: Caller, tenant: str) -> bool:
    return caller.operator or caller.tenant == tenant


@_fleet("batch_submit")
def batch_submit(
    self: CorralTask, request: Any = None, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    def run() -> BatchRef:
        c = coordinator()
        who = c.caller(caller)
        req = self.parse(BatchSubmitRequest, request)
        now = int(time.time() * 1000)
        if req.idempotency_key:  # a resubmission is answered before anything is judged or stored
            existing = _batches().find_idempotent(who.tenant, req.idempotency_key)
            if existing:
                return BatchRef(batch_id=existing, created=False)
        req.check(now, c.policy.current().limits.max_batch_jobs)
        ref = _batches().submit(req, who.tenant, who.identity, now)
        if ref.created:
            wake_dispatcher()
        return ref

    return self.run_operation(host, run)


class BatchView(Model):
    batch: dict[str, str]
    jobs: dict[str, dict[str, Any]] = {}


@_fleet("batch_control")
def batch_control(
    self: CorralTask, request: Any = None, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    def run() -> Model:
        c = coordinator()
        who = c.caller(caller)
        req = self.parse(BatchControl, request)
        store = _batches()
        if req.action == "list":
            rows = []
            for batch_id in store.list_ids(200):
                found = store.batch(batch_id)
                if found and _visible(who, found.tenant):
                    rows.append({k: v for k, v in found.raw.items() if k not in ("template",)})
            return Rows(rows=rows)
        batch = store.batch(req.batch_id)
        if batch is None or not _visible(who, batch.tenant):  # another tenant's batch: as if missing
            raise NotFound(f"unknown batch {req.batch_id}", context={"batch_id": req.batch_id, "rule": HIDDEN_RULE})
        now = int(time.time() * 1000)
        if req.action == "cancel":
            outcome = store.cancel(batch, "cancelled by " + who.identity, now)
            if outcome[0] != "cancelled":
                return BatchView(batch={**batch.raw, "noop": f"batch already {outcome[0]}: nothing to cancel"})
            wake_dispatcher()  # terminates what runs, through the hosts' reapers
        elif req.action == "retry_failed":
            failed = {i: rec for i, rec in store.jobs(batch.batch_id).items() if rec.get("state") == "failed"}
            # Attempts keep counting (each runs in a new sandbox id; a reused id met its cleaned session
            # and failed to start), with a fresh budget counted from here (``budget_from``).
            fresh = {
                i: {**rec, "state": "queued", "retried": True, "budget_from": int(rec.get("attempt") or 0)}
                for i, rec in failed.items()
            }
            if batch.deadline_ms is not None and now >= batch.deadline_ms and fresh:
                raise PolicyDenial("the batch's deadline has passed: its failed jobs cannot be retried")
            if store.requeue(batch, fresh):
                wake_dispatcher()
        batch = store.batch(batch.batch_id) or batch
        jobs = {str(i): rec for i, rec in store.jobs(batch.batch_id).items()} if req.jobs else {}
        return BatchView(batch={k: v for k, v in batch.raw.items() if k != "template"}, jobs=jobs)

    return self.run_operation(host, run)


@_fleet("dispatch")
def dispatch(self: CorralTask, *, host: str | None = None, caller: str | None = None) -> dict[str, Any]:
    c = coordinator()
    r = c.store.r
    token = secrets.token_hex(8)
    interval = load_settings().celery.dispatch_interval_s
    if not r.set(DISPATCH_LOCK, token, nx=True, px=30_000):
        return {"skipped": "another dispatcher runs"}
    try:
        return Dispatcher(c.store, _batches(), c.admission, c.clock, _send_job, _send_reap).tick()
    finally:
        if r.get(DISPATCH_LOCK) == token:
            r.delete(DISPATCH_LOCK)
        # While batches are active, come back soon (one scheduled wake-up at a time); beat is the backstop.
        if _batches().active() and r.set(DISPATCH_NEXT, "1", nx=True, px=int(interval * 1000)):
            wake_dispatcher(countdown=interval)


_host_task: Callable[[Callable[..., dict[str, Any]]], Any] = shared_task(
    bind=True, base=CorralTask, name="corral.batch_reap"
)


@_host_task
def batch_reap(self: CorralTask, *, host: str | None = None, caller: str | None = None) -> dict[str, Any]:
    c = coordinator()
    self.check_host(host)
    operator = c.caller(caller)
    if not operator.operator:
        raise PolicyDenial("batch_reap is for fleet components", context={"rule": "operator"})
    r = c.store.r
    r.delete(reap_request_key(c.host_id))  # an exit seen from now on gets another reap request
    # One reaper per host at a time: two would both see a process exit, and one would find the
    # other's cleanup half done.
    token = secrets.token_hex(8)
    lock = reaping_key(c.host_id)
    if not r.set(lock, token, nx=True, px=120_000):
        return {"skipped": "another reaper runs on this host"}
    try:
        return Reaper(c, _batches(), operator, wake_dispatcher).reap()
    finally:
        if r.get(lock) == token:
            r.delete(lock)
