"""Worker bootstep: publish this host's capability report and a heartbeat to Redis.

Runs a daemon thread in the worker's main process. The record expires after ``heartbeat_ttl_s``
of silence, which is how ``corral hosts`` and placement learn that a host is down.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from celery import bootsteps

from corral.models import dump
from corral.runtimes import build_runtime
from corral.services import state_services

log = logging.getLogger("corral.heartbeat")


class HostHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    label = "corral host heartbeat"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hostname = getattr(parent, "hostname", "")

    def start(self, parent: Any) -> None:
        self._thread = threading.Thread(target=self._loop, name="corral-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:
        self._stop.set()

    def _loop(self) -> None:
        services = state_services()
        settings = services.settings
        runtime = build_runtime(settings)
        started = int(time.time() * 1000)
        while not self._stop.is_set():
            try:
                report = dump(runtime.capability_report())
                services.store.publish_host(
                    settings.host.id,
                    {
                        "host_id": settings.host.id,
                        "worker": self._hostname,
                        "pid": os.getpid(),
                        "started_ms": started,
                        "heartbeat_ms": int(time.time() * 1000),
                        "report": report,
                    },
                    int(settings.host.heartbeat_ttl_s * 1000),
                )
            except Exception:
                log.exception("heartbeat failed")
            self._stop.wait(settings.host.heartbeat_s)
