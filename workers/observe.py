"""Worker bootstep: this host's Prometheus endpoint and its exit watch, in the worker's main process.

- Metrics (``corral.host.metrics``): the step is built when the worker is set up, before the pool forks,
  and puts the process in prometheus_client's multiprocess mode there, so the pool's children (the
  tasks) count into files this process sums at scrape. It serves ``/metrics`` on ``metrics.bind``
  (loopback by default) and ``metrics.port`` (0: off) once the pool runs; a port already taken is
  logged, never fatal: the worker's job is sandboxes, not numbers.
- Exit watch: every ``host.heartbeat_s``, ``Reconciler.record_exits`` records the end of processes
  that stopped while nobody was asking (a detached sandbox's timeout), so ``corral ps`` shows them
  exited with their reason and ``corral_process_exits_total`` counts them.

Everything is imported and built in the main thread at start: a pool child forked while another
thread holds an import lock would deadlock on its first import of that module (``workers.heartbeat``).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from celery import bootsteps

from corral.host import metrics
from corral.host.reconciler import Reconciler
from corral.host.services import coordinator
from corral.settings import load_settings
from corral.state.services import state_services

log = logging.getLogger("corral.observe")


class HostObserver(bootsteps.StartStopStep):  # type: ignore[misc]
    label = "corral metrics and exit watch"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._server: Any = None
        self._thread: threading.Thread | None = None
        settings = load_settings()
        self._directory = metrics.multiproc_dir(settings)
        self._enabled = bool(settings.metrics.port)
        if self._enabled:
            try:
                metrics.prepare_multiprocess(self._directory)  # before the pool forks
            except OSError as exc:  # no metrics, still a worker
                log.warning("metrics off: cannot prepare %s: %s", self._directory, exc.strerror)
                self._enabled = False

    def start(self, parent: Any) -> None:
        settings = load_settings()
        self._stop = threading.Event()
        if self._enabled and self._server is None:
            self._serve(settings)
        watch = Reconciler(coordinator())
        self._watch_once(watch)  # here first: whatever it imports is imported before any thread runs
        self._thread = threading.Thread(target=self._watch, args=(watch,), name="corral-exit-watch", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _serve(self, settings: Any) -> None:
        services = state_services(settings)
        broker = redis.Redis.from_url(
            settings.redis_url(settings.redis.broker_db), decode_responses=True, **(settings.redis_tls() or {})
        )
        here = coordinator()
        collector = metrics.HostCollector(
            settings.host.id,
            settings.host.state_dir,
            services.store,
            broker,
            lambda: here.policy.current().limits.max_sandboxes,
            here.admission,
        )
        list(collector.collect())  # the same, for what a scrape imports
        try:
            self._server = metrics.serve(
                metrics.registry(collector, self._directory), settings.metrics.bind, settings.metrics.port
            )
        except OSError as exc:
            log.warning(
                "metrics endpoint %s:%s not served: %s", settings.metrics.bind, settings.metrics.port, exc.strerror
            )
            return
        log.info("metrics on http://%s:%s/metrics", settings.metrics.bind, settings.metrics.port)

    def _watch(self, watch: Reconciler) -> None:
        interval = load_settings().host.heartbeat_s
        while not self._stop.wait(interval):
            self._watch_once(watch)

    @staticmethod
    def _watch_once(watch: Reconciler) -> None:
        try:
            watch.record_exits()
        except Exception:
            log.exception("exit watch failed")
