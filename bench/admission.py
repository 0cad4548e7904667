"""Admission at fleet scale: placement decisions per second and their latency, from one Redis.

    .venv/bin/python bench/admission.py [--hosts 100] [--decisions 20000] [--threads 4] [--batch 50]

Starts a private redis-server (loopback, no persistence) and drives the admission script
(``corral/fleet/admission.lua``) directly with simulated host records: ``--hosts`` hosts with 32 slots,
64 CPUs and 256 GB each, and jobs of 0.5 to 4 CPUs and 256 MB to 8 GB. Phases, each timed on its own:

- ``spread, one job a call``: each decision is one atomic reserve call from ``--threads`` threads (the
  path of ``corral run``/``corral.place``); jobs end as they go (each thread keeps at most its share of
  60% of the fleet's slots), so the fleet stays busy but never full;
- ``spread, --batch jobs a call``: ``reserve_many``, the batch dispatcher's path (one round trip per
  batch of decisions; a decision's latency is its call's);
- ``binpack, one job a call``: binpack reads every candidate (the cost every decision had before the
  spread index);
- ``saturated``: the fleet full, every decision answers ``queued`` with its reason (reads every host).

For each: decisions/s, p50/p99 latency per decision, the script's own time per call inside Redis
(``INFO commandstats``), and the ratio to a bare ``PING`` round trip. Then where the time of one
``corral.place`` goes besides the script: reading the 100 hosts' heartbeat records (``host_statuses``)
and the capability filter in Python (``filter_hosts``: fail-closed matching on each host's report).
Correctness: no host is ever over capacity (checked after every phase: the used counters against the
capacity, and the sum of the recorded allocations against the counters).

Last, it submits a 10,000-job array straight to the batch store (one Lua call: the fleet worker's side
of ``corral batch submit``) and reports the time, the Redis round trips it took and the Redis memory
per pending job.

The issue's anchor is Nomad's C1M (~3,300 placements/s on a cluster of servers); the target here is
>= 2,000 decisions/s from one Redis on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from corral.fleet.admission import (  # noqa: E402
    ALLOCS_KEY,
    CAPACITY_KEY,
    LEASES_KEY,
    USED_KEY,
    Admission,
    Capacity,
    Demand,
    Mode,
    Placed,
    Queued,
    alloc_key,
)
from corral.fleet.batch import ArraySpec, BatchStore, BatchSubmitRequest, JobTemplate  # noqa: E402
from corral.fleet.job import JobSpec  # noqa: E402
from corral.fleet.placement import filter_hosts, host_statuses  # noqa: E402
from corral.runtimes.fake import FakeRuntime  # noqa: E402
from corral.state.store import Store  # noqa: E402


def start_redis() -> tuple[subprocess.Popen[bytes], int, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    workdir = tempfile.mkdtemp(prefix="corral-bench-admission-")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port, workdir
        except OSError:
            time.sleep(0.05)
    proc.kill()
    sys.exit("redis-server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class CountingConnection(redis.Connection):
    """Counts what goes over the wire: one ``send_packed_command`` is one round trip (a pipeline is one)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


CAPACITY = Capacity(slots=32, cpus_m=64_000, mem_mb=256_000)
DEMANDS = [Demand.of(c, m) for c in (0.5, 1, 2, 4) for m in (256, 1024, 4096, 8192)]


@dataclass
class Phase:
    name: str
    decisions: int = 0
    placed: int = 0
    queued: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    script_us: float = 0.0
    """Mean time of one script call inside Redis (EVALSHA, from INFO commandstats)."""
    calls: int = 0


def script_stats(r: redis.Redis) -> tuple[int, float]:
    stat = r.info("commandstats").get("cmdstat_evalsha", {})
    return int(stat.get("calls", 0)), float(stat.get("usec", 0))


