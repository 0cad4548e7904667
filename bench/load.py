"""corral under load: N concurrent sleep sandboxes on one host, polled concurrently, then cleaned up.

    .venv/bin/python bench/load.py [--sandboxes 200] [--duration 30] [--pollers 16] [--concurrency 8]

Starts a private stack (``DevStack``: a redis-server child and its own idle worker) plus one more
host worker with a unique host id and ``--concurrency N`` (``DevStack`` always starts its worker with
concurrency 2), with a private ``state_dir`` (tmp) and ``secrets_root`` (under /dev/shm). Then:

1. idle baselines: raw docker-py create+start and remove of the same sleep container (N/10 times),
   and the same through corral one at a time (submit + wait, cleanup);
2. submits N sleep sandboxes at once from a pool of clients (one ``Client`` per thread), waits until
   all run: time to all-running, and per-sandbox chain latency (submit -> ``started_ms`` in the state
   store, i.e. when ``start_process`` finished);
3. after ``--settle`` seconds with no client activity (the idle cost of N sandboxes), for
   ``--duration`` seconds pollers call ``client.stats`` and ``client.read_frame`` (stdout from
   cursor 0, checked byte-exact) round-robin over all sandboxes; meanwhile one thread measures the raw
   equivalents on the same sandboxes (docker-py ``stats(stream=False)`` with and without
   ``one_shot``, and a plain read of the spool file);
4. cleans all up concurrently, then counts leaks: containers and networks labeled
   ``corral.host=<host>``, secret dirs, spool dirs, live shims of this run, sessions not ``cleaned``.

``--waves K`` repeats 2-4 K times on the same worker, to see whether its memory returns to a plateau.
Worker memory (RSS of the worker's main process + pool children), the shims' RSS and CPU use by
process group are sampled every second from /proc. Every exception a client sees counts as an error,
by type; the worker log is scanned for task retries (retryable errors the client never sees). Exits 1
on any error or leak. Everything is removed by label/path in a ``finally`` (also on Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from corral.client.client import Client, JobHandle
from corral.client.devstack import DevStack
from corral.contract.errors import AgentError
from corral.contract.models import ProcessState
from corral.contract.refs import slug
from corral.contract.vocabulary import CleanupStatus, ProcessIoStream
from corral.fleet.job import JobSpec
from corral.io import cgroup
from corral.settings import load_settings
from corral.state.services import state_services

REPO = Path(__file__).resolve().parent.parent

IMAGE = "corral/busybox:latest"
SHIM_MODULE = "corral.io.shim"
RAW_LABEL = "corral.load.raw"
EXPECTED_STDOUT = b"start\n"


# ------------------------------------------------------------------------------------------------ records


@dataclass
class Op:
    latencies_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def ops(self) -> int:
        return len(self.latencies_ms) + sum(self.errors.values())


class Recorder:
    """Latencies and errors per operation, thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ops: dict[str, Op] = defaultdict(Op)

    def ok(self, name: str, ms: float) -> None:
        with self.lock:
            self.ops[name].latencies_ms.append(ms)

    def error(self, name: str, exc: BaseException | str) -> None:
        if isinstance(exc, AgentError):
            kind, text = f"{type(exc).__name__}({exc.kind})", str(exc)
        elif isinstance(exc, BaseException):
            kind, text = type(exc).__name__, str(exc)
        else:
            kind, text = exc, exc
        with self.lock:
            self.ops[name].errors[kind] += 1
            self.ops[name].samples.setdefault(kind, text[:300])

    def timed(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            out = fn()
        except Exception as exc:
            self.error(name, exc)
            return None
        self.ok(name, (time.perf_counter() - start) * 1000)
        return out

    def add_wall(self, name: str, seconds: float) -> None:
        with self.lock:
            self.ops[name].wall_s += seconds

    def total_errors(self) -> int:
        return sum(sum(op.errors.values()) for op in self.ops.values())


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


# ------------------------------------------------------------------------------------------------ threads


def parallel(fn: Callable[[Any], None], items: Iterable[Any], workers: int, stop: threading.Event) -> None:
    """Run ``fn`` over ``items`` on ``workers`` daemon threads (so Ctrl-C never waits for them)."""
    pending = list(items)
    lock = threading.Lock()

    def loop() -> None:
        while not stop.is_set():
            with lock:
                if not pending:
                    return
                item = pending.pop(0)
            fn(item)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(max(1, min(workers, len(pending))))]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(0.5)


