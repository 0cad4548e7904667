"""corral benchmarks: what the Celery pipeline costs over raw Docker, measured in one run.

    .venv/bin/python bench/run.py [--runs 10]

Starts a private stack (redis-server child + one host worker, like ``corral dev``), then measures,
against this host's Docker engine:

* raw baseline: docker-py create + start + wait + remove of ``true``
* ``corral run`` of ``true`` through the whole chain (submit, 8 tasks, follow, stats, cleanup)
* raw output baseline: docker-py run of ``seq 1 1400000`` (~10 MB) collecting its logs
* ``corral`` reading the same output through 1 MiB frames from the host spool
* worker memory (RSS of the worker's processes) before and after

and prints a table with each corral figure as a ratio of its raw baseline.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import docker

from corral.client.client import Client
from corral.client.devstack import DevStack
from corral.contract.models import IoStream
from corral.fleet.job import JobSpec
from corral.settings import load_settings

IMAGE = "corral/busybox:latest"
SEQ_N = 1_400_000


def timed(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


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
    pids = [root]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, IndexError):
                continue
            if int(fields[1]) == root:
                pids.append(int(entry.name))
    return pids


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    os.environ.pop("CORRAL_REDIS__URL", None)
    load_settings.cache_clear()
    stack = DevStack("bench")
    stack.start()
    try:
        client = Client()
        engine = docker.from_env()
        worker = stack.worker_pid or 0
        rss_before = rss_kib(worker_pids(worker))

        def raw_true() -> None:
            c = engine.containers.create(IMAGE, ["true"], network_mode="none")
            c.start()
            c.wait()
            c.remove(force=True)

        def corral_true() -> None:
            outcome = client.run(JobSpec(image=IMAGE, argv=["true"], memory_mb=64), host="bench")
            assert outcome.exit_code == 0

        def raw_seq() -> None:
            # Not containers.run(remove=True): measured here, it returned 69 870 of 10 088 896 bytes.
            c = engine.containers.run(IMAGE, ["seq", "1", str(SEQ_N)], network_mode="none", detach=True)
            c.wait()
            out = c.logs(stdout=True, stderr=False)
            c.remove(force=True)
            assert len(out) > 10_000_000

        def corral_seq() -> None:
            handle = client.submit(JobSpec(image=IMAGE, argv=["seq", "1", str(SEQ_N)], memory_mb=64), host="bench")
            client.wait(handle)
            total = 0
            for frame in client.frames(handle, IoStream.stdout, max_bytes=1 << 20):
                total += len(base64.b64decode(frame.content_b64 or ""))
            client.cleanup(handle)
            assert total > 10_000_000

        rows = []
        for name, raw, ours in (("run `true`", raw_true, corral_true), ("10 MB of output", raw_seq, corral_seq)):
            raw_ms = timed(raw, args.runs)
            our_ms = timed(ours, args.runs)
            rows.append((name, raw_ms, our_ms))
        rss_after = rss_kib(worker_pids(worker))
    finally:
        stack.stop()

    print(f"\ncorral bench: {args.runs} runs each, docker {engine.version()['Version']}, {os.cpu_count()} cpus\n")
    print(f"{'workload':<18} {'raw median ms':>14} {'corral median ms':>17} {'corral p95 ms':>14} {'ratio':>7}")
    for name, raw_ms, our_ms in rows:
        raw_med, our_med = statistics.median(raw_ms), statistics.median(our_ms)
        p95 = sorted(our_ms)[max(0, int(len(our_ms) * 0.95) - 1)]
        print(f"{name:<18} {raw_med:>14.1f} {our_med:>17.1f} {p95:>14.1f} {our_med / raw_med:>6.2f}x")
    print(f"\nworker RSS (main + pool): {rss_before / 1024:.1f} MiB before, {rss_after / 1024:.1f} MiB after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
