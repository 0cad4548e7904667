"""The Python client: send contract operations to a host's queue by task name, and run jobs.

It never imports ``tasks`` or ``workers``: it sends ``corral.<operation>`` by name with a
producer-only Celery app configured exactly like the workers (same router, same serializer).
Read-only views (sessions, tickets, journal, hosts) come straight from the state database, except
the tenant views (``view_sessions``, ``view_tickets``, ``view_journal``: what ``corral ps``,
``tickets`` and ``journal`` show), which a fleet worker answers for the verified caller.

    client = Client()
    outcome = client.run(JobSpec(image="corral/busybox:latest", argv=["echo", "hi"]))
    outcome.exit_code  # 0
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from pydantic import BaseModel

from corral.celeryconf import (
    FLEET_QUEUE,
    QuietAMQP,
    celery_config,
    fleet_queue_for,
    queue_for,
    task_name,
)
from corral.contract.errors import (
    AgentError,
    HostConfigurationNeeded,
    InvalidRequest,
    NotFound,
    TimeoutFailure,
)
from corral.contract.models import (
    CleanupRequest,
    CleanupResult,
    DetachTransferRequest,
    DetachTransferResult,
    ExecutionEnvironment,
    ProcessIoFrame,
    ProcessIoRequest,
    ProcessSignalRequest,
    ProcessSignalResult,
    ProcessStartResult,
    ProcessState,
    ProcessStatsRequest,
    ProcessStatsSnapshot,
    ReclaimRequest,
    ReclaimResult,
    dump,
)
from corral.contract.operations import Operation
from corral.contract.refs import check_ref, cleanup_plan_ref, process_ref_for
from corral.contract.vocabulary import ProcessIoStream, ProcessSignal
from corral.contract.wire import from_wire
from corral.fleet.admission import Admission, Capacity, Mode
from corral.fleet.batch import BatchRef, BatchSubmitRequest, JobTemplate, parse_array, parse_retry, template_of
from corral.fleet.job import JobSpec, _build
from corral.fleet.placement import HostStatus, PlaceRequest, PlaceResult, host_statuses
from corral.fleet.reports import ReconcileReport
from corral.settings import Settings, load_settings
from corral.state.journal import JournalRecord
from corral.state.services import Services, state_services
from corral.trust import signing
from corral.trust.identity import CALLER_KWARG

M = TypeVar("M", bound=BaseModel | str)
HostTask = Operation | Literal["reconcile", "launch"]
"""What a client sends to one host's queue: a contract operation, a job's launch, or the host's reconcile pass."""
LAUNCH: HostTask = "launch"
"""``corral.launch``: a job's prepare-to-start chain in one message, run step by step by its host."""
FOLLOW_WAIT_MS = 500
"""How long ``Client.follow`` lets the host hold a read for new output (``ProcessIoRequest.wait_ms``)."""


def checked_ref(value: str, what: str) -> str:
    try:
        return check_ref(value)
    except ValueError as exc:
        raise InvalidRequest(f"invalid {what}: {exc}") from None


def _as_agent_error(operation: str, exc: Exception) -> AgentError:
    """A failure Celery could not rebuild as one of our classes (a newer worker's subclass becomes a
    stand-in class): its ``args`` still hold the upstream ``AgentError`` document, so decode that;
    anything else is reported as itself."""
    document = exc.args[0] if len(exc.args) == 1 else None
    if isinstance(document, dict):
        try:
            return AgentError.from_wire(document)
        except ValueError:
            pass
    return AgentError(f"{operation} failed: {exc.__class__.__name__}: {exc}", retry="not_retryable")


@dataclass
class JobHandle:
    environment_id: str
    host: str
    process_ref: str
    launch_id: str = ""
    """The Celery task id of the job's ``corral.launch`` (its result is ``start_process``'s)."""


@dataclass(frozen=True)
class JobOutcome:
    environment_id: str
    host: str
    exit_code: int | None
    reason: str | None
    cleanup: str | None