class Clients:
    """One ``Client`` per thread (each has its own Celery app and result consumer)."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.lock = threading.Lock()
        self.all: list[Client] = []

    def get(self) -> Client:
        client = getattr(self.local, "client", None)
        if client is None:
            client = Client()
            self.local.client = client
            with self.lock:
                self.all.append(client)
        return client

    def close(self) -> None:
        for client in self.all:
            with contextlib.suppress(Exception):
                client.close()


# ------------------------------------------------------------------------------------------------ /proc


def processes_matching(*needles: str) -> list[int]:
    """Live (non-zombie) processes whose command line contains every needle."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline and all(n in cmdline for n in needles):
            out.append(int(entry.name))
    return out


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    jiffies: int
    rss_kib: int


PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
GROUPS = ("worker", "shims", "bench clients", "docker", "redis + dev worker", "other")


def scan_proc() -> list[ProcInfo]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
            rss_pages = int((entry / "statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        comm = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw.rsplit(")", 1)[1].split()
        out.append(
            ProcInfo(int(entry.name), int(fields[1]), comm, int(fields[11]) + int(fields[12]), rss_pages * PAGE_KIB)
        )
    return out


def cmdline_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


@dataclass
class Sample:
    at: float
    phase: str
    worker_kib: int
    shims: int
    shim_kib: int
    busy: float
    """Host CPU busy fraction since the previous sample."""
    cores: dict[str, float]
    """CPU cores used since the previous sample, by process group."""


class Sampler(threading.Thread):
    """Every second, from /proc: worker RSS (main process + pool children), the number and RSS of this
    run's shims, host CPU busy, and CPU by process group (worker, shims, this process, docker, redis)."""

    def __init__(self, worker_pid: int, stack_pids: set[int], state_dir: str) -> None:
        super().__init__(daemon=True, name="sampler")
        self.worker_pid = worker_pid
        self.stack_pids = stack_pids
        """The DevStack's redis-server and its own (idle) worker with beat."""
        self.state_dir = state_dir
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.phase = "idle"
        self.samples: list[Sample] = []
        self.shim_pids: set[int] = set()
        self.not_shims: set[int] = set()
        self.hz = os.sysconf("SC_CLK_TCK")

    def group(self, p: ProcInfo) -> str:
        if p.pid == self.worker_pid or p.ppid == self.worker_pid:
            return "worker"
        if p.pid == os.getpid():
            return "bench clients"
        if p.pid in self.stack_pids or p.ppid in self.stack_pids:
            return "redis + dev worker"
        if p.comm in ("dockerd", "containerd", "exe", "docker-init") or p.comm.startswith(("containerd-shim", "runc")):
            return "docker"
        if p.comm.startswith("python") and p.pid not in self.not_shims and p.pid not in self.shim_pids:
            cmd = cmdline_of(p.pid)
            (self.shim_pids if SHIM_MODULE in cmd and self.state_dir in cmd else self.not_shims).add(p.pid)
        return "shims" if p.pid in self.shim_pids else "other"

    def sample(self, last: tuple[tuple[int, int], dict[int, int]]) -> tuple[tuple[int, int], dict[int, int]]:
        (busy0, total0), jiffies0 = last
        busy1, total1 = cpu_times()
        procs = scan_proc()
        elapsed_s = max(1, total1 - total0) / self.hz / (os.cpu_count() or 1)
        cores = dict.fromkeys(GROUPS, 0.0)
        worker_kib = shim_kib = shims = 0
        for p in procs:
            g = self.group(p)
            cores[g] += max(0, p.jiffies - jiffies0.get(p.pid, p.jiffies if not jiffies0 else 0)) / self.hz / elapsed_s
            if g == "worker":
                worker_kib += p.rss_kib
            elif g == "shims":
                shims += 1
                shim_kib += p.rss_kib
        live = {p.pid for p in procs}
        self.shim_pids &= live
        self.not_shims &= live
        row = Sample(
            time.monotonic(),
            self.phase,
            worker_kib,
            shims,
            shim_kib,
            (busy1 - busy0) / max(1, total1 - total0),
            cores,
        )
        with self.lock:
            self.samples.append(row)
        return (busy1, total1), {p.pid: p.jiffies for p in procs}

    def run(self) -> None:
        last = self.sample((cpu_times(), {}))
        while not self.stop.wait(1.0):
            last = self.sample(last)

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def rows(self, phase: str | None = None) -> list[Sample]:
        with self.lock:
            return [s for s in self.samples if phase is None or s.phase == phase]


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class Sandbox:
    handle: JobHandle | None = None
    submitted_ms: int = 0
    running: bool = False


@dataclass
class Wave:
    number: int
    all_running_s: float | None = None
    first_running_s: float | None = None
    running: int = 0
    worker_kib_running: int = 0
    worker_kib_after: int = 0
    leaks: dict[str, int] = field(default_factory=dict)


def ms_text(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def ratio_text(value: float) -> str:
    if value >= 10:
        return f"{value:.0f}x"
    return f"{value:.1f}x" if value >= 0.1 else f"{value:.2f}x"


class LoadRun:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = secrets.token_hex(4)
        self.host = f"load-{self.run_id}"
        self.state_dir = tempfile.mkdtemp(prefix=f"corral-load-{self.run_id}-")
        self.secrets_root = tempfile.mkdtemp(prefix=f"corral-load-{self.run_id}-", dir="/dev/shm")
        self.stop = threading.Event()
        self.rec = Recorder()
        self.clients = Clients()
        self.engine = docker.from_env(timeout=120)
        self.stack: DevStack | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.worker_log: Path | None = None
        self.sampler: Sampler | None = None
        self.sandboxes: list[Sandbox] = []
        self.handles: list[JobHandle] = []
        """Every sandbox of the run (idle baseline and all waves), for the session check."""
        self.waves: list[Wave] = []
        self.notes: list[str] = []

    # -- stack ------------------------------------------------------------------------------

    def start_stack(self) -> None:
        os.environ.pop("CORRAL_REDIS__URL", None)  # a private redis-server child
        os.environ["CORRAL_HOST__STATE_DIR"] = self.state_dir
        os.environ["CORRAL_HOST__SECRETS_ROOT"] = self.secrets_root
        # Admission would hold the waves to this machine's CPUs x cpu_overcommit; the load run measures
        # 200 sandboxes at once on one host, so it offers admission enough CPUs for them.
        os.environ["CORRAL_HOST__CAPACITY_CPUS"] = "1000"
        load_settings.cache_clear()
        # DevStack starts its own worker with a fixed concurrency of 2 (and beat), under another host id;
        # the load goes to a worker of our own, with --concurrency, against the stack's redis.
        self.stack = DevStack(f"{self.host}-dev")
        self.stack.start()
        self.worker_log = self.stack.log_dir / "load-worker.log"
        env = self.stack.worker_env(self.host)  # the worker role and its own signing key
        argv = [sys.executable, "-m", "workers.main", "worker", "--host", self.host]
        argv += ["--concurrency", str(self.args.concurrency), "--no-fleet", "--loglevel", "WARNING"]
        with self.worker_log.open("ab") as log:
            self.worker = subprocess.Popen(
                argv,
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        store = state_services().store
        deadline = time.monotonic() + 60
        while store.host(self.host) is None:
            if self.worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the load worker did not come up (log: {self.worker_log})")
            time.sleep(0.2)
        self.sampler = Sampler(self.worker.pid, {c.proc.pid for c in self.stack.children if c.proc}, self.state_dir)
        self.sampler.start()

    def job(self) -> JobSpec:
        return JobSpec(
            image=IMAGE,
            argv=["sh", "-c", f"echo start; sleep {self.args.sleep}; echo end"],
            cpus=0.5,
            memory_mb=self.args.memory_mb,
            process_count=self.args.pids,
            timeout_ms=(self.args.sleep + 600) * 1000,
        )

    def phase(self, name: str) -> None:
        assert self.sampler is not None
        self.sampler.set_phase(name)

    # -- idle baselines ----------------------------------------------------------------------

    def idle_baselines(self) -> None:
        n = self.args.baseline
        containers = []
        start = time.monotonic()
        for _ in range(n):

            def create_start() -> Any:
                c = self.engine.containers.create(
                    IMAGE,
                    ["sh", "-c", f"echo start; sleep {self.args.sleep}; echo end"],
                    network_mode="none",
                    mem_limit=f"{self.args.memory_mb}m",
                    pids_limit=self.args.pids,
                    nano_cpus=500_000_000,
                    read_only=True,
                    labels={RAW_LABEL: self.run_id},
                )
                c.start()
                return c

            c = self.rec.timed("raw start", create_start)
            if c is not None:
                containers.append(c)
        self.rec.add_wall("raw start", time.monotonic() - start)
        start = time.monotonic()
        for c in containers:
            self.rec.timed("raw remove", lambda c=c: c.remove(force=True))
        self.rec.add_wall("raw remove", time.monotonic() - start)

        client = self.clients.get()
        handles = []
        start = time.monotonic()
        for _ in range(n):

            def corral_start() -> JobHandle:
                handle = client.submit(self.job(), host=self.host)
                handles.append(handle)
                client.wait(handle, timeout=self.args.step_timeout)
                return handle

            self.rec.timed("corral start (idle)", corral_start)
        self.handles += handles
        self.rec.add_wall("corral start (idle)", time.monotonic() - start)
        start = time.monotonic()
        for handle in handles:
            self.cleanup_one("corral cleanup (idle)", client, handle)
        self.rec.add_wall("corral cleanup (idle)", time.monotonic() - start)

    def cleanup_one(self, name: str, client: Client, handle: JobHandle) -> None:
        result = self.rec.timed(name, lambda: client.cleanup(handle))
        if result is not None and result.status is not CleanupStatus.completed:
            self.rec.error(name, f"cleanup {result.status}: {result.redacted_summary}")

    # -- one wave: launch, poll, clean up ----------------------------------------------------

    def launch(self, wave: Wave) -> None:
        self.phase("submit")
        self.sandboxes = [Sandbox() for _ in range(self.args.sandboxes)]
        began = time.monotonic()

        def submit(sb: Sandbox) -> None:
            client = self.clients.get()
            sb.submitted_ms = int(time.time() * 1000)
            sb.handle = self.rec.timed("submit", lambda: client.submit(self.job(), host=self.host))

        parallel(submit, self.sandboxes, self.args.submitters, self.stop)
        self.rec.add_wall("submit", time.monotonic() - began)
        self.handles += [sb.handle for sb in self.sandboxes if sb.handle is not None]

        def wait(sb: Sandbox) -> None:
            if sb.handle is None:
                return
            client = self.clients.get()
            handle = sb.handle
            sb.running = self.rec.timed("wait", lambda: client.wait(handle, timeout=self.args.step_timeout)) is not None

        parallel(wait, self.sandboxes, self.args.submitters, self.stop)
        wave.all_running_s = time.monotonic() - began
        store = state_services().store
        first_submit = min(sb.submitted_ms for sb in self.sandboxes)
        started = []
        for sb in self.sandboxes:
            if sb.handle is None:
                continue
            record = store.session(sb.handle.environment_id)
            # The chain's latency: from submit to the end of start_process (recorded by the worker).
            if record.get("started_ms"):
                started.append(int(record["started_ms"]))
                self.rec.ok("corral start (N concurrent)", float(started[-1] - sb.submitted_ms))
            if record.get("state") != "running":
                self.rec.error("corral start (N concurrent)", f"state {record.get('state')} after the chain")
        self.rec.add_wall("corral start (N concurrent)", wave.all_running_s)
        wave.first_running_s = (min(started) - first_submit) / 1000 if started else None
        wave.running = sum(1 for sb in self.sandboxes if sb.running)

    def poll(self, wave: Wave) -> None:
        self.phase("poll")
        running = [sb.handle for sb in self.sandboxes if sb.running and sb.handle is not None]
        if not running:
            return
        deadline = time.monotonic() + self.args.duration
        began = time.monotonic()

        def poller(k: int) -> None:
            client = self.clients.get()
            i = k
            while not self.stop.is_set() and time.monotonic() < deadline:
                handle = running[i % len(running)]
                i += self.args.pollers
                stats = self.rec.timed("corral stats", lambda h=handle: client.stats(h))
                if stats is not None and stats.state is not ProcessState.running:
                    self.rec.error("corral stats", f"state {stats.state}")
                frame = self.rec.timed(
                    "corral read_frame",
                    lambda h=handle: client.read_frame(h.host, h.process_ref, ProcessIoStream.stdout, 0, 64 * 1024),
                )
                if frame is not None and base64.b64decode(frame.content_b64 or "") != EXPECTED_STDOUT:
                    self.rec.error("corral read_frame", "content mismatch")

        def raw_prober() -> None:
            """The raw equivalents on the same sandboxes under the same load (one thread, paced)."""
            rng = random.Random(0)
            ids: dict[str, str | None] = {}
            while not self.stop.is_set() and time.monotonic() < deadline:
                handle = rng.choice(running)
                s = slug(handle.environment_id)
                name = f"corral-{s}"
                self.rec.timed("raw stats stream=False", lambda n=name: self.engine.api.stats(n, stream=False))
                self.rec.timed(
                    "raw stats one_shot", lambda n=name: self.engine.api.stats(n, stream=False, one_shot=True)
                )
                if name not in ids:
                    ids[name] = self.rec.timed("raw inspect", lambda n=name: self.engine.containers.get(n).id)
                full_id = ids[name]
                path = Path(self.state_dir) / "spool" / s / "stdout"
                for _ in range(10):
                    if full_id is not None:
                        self.rec.timed("raw cgroup read", lambda i=full_id: cgroup.read_counters(i))
                    data = self.rec.timed("raw spool read", lambda p=path: p.read_bytes()[: 64 * 1024])
                    if data is not None and data != EXPECTED_STDOUT:
                        self.rec.error("raw spool read", "content mismatch")
                    time.sleep(0.01)

        threads = [threading.Thread(target=poller, args=(k,), daemon=True) for k in range(self.args.pollers)]
        threads.append(threading.Thread(target=raw_prober, daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)
        wall = time.monotonic() - began
        for name in ("corral stats", "corral read_frame", "raw stats stream=False", "raw stats one_shot"):
            self.rec.add_wall(name, wall)
        for name in ("raw cgroup read", "raw spool read"):
            self.rec.add_wall(name, wall)
        assert self.sampler is not None
        rows = self.sampler.rows("poll")
        wave.worker_kib_running = rows[-1].worker_kib if rows else 0

    def cleanup_all(self, wave: Wave) -> None:
        self.phase("cleanup")
        began = time.monotonic()

        def clean(sb: Sandbox) -> None:
            if sb.handle is not None:
                self.cleanup_one("corral cleanup (N concurrent)", self.clients.get(), sb.handle)

        parallel(clean, self.sandboxes, self.args.submitters, self.stop)
        self.rec.add_wall("corral cleanup (N concurrent)", time.monotonic() - began)
        self.phase("after")
        wave.leaks = self.count_leaks()
        assert self.sampler is not None
        time.sleep(1.5)
        rows = self.sampler.rows()
        wave.worker_kib_after = rows[-1].worker_kib if rows else 0

    # -- leaks -------------------------------------------------------------------------------

    def count_leaks(self) -> dict[str, int]:
        time.sleep(2)  # a killed shim's exit and the engine's bookkeeping are asynchronous
        flt = {"label": [f"corral.host={self.host}"]}
        spool = Path(self.state_dir) / "spool"
        store = state_services().store
        states = Counter(store.session(h.environment_id).get("state") or "missing" for h in self.handles)
        states.pop("cleaned", None)
        listed = [s for s in store.list_sessions(100_000) if s.get("host") == self.host]
        raw = self.engine.containers.list(all=True, filters={"label": f"{RAW_LABEL}={self.run_id}"})
        if states:
            self.notes.append(f"session states other than cleaned: {dict(states)}")
        if len(listed) != len(self.handles):
            self.notes.append(f"{len(listed)} sessions listed for the host, {len(self.handles)} submitted")
        return {
            "containers": len(self.engine.containers.list(all=True, filters=flt)),
            "networks": len(self.engine.networks.list(filters=flt)),
            "raw containers": len(raw),
            "secret dirs": len(list(Path(self.secrets_root).iterdir())),
            "spool dirs": len(list(spool.iterdir())) if spool.is_dir() else 0,
            "shims": len(processes_matching(SHIM_MODULE, self.state_dir)),
            "sessions not cleaned": sum(states.values()),
            "sessions listed not cleaned": sum(1 for s in listed if s.get("state") != "cleaned"),
        }

    # -- teardown (always) -------------------------------------------------------------------

    def teardown(self) -> None:
        self.stop.set()
        if self.sampler is not None:
            self.sampler.stop.set()
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.worker.pid, signal.SIGKILL)
                self.worker.wait(10)
        for _ in range(2):  # twice: a shim spawned just before the worker stopped may start late
            for pid in processes_matching(SHIM_MODULE, self.state_dir):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for flt in ({"label": f"corral.host={self.host}"}, {"label": f"{RAW_LABEL}={self.run_id}"}):
                for c in self.engine.containers.list(all=True, filters=flt):
                    with contextlib.suppress(docker.errors.NotFound):
                        c.remove(force=True)
            for n in self.engine.networks.list(filters={"label": f"corral.host={self.host}"}):
                with contextlib.suppress(docker.errors.NotFound):
                    n.remove()
            time.sleep(1)
        self.clients.close()
        if self.stack is not None:
            self.stack.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        shutil.rmtree(self.secrets_root, ignore_errors=True)

    # -- report ------------------------------------------------------------------------------

    def worker_log_findings(self) -> Counter[str]:
        found: Counter[str] = Counter()
        if self.worker_log is None or not self.worker_log.exists():
            return found
        for line in self.worker_log.read_text(errors="replace").splitlines():
            if "retrying corral." in line:
                found["task retries (retryable AgentError, hidden from the client)"] += 1
            elif "Traceback" in line:
                found["tracebacks"] += 1
            elif " ERROR" in line or "ERROR/" in line or "CRITICAL" in line:
                found["ERROR lines"] += 1
        return found

    def table(self) -> None:
        a = self.args
        n, b = a.sandboxes * len(self.waves), a.baseline
        rows = [
            ("raw start", "raw: docker create+start, idle, 1 at a time", b, None),
            ("corral start (idle)", "corral: submit+wait, idle, 1 at a time", b, "raw start"),
            ("corral start (N concurrent)", f"corral: submit -> running, {a.sandboxes} at once", n, "raw start"),
            ("submit", "corral: client.submit (send the chain)", n, None),
            ("raw stats stream=False", "raw: docker stats(stream=False)", None, None),
            ("raw stats one_shot", "raw: docker stats(stream=False, one_shot)", None, None),
            ("raw cgroup read", "floor: cgroup counters read in-process", None, None),
            ("corral stats", "corral: client.stats", None, "raw stats stream=False"),
            ("raw spool read", "raw: read of the spool file", None, None),
            ("corral read_frame", "corral: client.read_frame (stdout, cursor 0)", None, "raw spool read"),
            ("raw remove", "raw: docker remove(force), idle, 1 at a time", b, None),
            ("corral cleanup (idle)", "corral: client.cleanup, idle, 1 at a time", b, "raw remove"),
            ("corral cleanup (N concurrent)", f"corral: client.cleanup, {a.sandboxes} at once", n, "raw remove"),
        ]
        head = (
            f"{'workload':<46} {'count':>5} {'ops':>6} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8}"
            f" {'p99 ms':>8} {'ops/s':>7} {'vs raw':>7}"
        )
        print("\n" + head + "\n" + "-" * len(head))
        for name, what, count, raw in rows:
            op = self.rec.ops.get(name)
            if op is None or op.ops == 0:
                continue
            lat = op.latencies_ms
            rate = op.ops / op.wall_s if op.wall_s else float("nan")
            ratio = ""
            if raw and self.rec.ops.get(raw) and self.rec.ops[raw].latencies_ms and lat:
                ratio = ratio_text(pct(lat, 50) / pct(self.rec.ops[raw].latencies_ms, 50))
            shown = "" if count is None else count
            print(
                f"{what:<46} {shown:>5} {op.ops:>6} {sum(op.errors.values()):>6} {ms_text(pct(lat, 50)):>8}"
                f" {ms_text(pct(lat, 95)):>8} {ms_text(pct(lat, 99)):>8} {rate:>7.1f} {ratio:>7}".rstrip()
            )

    def report(self) -> int:
        a = self.args
        engine = self.engine.version()
        print(
            f"\ncorral load: {a.sandboxes} sandboxes x {len(self.waves)} wave(s) (sh -c 'echo start; sleep"
            f" {a.sleep}'; {a.memory_mb} MiB, pids {a.pids}, 0.5 cpu), worker concurrency {a.concurrency},"
            f" {a.pollers} pollers x {a.duration:.0f} s; docker {engine['Version']}, {os.cpu_count()} cpus"
        )
        self.table()
        print()
        for w in self.waves:
            leaked = sum(w.leaks.values())
            print(
                f"wave {w.number}: first running after {w.first_running_s or 0:.1f} s,"
                f" {w.running}/{a.sandboxes} running after {w.all_running_s or 0:.1f} s;"
                f" worker RSS {w.worker_kib_running / 1024:.0f} MiB with all running,"
                f" {w.worker_kib_after / 1024:.0f} MiB after cleanup; leaks {leaked}"
            )
        wait = self.rec.ops.get("wait")
        if wait and wait.errors:
            print(f"wait errors: {dict(wait.errors)}")
        assert self.sampler is not None
        samples = self.sampler.rows()
        if samples:
            idle = self.sampler.rows("idle")
            load = [s for s in samples if s.phase != "idle"] or samples
            peak = max(load, key=lambda s: s.worker_kib)
            print(
                f"worker RSS (main + {a.concurrency} pool processes): {(idle or samples)[-1].worker_kib / 1024:.0f}"
                f" MiB before the load, peak {peak.worker_kib / 1024:.0f} MiB ({peak.phase}),"
                f" {samples[-1].worker_kib / 1024:.0f} MiB at the end"
            )
            shim_peak = max(samples, key=lambda s: s.shim_kib)
            print(
                f"shims: peak {max(s.shims for s in samples)} live, {shim_peak.shim_kib / 1024:.0f} MiB RSS in all"
                f" ({shim_peak.shim_kib / max(1, shim_peak.shims) / 1024:.1f} MiB each)"
            )
            ncpu = os.cpu_count() or 1
            for phase in ("submit", "settle", "poll", "cleanup"):
                rows = self.sampler.rows(phase)[1:]  # the first sample of a phase overlaps the previous one
                if rows:
                    cores = {g: statistics.mean(r.cores[g] for r in rows) for g in GROUPS}
                    busy = statistics.mean(r.busy for r in rows) * ncpu
                    split = ", ".join(f"{g} {c:.2f}" for g, c in cores.items())
                    rest = max(0.0, busy - sum(cores.values()))
                    print(
                        f"cpu during {phase}: {busy:.2f} of {ncpu} cores busy: {split},"
                        f" exited processes/kernel {rest:.2f}"
                    )
        stats, floor = self.rec.ops.get("corral stats"), self.rec.ops.get("raw cgroup read")
        if stats and floor and stats.latencies_ms and floor.latencies_ms:
            ratio = pct(stats.latencies_ms, 50) / pct(floor.latencies_ms, 50)
            print(f"corral stats p50 is {ratio:.0f}x the in-process cgroup read it wraps")
        leaks = Counter[str]()
        for w in self.waves:
            leaks.update(w.leaks)
        print(
            ("leaks (summed over waves): " if len(self.waves) > 1 else "leaks: ")
            + (", ".join(f"{k} {leaks[k]}" for k in (self.waves[-1].leaks if self.waves else {})))
        )
        findings = self.worker_log_findings()
        print("worker log: " + (", ".join(f"{k}: {v}" for k, v in findings.items()) or "no retries, no errors"))
        for note in self.notes:
            print(f"note: {note}")
        errors = self.rec.total_errors()
        if errors:
            print(f"\nERRORS: {errors}")
            for name, op in self.rec.ops.items():
                for kind, count in op.errors.items():
                    print(f"  {name}: {kind} x{count}: {op.samples.get(kind, '')}")
        leaked = sum(leaks.values())
        if leaked:
            print(f"LEAKS: {leaked}")
        failed = bool(errors or leaked or not self.waves)
        print("\nresult: " + ("FAIL" if failed else "ok: no errors, no leaks"))
        return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxes", type=int, default=200)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of concurrent polling per wave")
    parser.add_argument("--pollers", type=int, default=16, help="polling threads (stats + read_frame)")
    parser.add_argument("--submitters", type=int, default=32, help="threads that submit, wait and clean up")
    parser.add_argument("--concurrency", type=int, default=8, help="worker pool processes")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds idle with all running, before polling")
    parser.add_argument("--waves", type=int, default=1, help="launch/poll/cleanup rounds (is memory bounded?)")
    parser.add_argument("--baseline", type=int, default=None, help="idle baseline runs (default N/10)")
    parser.add_argument("--memory-mb", type=int, default=32)
    parser.add_argument("--pids", type=int, default=16)
    parser.add_argument("--sleep", type=int, default=1800, help="seconds each sandbox sleeps (outlives the run)")
    parser.add_argument("--step-timeout", type=float, default=900.0, help="client wait per chain step, seconds")
    args = parser.parse_args()
    if args.baseline is None:
        args.baseline = max(1, args.sandboxes // 10)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    run = LoadRun(args)
    print(f"host {run.host}, state_dir {run.state_dir}, secrets_root {run.secrets_root}", flush=True)
    ok = False
    try:
        run.start_stack()
        assert run.stack is not None
        print(f"stack up (logs in {run.stack.log_dir}); idle baselines x{args.baseline}", flush=True)
        run.idle_baselines()
        for number in range(1, args.waves + 1):
            wave = Wave(number)
            run.waves.append(wave)
            print(f"wave {number}: submitting {args.sandboxes} sandboxes", flush=True)
            run.launch(wave)
            print(f"wave {number}: {wave.running} running after {wave.all_running_s:.1f} s; polling", flush=True)
            if args.settle > 0:
                run.phase("settle")  # all running, no client activity: what idle sandboxes cost
                time.sleep(args.settle)
            run.poll(wave)
            print(f"wave {number}: cleaning up", flush=True)
            run.cleanup_all(wave)
        ok = True
    except KeyboardInterrupt:
        print("\ninterrupted: removing everything of this run", file=sys.stderr)
    finally:
        run.teardown()
    code = run.report() if ok else 130
    if run.stack is not None:
        if code == 0:
            shutil.rmtree(run.stack.log_dir, ignore_errors=True)
        else:
            print(f"logs kept in {run.stack.log_dir}")
    return code


if __name__ == "__main__":
    sys.exit(main())
