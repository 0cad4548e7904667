"""corral benchmarks: what the Celery pipeline costs over raw Docker, measured in one run.

    .venv/bin/python bench/run.py [--runs 10] [--starts 50] [--concurrency 8] [--skip-output]

Starts a private stack (``DevStack``: a redis-server child and one host worker with ``--concurrency``
lifecycle processes and its reads lane), then measures against this host's Docker engine, each corral
figure beside its raw docker-py baseline taken in the same run (issue 10's table, the rows that are
not about the I/O shim's own cost):

* ``corral run true`` (place, the 8-step chain, follow to EOF, exit status, cleanup) against docker-py
  create + start + wait + remove of ``true``, alternating one of each, ``--runs`` times;
* the ``start_process`` step alone (from the journal: ``prepare_environment``'s result record to
  ``start_process``'s result record, i.e. the hop, the checks and the adapter) against
  ``container.start()`` of a created container (timed inside the raw runs above);
* ``--starts`` (50) sandboxes started at once: raw docker-py create + start from as many threads,
  against as many concurrent ``submit`` calls (one client per thread) until every launch answered:
  starts per second, and their ratio;
* ``stats`` and ``read_frame`` latency (p50/p95) of a sandbox started before, polled by 2 other
  clients, each its own process (each a stats, a frame, a 50 ms pause) while those corral starts are
  in flight (the reads lane), and the same on the idle host;
* with ``--skip-output`` unset: 10 MB of output read through 1 MiB frames against docker-py logs;
* the worker's RSS (main, pool, reads lane) before and after.

Everything it starts is removed by label at the end. Prints one table.
"""

from __future__ import annotations

import argparse
import base64
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker

from corral.client.client import Client, JobHandle
from corral.client.devstack import DevStack
from corral.contract.vocabulary import ProcessIoStream
from corral.fleet.job import JobSpec
from corral.settings import load_settings

IMAGE = "corral/busybox:latest"
SEQ_N = 1_400_000
HOST = "bench"
RAW_LABEL = "corral.bench.raw"
RAW_LIMITS: dict[str, Any] = {
    "network_mode": "none",
    "read_only": True,
    "mem_limit": "16m",
    "nano_cpus": 500_000_000,
    "pids_limit": 64,
    "labels": {RAW_LABEL: "1"},
}
"""The raw containers get the limits corral's get (no network, read-only root, memory, CPU, pids)."""
POLLERS = 2
POLL_PAUSE_S = 0.05
"""Each poller asks stats, then a frame, then pauses: a client watching, not a tight loop taking the CPUs."""


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))] if ordered else float("nan")


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def worker_pids(root: int) -> list[int]:
    """The worker and its children (pool processes, the reads lane), not the per-sandbox shims."""
    pids = [root]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes()
            except (FileNotFoundError, IndexError):
                continue
            if int(fields[1]) == root and b"corral.io" not in cmdline:
                pids.append(int(entry.name))
    return pids


def start_step_ms(client: Client, environment_id: str) -> float | None:
    """prepare_environment's result record to start_process's result record, from the journal's stream ids."""
    ends = {}
    for record in client.services.journal.read(environment_id):
        if record.kind == "result" and record.fields.get("status") == "ok":
            ends[record.fields.get("op")] = int(record.record_id.split("-")[0])
    before, after = ends.get("prepare_environment"), ends.get("start_process")
    return float(after - before) if before is not None and after is not None else None