def run_phase(
    url: str, hosts: list[str], name: str, decisions: int, threads: int, batch: int, mode: Mode, keep: int | None
) -> Phase:
    """``threads`` clients deciding ``decisions`` jobs, ``batch`` per call; each keeps at most ``keep``
    placed jobs (older ones end and are released), None: nothing ends."""
    phase = Phase(name)
    lock = threading.Lock()
    per_thread = decisions // threads
    stats = redis.Redis.from_url(url, decode_responses=True)
    calls0, usec0 = script_stats(stats)

    def run(seed: int) -> None:
        rng = random.Random(seed)
        client = redis.Redis.from_url(url, decode_responses=True)
        mine = Admission(client)
        held: list[str] = []
        local: list[float] = []
        placed = queued = 0
        i = 0
        while i < per_thread:
            jobs = [(f"{name[:4]}{seed}-{i + k}", rng.choice(DEMANDS)) for k in range(min(batch, per_thread - i))]
            now = int(time.time() * 1000)
            begin = time.perf_counter()
            if batch == 1:
                answers: list[Placed | Queued] = [mine.reserve(jobs[0][0], jobs[0][1], hosts, now, mode)]
            else:
                answers = mine.reserve_many(jobs, hosts, now, mode)
            took = time.perf_counter() - begin
            local.extend([took] * max(1, len(answers)))
            for (env, _), answer in zip(jobs, answers, strict=False):
                if isinstance(answer, Placed):
                    placed += 1
                    held.append(env)
                else:
                    queued += 1
            i += max(1, len(answers))
            if keep is not None and len(held) > keep:  # jobs end: their capacity comes back
                rng.shuffle(held)
                ended, held = held[: len(held) - keep], held[len(held) - keep :]
                mine.release_many(ended)
        client.close()
        with lock:
            phase.latencies.extend(local)
            phase.placed += placed
            phase.queued += queued

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    phase.seconds = time.perf_counter() - start
    phase.decisions = phase.placed + phase.queued
    calls1, usec1 = script_stats(stats)
    phase.calls = calls1 - calls0
    phase.script_us = (usec1 - usec0) / max(1, phase.calls)
    stats.close()
    return phase


def over_capacity(admission: Admission, hosts: list[str]) -> tuple[int, int]:
    """(hosts over capacity, hosts whose used counters differ from the sum of their allocations)."""
    sums: dict[str, list[int]] = {h: [0, 0, 0] for h in hosts}
    for record in cast(list[str], admission.r.hvals(ALLOCS_KEY)):
        host, cpus, mem = record.rsplit(",", 2)
        sums[host][0] += 1
        sums[host][1] += int(cpus)
        sums[host][2] += int(mem)
    over = mismatched = 0
    for host in hosts:
        used = admission.used(host)
        if used.slots > CAPACITY.slots or used.cpus_m > CAPACITY.cpus_m or used.mem_mb > CAPACITY.mem_mb:
            over += 1
        if [used.slots, used.cpus_m, used.mem_mb] != sums[host]:
            mismatched += 1
    return over, mismatched


def clear(r: redis.Redis) -> None:
    """Every allocation released (between phases): the fleet is empty again."""
    r.delete(ALLOCS_KEY, LEASES_KEY, USED_KEY, *(alloc_key(h) for h in cast(list[str], r.hkeys(CAPACITY_KEY))))


