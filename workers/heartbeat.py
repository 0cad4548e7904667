"""Worker bootstep: publish this host's capability report and a heartbeat to Redis.

Runs a daemon thread in the worker's main process. The record expires after ``heartbeat_ttl_s``
of silence, which is how ``corral hosts`` and placement learn that a host is down. The host's
capacity for admission (slots, CPUs, memory: ``corral.fleet.admission``) is published with it, expiring with it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import redis
from celery import bootsteps
from celery.worker import state as worker_state

from corral.celeryconf import FLEET_QUEUE, queue_for_host, task_kwargs, task_name
from corral.contract.errors import AgentError
from corral.contract.models import dump
from corral.contract.runtime import IsolationRuntime
from corral.fleet.admission import Admission, Capacity, host_capacity
from corral.fleet.batch import ACTIVE_KEY, DISPATCH_NEXT, reap_request_key, run_key
from corral.host.metrics import PRIORITY_SEPARATOR, PRIORITY_STEPS
from corral.host.policy_source import PolicySource
from corral.runtimes import build_runtime
from corral.state.services import Services, state_services

log = logging.getLogger("corral.heartbeat")


class HostHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """A consumer step: it starts once the worker consumes its queues (so a heartbeat means "this
    host takes tasks now") and stops with the consumer (a lost broker connection stops it too).

    Consumer steps start after the pool has forked its children; imports and client set-up happen
    in the main thread first: a child forked while another thread holds an import lock would
    deadlock on its first import of that module (seen here as a chain stuck in prepare_session)."""

    label = "corral host heartbeat"
    requires = ("celery.worker.consumer.tasks:Tasks", "celery.worker.consumer.control:Control")

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hostname = getattr(parent, "hostname", "")
        self._policy: PolicySource | None = None
        self._app: Any = None
        self._broker: redis.Redis | None = None

    def start(self, parent: Any) -> None:
        self._stop = threading.Event()
        services = state_services()
        runtime = build_runtime(services.settings)
        self._publish(services, runtime, int(time.time() * 1000))
        self._app = parent.app
        self._thread = threading.Thread(
            target=self._loop, args=(services, runtime), name="corral-heartbeat", daemon=True
        )
        self._thread.start()
        # Anti-entropy on start: whatever a crash left on this host is found and reclaimed.
        parent.app.send_task(
            task_name("reconcile"),
            args=[{"dry_run": False}],
            kwargs=task_kwargs(services.settings, services.settings.host.id),
            queue=queue_for_host(services.settings.host.id),
        )

    def stop(self, parent: Any) -> None:
        self._stop.set()

    def _loop(self, services: Services, runtime: IsolationRuntime) -> None:
        started = int(time.time() * 1000)
        while not self._stop.wait(services.settings.host.heartbeat_s):
            try:
                self._publish(services, runtime, started)
            except Exception:
                log.exception("heartbeat failed")
            try:
                self._nudge(services)
            except Exception:
                log.exception("batch nudge failed")
            try:
                self._renew_leases(services)
            except Exception:
                log.exception("lease renewal failed")

    def _renew_leases(self, services: Services) -> None:
        """While this host has chains queued or running, the reservations placed on it stay reserved
        (``Admission.renew``): a chain that waits in the queue longer than the admission lease still
        finds its room when its ``prepare_session`` confirms it."""
        settings = services.settings
        host = settings.host.id
        if self._broker is None:
            url = settings.redis_url(settings.redis.broker_db)
            self._broker = redis.Redis.from_url(url, **(settings.redis_tls() or {}))
        queue = queue_for_host(host)
        pipe = self._broker.pipeline(transaction=False)
        for priority in PRIORITY_STEPS:
            pipe.llen(queue if priority == 0 else f"{queue}{PRIORITY_SEPARATOR}{priority}")
        queued = sum(int(n) for n in pipe.execute())
        if queued or worker_state.active_requests or worker_state.reserved_requests:
            lease_ms = int(settings.host.admission_lease_s * 1000)
            Admission(services.store.r, settings.state_ttl_s).renew(host, int(time.time() * 1000), lease_ms)

    def _nudge(self, services: Services) -> None:
        """Batches never hang on one lost message (a wake-up held by a worker that was killed): while
        batches are active, any worker's heartbeat wakes the dispatcher (at most once per dispatch
        interval, fleet-wide), and a host running batch attempts asks its own reaper to look."""
        r = services.store.r
        settings = services.settings
        every_ms = int(settings.celery.dispatch_interval_s * 1000)
        if r.scard(ACTIVE_KEY) and r.set(DISPATCH_NEXT, "1", nx=True, px=every_ms):
            self._app.send_task(task_name("dispatch"), kwargs=task_kwargs(settings, ""), queue=FLEET_QUEUE)
        host = settings.host.id
        if r.hlen(run_key(host)) and r.set(reap_request_key(host), "1", nx=True, px=2000):
            self._app.send_task(task_name("batch_reap"), kwargs=task_kwargs(settings, host), queue=queue_for_host(host))

    def _publish(self, services: Services, runtime: IsolationRuntime, started: int) -> None:
        settings = services.settings
        record = {
            "host_id": settings.host.id,
            "worker": self._hostname,
            "pid": os.getpid(),
            "started_ms": started,
            "heartbeat_ms": int(time.time() * 1000),
            "report": dump(runtime.capability_report()),
        }
        capacity = self._capacity(services)
        record["capacity"] = capacity.as_dict()
        ttl_ms = int(settings.host.heartbeat_ttl_s * 1000)
        services.store.publish_host(settings.host.id, record, ttl_ms)
        Admission(services.store.r, settings.state_ttl_s).publish_capacity(settings.host.id, capacity, ttl_ms)

    def _capacity(self, services: Services) -> Capacity:
        """Slots, CPUs and memory for admission (``corral.fleet.admission``); the policy's max_sandboxes caps slots."""
        if self._policy is None:
            self._policy = PolicySource.from_settings(services.settings)
        host = services.settings.host
        try:
            max_sandboxes = self._policy.current().limits.max_sandboxes
        except AgentError:  # an unusable policy file denies everything: offer nothing to admission
            max_sandboxes = 0
        cpus = host.capacity_cpus if host.capacity_cpus is not None else (os.cpu_count() or 1) * host.cpu_overcommit
        return host_capacity(max_sandboxes, host.slots, cpus, host.capacity_memory_mb)
