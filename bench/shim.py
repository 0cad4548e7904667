"""The per-sandbox I/O shim's cost, against raw baselines measured in the same run.

    .venv/bin/python bench/shim.py [--n 20] [--idle-s 10]

Drives the Docker runtime directly (no Celery, no Redis), on this host's engine, and prints:

* memory: RSS and PSS (``/proc/<pid>/smaps_rollup``) per shim of N ``sleep 60`` sandboxes, against
  N bare ``python -c 'import time; time.sleep(60)'`` processes alive at the same time, and the PSS
  of the host's shim template (``corral.io.template``, which forked them; once per host);
* idle CPU: the N shims' utime+stime over ``--idle-s`` seconds (``/proc/<pid>/stat``), in cores;
* start: ``start_process`` (shim launch, attach, start, started marker) against docker-py's raw
  ``container.start()`` of an identical created container (median and p90 over N);
* the cgroup each shim was accounted in.

Keep N small on a 2-core machine: the figures are per sandbox.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import docker

from corral.contract.operations import Operation
from corral.contract.refs import slug
from corral.fleet.job import JobSpec
from corral.runtimes.docker.resources import session_paths, shim_pid
from corral.runtimes.docker.runtime import DockerRuntime
from corral.settings import HostSettings

IMAGE = os.environ.get("CORRAL_TEST_IMAGE", "corral/busybox:latest")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB from ``smaps_rollup``."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


def cgroup_of(pid: int) -> str:
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    wanted = [line.split(":", 2) for line in lines]
    keep = ("cpu", "cpuacct", "cpu,cpuacct", "memory", "pids", "")
    return ", ".join(f"{c or 'v2'}:{p}" for _, c, p in wanted if c in keep and p != "/")


def mean_mib(values: list[int]) -> float:
    return statistics.mean(values) / 1024 if values else float("nan")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


@contextmanager
def bare_sleepers(n: int) -> Iterator[list[int]]:
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def start_one(rt: DockerRuntime, host_id: str) -> tuple[float, str]:
    """The prepare chain of one ``sleep 60`` job (``JobSpec.requests``, as the Celery chain sends
    it), then ``start_process`` timed alone; (milliseconds, environment id)."""
    job = JobSpec(image=IMAGE, argv=["sleep", "60"], memory_mb=64)
    elapsed = 0.0
    for op, request in job.requests(host_id):
        began = time.perf_counter()
        getattr(rt, op.value)(request)
        if op is Operation.start_process:
            elapsed = (time.perf_counter() - began) * 1000
    return elapsed, job.environment().environment_id


def raw_starts(client: Any, n: int, label: str) -> list[float]:
    """docker-py ``container.start()`` alone, of containers created like the runtime's (no network,
    read-only root, all capabilities dropped)."""
    out: list[float] = []
    for _ in range(n):
        c = client.containers.create(
            IMAGE,
            ["sleep", "60"],
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            labels={"corral.bench": label},
        )
        began = time.perf_counter()
        c.start()
        out.append((time.perf_counter() - began) * 1000)
    return out


def helper_templates(state_root: str) -> list[int]:
    """The shim template(s) serving this run's host (``corral.io.template``, one per host)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"corral.io.template" in cmdline and state_root.encode() in cmdline:
                found.append(int(entry.name))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--idle-s", type=float, default=10.0)
    args = parser.parse_args()
    client = docker.from_env(timeout=60)
    client.images.get(IMAGE)
    label = f"shim-bench-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="corral-shim-bench-"))
    host = HostSettings(id=label, state_dir=str(tmp / "state"), secrets_root=f"/dev/shm/{label}")
    rt = DockerRuntime(label, host, client)
    shims: list[int] = []
    try:
        with bare_sleepers(args.n) as sleepers:
            bare = [memory_kib(pid) for pid in sleepers]
        raw = raw_starts(client, args.n, label)
        starts: list[float] = []
        for _ in range(args.n):
            ms, environment_id = start_one(rt, label)
            starts.append(ms)
            pid = shim_pid(session_paths(host, slug(environment_id)).spool)
            if pid is None:
                raise SystemExit("no live shim after start_process")
            shims.append(pid)
        time.sleep(1.0)  # let every shim settle into its idle wait
        mem = [memory_kib(pid) for pid in shims]
        before = {pid: cpu_ticks(pid) for pid in shims}
        time.sleep(args.idle_s)
        idle_cores = sum(cpu_ticks(pid) - before[pid] for pid in shims) / CLK_TCK / args.idle_s
        groups = sorted({cgroup_of(pid) for pid in shims})
        templates = helper_templates(str(tmp))
        template_mem = [memory_kib(pid) for pid in templates]
    finally:
        for pid in helper_templates(str(tmp)):
            with suppress(ProcessLookupError):
                os.kill(pid, 9)
        for c in client.containers.list(all=True, filters={"label": [f"corral.bench={label}"]}):
            c.remove(force=True)
        for c in client.containers.list(all=True, filters={"label": [f"corral.host={label}"]}):
            c.remove(force=True)
        for pid in shims:
            with suppress(ProcessLookupError):
                os.kill(pid, 9)
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(f"/dev/shm/{label}", ignore_errors=True)
    rss, pss = ([m[i] for m in mem] for i in (0, 1))
    bare_rss, bare_pss = ([m[i] for m in bare] for i in (0, 1))
    rows = [
        ("shim RSS per sandbox", f"{mean_mib(rss):.1f} MiB", f"{mean_mib(bare_rss):.1f} MiB"),
        ("shim PSS per sandbox", f"{mean_mib(pss):.1f} MiB", f"{mean_mib(bare_pss):.1f} MiB"),
        (
            "template PSS, once per host",
            f"{mean_mib([m[1] for m in template_mem]):.1f} MiB" if template_mem else "none",
            "-",
        ),
        (f"CPU of {args.n} idle shims over {args.idle_s:g} s", f"{idle_cores:.4f} cores", "-"),
        ("start_process p50", f"{statistics.median(starts):.0f} ms", f"{statistics.median(raw):.0f} ms"),
        ("start_process p90", f"{pct(starts, 0.9):.0f} ms", f"{pct(raw, 0.9):.0f} ms"),
    ]
    print(f"I/O shim, N={args.n} sandboxes of `sleep 60` ({IMAGE}); baselines measured in this run")
    print(f"{'figure':<36} {'corral':>14} {'baseline':>14}  ratio")
    for name, ours, base in rows:
        try:
            ratio = f"{float(ours.split()[0]) / float(base.split()[0]):.2f}x"
        except ValueError:
            ratio = ""
        print(f"{name:<36} {ours:>14} {base:>14}  {ratio}")
    print("baselines: bare `python -c 'import time; time.sleep(60)'` (memory), docker-py container.start() (start)")
    print("shim cgroups:", "; ".join(groups) or "(the launcher's own)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
