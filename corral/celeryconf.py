"""Celery configuration shared by every producer (client) and consumer (worker).

Routing must be identical everywhere: the worker that finishes chain step N publishes step N+1.
``queue_for_host`` is the one place a queue name is formatted. Every corral task carries its
target host as the ``host`` keyword argument; ``route_task`` reads it, so even a signature sent
without an explicit queue lands on the right host, and a task with no host goes to the fleet queue
(never to Celery's default queue, which nobody consumes).

A host has two queues (two *lanes*): ``corral.host.<id>`` for lifecycle work (the chain, signals,
cleanup, stdin writes: effects, journaled, served by the worker's prefork pool) and
``corral.host.<id>.reads`` for the cheap reads of ``READS`` (stats, output frames, the runtime's
accessors), served by a threads pool of its own (``workers.reads``), so a read never waits behind
slow lifecycle tasks; the fleet's read-only views likewise go to ``corral.fleet.reads``, which every
host's reads lane serves. ``queue_for`` picks the lane from the task name and its request alone, so
every worker and client routes a task identically. A ``stream_io`` that writes stdin stays in the
lifecycle lane: it is an effect (idempotency lease held by a pool process), and a sandbox's writes
keep one queue.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from celery.app.amqp import AMQP

from corral.contract.operations import READS
from corral.contract.vocabulary import ProcessIoStream
from corral.settings import Settings
from corral.trust.identity import CALLER_KWARG
from corral.trust.signing import CONTENT_TYPE, SERIALIZER, identity

FLEET_QUEUE = "corral.fleet"
HOST_QUEUE_PREFIX = "corral.host."
TASK_PREFIX = "corral."
READS_SUFFIX = ".reads"

Lane = Literal["lifecycle", "reads"]
READ_TASKS = frozenset(f"{TASK_PREFIX}{op.value}" for op in READS)
FLEET_READ_TASKS = frozenset(f"{TASK_PREFIX}{name}" for name in ("list_sessions", "list_tickets", "read_journal"))
"""The fleet's read-only views (``tasks.views``): ``corral.fleet.reads``, served by every host's reads lane."""
_READ_STREAMS = frozenset({ProcessIoStream.stdout.value, ProcessIoStream.stderr.value})


def queue_for_host(host_id: str, lane: Lane = "lifecycle") -> str:
    """The one place a host queue's name is formatted: ``corral.host.<id>`` (lifecycle) or
    ``corral.host.<id>.reads`` (cheap reads)."""
    return f"{HOST_QUEUE_PREFIX}{host_id}{READS_SUFFIX if lane == 'reads' else ''}"


def fleet_queue(lane: Lane = "lifecycle") -> str:
    """The fleet's queues: ``corral.fleet`` (placement, sweeps, batches) and ``corral.fleet.reads`` (views)."""
    return f"{FLEET_QUEUE}{READS_SUFFIX if lane == 'reads' else ''}"


def fleet_queue_for(name: str) -> str:
    """The fleet queue of task ``name``."""
    return fleet_queue("reads" if name in FLEET_READ_TASKS else "lifecycle")


def lane_of(name: str, args: Any) -> Lane:
    """The lane of task ``name`` with positional ``args``: a read of ``READS`` goes to the reads lane,
    except a ``stream_io`` whose request is not a read of stdout or stderr (a stdin write, or a
    request too malformed to tell: it fails validation in the lifecycle lane like any other)."""
    if name not in READ_TASKS:
        return "lifecycle"
    if name == f"{TASK_PREFIX}stream_io":
        request = args[0] if isinstance(args, list | tuple) and args else None
        if not isinstance(request, dict) or request.get("stream") not in _READ_STREAMS:
            return "lifecycle"
    return "reads"


def queue_for(name: str, args: Any, host: str) -> str:
    """The host queue of task ``name`` with positional ``args`` (its lane, ``lane_of``)."""
    return queue_for_host(host, lane_of(name, args))


def task_name(operation: str) -> str:
    """The Celery name of a task: ``corral.<name>``. A contract operation's task is named by its
    ``Operation`` member (``task_name(Operation.cleanup)``); corral's own tasks by their plain name."""
    return f"{TASK_PREFIX}{operation}"


def task_kwargs(settings: Settings, host: str) -> dict[str, Any]:
    """Keyword arguments of a task this process sends: its host, and this process as the caller
    (a worker re-stamps a client's caller from the signature; a component's is kept)."""
    return {"host": host, CALLER_KWARG: identity(settings)}


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any) -> dict[str, str] | None:
    """Payload router (the safety net behind ``.set(queue=...)`` on every signature)."""
    if not str(name).startswith(TASK_PREFIX):
        return None
    host = (kwargs or {}).get("host") if isinstance(kwargs, dict) else None
    return {"queue": queue_for(str(name), args, host) if host else fleet_queue_for(str(name))}


SHOWN_KWARGS = ("host", CALLER_KWARG)
"""Keyword arguments whose values task events show (where a task runs and for whom); no others."""


