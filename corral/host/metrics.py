"""Prometheus metrics of a host worker (``prometheus_client``), served by the worker's main process.

Two kinds of numbers, and where each comes from:

- **Events** (counted where they happen, in the prefork pool's children): operations by outcome and
  their latency histogram by step (timed around each task's operation, ``tasks.base``), failures by
  kind, retry class and policy rule, the launch latency (session created → process started, from
  the session record) and process exits by reason. The children write them through prometheus_client's
  **multiprocess mode** (one mmap file per process in ``metrics.multiproc_dir``); the main process sums
  the files at scrape. Multiprocess mode, not "numbers in Redis": counters and histograms stay local
  (no Redis write per task), survive a child being replaced (its files stay and keep counting), and a
  worker restart starts from zero, which Prometheus' ``rate()`` expects of a counter. The directory is
  wiped when the worker starts (``prepare_multiprocess``, called before the pool forks: children must
  inherit the mode).
- **State** (read at scrape time by ``HostCollector`` in the main process, never counted): sandboxes
  of this host by state (``exited`` includes a detached sandbox whose process ended), the live count
  against the policy cap ``limits.max_sandboxes``, the CPUs and memory the live sandboxes were given
  against the host's, admission's published capacity and reservations (``corral.fleet.admission``), the I/O
  shims (count, RSS and PSS read from ``/proc``), the depth of this host's queues (LLEN on the broker;
  the worker's Redis role may read ``corral.*``) and messages the worker refused (``workers.guard``).
  A number read at scrape cannot drift from the truth it reports.

Flower's ``/metrics`` stays the place for task-level figures (per task name, per worker).

Settings (``[metrics]``): ``port`` (default 9808; 0 turns the endpoint off), ``bind`` (default
127.0.0.1: the numbers name tenants' rules and hosts; expose them on purpose, not by default),
``multiproc_dir`` (default ``<host.state_dir>/metrics/<host.id>``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from corral.contract.errors import AgentError
from corral.contract.lifecycle import shown_state

log = logging.getLogger("corral.host.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Seconds: a chain step takes milliseconds, an image resolve or a container create up to seconds."""
PRIORITY_SEPARATOR = "\x06\x16"
"""kombu's Redis transport keeps a message of priority N > 0 in ``<queue>\\x06\\x16N``."""
PRIORITY_STEPS = (0, 3, 6, 9)


def multiproc_dir(settings: Any) -> Path:
    configured = settings.metrics.multiproc_dir
    return Path(configured) if configured else Path(settings.host.state_dir) / "metrics" / settings.host.id


def prepare_multiprocess(directory: Path) -> None:
    """Put this process (and every child it forks later) in multiprocess mode, with an empty
    directory. Call before the pool forks and before any metric is created."""
    from prometheus_client import values

    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ[MULTIPROC_ENV] = str(directory)
    # prometheus_client picks its value class when first imported; whoever imported it earlier
    # (nobody should have) must not leave this process counting in memory only.
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class Events:
    """The event metrics; built on first use (nothing is created at import)."""

    operations: Any
    duration: Any
    failures: Any
    launch: Any
    exits: Any