def poll_reads(host: str, process_ref: str, environment_id: str, done: Any, ready: Any, results: Any) -> None:
    """A client in its own process: stats, a frame, a pause, until ``done``; then its latencies (ms)."""
    client = Client()
    handle = JobHandle(environment_id, host, process_ref)
    stats_ms: list[float] = []
    frame_ms: list[float] = []
    client.stats(handle)  # connected and warm before the wave
    ready.wait(60)
    try:
        while not done.is_set():
            t = time.perf_counter()
            client.stats(handle)
            stats_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            client.read_frame(host, process_ref, ProcessIoStream.stdout, 0)
            frame_ms.append((time.perf_counter() - t) * 1000)
            done.wait(POLL_PAUSE_S)
    finally:
        results.put((stats_ms, frame_ms))
        client.close()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.engine = docker.from_env(max_pool_size=max(10, args.starts))
        self.rows: list[tuple[str, str, str, str]] = []

    def row(self, figure: str, raw: str, ours: str, ratio: str) -> None:
        self.rows.append((figure, raw, ours, ratio))

    # -- one launch ----------------------------------------------------------------------------

    def launch(self, client: Client) -> None:
        raw_ms: list[float] = []
        raw_start_ms: list[float] = []
        our_ms: list[float] = []
        our_start_ms: list[float] = []

        def raw_true() -> None:
            c = self.engine.containers.create(IMAGE, ["true"], **RAW_LIMITS)
            started = time.perf_counter()
            c.start()
            raw_start_ms.append((time.perf_counter() - started) * 1000)
            c.wait()
            c.remove(force=True)

        def corral_true() -> None:
            job = JobSpec(image=IMAGE, argv=["true"], memory_mb=16)
            outcome = client.run(job, host=HOST)
            assert outcome.exit_code == 0, outcome
            step = start_step_ms(client, job.environment_id)
            if step is not None:
                our_start_ms.append(step)

        raw_true()  # warm-up of both paths: image cache, connections, imports
        corral_true()
        raw_start_ms.clear()
        our_start_ms.clear()
        for _ in range(self.args.runs):
            raw_ms += timed(raw_true, 1)
            our_ms += timed(corral_true, 1)
        raw, ours = statistics.median(raw_ms), statistics.median(our_ms)
        self.row(
            "`corral run true` vs docker-py create+start+wait+remove (median ms)",
            f"{raw:.0f}",
            f"{ours:.0f} (p95 {pct(our_ms, 95):.0f})",
            f"{ours / raw:.2f}x",
        )
        raw_s, ours_s = statistics.median(raw_start_ms), statistics.median(our_start_ms)
        self.row(
            "`start_process` step alone vs container.start() (median ms)",
            f"{raw_s:.0f}",
            f"{ours_s:.0f}",
            f"{ours_s / raw_s:.2f}x",
        )

    # -- N at once, and reads meanwhile --------------------------------------------------------

    def raw_wave(self, n: int) -> float:
        """Seconds for n docker-py create+start from n threads (the containers are removed after)."""

        def one(_: int) -> Any:
            c = self.engine.containers.create(IMAGE, ["sleep", "60"], **RAW_LIMITS)
            c.start()
            return c

        with ThreadPoolExecutor(n) as pool:
            started = time.perf_counter()
            containers = list(pool.map(one, range(n)))
            elapsed = time.perf_counter() - started
            list(pool.map(lambda c: c.remove(force=True), containers))
        return elapsed

    def corral_wave(self, n: int, poll: JobHandle, reader: Client) -> tuple[float, list[float], list[float]]:
        """Seconds for n concurrent submits (one client per thread) until every start_process answered,
        and the stats / read_frame latencies (ms) of ``poll`` measured meanwhile by ``POLLERS`` other
        clients, each a process of its own (another program watching, not threads of this one)."""
        clients = [Client() for _ in range(n)]
        spawn = multiprocessing.get_context("spawn")
        done = spawn.Event()
        ready = spawn.Barrier(POLLERS + 1)
        results: Any = spawn.Queue()
        pollers = [
            spawn.Process(
                target=poll_reads, args=(poll.host, poll.process_ref, poll.environment_id, done, ready, results)
            )
            for _ in range(POLLERS)
        ]
        for process in pollers:
            process.start()
        ready.wait(60)  # each poller's client is connected: the wave starts with them polling

        def one(client: Client) -> JobHandle:
            handle = client.submit(JobSpec(image=IMAGE, argv=["sleep", "60"], memory_mb=16, cpus=0.5), host=HOST)
            client.wait(handle, timeout=300)
            return handle

        with ThreadPoolExecutor(n) as pool:
            started = time.perf_counter()
            handles = list(pool.map(one, clients))
            elapsed = time.perf_counter() - started
            done.set()
            stats_ms: list[float] = []
            frame_ms: list[float] = []
            for _ in pollers:
                got_stats, got_frames = results.get(timeout=60)
                stats_ms += got_stats
                frame_ms += got_frames
            for process in pollers:
                process.join(30)
            list(pool.map(lambda pair: pair[0].cleanup(pair[1]), zip(clients, handles, strict=True)))
        for client in clients:
            client.close()
        return elapsed, stats_ms, frame_ms

    def wave(self, client: Client) -> None:
        n = self.args.starts
        spec = JobSpec(image=IMAGE, argv=["sh", "-c", "echo ready; sleep 600"], memory_mb=16, cpus=0.5)
        poll = client.submit(spec, host=HOST)
        client.wait(poll)
        idle_stats = timed(lambda: client.stats(poll), 20)
        idle_frames = timed(lambda: client.read_frame(HOST, poll.process_ref, ProcessIoStream.stdout, 0), 20)
        raw_s = self.raw_wave(n)
        ours_s, stats_ms, frame_ms = self.corral_wave(n, poll, client)
        client.cleanup(poll)
        raw_rate, our_rate = n / raw_s, n / ours_s
        self.row(
            f"{n} starts at once, starts/s (docker-py from {n} threads)",
            f"{raw_rate:.1f}",
            f"{our_rate:.1f}",
            f"{our_rate / raw_rate:.2f}x",
        )
        for name, idle, loaded in (("stats", idle_stats, stats_ms), ("read_frame", idle_frames, frame_ms)):
            self.row(
                f"`{name}` p50 / p95 ms while the {n} starts are in flight ({len(loaded)} calls)",
                f"idle {pct(idle, 50):.0f} / {pct(idle, 95):.0f}",
                f"{pct(loaded, 50):.0f} / {pct(loaded, 95):.0f}",
                "",
            )

    # -- output --------------------------------------------------------------------------------

    def output(self, client: Client) -> None:
        def raw_seq() -> None:
            # Not containers.run(remove=True): measured here, it returned 69 870 of 10 088 896 bytes.
            c = self.engine.containers.run(
                IMAGE, ["seq", "1", str(SEQ_N)], network_mode="none", detach=True, labels={RAW_LABEL: "1"}
            )
            c.wait()
            out = c.logs(stdout=True, stderr=False)
            c.remove(force=True)
            assert len(out) > 10_000_000

        def corral_seq() -> None:
            handle = client.submit(JobSpec(image=IMAGE, argv=["seq", "1", str(SEQ_N)], memory_mb=64), host=HOST)
            client.wait(handle)
            total = 0
            for frame in client.frames(handle, ProcessIoStream.stdout, max_bytes=1 << 20):
                total += len(base64.b64decode(frame.content_b64 or ""))
            client.cleanup(handle)
            assert total > 10_000_000

        raw_ms, our_ms = timed(raw_seq, self.args.runs), timed(corral_seq, self.args.runs)
        raw, ours = statistics.median(raw_ms), statistics.median(our_ms)
        self.row(
            "10 MB of output, 1 MiB frames vs docker-py logs (median ms)",
            f"{raw:.0f}",
            f"{ours:.0f}",
            f"{ours / raw:.2f}x",
        )

    def remove_raw(self) -> None:
        for c in self.engine.containers.list(all=True, filters={"label": RAW_LABEL}):
            c.remove(force=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--starts", type=int, default=50, help="sandboxes started at once (0: skip)")
    parser.add_argument("--concurrency", type=int, default=8, help="the worker's lifecycle processes")
    parser.add_argument("--skip-output", action="store_true", help="skip the 10 MB output rows")
    args = parser.parse_args()
    os.environ.pop("CORRAL_REDIS__URL", None)
    # Admission counts each job's cpus against the host's; the wave's sleeping sandboxes must all fit.
    os.environ["CORRAL_HOST__CAPACITY_CPUS"] = "1000"
    load_settings.cache_clear()
    bench = Bench(args)
    stack = DevStack(HOST, concurrency=args.concurrency)
    stack.start()
    try:
        client = Client()
        worker = stack.worker_pid or 0
        time.sleep(2)  # the reads lane is up
        rss_before = rss_kib(worker_pids(worker))
        bench.launch(client)
        if args.starts:
            bench.wave(client)
        if not args.skip_output:
            bench.output(client)
        rss_after = rss_kib(worker_pids(worker))
        client.close()
    finally:
        stack.stop()
        bench.remove_raw()

    version = bench.engine.version()["Version"]
    cpus = os.cpu_count()
    print(f"\ncorral bench: {args.runs} runs, docker {version}, {cpus} cpus, worker --concurrency {args.concurrency}\n")
    width = max(len(r[0]) for r in bench.rows)
    print(f"| {'figure':<{width}} | {'raw':>13} | {'corral':>15} | {'ratio':>6} |")
    print(f"|{'-' * (width + 2)}|{'-' * 15}|{'-' * 17}|{'-' * 8}|")
    for figure, raw, ours, ratio in bench.rows:
        print(f"| {figure:<{width}} | {raw:>13} | {ours:>15} | {ratio:>6} |")
    print(
        f"\nworker RSS (main + pool + reads lane): {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB after"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
