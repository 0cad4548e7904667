"""Admission at fleet scale: placement decisions per second and their latency, from one Redis.

    .venv/bin/python bench/admission.py [--hosts 100] [--decisions 20000] [--threads 4]

Starts a private redis-server (loopback, no persistence) and drives the admission script
(``corral/admission.lua``) directly with simulated host records: ``--hosts`` hosts with 32 slots, 64 CPUs
and 256 GB each, and jobs of 0.5 to 4 CPUs and 256 MB to 8 GB. Each decision is one atomic reserve
call (filter every candidate, score, reserve); a third of the placed jobs are released again as they
go, so the fleet stays busy but not full. Then it checks that no host is ever over capacity (the used
counters against the capacity, and the sum of the recorded allocations against the counters), and
measures the same number of bare ``PING`` round trips as the floor of what one Redis call costs here.

Last, it submits a 10,000-job array straight to the batch store (one Lua call: the fleet worker's side
of ``corral batch submit``) and reports the time and the Redis memory per pending job.

It prints a table: decisions/s, p50/p99 latency per decision, and the ratio to the PING floor. The
issue's anchor is Nomad's C1M (~3,300 placements/s on a cluster of servers); the target here is
>= 2,000 decisions/s from one Redis on 2 cores.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from corral.fleet.admission import ALLOCS_KEY, Admission, Capacity, Demand, Placed  # noqa: E402
from corral.fleet.batch import ArraySpec, BatchStore, BatchSubmitRequest, JobTemplate  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    proc, port, workdir = start_redis()
    try:
        url = f"redis://127.0.0.1:{port}/0"
        setup = redis.Redis.from_url(url, decode_responses=True)
        hosts = [f"sim-{i:04d}" for i in range(args.hosts)]
        capacity = Capacity(slots=32, cpus_m=64_000, mem_mb=256_000)
        admission = Admission(setup)
        for host in hosts:
            admission.publish_capacity(host, capacity, 3_600_000)
        latencies: list[float] = []
        outcomes = {"placed": 0, "queued": 0}
        lock = threading.Lock()
        per_thread = args.decisions // args.threads

        def run(seed: int) -> None:
            rng = random.Random(seed)
            client = redis.Redis.from_url(url, decode_responses=True)
            mine = Admission(client)
            held: list[str] = []
            local: list[float] = []
            placed = queued = 0
            for i in range(per_thread):
                demand = Demand.of(rng.choice((0.5, 1, 2, 4)), rng.choice((256, 1024, 4096, 8192)))
                env = f"t{seed}-{i}"
                begin = time.perf_counter()
                decision = mine.reserve(env, demand, hosts, int(time.time() * 1000))
                local.append(time.perf_counter() - begin)
                if isinstance(decision, Placed):
                    placed += 1
                    mine.confirm(env, decision.host, demand)
                    held.append(env)
                    if rng.random() < 0.34:  # jobs end: capacity comes back
                        mine.release(held.pop(rng.randrange(len(held))))
                else:
                    queued += 1
            client.close()
            with lock:
                latencies.extend(local)
                outcomes["placed"] += placed
                outcomes["queued"] += queued

        threads = [threading.Thread(target=run, args=(t,)) for t in range(args.threads)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start

        # Correctness: no host over capacity, and the counters equal the sum of the allocations.
        over = 0
        sums: dict[str, list[int]] = {h: [0, 0, 0] for h in hosts}
        for record in setup.hvals(ALLOCS_KEY):
            host, cpus, mem = record.rsplit(",", 2)
            sums[host][0] += 1
            sums[host][1] += int(cpus)
            sums[host][2] += int(mem)
        mismatched = 0
        for host in hosts:
            used = admission.used(host)
            if used.slots > capacity.slots or used.cpus_m > capacity.cpus_m or used.mem_mb > capacity.mem_mb:
                over += 1
            if [used.slots, used.cpus_m, used.mem_mb] != sums[host]:
                mismatched += 1

        pings: list[float] = []
        for _ in range(min(5_000, args.decisions)):
            begin = time.perf_counter()
            setup.ping()
            pings.append(time.perf_counter() - begin)
        setup.close()

        # Batch submission: a 10,000-job array is one Lua call (the pending set is built in Redis).
        batches = BatchStore(setup)
        template = JobTemplate(image="corral/busybox:latest", argv=["true"], cpus=0.5, memory_mb=64)
        before = int(setup.info("memory")["used_memory"])
        begin = time.perf_counter()
        ref = batches.submit(
            BatchSubmitRequest(template=template, array=ArraySpec(first=0, last=9_999)),
            "bench",
            "bench",
            int(time.time() * 1000),
        )
        submit_s = time.perf_counter() - begin
        per_job = (int(setup.info("memory")["used_memory"]) - before) / 10_000
        assert setup.zcard(f"corral:batch:{ref.batch_id}:pending") == 10_000

        decisions = len(latencies)
        rate = decisions / elapsed
        p50, p99 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.99) * 1000
        ping50 = statistics.median(pings) * 1000
        print(f"admission: {args.hosts} simulated hosts, {decisions} decisions from {args.threads} threads, one Redis")
        print(f"{'measure':<34}{'value':>12}{'ratio to PING':>16}")
        print(f"{'decisions/s (all threads)':<34}{rate:>12.0f}{'':>16}")
        print(f"{'p50 latency per decision (ms)':<34}{p50:>12.3f}{p50 / ping50:>16.1f}")
        print(f"{'p99 latency per decision (ms)':<34}{p99:>12.3f}{p99 / ping50:>16.1f}")
        print(f"{'PING round trip p50 (ms)':<34}{ping50:>12.3f}{1:>16.1f}")
        print(f"{'placed / queued':<34}{outcomes['placed']:>6} / {outcomes['queued']:<6}")
        print(f"{'hosts over capacity':<34}{over:>12}")
        print(f"{'hosts whose counters != allocations':<34}{mismatched:>12}")
        print(f"{'10,000-job array submit (ms)':<34}{submit_s * 1000:>12.1f}   (one Lua call)")
        print(f"{'Redis bytes per pending job':<34}{per_job:>12.0f}")
        return 0 if over == 0 and mismatched == 0 else 1
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
