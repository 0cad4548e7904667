"""Which Redis commands one ``corral run true`` costs, by source.

    .venv/bin/python bench/redis_commands.py [--runs 5] [--runtime fake|docker]

Starts a private stack (``DevStack``: a redis-server child and one host worker with beat), runs one
warm-up launch, then watches Redis with ``MONITOR`` while it runs ``--runs`` launches through the
same calls as ``corral run`` (place, the chain, wait for every step, follow to EOF, exit status,
cleanup), and for as long again with nothing running (the background: heartbeats, beat, the
dispatcher, the consumers' polling). Each command is put in a bucket by its database, its name and
its key (the Celery broker and its events, the result backend, corral's state keys by kind); commands
run inside a Lua script are counted apart from the script call itself (``EVALSHA``: one round trip).
It prints per-launch counts, launch minus background, for each bucket, and which process sent them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import psutil  # type: ignore[import-untyped]
import redis

from corral.client.client import Client
from corral.client.devstack import DevStack
from corral.fleet.job import JobSpec
from corral.settings import load_settings

IMAGE = "corral/busybox:latest"
DBS = {0: "broker", 1: "results", 2: "beat", 3: "state"}

_STATE_KINDS = (
    ("session:", "session"),
    ("sessions", "session index"),
    ("live:", "live set"),
    ("process:", "process"),
    ("idem:", "idempotency"),
    ("journal:", "journal"),
    ("hostjournal:", "journal"),
    ("host:", "host heartbeat"),
    ("hosts", "host heartbeat"),
    ("ticket", "tickets"),
    ("redbeat", "beat"),
)


def bucket(db: int, command: str, args: list[str]) -> str:
    """The source of one command: ``area / what``."""
    key = args[0] if args else ""
    area = DBS.get(db, f"db{db}")
    if command in ("EVALSHA", "EVAL"):
        key = args[2] if len(args) > 2 else ""
    if db == 0:
        if command == "PUBLISH" and "celeryev" in key:
            return "broker / events PUBLISH"
        if command == "PUBLISH":
            return f"broker / PUBLISH {key.split('.')[-1] if 'pidbox' in key else key[:30]}"
        if command == "SMEMBERS" and key.startswith("_kombu.binding"):
            return "broker / publish: SMEMBERS binding"
        if command in ("LPUSH", "RPUSH"):
            return "broker / publish: LPUSH"
        if command in ("BRPOP", "BRPOPLPUSH"):
            return "broker / consume: BRPOP"
        if "unacked" in key or command in ("MULTI", "EXEC"):
            return f"broker / unacked {command}"
        return f"broker / {command} {key[:40]}"
    if db == 1:
        if key.startswith("celery-task-meta-"):
            return f"results / {command} task-meta"
        return f"results / {command}"
    if db == 3 or key.startswith("corral:"):
        name = key.removeprefix("corral:")
        kind = next((label for prefix, label in _STATE_KINDS if name.startswith(prefix)), name.split(":")[0] or "?")
        return f"state / {kind} {command}"
    return f"{area} / {command}"


class Monitor:
    """Every command Redis runs, from one ``MONITOR`` connection (admin role)."""

    _line = re.compile(r"^(?P<ts>[\d.]+) \[(?P<db>\d+) (?P<client>[^\]]+)\] (?P<rest>.*)$")

    def __init__(self, url: str) -> None:
        self.url = url
        self.counts: Counter[tuple[str, str]] = Counter()
        self.lua: Counter[str] = Counter()
        self.trips = 0
        self.in_multi: set[str] = set()
        self.recording = False
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        time.sleep(0.5)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url)
        with client.monitor() as monitor:  # type: ignore[no-untyped-call]
            for item in monitor.listen():
                if self.stop:
                    return
                if not self.recording:
                    continue
                self._record(item)

    def _record(self, item: dict[str, Any]) -> None:
        parts = _split(item["command"])
        if not parts:
            return
        command, args = parts[0].upper(), parts[1:]
        db = int(item.get("db", 0))
        client = str(item.get("client_address", "")) + ":" + str(item.get("client_port", ""))
        if item.get("client_type") == "lua" or "lua" in client:
            self.lua[bucket(db, command, args)] += 1
            return
        self.counts[(bucket(db, command, args), client)] += 1
        # A MULTI ... EXEC block is one round trip (redis-py sends a transaction pipeline at once).
        if command == "MULTI":
            self.in_multi.add(client)
        elif command == "EXEC":
            self.in_multi.discard(client)
            self.trips += 1
        elif client not in self.in_multi:
            self.trips += 1

    def take(self) -> tuple[Counter[tuple[str, str]], Counter[str], int]:
        counts, lua, trips = self.counts, self.lua, self.trips
        self.counts, self.lua, self.trips = Counter(), Counter(), 0
        return counts, lua, trips


def _split(command: str) -> list[str]:
    """redis-py's MONITOR command text: the arguments joined by spaces (only the first few matter here)."""
    return command.split(" ", 4)