class Client:
    def __init__(self, settings: Settings | None = None, services: Services | None = None) -> None:
        self.settings = settings or load_settings()
        self.services = services or state_services(self.settings)
        self.app = Celery("corral-client", set_as_current=False, amqp=QuietAMQP)
        self.app.conf.update(celery_config(self.settings))
        signing.register(self.settings)
        self.identity = signing.identity(self.settings)
        """Who this client signs as; every message carries it as ``caller`` (workers re-stamp it from the signature)."""
        self.timeout_s = self.settings.celery.task_timeout_s

    def close(self) -> None:
        self.app.close()

    # -- hosts and placement ---------------------------------------------------------------

    def hosts(self) -> list[HostStatus]:
        return host_statuses(self.services.store)

    def place(
        self,
        job: JobSpec,
        host: str | None = None,
        placement: Mode = "spread",
        on_queued: Callable[[str], None] | None = None,
        queue_timeout_s: float | None = None,
        poll_s: float = 0.5,
    ) -> str:
        """Reserve room for ``job`` through a fleet worker (``corral.place``: filter, score and reserve in
        one atomic Redis step) and return the host. While nothing fits, wait (``on_queued`` gets the
        reason each time it changes); a job larger than every live host is ``InvalidRequest``."""
        env = job.environment()
        request = PlaceRequest(
            environment_id=job.environment_id,
            requirement=env.spec.requirement,
            cpus=job.cpus,
            memory_mb=job.memory_mb,
            mode=placement,
            host=host,
        )
        deadline = None if queue_timeout_s is None else time.monotonic() + queue_timeout_s
        last = ""
        while True:
            result = self.app.send_task(
                task_name("place"), args=[dump(request)], kwargs={CALLER_KWARG: self.identity}, queue=FLEET_QUEUE
            )
            answer = PlaceResult.model_validate(self._get(result, "place"))
            if answer.status == "placed" and answer.host:
                return answer.host
            reason = answer.reason or "no host fits"
            if answer.unplaceable:
                raise InvalidRequest(f"job can never be placed: {reason}", context={"reason": reason[:200]})
            if on_queued is not None and reason != last:
                on_queued(reason)
            last = reason
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutFailure(f"job still queued after {queue_timeout_s:.0f} s: {reason}")
            time.sleep(poll_s)
            poll_s = min(poll_s * 1.5, 5.0)

    def usage(self, host_id: str) -> tuple[Capacity | None, Capacity]:
        """A host's published capacity (None when down) and what admission has allocated on it."""
        admission = Admission(self.services.store.r)
        return admission.capacity(host_id), admission.used(host_id)

    # -- one operation ---------------------------------------------------------------------

    def send(
        self, operation: HostTask, request: BaseModel | None, host: str, payload: dict[str, Any] | None = None
    ) -> AsyncResult:
        args = [dump(request)] if request is not None else [payload] if payload is not None else []
        name = task_name(operation)
        # Its host's lifecycle queue, or its reads queue for a cheap read (corral.celeryconf.lane_of).
        return self.app.send_task(name, args=args, kwargs=self._kwargs(host), queue=queue_for(name, args, host))

    def _kwargs(self, host: str) -> dict[str, Any]:
        if self.identity is None or not signing.signing_ready(self.settings):
            raise HostConfigurationNeeded(
                "this client has no signing key: set security.key_file and security.cert_file "
                "(CORRAL_SECURITY__KEY_FILE/CERT_FILE; `corral keys new NAME` makes a pair)"
            )
        return {"host": host, CALLER_KWARG: self.identity}

    def call(
        self,
        operation: HostTask,
        request: BaseModel | None,
        host: str,
        result_type: type[M],
        timeout: float | None = None,
        payload: dict[str, Any] | None = None,
    ) -> M:
        result = self.send(operation, request, host, payload)
        return from_wire(result_type, self._get(result, operation, timeout))

    def _get(self, result: AsyncResult, operation: str, timeout: float | None = None) -> Any:
        try:
            return result.get(timeout=timeout or self.timeout_s, propagate=True, disable_sync_subtasks=False)
        except AgentError:
            raise
        except (TimeoutError, CeleryTimeout):
            raise TimeoutFailure(
                f"{operation} did not answer within {timeout or self.timeout_s:.0f} s (is a worker serving that host?)",
                context={"operation": operation},
            ) from None
        except Exception as exc:  # a non-contract failure still reaches the caller typed
            raise _as_agent_error(operation, exc) from None
        finally:
            result.forget()

    # -- jobs ------------------------------------------------------------------------------

    def submit(
        self,
        job: JobSpec,
        host: str | None = None,
        placement: Mode = "spread",
        on_queued: Callable[[str], None] | None = None,
        queue_timeout_s: float | None = None,
    ) -> JobHandle:
        """Reserve a host (``place``), then send the job's launch to that host's queue. The reservation
        is a lease the host's ``prepare_session`` confirms."""
        self._kwargs("")  # no signing key: say so before placement
        return self.send_job(job, self.place(job, host, placement, on_queued, queue_timeout_s))

    def send_job(self, job: JobSpec, target: str) -> JobHandle:
        """Send the job's ``corral.launch`` to ``target`` without a reservation (``submit`` reserves
        first). The host runs the prepare-to-start chain from it (``corral.host.launch``), still
        enforces its own cap (``limits.max_sandboxes``) and records what runs for admission."""
        result = self.send(LAUNCH, job.launch(target), target)
        return JobHandle(job.environment_id, target, process_ref_for(job.environment_id), result.id)

    def wait(self, handle: JobHandle, timeout: float | None = None) -> ProcessStartResult:
        """Wait until the job's process started; a failed step is raised as its ``AgentError``."""
        if not handle.launch_id:
            raise InvalidRequest(
                "this handle was not made by submit: there is no launch to wait for",
                context={"environment_id": handle.environment_id},
            )
        return ProcessStartResult.model_validate(
            self._get(AsyncResult(handle.launch_id, app=self.app), LAUNCH, timeout)
        )

    def frames(
        self,
        handle: JobHandle,
        stream: ProcessIoStream,
        cursor: int = 0,
        max_bytes: int = 256 * 1024,
        poll_s: float = 0.1,
    ) -> Iterator[ProcessIoFrame]:
        """Frames of one output stream from ``cursor`` until EOF, polling while the process runs."""
        while True:
            frame = self.read_frame(handle.host, handle.process_ref, stream, cursor, max_bytes)
            yield frame
            cursor = frame.cursor
            if frame.eof:
                return
            if frame.byte_count == 0:
                time.sleep(poll_s)

    def read_frame(
        self, host: str, process_ref: str, stream: ProcessIoStream, cursor: int, max_bytes: int = 256 * 1024
    ) -> ProcessIoFrame:
        return self.call(
            Operation.stream_io,
            ProcessIoRequest(process_ref=process_ref, stream=stream, cursor=cursor, max_bytes=max_bytes),
            host,
            ProcessIoFrame,
        )

    def write_stdin(self, handle: JobHandle, data: bytes, close: bool = False) -> ProcessIoFrame:
        return self.call(
            Operation.stream_io,
            ProcessIoRequest(
                process_ref=handle.process_ref,
                stream=ProcessIoStream.stdin,
                data_b64=base64.b64encode(data).decode(),
                close_stdin=close,
            ),
            handle.host,
            ProcessIoFrame,
        )

    def signal(self, handle: JobHandle, signal: ProcessSignal, grace_ms: int = 5000) -> ProcessSignalResult:
        return self.call(
            Operation.signal_process,
            ProcessSignalRequest(process_ref=handle.process_ref, signal=signal, grace_ms=grace_ms),
            handle.host,
            ProcessSignalResult,
        )

    def stats(self, handle: JobHandle) -> ProcessStatsSnapshot:
        return self.call(
            Operation.collect_stats,
            ProcessStatsRequest(process_ref=handle.process_ref),
            handle.host,
            ProcessStatsSnapshot,
        )

    def cleanup(self, handle: JobHandle) -> CleanupResult:
        env = self.environment_of(handle.environment_id)
        return self.call(
            Operation.cleanup,
            CleanupRequest(environment=env, cleanup_plan_ref=cleanup_plan_ref(handle.environment_id)),
            handle.host,
            CleanupResult,
        )

    def detach(self, handle: JobHandle, ttl_ms: int) -> DetachTransferResult:
        env = self.environment_of(handle.environment_id)
        return self.call(
            Operation.detach, DetachTransferRequest(environment=env, ttl_ms=ttl_ms), handle.host, DetachTransferResult
        )

    def reclaim(self, ticket_ref: str) -> ReclaimResult:
        checked_ref(ticket_ref, "ticket")
        ticket = self.services.store.ticket(ticket_ref)
        if not ticket:
            raise NotFound(f"unknown ticket {ticket_ref}", context={"ticket_ref": ticket_ref})
        return self.call(Operation.reclaim, ReclaimRequest(ticket_ref=ticket_ref), ticket["host"], ReclaimResult)

    def run(
        self,
        job: JobSpec,
        host: str | None = None,
        on_output: Callable[[ProcessIoStream, bytes], None] | None = None,
        cleanup: bool = True,
    ) -> JobOutcome:
        """Submit, stream output until EOF, read the exit status, clean up (also on failure/Ctrl-C)."""
        handle = self.submit(job, host)
        try:
            self.wait(handle)
            stats = self.follow(handle, on_output)
            return JobOutcome(
                job.environment_id, handle.host, stats.exit_code, stats.reason.value if stats.reason else None, None
            )
        finally:
            if cleanup:
                self.cleanup_quietly(handle)

    def cleanup_quietly(self, handle: JobHandle) -> CleanupResult | None:
        try:
            return self.cleanup(handle)
        except AgentError:
            return None

    def follow(
        self, handle: JobHandle, on_output: Callable[[ProcessIoStream, bytes], None] | None = None, poll_s: float = 0.05
    ) -> ProcessStatsSnapshot:
        """Drain stdout and stderr until both reach EOF; return final stats.

        Both streams' frames are asked at once (the host's reads lane answers them side by side). The
        first stream not yet at its end is asked as a held read (``FOLLOW_WAIT_MS``): the host answers
        it as soon as either stream has new bytes or the process ended, so a short job's end is seen
        within milliseconds and a quiet long one costs a round per ``FOLLOW_WAIT_MS``. When the host
        had no slot to hold a read (it answered at once with nothing new), the client waits 5 ms,
        doubling up to ``poll_s``. Once one stream is at its end the process has ended, so the exit
        status is asked in the same round as the other stream's last frames."""
        cursors = {ProcessIoStream.stdout: 0, ProcessIoStream.stderr: 0}
        done: set[ProcessIoStream] = set()
        first = min(0.005, poll_s)
        pause = first
        ended: ProcessStatsSnapshot | None = None
        while len(done) < 2:
            progressed = False
            open_streams = [s for s in (ProcessIoStream.stdout, ProcessIoStream.stderr) if s not in done]
            began = time.monotonic()
            asked = [
                (
                    stream,
                    self.send(
                        Operation.stream_io,
                        self._frame_request(
                            handle, stream, cursors[stream], FOLLOW_WAIT_MS if stream is open_streams[0] else 0
                        ),
                        handle.host,
                    ),
                )
                for stream in open_streams
            ]
            # A stream at its end means the process ended: its exit status is asked beside the last frames.
            status = (
                self.send(Operation.collect_stats, ProcessStatsRequest(process_ref=handle.process_ref), handle.host)
                if done
                else None
            )
            for stream, result in asked:
                frame = ProcessIoFrame.model_validate(self._get(result, Operation.stream_io))
                cursors[stream] = frame.cursor
                if frame.byte_count:
                    progressed = True
                    if on_output is not None and frame.content_b64 is not None:
                        on_output(stream, base64.b64decode(frame.content_b64))
                if frame.eof:
                    done.add(stream)
                    progressed = True
            if status is not None:
                ended = ProcessStatsSnapshot.model_validate(self._get(status, Operation.collect_stats))
            held = time.monotonic() - began >= FOLLOW_WAIT_MS / 2000
            if progressed or held:
                pause = first
            else:
                time.sleep(pause)
                pause = min(pause * 2, poll_s)
        if ended is not None and ended.state is ProcessState.exited:
            return ended
        pause = first
        for _ in range(100):
            stats = self.stats(handle)
            if stats.state is ProcessState.exited:
                return stats
            time.sleep(pause)
            pause = min(pause * 2, poll_s)
        return stats

    @staticmethod
    def _frame_request(handle: JobHandle, stream: ProcessIoStream, cursor: int, wait_ms: int = 0) -> ProcessIoRequest:
        return ProcessIoRequest(
            process_ref=handle.process_ref, stream=stream, cursor=cursor, max_bytes=256 * 1024, wait_ms=wait_ms
        )

    def reconcile(self, host: str, dry_run: bool = False) -> ReconcileReport:
        """Ask a host to compare what it holds with what the state store owns (and act unless dry run)."""
        return self.call("reconcile", None, host, ReconcileReport, payload={"dry_run": dry_run})

    # -- read-only views -------------------------------------------------------------------

    def handle(self, environment_id: str) -> JobHandle:
        """The handle of a sandbox by id (or unique id prefix)."""
        checked_ref(environment_id, "sandbox id")
        record = self.services.store.session(environment_id)
        if not record:
            matches = [
                s["environment_id"]
                for s in self.services.store.list_sessions(1000)
                if s["environment_id"].startswith(environment_id)
            ]
            if len(matches) != 1:
                raise NotFound(f"unknown sandbox {environment_id}", context={"environment_id": environment_id})
            environment_id = matches[0]
            record = self.services.store.session(environment_id)
        return JobHandle(environment_id, record["host"], record.get("process_ref") or process_ref_for(environment_id))

    def environment_of(self, environment_id: str) -> ExecutionEnvironment:
        record = self.services.store.session(environment_id)
        if not record or "environment" not in record:
            raise NotFound(f"unknown sandbox {environment_id}", context={"environment_id": environment_id})
        return ExecutionEnvironment.model_validate_json(record["environment"])

    def sessions(self, limit: int = 200) -> list[dict[str, str]]:
        """Every session, read straight from the state database (operators, tests); ``view_sessions``
        is what a tenant's client uses."""
        return self.services.store.list_sessions(limit)

    def tickets(self) -> list[dict[str, str]]:
        return self.services.store.list_tickets()

    def journal(self, environment_id: str) -> list[JournalRecord]:
        return self.services.journal.read(environment_id)

    # -- tenant views: answered by a fleet worker for the verified caller (``corral.host.views``) --------

    def view_sessions(self, limit: int = 200) -> list[dict[str, str]]:
        """The caller's tenant's sessions (all of them for an operator), newest first."""
        return self._view("list_sessions", {"limit": limit})

    def view_tickets(self) -> list[dict[str, str]]:
        return self._view("list_tickets", {})

    def view_journal(self, environment_id: str) -> list[JournalRecord]:
        """A session's journal; another tenant's session is ``PolicyDenial`` like a missing one."""
        rows = self._view("read_journal", {"environment_id": environment_id})
        return [JournalRecord(row.pop("record_id", ""), row) for row in rows]

    # -- batches: fleet tasks for the verified caller (``corral.fleet.batch``) ----------------------

    def submit_batch(
        self,
        job: JobSpec | None = None,
        *,
        array: str | None = None,
        jobs: list[JobTemplate] | None = None,
        throttle: int | None = None,
        retry: list[str] | tuple[str, ...] = (),
        max_attempts: int = 1,
        deadline_ms: int | None = None,
        idempotency_key: str | None = None,
        placement: Mode = "spread",
    ) -> BatchHandle:
        """Submit one job template with ``array`` (``"30"``, ``"0-99%10"``) or a list of ``jobs``; the
        fleet holds and dispatches them. The same ``idempotency_key`` returns the same batch."""
        request = _build(
            lambda: BatchSubmitRequest(
                template=template_of(job) if job is not None else None,
                array=parse_array(array) if array is not None else None,
                jobs=jobs,
                throttle=throttle,
                retry=[str(parse_retry(rule)) for rule in retry],
                max_attempts=max_attempts,
                deadline_ms=deadline_ms,
                idempotency_key=idempotency_key,
                placement=placement,
            )
        )
        ref = BatchRef.model_validate(self._fleet("batch_submit", dump(request)))
        return BatchHandle(self, ref.batch_id, ref.created)

    def batch(self, batch_id: str) -> BatchHandle:
        return BatchHandle(self, checked_ref(batch_id, "batch id"), False)

    def batches(self) -> list[dict[str, str]]:
        """The caller's batches (every tenant's for an operator), newest first."""
        return [dict(row) for row in self._fleet("batch_control", {"batch_id": "", "action": "list"}).get("rows", [])]

    def _fleet(self, operation: str, payload: dict[str, Any]) -> dict[str, Any]:
        self._kwargs("")  # no signing key: say so first
        result = self.app.send_task(
            task_name(operation), args=[payload], kwargs={CALLER_KWARG: self.identity}, queue=FLEET_QUEUE
        )
        return dict(self._get(result, operation))

    def _view(self, operation: str, payload: dict[str, Any]) -> list[dict[str, str]]:
        name = task_name(operation)  # corral.fleet.reads: answered by a reads lane, never behind placements
        result = self.app.send_task(
            name, args=[payload], kwargs={CALLER_KWARG: self.identity}, queue=fleet_queue_for(name)
        )
        rows = self._get(result, operation).get("rows", [])
        return [dict(row) for row in rows]


