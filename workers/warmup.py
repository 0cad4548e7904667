"""Ready before the first task: each worker process builds its coordinator before it takes work.

A cold process paid for imports (docker, requests) and for its Redis, Docker and policy set-up
inside its first task: on a freshly started worker a wave of launches saw each of the eight pool
processes spend ~150 ms of CPU there, while the host was busiest. The lifecycle worker imports the
runtime adapter before its pool forks (the children share those pages) and each pool process
builds its own coordinator (its own sockets: never a parent's) as it starts; the reads lane builds
its one coordinator before its threads take a task.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps, signals

from corral.settings import load_settings


def _preload(**_: Any) -> None:
    from corral.runtimes import preload_runtime

    preload_runtime(load_settings())


def _build(**_: Any) -> None:
    from corral.host.services import coordinator

    coordinator()


def warm_pool_processes() -> None:
    """For the lifecycle worker: preload in the parent (``worker_init``), build in each pool process
    (``worker_process_init``). Celery's signals are process-wide; the uids keep one connection each."""
    signals.worker_init.connect(_preload, weak=False, dispatch_uid="corral.warmup.preload")
    signals.worker_process_init.connect(_build, weak=False, dispatch_uid="corral.warmup.build")


class WarmCoordinator(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker step of the reads lane: build this process's coordinator (runtime, policy, Redis) in
    the main thread before the threads pool takes a task, so its threads share one, and give half of
    its threads to held reads."""

    label = "corral warm coordinator"
    requires = ("celery.worker.components:Pool",)

    def start(self, parent: Any) -> None:
        from corral.host.services import coordinator

        _build()
        # Half the lane's threads may hold a read for output (ProcessIoRequest.wait_ms); the rest answer.
        limit = getattr(coordinator().runtime, "limit_held_reads", None)
        if limit is not None:
            limit(int(getattr(parent, "concurrency", 0) or 0) // 2)
