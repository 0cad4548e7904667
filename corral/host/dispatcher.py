"""The batch dispatcher and the per-host reaper: what moves a batch's jobs from pending to done.

``Dispatcher.tick`` (the ``corral.dispatch`` fleet task, woken by a submission, by a finished job and
by beat, one at a time under a Redis lock) goes over the active batches: a batch past its deadline is
cancelled; the attempts of a host whose heartbeat expired end as ``host_lost``; each host with running
attempts gets a reap request; then pending indices are placed one by one (admission: filter, score,
atomic reservation), and only a successful reservation sends that job's launch, signed by this worker
and carrying the batch's verified caller. A batch never pushes more than its throttle (and what the
fleet has room for) into host queues: a long-waiting Redis message would be redelivered after the
visibility timeout. A job that fits nowhere stops the batch's dispatch with the reason recorded
(``corral batch status`` shows it); one larger than every host fails as ``unplaceable``.

``Reaper.reap`` (``corral.batch_reap`` on a host's queue) looks at the attempts running on that host
through the local coordinator: an exited process gets its outcome, a bounded output tail and its
cleanup; a launch that failed before the process started (its error cleanup ran) ends as
``start_failed``; a cancelled batch's running processes are terminated. Each end updates the batch's
counters atomically (``batch.lua``) and decides a retry by the batch's rules.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from corral.contract import lifecycle
from corral.contract.errors import AgentError
from corral.contract.models import (
    CleanupRequest,
    ExecutionEnvironment,
    IsolationRequirement,
    ProcessIoRequest,
    ProcessSignalRequest,
    ProcessState,
    ProcessStatsRequest,
)
from corral.contract.operations import Operation
from corral.contract.refs import process_ref_for
from corral.contract.vocabulary import ProcessIoStream, ProcessSignal
from corral.fleet.admission import Admission, Demand, Placed
from corral.fleet.batch import TAIL_BYTES, Batch, BatchStore, attempt_env_id, parse_env_id, should_retry
from corral.fleet.job import JobSpec
from corral.fleet.placement import filter_hosts, host_statuses
from corral.host.coordinator import Coordinator
from corral.host.effects import Clock
from corral.state.store import Store
from corral.trust.identity import Caller

log = logging.getLogger("corral.host.dispatcher")

Outcome = Literal["succeeded", "failed", "cancelled", "retry"]
HOST_LOST_ATTEMPTS = 3
"""Attempts an index gets when its hosts are lost under it, whatever its own budget (at least)."""
START_GRACE_MS = 300_000
"""An attempt whose session never appeared this long after its chain was sent is ``lost``."""


def classify(exit_code: int | None, reason: str) -> Literal["succeeded", "failed"]:
    return "succeeded" if reason == "exit" and exit_code == 0 else "failed"


def decide(batch: Batch, exit_code: int | None, reason: str, attempt: int, now_ms: int) -> Outcome:
    """What an ended attempt means for its index: done, failed for good, or retried."""
    if batch.state != "active":
        return "cancelled" if classify(exit_code, reason) == "failed" else "succeeded"
    if classify(exit_code, reason) == "succeeded":
        return "succeeded"
    deadline = batch.deadline_ms
    if deadline is not None and now_ms >= deadline:
        return "failed"
    if reason == "host_lost" and attempt < max(batch.max_attempts, HOST_LOST_ATTEMPTS):
        return "retry"  # not the job's fault: retried on another host without a rule
    return "retry" if should_retry(batch.rules, exit_code, reason, attempt, batch.max_attempts) else "failed"


def ended_record(
    previous: dict[str, Any], exit_code: int | None, reason: str, outcome: Outcome, now_ms: int, **extra: Any
) -> dict[str, Any]:
    state = "queued" if outcome == "retry" else outcome
    record = {**previous, "state": state, "exit_code": exit_code, "reason": reason, "ended_ms": now_ms, **extra}
    history = list(previous.get("history", []))[-9:]
    history.append({k: record.get(k) for k in ("attempt", "host", "exit_code", "reason", "started_ms", "ended_ms")})
    record["history"] = history
    return record


@dataclass
class Dispatcher:
    store: Store
    batches: BatchStore
    admission: Admission
    clock: Clock
    send_job: Callable[[JobSpec, str, str], None]
    """(job, host, caller identity): send the prepare-to-start chain, signed by this worker."""
    send_reap: Callable[[str], None]
    """host: ask its worker to reap the batch attempts it runs."""
    max_per_tick: int = 200

    def tick(self) -> dict[str, int]:
        sent = 0
        for batch_id in self.batches.active():
            batch = self.batches.batch(batch_id)
            if batch is None:
                self.batches.r.srem("corral:batches:active", batch_id)
                continue
            try:
                sent += self.step(batch)
            except AgentError as exc:  # one batch's trouble never stops the others
                log.warning("dispatching batch %s: %s", batch_id, exc)
        return {"sent": sent}

    def step(self, batch: Batch) -> int:
        now = self.clock.now_ms()
        if batch.state == "active" and batch.deadline_ms is not None and now >= batch.deadline_ms:
            self.batches.cancel(batch, "deadline", now)
            batch = self.batches.batch(batch.batch_id) or batch
        running = self.batches.running(batch.batch_id)
        hosts: set[str] = set()
        for env_id, index in running.items():
            record = self.batches.job(batch.batch_id, index) or {}
            host = str(record.get("host", ""))
            if host and self.store.host(host) is None:
                self._host_lost(batch, env_id, index, host, record, now)
            elif host:
                hosts.add(host)
        for host in sorted(hosts):
            self.send_reap(host)
        if batch.state != "active":
            return 0
        return self._dispatch(batch, len(running), now)

    def _host_lost(self, batch: Batch, env_id: str, index: int, host: str, record: dict[str, Any], now: int) -> None:
        """The host's heartbeat expired with the attempt on it: it counts as ``host_lost`` (retried on
        another host). Its session is marked ``repair_needed``, so when the host comes back its
        reconciler reclaims whatever still runs there instead of keeping it as owned."""
        attempt = int(record.get("attempt", 1))
        outcome = decide(batch, None, "host_lost", attempt - int(record.get("budget_from") or 0), now)
        done = ended_record(record, None, "host_lost", outcome, now)
        if self.batches.finish(batch, index, env_id, host, outcome, done, now) == -1:
            return
        self.store.advance(env_id, lifecycle.HOST_LOST, now, lost="host_lost")
        self.admission.release(env_id)

    def _dispatch(self, batch: Batch, running: int, now: int) -> int:
        budget = self.max_per_tick
        if batch.throttle is not None:
            budget = min(budget, batch.throttle - running)
        statuses = host_statuses(self.store)
        todo: list[_Pending] = []
        for index in self.batches.pending(batch.batch_id, max(budget, 0)):
            previous = self.batches.job(batch.batch_id, index) or {}
            attempt = int(previous.get("attempt", 0)) + 1
            env_id = attempt_env_id(batch.batch_id, index, attempt)
            extra = {
                "CORRAL_BATCH_ID": batch.batch_id,
                "CORRAL_ARRAY_INDEX": str(index),
                "CORRAL_ATTEMPT": str(attempt),
            }
            job = self.batches.template(batch, index).job(env_id, extra)
            todo.append(_Pending(index, previous, attempt, env_id, job, job.environment().spec.requirement))
        sent = 0
        waiting = ""
        """Why the next pending job could not be placed (``corral batch status`` shows it)."""
        reserve_s = sent_s = send_s = 0.0
        at = 0
        while at < len(todo):
            # A run of jobs with the same requirement: filtered once, decided in one admission call.
            run = [todo[at]]
            while at + len(run) < len(todo) and todo[at + len(run)].requirement == run[0].requirement:
                run.append(todo[at + len(run)])
            at += len(run)
            try:
                found = filter_hosts(statuses, run[0].requirement)
            except AgentError as exc:  # no live host matches its requirement (or none is up): it waits
                waiting = exc.message
                break
            begin = time.perf_counter()
            decisions = self.admission.reserve_many(
                [(p.env_id, Demand.of(p.job.cpus, p.job.memory_mb)) for p in run],
                found.hosts,
                now,
                batch.placement,
                unmatched=len(found.unmatched),
                preferred=found.preferred,
            )
            reserved = time.perf_counter()
            reserve_s += reserved - begin
            for pending, decision in zip(run, decisions, strict=False):
                if not isinstance(decision, Placed):
                    if decision.unplaceable:
                        record = {**pending.previous, "index": pending.index, "attempt": pending.attempt, "host": None}
                        failed = ended_record(record, None, "unplaceable", "failed", now, why=decision.reason)
                        self.batches.unplaceable(batch, pending.index, failed, now)
                        continue
                    waiting = decision.reason
                    break
                begin = time.perf_counter()
                if self._start(batch, pending, decision.host, now):
                    sent += 1
                    sent_s += time.perf_counter() - reserved
                    send_s += time.perf_counter() - begin
            if waiting or len(decisions) < len(run):
                break
        if sent:
            self.batches.record_dispatch(
                batch.batch_id, sent, int(reserve_s * 1e6), int(sent_s * 1e6), int(send_s * 1e6)
            )
        if waiting != batch.raw.get("reason", ""):
            self.batches.set_reason(batch.batch_id, waiting)
        return sent

    def _start(self, batch: Batch, pending: _Pending, host: str, now: int) -> bool:
        """Record the attempt as running on ``host`` and send its chain; False (and the reservation
        returned) when the index was cancelled meanwhile or another dispatcher took it."""
        record = {
            **pending.previous,
            "index": pending.index,
            "state": "running",
            "attempt": pending.attempt,
            "host": host,
            "environment_id": pending.env_id,
            "started_ms": now,
            "exit_code": None,
            "reason": None,
        }
        if not self.batches.start(batch.batch_id, pending.index, pending.env_id, host, record):
            self.admission.release(pending.env_id)
            return False
        self.send_job(pending.job, host, batch.caller)
        return True


@dataclass(frozen=True)
class _Pending:
    """A pending index about to be placed: its next attempt's job."""

    index: int
    previous: dict[str, Any]
    attempt: int
    env_id: str
    job: JobSpec
    requirement: IsolationRequirement | None


