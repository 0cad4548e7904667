"""The Celery app for worker and beat processes.

``create_app()`` builds it from settings (no side effect at import). ``app`` is created lazily by
``celery -A workers.app`` through the module ``__getattr__``.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.app import trace

from corral.celeryconf import FLEET_QUEUE, Lane, QuietAMQP, celery_config, task_name
from corral.settings import Settings, load_settings
from corral.trust import signing
from corral.trust.identity import CALLER_KWARG
from workers.heartbeat import HostHeartbeat
from workers.observe import HostObserver
from workers.reads import ReadsLane
from workers.warmup import WarmCoordinator, warm_pool_processes


def create_app(settings: Settings | None = None, lane: Lane = "lifecycle") -> Celery:
    """The app of a host worker's ``lane``: ``lifecycle`` (heartbeat, metrics, exit watch, and the reads
    lane as a child process, ``workers.reads``) or ``reads`` (the reads queue's threads pool only)."""
    settings = settings or load_settings()
    # Celery logs every task's return value; ours can carry (redacted) process output, which
    # does not belong in worker logs. Results stay in the result backend and events.
    trace.LOG_SUCCESS = "Task %(name)s[%(id)s] succeeded in %(runtime)ss"
    tasks = ["operations", "launch", "sweeper", "reconcile", "views", "placement", "batch"]
    app = Celery("corral", include=[f"tasks.{name}" for name in tasks], amqp=QuietAMQP)
    app.conf.update(celery_config(settings))
    # Before the pool forks: children decode (and verify) task bodies with the same serializer.
    signing.register(settings)
    if not signing.signing_ready(settings):
        # A process without a key (Flower) sends plain JSON, which workers refuse: Flower's periodic
        # "wake up and send events" broadcast and any task it would send have no effect.
        app.conf.task_serializer = "json"
    app.conf.worker_consumer = "workers.guard:GuardedConsumer"
    app.conf.beat_schedule = {
        "corral-sweep-tickets": {
            "task": task_name("sweep_tickets"),
            "schedule": settings.celery.sweep_interval_s,
            "kwargs": {CALLER_KWARG: signing.identity(settings)},
            "options": {"queue": FLEET_QUEUE, "expires": settings.celery.sweep_interval_s * 2},
        },
        "corral-dispatch-batches": {
            "task": task_name("dispatch"),
            "schedule": settings.celery.dispatch_interval_s * 5,
            "kwargs": {CALLER_KWARG: signing.identity(settings)},
            "options": {"queue": FLEET_QUEUE, "expires": settings.celery.dispatch_interval_s * 5},
        },
        "corral-reconcile-fleet": {
            "task": task_name("reconcile_fleet"),
            "schedule": settings.celery.reconcile_interval_s,
            "kwargs": {CALLER_KWARG: signing.identity(settings)},
            "options": {"queue": FLEET_QUEUE, "expires": settings.celery.reconcile_interval_s},
        },
    }
    if lane == "reads":
        # No task events from the reads lane: a follower's reads (a frame per stream every few hundred
        # ms, a stats call) would bury the jobs in Flower's tasks page, and their three publishes each
        # were a good part of a read's cost on a busy host. The lane's worker still shows in Flower,
        # and its reads are counted in the host's metrics (corral_operations_total).
        app.conf.worker_send_task_events = False
        app.steps["worker"].add(WarmCoordinator)
        return app
    warm_pool_processes()
    app.steps["consumer"].add(HostHeartbeat)
    app.steps["worker"].add(HostObserver)  # metrics endpoint and exit watch (workers.observe)
    app.steps["worker"].add(ReadsLane)  # the reads queue's own process (workers.reads)
    return app


_app: Celery | None = None


def __getattr__(name: str) -> Any:
    global _app
    if name in ("app", "celery"):
        if _app is None:
            _app = create_app()
        return _app
    raise AttributeError(name)