@dataclass
class BatchHandle:
    """A submitted batch: ``status()``, ``wait()``, ``cancel()``, ``retry_failed()``."""

    client: Client
    batch_id: str
    created: bool
    """False when an idempotency key named a batch submitted before (nothing new was created)."""

    def _control(self, action: str, jobs: bool = False) -> dict[str, Any]:
        return self.client._fleet("batch_control", {"batch_id": self.batch_id, "action": action, "jobs": jobs})

    def status(self, jobs: bool = False) -> dict[str, Any]:
        """``{"batch": meta and counters, "jobs": {index: record}}`` (jobs only when asked)."""
        return self._control("status", jobs)

    def cancel(self) -> dict[str, Any]:
        return self._control("cancel")

    def retry_failed(self) -> dict[str, Any]:
        return self._control("retry_failed")

    def wait(
        self,
        timeout: float | None = None,
        poll_s: float = 1.0,
        jobs: bool = True,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll until the batch is over; its final status (``corral.fleet.batch.wait_exit_code`` reads it).
        ``on_status(batch)`` sees the batch record at each poll (progress for a person)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status()
            if on_status is not None:
                on_status(status["batch"])
            if status["batch"].get("state") != "active" and int(status["batch"].get("running") or 0) == 0:
                return self.status(jobs) if jobs else status
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutFailure(f"batch {self.batch_id} still running after {timeout:.0f} s")
            time.sleep(poll_s)