@dataclass
class Reaper:
    coordinator: Coordinator
    batches: BatchStore
    operator: Caller
    """This worker's own (component) caller: it reaps on behalf of every tenant of its host."""
    wake: Callable[[], None]

    def reap(self) -> dict[str, int]:
        c = self.coordinator
        ended = 0
        for env_id, batch_id in self.batches.running_on(c.host_id).items():
            parsed = parse_env_id(env_id)
            batch = self.batches.batch(batch_id)
            if parsed is None or batch is None:
                continue
            _, index, attempt = parsed
            try:
                ended += self._one(batch, env_id, index, attempt)
            except AgentError as exc:
                log.warning("reaping %s: %s", env_id, exc)
        if ended:
            self.wake()
        return {"ended": ended}

    def _one(self, batch: Batch, env_id: str, index: int, attempt: int) -> int:
        c = self.coordinator
        now = c.clock.now_ms()
        record = self.batches.job(batch.batch_id, index) or {}
        session = c.store.session(env_id)
        state = session.get("state", "")
        if not session:
            if now - int(record.get("started_ms") or now) > START_GRACE_MS:
                return self._end(batch, env_id, index, attempt, record, None, "lost", now)
            return 0
        if state in ("cleaned", "repair_needed"):
            # Cleaned before this reaper saw it end: the chain failed (its error cleanup ran), or the
            # sandbox was removed by hand after it started.
            started = c.store.step_result(env_id, Operation.start_process) is not None
            return self._end(batch, env_id, index, attempt, record, None, "lost" if started else "start_failed", now)
        if state not in ("running", "exited", "detached"):
            return 0  # still preparing, or being cleaned up
        process_ref = process_ref_for(env_id)
        stats = c.collect_stats(ProcessStatsRequest(process_ref=process_ref), caller=self.operator)
        if stats.state is not ProcessState.exited:
            if batch.state != "active":  # cancelled (or past its deadline): terminate, reaped next time
                c.signal_process(
                    ProcessSignalRequest(process_ref=process_ref, signal=ProcessSignal.terminate, grace_ms=5000),
                    caller=self.operator,
                )
            return 0
        tails = {
            stream.value: self._tail(process_ref, stream) for stream in (ProcessIoStream.stdout, ProcessIoStream.stderr)
        }
        reason = stats.reason.value if stats.reason else "exit"
        env = ExecutionEnvironment.model_validate_json(session["environment"])
        try:
            c.cleanup(CleanupRequest(environment=env, cleanup_plan_ref=f"batch-{env_id}"), caller=self.operator)
        except AgentError as exc:
            log.warning("cleanup of %s failed: %s", env_id, exc)
        return self._end(batch, env_id, index, attempt, record, stats.exit_code, reason, now, tails)

    def _tail(self, process_ref: str, stream: ProcessIoStream) -> str:
        """The last ``TAIL_BYTES`` of a stream, read host-locally (no output leaves the host otherwise)."""
        tail = b""
        cursor = 0
        for _ in range(10_000):
            frame = self.coordinator.stream_io(
                ProcessIoRequest(process_ref=process_ref, stream=stream, cursor=cursor, max_bytes=1 << 20),
                caller=self.operator,
            )
            if frame.content_b64:
                tail = (tail + base64.b64decode(frame.content_b64))[-TAIL_BYTES:]
            cursor = frame.cursor
            if frame.eof or frame.byte_count == 0:
                break
        return tail.decode("utf-8", errors="replace")

    def _end(
        self,
        batch: Batch,
        env_id: str,
        index: int,
        attempt: int,
        record: dict[str, Any],
        exit_code: int | None,
        reason: str,
        now: int,
        tails: dict[str, str] | None = None,
    ) -> int:
        outcome = decide(batch, exit_code, reason, attempt - int(record.get("budget_from") or 0), now)
        extra = {"stdout_tail": tails["stdout"], "stderr_tail": tails["stderr"]} if tails else {}
        done = ended_record(record, exit_code, reason, outcome, now, **extra)
        finished = self.batches.finish(batch, index, env_id, self.coordinator.host_id, outcome, done, now)
        self.coordinator.admission.release(env_id)
        return 0 if finished == -1 else 1
