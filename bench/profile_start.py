"""Where one ``corral run true`` spends its time, step by step.

    .venv/bin/python bench/profile_start.py [--runs 3] [--image corral/busybox:latest]

Starts a private stack (``DevStack``: a redis-server child and one host worker), listens to the
Celery task events of every process (with the stack's admin role), runs ``true`` through the same
calls as ``corral run`` (``Client.run``: place, send the launch, wait for it, follow the output to
EOF, read the exit status, clean up) ``--runs`` times after one warm-up, and prints, for the last
run, one row per task in the order it was sent, and under the launch one row per chain step it ran:

    queue      task-sent -> task-received          publish, broker, the worker's fetch
    dispatch   task-received -> task-started       the pool handing the task to a process
    pre        task-started -> journal intent      parse, policy, idempotency begin, intent record
    adapter    journal intent -> journal result    the runtime (Docker) call itself
    post       journal result -> task-succeeded    idempotency finish, result dump and store, event
    total      task-sent -> task-succeeded

(tasks that journal nothing, such as reads and placement, show pre/adapter/post as one ``run`` span;
a launch step's ``pre`` runs from the previous step's result, or the task's start, to its intent),
then the client's own phases, the median over the runs of each task's total, and per launch the Redis
commands the stack ran and the CPU the worker and redis-server spent. Event timestamps are
each process's wall clock and journal timestamps are milliseconds: on one machine they compare, to
about a millisecond. Celery stamps task-sent after the publish returns, so a worker quick to receive
shows a small negative queue time. ``post`` ends at task-succeeded, which the worker's main process sends
once the pool process reported back.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from corral.client.client import Client
from corral.client.devstack import DevStack
from corral.contract.operations import CHAIN
from corral.fleet.job import JobSpec
from corral.settings import Settings, load_settings

IMAGE = "corral/busybox:latest"
BACKGROUND = {"corral.sweep_tickets", "corral.dispatch", "corral.reconcile_fleet", "corral.reconcile"}


@dataclass
class TaskTimes:
    task_id: str
    name: str = ""
    events: dict[str, float] = field(default_factory=dict)


class EventLog:
    """Every task event of the stack, captured by a receiver thread."""

    def __init__(self, settings: Settings) -> None:
        self.app = Celery("corral-profile", broker=settings.redis_url(settings.redis.broker_db), set_as_current=False)
        self.app.conf.broker_connection_retry_on_startup = True
        self.tasks: dict[str, TaskTimes] = {}
        self.lock = threading.Lock()
        self.receiver: Any = None
        self.thread = threading.Thread(target=self._run, name="profile-events", daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while self.receiver is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # subscribed before anything is sent

    def _on_event(self, event: dict[str, Any]) -> None:
        kind, task_id = str(event.get("type", "")), event.get("uuid")
        if not kind.startswith("task-") or not task_id:
            return
        with self.lock:
            times = self.tasks.setdefault(task_id, TaskTimes(task_id))
            times.name = event.get("name") or times.name
            times.events.setdefault(kind.removeprefix("task-"), float(event["timestamp"]))

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self._on_event})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True

    def between(self, start: float, end: float) -> list[TaskTimes]:
        with self.lock:
            found = [
                t for t in self.tasks.values() if start <= t.events.get("sent", t.events.get("received", 0)) <= end
            ]
        return sorted(found, key=lambda t: t.events.get("sent", t.events.get("received", 0)))


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants (the worker's pool and reads lane; the I/O shims it forks too)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children[int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def cpu_ms(pids: list[int]) -> float:
    """User + system CPU of ``pids`` so far (processes that exited since are not counted)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks * 1000 / os.sysconf("SC_CLK_TCK")


def ms(a: float | None, b: float | None) -> str:
    return f"{(b - a) * 1000:7.1f}" if a is not None and b is not None else "      -"


def journal_spans(client: Client, environment_id: str) -> dict[str, list[tuple[float, float]]]:
    """(intent, result) wall times in seconds of each operation's journaled effects."""
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    intents: dict[str, float] = {}
    for record in client.services.journal.read(environment_id):
        fields = record.fields
        ts = int(fields.get("ts_ms") or record.record_id.split("-")[0]) / 1000
        # ts_ms is when the effect began (one base for intent and result); the stream id is when it was written.
        written = int(record.record_id.split("-")[0]) / 1000
        if record.kind == "intent":
            intents[fields.get("key", "")] = written
        elif record.kind == "result" and fields.get("key", "") in intents:
            spans[fields.get("op", "")].append((intents.pop(fields.get("key", "")), written))
        del ts
    return spans


def launch_rows(
    e: dict[str, float], spans: dict[str, list[tuple[float, float]]], done: float | None
) -> list[list[str]]:
    """The launch's row, then one row per chain step it ran: ``pre`` from the previous step's result
    (or the task's start) to this step's intent, ``adapter`` its intent to its result; the launch's
    ``post`` is from the last step's result to task-succeeded."""
    steps: list[list[str]] = []
    previous = e.get("started")
    for op in CHAIN:
        span = spans[op].pop(0) if spans.get(op) else None
        if span is None:
            continue
        steps.append([f"  {op}", "", "", ms(previous, span[0]), ms(span[0], span[1]), "", ""])
        previous = span[1]
    head = ["launch", ms(e.get("sent"), e.get("received")), ms(e.get("received"), e.get("started")), "", ""]
    return [[*head, ms(previous, done), ms(e.get("sent"), done)], *steps]