@cache
def events() -> Events:
    from prometheus_client import Counter, Histogram

    return Events(
        operations=Counter(
            "corral_operations",
            "Contract operations run by this host, by outcome (ok, error, retry).",
            ["operation", "outcome"],
            registry=None,
        ),
        duration=Histogram(
            "corral_operation_duration_seconds",
            "Time each operation (chain step, signal, stats, ...) took in its task.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        ),
        failures=Counter(
            "corral_operation_failures",
            "Failed operations by error kind, retry class and policy rule (empty when none).",
            ["operation", "kind", "retry", "rule"],
            registry=None,
        ),
        launch=Histogram(
            "corral_launch_duration_seconds",
            "From the session's creation (prepare_session) to its process started (start_process).",
            buckets=LATENCY_BUCKETS,
            registry=None,
        ),
        exits=Counter(
            "corral_process_exits",
            "Sandboxed processes seen ending, by reason (exit, signal, timeout, oom, lost).",
            ["reason"],
            registry=None,
        ),
    )


def _quietly(func: Any) -> Any:
    """Metrics never fail an operation."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except Exception:  # a full disk under the metrics dir must not fail a task
            log.debug("metric not recorded", exc_info=True)

    return wrapper


@_quietly
def observe_operation(operation: str, seconds: float, outcome: str, error: AgentError | None = None) -> None:
    metrics = events()
    metrics.operations.labels(operation, outcome).inc()
    metrics.duration.labels(operation).observe(seconds)
    if error is not None:
        rule = str(error.context.get("rule", ""))[:64]
        metrics.failures.labels(operation, error.kind.value, error.retry.value, rule).inc()


@_quietly
def observe_launch(seconds: float) -> None:
    events().launch.observe(max(0.0, seconds))


@_quietly
def count_exit(reason: str) -> None:
    events().exits.labels(reason or "unknown").inc()


# -- state, read at scrape ----------------------------------------------------------------------


@dataclass(frozen=True)
class Helper:
    pid: int
    rss_bytes: int
    pss_bytes: int


def _proc_kib(path: Path, field: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def io_helpers(state_dir: str) -> list[Helper]:
    """The live I/O shims of this host's spools (a pid is counted only if it really is the shim
    of that spool: ``shim_pid`` checks the command line)."""
    from corral.io.spool import SpoolLayout
    from corral.runtimes.docker.resources import shim_pid

    root = Path(state_dir) / "spool"
    helpers = []
    for spool in sorted(root.iterdir()) if root.is_dir() else []:
        pid = shim_pid(SpoolLayout(spool))
        if pid is not None:
            proc = Path(f"/proc/{pid}")
            helpers.append(Helper(pid, _proc_kib(proc / "status", "VmRSS"), _proc_kib(proc / "smaps_rollup", "Pss")))
    return helpers


def queue_names(host_id: str) -> list[str]:
    from corral.celeryconf import fleet_queue, queue_for_host

    return [queue_for_host(host_id), queue_for_host(host_id, "reads"), fleet_queue(), fleet_queue("reads")]


def memory_total_bytes() -> int:
    return _proc_kib(Path("/proc/meminfo"), "MemTotal")


class HostCollector:
    """Reads this host's state at each scrape (main process). ``store`` is the state Store,
    ``broker`` a Redis client on the broker db, ``max_sandboxes`` a callable reading the policy."""

    STATES = ("preparing", "prepared", "running", "exited", "detached", "cleaning", "repair_needed")

    def __init__(
        self, host_id: str, state_dir: str, store: Any, broker: Any, max_sandboxes: Any, admission: Any = None
    ) -> None:
        self.host_id = host_id
        self.state_dir = state_dir
        self.store = store
        self.broker = broker
        self.max_sandboxes = max_sandboxes
        self.admission = admission
        """``corral.fleet.admission.Admission``: the capacity this host publishes and what placement reserved."""

    def describe(self) -> list[Any]:
        return []  # collected only on scrape: registering must not read Redis

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        up = GaugeMetricFamily("corral_metrics_source_up", "1 when the source answered this scrape.", labels=["source"])
        try:
            yield from self._sandboxes(GaugeMetricFamily)
            up.add_metric(["state_store"], 1)
        except Exception:  # a Redis blip loses these numbers for one scrape, never the endpoint
            log.warning("metrics: state store unreadable", exc_info=True)
            up.add_metric(["state_store"], 0)
        try:
            yield from self._queues(GaugeMetricFamily, CounterMetricFamily)
            up.add_metric(["broker"], 1)
        except Exception:  # the same, for queue depths
            log.warning("metrics: broker unreadable", exc_info=True)
            up.add_metric(["broker"], 0)
        yield from self._helpers(GaugeMetricFamily)
        yield up

    def _sandboxes(self, gauge: Any) -> Iterator[Any]:
        from corral.state.store import live_key, session_key

        ids = sorted(self.store.r.smembers(live_key(self.host_id)))
        pipe = self.store.r.pipeline()
        for env_id in ids:
            pipe.hmget(session_key(env_id), "state", "exited_ms", "environment")
        counts = dict.fromkeys(self.STATES, 0)
        cpus = 0.0
        memory = 0
        live = 0
        for state, exited_ms, environment in pipe.execute() if ids else []:
            if state is None or state == "cleaned":
                continue  # expired or cleaned since the set was read: not live
            live += 1
            shown = shown_state({"state": state, "exited_ms": exited_ms or ""})
            counts[shown] = counts.get(shown, 0) + 1
            resources = _resources(environment)
            millis = resources.get("cpu_millis")  # a fractional limit (corral's extension beside upstream's cpus)
            cpus += float(millis) / 1000 if millis else float(resources.get("cpus") or 0)
            memory += int(resources.get("memory_mb") or 0) * 1024 * 1024
        by_state = gauge("corral_sandboxes", "Sandboxes of this host by state (not yet cleaned).", labels=["state"])
        for state, count in sorted(counts.items()):
            by_state.add_metric([state], count)
        yield by_state
        yield gauge("corral_sandboxes_live", "Sandboxes this host holds (every state but cleaned).", value=live)
        cap = self.max_sandboxes()
        yield gauge("corral_sandboxes_max", "The host policy's limits.max_sandboxes.", value=cap)
        yield gauge("corral_allocated_cpus", "CPUs the live sandboxes were given (their limits, summed).", value=cpus)
        yield gauge("corral_allocated_memory_bytes", "Memory limits of the live sandboxes, summed.", value=memory)
        yield gauge("corral_host_cpus", "CPUs of this host.", value=os.cpu_count() or 0)
        yield gauge("corral_host_memory_bytes", "Memory of this host (MemTotal).", value=memory_total_bytes())
        if self.admission is not None:
            yield from self._admission(gauge)

    def _admission(self, gauge: Any) -> Iterator[Any]:
        published = gauge(
            "corral_admission_capacity",
            "What this host offers placement (published with its heartbeat; absent while it is down).",
            labels=["resource"],
        )
        reserved = gauge(
            "corral_admission_reserved", "What placement reserved here (leases and sessions).", labels=["resource"]
        )
        capacity = self.admission.capacity(self.host_id)
        for family, numbers in ((published, capacity), (reserved, self.admission.used(self.host_id))):
            if numbers is not None:
                family.add_metric(["slots"], numbers.slots)
                family.add_metric(["cpus"], numbers.cpus_m / 1000)
                family.add_metric(["memory_bytes"], numbers.mem_mb * 1024 * 1024)
        yield published
        yield reserved

    def _queues(self, gauge: Any, counter: Any) -> Iterator[Any]:
        names = queue_names(self.host_id)
        pipe = self.broker.pipeline()
        for name in names:
            for priority in PRIORITY_STEPS:
                pipe.llen(name if priority == 0 else f"{name}{PRIORITY_SEPARATOR}{priority}")
        lengths = pipe.execute()
        depth = gauge("corral_queue_depth", "Messages waiting in this host's queues (LLEN).", labels=["queue"])
        for index, name in enumerate(names):
            depth.add_metric([name], sum(int(n) for n in lengths[index * 4 : index * 4 + 4]))
        yield depth
        refused = counter(
            "corral_messages_rejected",
            "Messages this host's worker refused (workers.guard), by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(self.store.rejections(self.host_id).items()):
            if reason != "total":
                refused.add_metric([reason], count)
        yield refused

    def _helpers(self, gauge: Any) -> Iterator[Any]:
        helpers = io_helpers(self.state_dir)
        yield gauge("corral_io_helpers", "Live per-sandbox I/O shims.", value=len(helpers))
        yield gauge(
            "corral_io_helpers_rss_bytes", "RSS of the I/O shims, summed.", value=sum(h.rss_bytes for h in helpers)
        )
        yield gauge(
            "corral_io_helpers_pss_bytes",
            "PSS of the I/O shims, summed (shared pages divided among their users).",
            value=sum(h.pss_bytes for h in helpers),
        )


def _resources(environment: str | None) -> dict[str, Any]:
    try:
        spec = json.loads(environment or "{}").get("spec") or {}
    except (ValueError, AttributeError):
        return {}
    resources = spec.get("resources") if isinstance(spec, dict) else None
    return resources if isinstance(resources, dict) else {}


def registry(collector: HostCollector, directory: Path) -> Any:
    """What the endpoint serves: the children's event metrics (summed from ``directory``) and the host state."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    served = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(served, path=str(directory))  # type: ignore[no-untyped-call]
    served.register(collector)
    return served


def serve(served: Any, bind: str, port: int) -> Any:
    """Start the HTTP endpoint (a daemon thread); returns the server (``shutdown()`` stops it)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=bind, registry=served)
    return server
