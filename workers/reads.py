"""The host's reads lane: a second Celery worker process that serves ``corral.host.<id>.reads``.

Cheap reads (``corral.contract.operations.READS``: stats, output frames, the runtime's accessors) must
never wait in a queue behind slow lifecycle tasks (a chain's ``prepare_environment``, a cleanup),
and a Celery worker has one pool. So ``python -m workers.main worker`` runs the lifecycle worker
(prefork, ``corral.host.<id>`` and ``corral.fleet``) and, through the ``ReadsLane`` step below, one
child process ``python -m workers.main reads`` with a threads pool on the reads queue
(``corral.celeryconf.lane_of`` decides which task goes where, identically on every process).

Supervision, like the pool's own children: the lane starts once the lifecycle pool has started, is
restarted (with a growing pause) when it dies, and is stopped (SIGTERM, which ``REMAP_SIGTERM``
makes a soft shutdown) when the worker stops. It asks the kernel for SIGTERM when its parent dies
(``PR_SET_PDEATHSIG``), so a killed worker (SIGKILL) leaves no reads lane behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Any

from celery import bootsteps

log = logging.getLogger("corral.reads")

PARENT_ENV = "CORRAL_READS_PARENT"
"""The pid of the lifecycle worker that started this reads lane (it exits if that parent is gone)."""

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> bool:
    """In the reads lane: SIGTERM when the worker that started it dies; False if it is gone already."""
    expected = os.environ.get(PARENT_ENV, "")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the lifecycle worker still stops it on shutdown
        pass
    return not expected.isdigit() or os.getppid() == int(expected)


READS_NICE = -5
"""The reads lane's scheduling priority: ahead of the lifecycle pool and the shims it starts (nice 0),
so a host whose CPUs are busy starting sandboxes still answers a read in milliseconds. Lowering a nice
value takes CAP_SYS_NICE (a root worker has it); without it the lane keeps the worker's."""


def raise_priority() -> int:
    """Give this process (and the threads it starts from now on) ``READS_NICE``; its nice value after.

    With the kernel's autogroups on (``/proc/sys/kernel/sched_autogroup_enabled``, Debian's default), a
    nice value only orders the processes of one session: the engine's daemons, each in a session of
    its own, got the same CPU share as this lane whatever its nice value (measured here: stats p95
    80 ms during 50 starts, 47 ms once the lane's group had the nice). So the lane takes a session of
    its own (it still stops with its worker: ``die_with_parent``) and gives that group the nice too."""
    with contextlib.suppress(OSError):  # no CAP_SYS_NICE (a container without it, a non-root worker)
        os.setpriority(os.PRIO_PROCESS, 0, READS_NICE)
    with contextlib.suppress(OSError):  # already a session leader, or no autogroups here
        os.setsid()
    with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as group:
        group.write(str(READS_NICE))
    return os.getpriority(os.PRIO_PROCESS, 0)


class ReadsLane(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker step of the lifecycle worker: starts, restarts and stops the reads lane process.

    ``app.conf.corral_reads_argv`` (set by ``workers.main``) is its command; without it (a worker
    started some other way) there is no lane and the step does nothing."""

    label = "corral reads lane"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._argv: list[str] | None = parent.app.conf.get("corral_reads_argv")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self.restarts = 0

    def start(self, parent: Any) -> None:
        if not self._argv or self._thread is not None:
            return
        self._stop = threading.Event()
        # The thread that forks the lane lives as long as the lane: PR_SET_PDEATHSIG fires when the
        # forking *thread* exits.
        self._thread = threading.Thread(target=self._supervise, name="corral-reads-lane", daemon=True)
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        assert self._argv is not None
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        return subprocess.Popen(self._argv, env=env, stdin=subprocess.DEVNULL)

    def _supervise(self) -> None:
        pause = 1.0
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                self._proc = self._spawn()
            code = self._proc.wait()
            if self._stop.is_set():
                return
            self.restarts += 1
            log.warning("reads lane exited with %s; restarting in %.0f s", code, pause)
            if self._stop.wait(pause):
                return
            pause = min(pause * 2, 30.0)

    def stop(self, parent: Any) -> None:
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        timeout = float(parent.app.conf.get("worker_soft_shutdown_timeout") or 0) + 10
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("reads lane did not stop within %.0f s; killing it", timeout)
            proc.kill()
            proc.wait(5)

    def terminate(self, parent: Any) -> None:
        self.stop(parent)


def reads_argv(host: str, concurrency: int, loglevel: str, fleet: bool = True) -> list[str]:
    """The command of a host's reads lane (``workers.main reads``); ``fleet``: it serves the fleet's views too."""
    return [
        sys.executable,
        "-m",
        "workers.main",
        "reads",
        "--host",
        host,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        *([] if fleet else ["--no-fleet"]),
    ]