def argument_summary(args: Any, kwargs: Any) -> tuple[str, str]:
    """What worker logs, task events and Flower show of a task's arguments: their count and size, the
    target host and the caller. Requests can be large and carry environment data (env values,
    secret names, mounts), and events reach every subscriber of the event channels."""
    try:
        size = len(json.dumps([args, kwargs], default=str))
    except (TypeError, ValueError):
        size = 0
    count = len(args) if isinstance(args, list | tuple) else 0
    argsrepr = f"<{count} argument{'s' if count != 1 else ''} hidden, {size} bytes>"
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    shown = {k: kwargs[k] for k in SHOWN_KWARGS if isinstance(kwargs.get(k), str)}
    hidden = len(kwargs) - len(shown)
    kwargsrepr = repr(shown) + (f" <{hidden} hidden>" if hidden else "")
    return argsrepr, kwargsrepr


def sends_task_events(name: str, args: Any) -> bool:
    """Whether task ``name`` with ``args`` is followed in task events: not the reads (a host's reads
    lane or the fleet's views), which are frequent, change nothing and are counted in the host's
    metrics instead; their worker sends no task events either (``workers.app``)."""
    return name not in FLEET_READ_TASKS and lane_of(name, args) == "lifecycle"


_SENT_EVENT_AT = 12
"""Where ``create_sent_event`` sits among ``AMQP.as_task_v2``'s positional arguments after ``kwargs``
(countdown, eta, group_id, group_index, expires, retries, chord, callbacks, errbacks, reply_to,
time_limit, soft_time_limit, create_sent_event): ``Celery.send_task`` passes it positionally."""


class QuietAMQP(AMQP):  # type: ignore[misc]
    """Task messages (and their task-sent events) carry ``argument_summary`` as ``argsrepr`` and
    ``kwargsrepr``, never Celery's default repr of the values. Every app that sends tasks (client,
    worker, beat) is built with it, so a chain's later steps and retries are summarized too. A read
    sends no task-sent event (``sends_task_events``): with no other event of it to follow, Flower
    would list it as pending for ever."""

    def as_task_v2(
        self, task_id: str, name: str, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any
    ) -> Any:
        # send_task passes countdown ... chain positionally; the reprs come as keywords, if at all.
        options["argsrepr"], options["kwargsrepr"] = argument_summary(args or (), kwargs or {})
        if not sends_task_events(name, args):
            if len(rest) > _SENT_EVENT_AT:
                rest = (*rest[:_SENT_EVENT_AT], False, *rest[_SENT_EVENT_AT + 1 :])
            else:
                options["create_sent_event"] = False
        return super().as_task_v2(task_id, name, args, kwargs, *rest, **options)


def celery_config(settings: Settings) -> dict[str, Any]:
    visibility = settings.celery.visibility_timeout_s
    # kombu scans for abandoned (unacked, past the visibility timeout) messages every
    # interval x throttle seconds; its default throttle of 10 makes that ~100 s.
    transport = {
        "visibility_timeout": visibility,
        "unacked_restore_interval": settings.celery.restore_interval_s,
        "unacked_restore_throttle": 1,
    }
    tls = settings.redis_tls()
    # redbeat takes broker_use_ssl too.
    tls_options: dict[str, Any] = {"broker_use_ssl": tls, "redis_backend_use_ssl": tls} if tls is not None else {}
    return {
        "broker_url": settings.redis_url(settings.redis.broker_db),
        "result_backend": settings.redis_url(settings.redis.result_db),
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "broker_connection_retry_on_startup": True,
        # Task (and worker control) messages are signed (corral.trust.signing); a worker accepts nothing else.
        # Results and events stay JSON: the Redis ACL decides who may write them.
        "task_serializer": SERIALIZER,
        "accept_content": [CONTENT_TYPE],
        "result_serializer": "json",
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "result_extended": False,
        "result_expires": 24 * 3600,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": settings.celery.soft_shutdown_timeout_s,
        "worker_enable_soft_shutdown_on_idle": True,
        "task_routes": (route_task,),
        "task_default_queue": FLEET_QUEUE,
        "task_create_missing_queues": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        # No STARTED state in the result backend: nothing reads it (Flower has the task-started event),
        # and storing it cost every task a GET, a SETEX and a PUBLISH before its body ran (bench/profile_start.py:
        # 646 -> 581 Redis commands per `corral run true`).
        "task_track_started": False,
        "worker_hijack_root_logger": False,
        "redbeat_redis_url": settings.redis_url(settings.redis.beat_db),
        "redbeat_key_prefix": "corral:redbeat:",
        "redbeat_redis_options": {"health_check_interval": 30},
        "redbeat_lock_timeout": max(30, int(settings.celery.sweep_interval_s * 5)),
        "beat_max_loop_interval": max(1, int(settings.celery.sweep_interval_s)),
        "beat_scheduler": "redbeat.RedBeatScheduler",
        **tls_options,
    }
