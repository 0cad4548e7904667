"""A batch array drained over a fleet of host workers on this machine, against raw docker-py.

    .venv/bin/python bench/batch.py [--jobs 200] [--hosts 3] [--throttle 12]

Starts ``corral dev --hosts N`` in-process (``DevStack``: a private redis-server, N host workers with
their own identities and state dirs on this machine's Docker), submits one array of ``--jobs`` jobs
running ``true`` (0.1 CPU, 16 MB) with at most ``--throttle`` running at once, and waits for it. Then it
runs the same number of containers (``corral/busybox:latest true``, same limits) with docker-py from
``--throttle`` threads (create, start, wait, remove), in the same run.

It prints: time to drain, jobs/s, the dispatcher's overhead per job (its time in admission calls, and
the time from a job's reservation to its launch sent, both recorded by the dispatcher in the batch's
``stat_*`` fields), each host's share (its distance from an even split, and whether every host is within
±15% of it), jobs lost (an index without a succeeded attempt) and jobs run twice (an index with more
than one session, that is, more than one container), the submit call's time, and the ratio of corral's
drain time to docker-py's. Then it times the submission of a ``--submit`` (10,000) job array through
the client (a signed fleet task; the array is stored in one Lua call) and cancels it. Redis round trips
and memory per pending job of that submission are measured by ``bench/admission.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from corral.client.client import Client  # noqa: E402
from corral.client.devstack import DevStack  # noqa: E402
from corral.fleet.batch import batch_key  # noqa: E402
from corral.fleet.job import JobSpec  # noqa: E402
from corral.settings import load_settings  # noqa: E402

IMAGE = "corral/busybox:latest"


def raw_docker(jobs: int, threads: int) -> float:
    import docker

    client = docker.from_env()

    def one(_: int) -> None:
        container = client.containers.create(
            IMAGE, ["true"], nano_cpus=100_000_000, mem_limit="16m", network_mode="none", labels={"bench": "batch"}
        )
        try:
            container.start()
            container.wait()
        finally:
            container.remove(force=True)

    begin = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(jobs)))
    return time.perf_counter() - begin


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--hosts", type=int, default=3)
    parser.add_argument("--throttle", type=int, default=12)
    parser.add_argument("--submit", type=int, default=10_000, help="the size of the array whose submission is timed")
    args = parser.parse_args()
    state = tempfile.mkdtemp(prefix="corral-bench-batch-")
    secrets_root = tempfile.mkdtemp(prefix="corral-bench-batch-", dir="/dev/shm")
    os.environ.pop("CORRAL_REDIS__URL", None)
    os.environ["CORRAL_HOST__STATE_DIR"] = state
    os.environ["CORRAL_HOST__SECRETS_ROOT"] = secrets_root
    load_settings.cache_clear()
    stack = DevStack("bench", hosts=args.hosts)
    try:
        stack.start()
        client = Client()
        spec = JobSpec(image=IMAGE, argv=["true"], cpus=0.1, memory_mb=16, timeout_ms=60_000)
        begin = time.perf_counter()
        handle = client.submit_batch(spec, array=f"0-{args.jobs - 1}%{args.throttle}")
        submitted = time.perf_counter() - begin
        status = handle.wait(timeout=3600, poll_s=0.5)
        drained = time.perf_counter() - begin
        stats = cast(dict[str, str], client.services.store.r.hgetall(batch_key(handle.batch_id)))
        jobs = status["jobs"]
        hosts = Counter(rec.get("host") for rec in jobs.values() if rec.get("state") == "succeeded")
        lost = sum(1 for i in range(args.jobs) if jobs.get(str(i), {}).get("state") != "succeeded")
        # Every attempt is a session (a container): an index with more than one was run twice.
        attempts = Counter(
            s["environment_id"].split(".")[1]
            for s in client.sessions(100_000)
            if s["environment_id"].startswith(handle.batch_id + ".")
        )
        twice = sum(1 for n in attempts.values() if n > 1)
        # A 10,000-job array through the client, as `corral batch submit --array 0-9999` (then cancelled:
        # at most one of its jobs starts, throttle 1).
        begin = time.perf_counter()
        big = client.submit_batch(spec, array=f"0-{args.submit - 1}%1")
        big_submit = time.perf_counter() - begin
        pending = int(client.services.store.r.zcard(f"{batch_key(big.batch_id)}:pending"))
        big.cancel()
        client.close()
    finally:
        stack.stop()
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(secrets_root, ignore_errors=True)
    raw = raw_docker(args.jobs, args.throttle)
    even = args.jobs / args.hosts
    dispatched = max(1, int(stats.get("stat_jobs") or 0))
    reserve_ms = int(stats.get("stat_reserve_us") or 0) / dispatched / 1000
    sent_ms = int(stats.get("stat_sent_us") or 0) / dispatched / 1000
    send_ms = int(stats.get("stat_send_us") or 0) / dispatched / 1000
    spread_ok = len(hosts) == args.hosts and all(abs(n - even) <= 0.15 * even for n in hosts.values())
    print(f"batch: {args.jobs} jobs of `true` over {args.hosts} host workers, at most {args.throttle} at once")
    print(f"{'measure':<36}{'corral':>12}{'docker-py':>12}{'ratio':>8}")
    print(f"{'time to drain (s)':<36}{drained:>12.1f}{raw:>12.1f}{drained / raw:>8.2f}")
    print(f"{'jobs per second':<36}{args.jobs / drained:>12.2f}{args.jobs / raw:>12.2f}{raw / drained:>8.2f}")
    print(f"{'submit call (ms)':<36}{submitted * 1000:>12.1f}   (the client's first call: cold)")
    print(f"{'dispatcher: admission per job (ms)':<36}{reserve_ms:>12.3f}   ({stats.get('stat_jobs')} jobs dispatched)")
    print(f"{'dispatcher: reservation->sent (ms)':<36}{sent_ms:>12.3f}   (jobs reserved together are sent in turn)")
    print(f"{'dispatcher: one launch sent (ms)':<36}{send_ms:>12.3f}   (record the attempt, sign, publish)")
    for host, count in sorted(hosts.items()):
        print(f"{'share of ' + str(host):<36}{count:>12}{'':>12}{(count - even) / even:>+8.0%}")
    print(f"{'every host within +-15% of even':<36}{'yes' if spread_ok else 'NO':>12}")
    print(f"{'lost (no succeeded attempt)':<36}{lost:>12}")
    print(f"{'run twice':<36}{twice:>12}")
    print(f"{f'{args.submit:,}-job array submit (ms)':<36}{big_submit * 1000:>12.1f}   ({pending} pending after it)")
    return 0 if lost == 0 and twice == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