def owners() -> dict[str, str]:
    """local port -> the process holding that connection (``ss -tnp``)."""
    out = subprocess.run(["ss", "-Htnp"], capture_output=True, text=True, check=False).stdout
    found: dict[str, str] = {}
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 6:
            continue
        local = cols[3]
        match = re.search(r'\("([^"]+)",pid=(\d+)', line)
        if match:
            found[local.rsplit(":", 1)[-1]] = f"{match.group(1)}:{match.group(2)}"
    return found


def launch(client: Client, host: str, image: str) -> None:
    job = JobSpec(image=image, argv=["true"], memory_mb=64)
    handle = client.submit(job, host)
    client.wait(handle)
    stats = client.follow(handle)
    assert stats.exit_code == 0, stats
    client.cleanup(handle)


def role(pid_name: str, roots: dict[int, str]) -> str:
    try:
        pid = int(pid_name.rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return "?"
    return roots.get(pid, pid_name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument("--runtime", choices=("docker", "fake"), default="fake")
    args = parser.parse_args()
    os.environ.pop("CORRAL_REDIS__URL", None)
    os.environ["CORRAL_HOST__RUNTIME"] = args.runtime
    load_settings.cache_clear()
    stack = DevStack("rcount")
    stack.start()
    try:
        admin = stack.redis_settings("admin")
        client = Client()
        launch(client, "rcount", args.image)  # warm-up: imports, connections, script loads
        monitor = Monitor(admin.redis_url(0))
        monitor.start()
        info = redis.Redis.from_url(admin.redis_url(0))
        before = int(info.info("stats")["total_commands_processed"])
        monitor.recording = True
        began = time.monotonic()
        for _ in range(args.runs):
            launch(client, "rcount", args.image)
        busy_s = time.monotonic() - began
        time.sleep(0.3)
        monitor.recording = False
        total = int(info.info("stats")["total_commands_processed"]) - before - 1
        launched, launched_lua, trips = monitor.take()
        monitor.recording = True
        time.sleep(busy_s)  # the background for as long
        monitor.recording = False
        idle, idle_lua, idle_trips = monitor.take()
        monitor.stop = True
        info.ping()
        procs = owners()
        worker = stack.worker_pid or 0
        roots = {worker: "worker main", os.getpid(): "client"}
        for child in psutil.Process(worker).children(recursive=True):
            title = " ".join(child.cmdline())
            roots[child.pid] = (
                "reads lane (threads)"
                if "corral-reads" in title
                else "lifecycle pool (prefork children)"
                if "ForkPoolWorker" in title
                else "worker child: " + title[:30]
            )
        client.close()
    finally:
        stack.stop()

    n = args.runs

    def per(counter: Counter[str], other: Counter[str]) -> dict[str, float]:
        keys = set(counter) | set(other)
        return {k: (counter[k] - other[k]) / n for k in keys}

    by_bucket: Counter[str] = Counter()
    by_proc: Counter[str] = Counter()
    for (name, client_addr), count in launched.items():
        by_bucket[name] += count
        by_proc[role(procs.get(client_addr.rsplit(":", 1)[-1], "?"), roots)] += count
    idle_bucket: Counter[str] = Counter()
    idle_proc: Counter[str] = Counter()
    for (name, client_addr), count in idle.items():
        idle_bucket[name] += count
        idle_proc[role(procs.get(client_addr.rsplit(":", 1)[-1], "?"), roots)] += count
    rows = per(by_bucket, idle_bucket)
    lua_rows = per(launched_lua, idle_lua)
    calls = sum(by_bucket.values()) / n
    inner = sum(launched_lua.values()) / n
    idle_calls = sum(idle_bucket.values()) / n
    each = busy_s / n * 1000
    print(f"\nRedis commands per `corral run true` ({args.runtime} runtime, {n} launches, {each:.0f} ms each)")
    print(f"INFO total_commands_processed per launch: {total / n:.0f} (sent {calls:.0f} + inside Lua {inner:.0f})")
    print(f"round trips per launch (a MULTI..EXEC block counts once): {trips / n:.0f}; idle {idle_trips / n:.0f}")
    print(f"background (nothing running, same duration) per launch: {idle_calls:.0f} commands\n")
    print(f"{'source':<48}{'launch':>8}{'idle':>7}{'net':>8}")
    for name in sorted(rows, key=lambda k: (k.split(" / ")[0], -rows[k])):
        print(f"{name:<48}{by_bucket[name] / n:8.1f}{idle_bucket[name] / n:7.1f}{rows[name]:8.1f}")
    print(f"{'commands sent':<48}{calls:8.1f}{idle_calls:7.1f}{calls - idle_calls:8.1f}")
    print("\ninside Lua scripts (not round trips)")
    for name in sorted(lua_rows, key=lambda k: -lua_rows[k]):
        print(f"{name:<48}{launched_lua[name] / n:8.1f}{idle_lua[name] / n:7.1f}{lua_rows[name]:8.1f}")
    print("\ncommands sent, by process")
    for name in sorted(set(by_proc) | set(idle_proc), key=lambda k: -by_proc[k]):
        print(
            f"{name:<48}{by_proc[name] / n:8.1f}{idle_proc[name] / n:7.1f}{(by_proc[name] - idle_proc[name]) / n:8.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