def filter_cost(r: redis.Redis, hosts: list[str], rounds: int) -> tuple[float, float, float]:
    """Seconds per ``host_statuses`` (read every heartbeat record), per ``filter_hosts`` once a report's
    match is cached (the steady state: a report changes with its host's heartbeat), and for the first."""
    store = Store(r)
    for host in hosts:
        report = FakeRuntime(host).capability_report().model_dump(mode="json")
        store.publish_host(host, {"host_id": host, "report": report}, 3_600_000)
    begin = time.perf_counter()
    for _ in range(rounds):
        statuses = host_statuses(store)
    read = (time.perf_counter() - begin) / rounds
    requirement = JobSpec(image="corral/busybox:latest", argv=["true"]).environment().spec.requirement
    begin = time.perf_counter()
    filter_hosts(statuses, requirement)
    first = time.perf_counter() - begin
    begin = time.perf_counter()
    for _ in range(rounds):
        found = filter_hosts(statuses, requirement)
    assert len(found.hosts) == len(hosts), found
    return read, (time.perf_counter() - begin) / rounds, first


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    proc, port, workdir = start_redis()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        setup = redis.Redis.from_url(url, decode_responses=True)
        hosts = [f"sim-{i:04d}" for i in range(args.hosts)]
        admission = Admission(setup)
        for host in hosts:
            admission.publish_capacity(host, CAPACITY, 3_600_000)
        # Each client keeps its share of 60% of the fleet's slots: busy, never full.
        keep = int(0.6 * CAPACITY.slots * len(hosts) / args.threads)
        phases: list[Phase] = []
        checks: list[tuple[int, int]] = []
        plan: list[tuple[str, int, Mode, int | None]] = [
            ("spread, one job a call", 1, "spread", keep),
            (f"spread, {args.batch} jobs a call", args.batch, "spread", keep),
            ("binpack, one job a call", 1, "binpack", keep),
        ]
        for name, batch, mode, kept in plan:
            phases.append(run_phase(url, hosts, name, args.decisions, args.threads, batch, mode, kept))
            checks.append(over_capacity(admission, hosts))
            clear(setup)
        # Saturated: fill every slot, then decide jobs that cannot fit anywhere.
        fill = [(f"fill-{i}", Demand.of(0.5, 256)) for i in range(CAPACITY.slots * len(hosts))]
        for at in range(0, len(fill), 500):
            admission.reserve_many(fill[at : at + 500], hosts, int(time.time() * 1000))
        saturated = run_phase(url, hosts, "saturated: all queued", args.decisions // 4, args.threads, 1, "spread", 0)
        phases.append(saturated)
        checks.append(over_capacity(admission, hosts))
        clear(setup)

        pings: list[float] = []
        for _ in range(min(5_000, args.decisions)):
            begin = time.perf_counter()
            setup.ping()
            pings.append(time.perf_counter() - begin)
        read_s, match_s, first_match_s = filter_cost(setup, hosts, 20)

        # Batch submission: a 10,000-job array is one Lua call (the pending set is built in Redis).
        counted = redis.Redis(
            connection_pool=redis.ConnectionPool(
                connection_class=CountingConnection, host="127.0.0.1", port=port, decode_responses=True
            )
        )
        batches = BatchStore(counted)
        template = JobTemplate(image="corral/busybox:latest", argv=["true"], cpus=0.5, memory_mb=64)
        trips: dict[int, int] = {}
        for size in (10, 1_000, 10_000):  # the first loads the script (SCRIPT EXISTS/LOAD): a warm-up
            before = int(setup.info("memory")["used_memory"])
            sent0 = CountingConnection.sent
            begin = time.perf_counter()
            ref = batches.submit(
                BatchSubmitRequest(template=template, array=ArraySpec(first=0, last=size - 1)),
                "bench",
                "bench",
                int(time.time() * 1000),
            )
            submit_s = time.perf_counter() - begin
            trips[size] = CountingConnection.sent - sent0
            per_job = (int(setup.info("memory")["used_memory"]) - before) / size
            assert setup.zcard(f"corral:batch:{ref.batch_id}:pending") == size
        setup.close()

        ping50 = statistics.median(pings) * 1000
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"admission: {args.hosts} simulated hosts, {args.threads} client threads, one Redis; load average {load}")
        head = f"{'phase':<32}{'decisions':>10}{'per s':>8}{'p50 ms':>8}{'p99 ms':>8}{'p99/PING':>9}"
        print(head + f"{'script us/call':>15}{'placed/queued':>15}")
        for ph in phases:
            p50, p99 = percentile(ph.latencies, 0.5) * 1000, percentile(ph.latencies, 0.99) * 1000
            print(
                f"{ph.name:<32}{ph.decisions:>10}{ph.decisions / ph.seconds:>8.0f}{p50:>8.3f}{p99:>8.3f}"
                f"{p99 / ping50:>9.1f}{ph.script_us:>15.0f}{f'{ph.placed}/{ph.queued}':>15}"
            )
        spread, batched = phases[0], phases[1]
        print(f"{'PING round trip p50 (ms)':<32}{ping50:>10.3f}")
        batched_rate = batched.decisions / batched.seconds
        print(f"{'batched / one-a-call rate':<32}{batched_rate / (spread.decisions / spread.seconds):>10.1f}x")
        ratio = phases[2].script_us / max(spread.script_us, 1e-9)
        print(f"{'binpack script / spread script':<32}{ratio:>10.1f}x   (binpack reads every host, spread the index)")
        print(
            f"one corral.place besides the script: read {args.hosts} heartbeat records {read_s * 1000:.2f} ms, "
            f"capability filter in Python {match_s * 1000:.2f} ms (first call, matching each report: "
            f"{first_match_s * 1000:.2f} ms)"
        )
        over = sum(c[0] for c in checks)
        mismatched = sum(c[1] for c in checks)
        print(f"{'hosts over capacity (all phases)':<32}{over:>10}")
        print(f"{'counters != allocations':<32}{mismatched:>10}")
        print(
            f"{'10,000-job array submit (ms)':<32}{submit_s * 1000:>10.1f}   ({trips[10_000]} Redis round trip(s); "
            f"{trips[1_000]} for 1,000 jobs)"
        )
        print(f"{'Redis bytes per pending job':<32}{per_job:>10.0f}")
        return 0 if over == 0 and mismatched == 0 and submit_s < 2 else 1
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