def profile_once(client: Client, events: EventLog, host: str, image: str) -> tuple[dict[str, float], list[list[str]]]:
    job = JobSpec(image=image, argv=["true"], memory_mb=64)
    marks: dict[str, float] = {"begin": time.time()}
    target = client.place(job, host)
    marks["placed"] = time.time()
    handle = client.send_job(job, target)
    marks["chain sent"] = time.time()
    client.wait(handle)
    marks["started"] = time.time()
    stats = client.follow(handle)
    marks["exit seen"] = time.time()
    assert stats.exit_code == 0, stats
    client.cleanup(handle)
    marks["cleaned"] = time.time()
    time.sleep(0.3)  # the last events arrive
    spans = journal_spans(client, job.environment_id)
    rows: list[list[str]] = []
    for task in events.between(marks["begin"] - 0.01, marks["cleaned"]):
        if task.name in BACKGROUND:
            continue
        e = task.events
        op = task.name.removeprefix("corral.")
        done = e.get("succeeded", e.get("failed"))
        if op == "launch":
            rows += launch_rows(e, spans, done)
            continue
        span = spans[op].pop(0) if spans.get(op) else None
        if span is not None:
            pre, adapter, post = ms(e.get("started"), span[0]), ms(span[0], span[1]), ms(span[1], done)
        else:
            pre, adapter, post = ms(e.get("started"), done), "", ""
        rows.append(
            [
                op,
                ms(e.get("sent"), e.get("received")),
                ms(e.get("received"), e.get("started")),
                pre,
                adapter,
                post,
                ms(e.get("sent"), done),
            ]
        )
    phases = {
        "place (fleet task)": marks["placed"] - marks["begin"],
        "publish the launch": marks["chain sent"] - marks["placed"],
        "wait for the launch (8 steps)": marks["started"] - marks["chain sent"],
        "follow to EOF + exit status": marks["exit seen"] - marks["started"],
        "cleanup": marks["cleaned"] - marks["exit seen"],
        "total": marks["cleaned"] - marks["begin"],
    }
    return phases, rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--image", default=IMAGE)
    parser.add_argument(
        "--runtime", choices=("docker", "fake"), default="docker", help="fake: the chain's own cost, no engine"
    )
    args = parser.parse_args()
    os.environ.pop("CORRAL_REDIS__URL", None)
    os.environ["CORRAL_HOST__RUNTIME"] = args.runtime
    load_settings.cache_clear()
    stack = DevStack("profile")
    stack.start()
    events: EventLog | None = None
    try:
        admin = stack.redis_settings("admin")
        events = EventLog(admin)
        events.start()
        client = Client()
        profile_once(client, events, "profile", args.image)  # warm-up: imports, image cache, connections
        history: dict[str, list[float]] = defaultdict(list)
        phase_history: dict[str, list[float]] = defaultdict(list)
        rows: list[list[str]] = []
        broker = redis.Redis.from_url(admin.redis_url(admin.redis.broker_db))
        redis_pid = next(c.proc.pid for c in stack.children if c.name == "redis" and c.proc is not None)
        worker = process_tree(stack.worker_pid or 0)
        commands, cpu = broker.info("stats")["total_commands_processed"], (cpu_ms(worker), cpu_ms([redis_pid]))
        for _ in range(args.runs):
            phases, rows = profile_once(client, events, "profile", args.image)
            for name, value in phases.items():
                phase_history[name].append(value * 1000)
            for row in rows:
                if row[6].strip():  # a task (a launch's steps have no total of their own)
                    history[row[0]].append(float(row[6]) if row[6].strip() != "-" else 0.0)
        commands = broker.info("stats")["total_commands_processed"] - commands - 1
        cpu = (cpu_ms(worker) - cpu[0], cpu_ms([redis_pid]) - cpu[1])
        broker.close()
        client.close()
    finally:
        if events is not None:
            events.stop()
        stack.stop()

    print(f"\none `corral run true`, last of {args.runs} runs ({args.runtime} runtime; ms; {os.cpu_count()} cpus)\n")
    header = ["task", "queue", "dispatch", "pre", "adapter", "post", "total"]
    print(f"{header[0]:<20}" + "".join(f"{h:>9}" for h in header[1:]))
    for row in rows:
        print(f"{row[0]:<20}" + "".join(f"{v:>9}" for v in row[1:]))
    print("\nclient phases, median of the runs (ms)")
    for name, values in phase_history.items():
        print(f"  {name:<30}{statistics.median(values):8.1f}")
    print("\ntask totals (sent -> succeeded), median of the runs (ms)")
    for name, values in history.items():
        print(f"  {name:<30}{statistics.median(values):8.1f}")
    print(
        f"\nper launch: {commands / args.runs:.0f} Redis commands; CPU {cpu[0] / args.runs:.0f} ms in the worker "
        f"(main, pool, reads lane), {cpu[1] / args.runs:.0f} ms in redis-server"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
