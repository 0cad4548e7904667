"""A fake runtime: it isolates nothing and runs nothing, and keeps the contract's observable rules.

Used by unit tests of the coordinator, tasks and client (in memory), by the contract suite beside
``DockerRuntime`` (``tests/integration/test_contract_suite.py``), and by a worker with
``host.runtime = "fake"`` (``corral dev``-style trials of the whole pipeline without Docker). It keeps
the rules a real adapter keeps (idempotent effects, typed errors, cleanup that reports instead of
raising) and counts every effect, so tests can prove "exactly once".

What a "process" does here: nothing runs. ``echo ARGS`` prints its arguments, ``false`` exits 1,
``sleep`` runs until a signal ends it, ``output`` (argv[0] → stdout bytes) scripts others; every other
process has exited by the time ``start_process`` returns.

Its capability report claims the ``container`` class (what a default job asks for), so the fake can
serve a default ``corral run``; the report says plainly that it is a fake (``adapter_kind`` ``fake``
and an ``unsupported_requirements`` entry): it enforces no limit, mount, network or secret rule.

A worker's pool processes and its reads lane each build their own runtime, so a worker's fake keeps
its state in one JSON file under ``host.state_dir`` (``state_path``), locked around every operation;
without a path (unit tests) the state lives in the object.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from corral.contract.errors import InvalidRequest, NotFound, PolicyDenial
from corral.contract.models import (
    CleanupRequest,
    CleanupResult,
    DetachTransferRequest,
    DetachTransferResult,
    EnvironmentPrepareRequest,
    ImageResolution,
    ImageResolveRequest,
    IsolationCapabilityReport,
    IsolationCapabilitySet,
    IsolationRuntimeHealth,
    IsolationRuntimeRef,
    IsolationSessionRef,
    IsolationTrustRequirement,
    MountPlan,
    MountResolveRequest,
    NetworkNamespaceRef,
    NetworkPrepareRequest,
    PlatformReport,
    PreparedEnvironmentRef,
    ProcessIoFrame,
    ProcessIoRequest,
    ProcessSignalRequest,
    ProcessSignalResult,
    ProcessStartRequest,
    ProcessStartResult,
    ProcessState,
    ProcessStatsRequest,
    ProcessStatsSnapshot,
    ProcessStatus,
    ReclaimRequest,
    ReclaimResult,
    RootfsPrepareRequest,
    RootfsRef,
    SecretMaterializationPlan,
    SecretPrepareRequest,
    SessionPrepareRequest,
    TerminationReason,
)
from corral.contract.operations import Operation
from corral.contract.refs import process_ref_for, slug
from corral.contract.vocabulary import (
    AuditabilityRequirement,
    CleanupGuaranteeRequirement,
    CleanupStatus,
    IsolationCapability,
    IsolationClass,
    IsolationRuntimeKind,
    ProcessIoStream,
    ProcessSignal,
    SecretIsolationRequirement,
)

KNOWN_IMAGES = {"corral/busybox:latest": "sha256:" + "0" * 64}
FAKE_NOTICE = "isolation: this is a fake runtime; it runs nothing and enforces no limit, mount, network or secret rule"

Q = TypeVar("Q")
R = TypeVar("R")


@dataclass
class FakeProcess:
    environment_id: str
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    stdin: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    reason: TerminationReason | None = None

    def to_json(self) -> dict[str, Any]:
        b64 = base64.b64encode
        return {
            "environment_id": self.environment_id,
            "stdout": b64(self.stdout).decode(),
            "stderr": b64(self.stderr).decode(),
            "stdin": b64(self.stdin).decode(),
            "exit_code": self.exit_code,
            "reason": None if self.reason is None else str(self.reason),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FakeProcess:
        raw = base64.b64decode
        return cls(
            str(data["environment_id"]),
            bytearray(raw(data["stdout"])),
            bytearray(raw(data["stderr"])),
            bytearray(raw(data["stdin"])),
            data["exit_code"],
            None if data["reason"] is None else TerminationReason(data["reason"]),
        )


def _shared(method: Callable[[FakeRuntime, Q], R]) -> Callable[[FakeRuntime, Q], R]:
    """Run an operation on the runtime's current state (loaded from and saved to ``state_path``,
    under its lock, when it has one)."""

    @functools.wraps(method)
    def wrapper(self: FakeRuntime, request: Q) -> R:
        with self._synced():
            return method(self, request)

    return wrapper


class FakeRuntime:
    """``output`` maps an argv[0] to the bytes the fake process prints on stdout before exiting 0.
    ``state_path``: keep the state in this file (shared by every process of a worker)."""

    def __init__(
        self, host_id: str = "fake-host", output: dict[str, bytes] | None = None, state_path: Path | None = None
    ) -> None:
        self.host_id = host_id
        self.output = output or {}
        self.state_path = state_path
        self.effects: Counter[str] = Counter()
        self.sessions: set[str] = set()
        self.containers: dict[str, str] = {}
        self.processes: dict[str, FakeProcess] = {}
        self.tickets: dict[str, str] = {}
        self.fail_next: dict[str, Exception] = {}
        """Operation name -> exception to raise once (for failure-path tests)."""

    @contextlib.contextmanager
    def _synced(self) -> Iterator[None]:
        if self.state_path is None:
            yield
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.state_path}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            self._load()
            try:
                yield
            finally:  # what happened before a failure happened (as in memory)
                self._save()

    def _load(self) -> None:
        assert self.state_path is not None
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            data = {}
        self.sessions = set(data.get("sessions", []))
        self.containers = dict(data.get("containers", {}))
        self.processes = {ref: FakeProcess.from_json(p) for ref, p in data.get("processes", {}).items()}
        self.tickets = dict(data.get("tickets", {}))

    def _save(self) -> None:
        assert self.state_path is not None
        data = {
            "sessions": sorted(self.sessions),
            "containers": self.containers,
            "processes": {ref: p.to_json() for ref, p in self.processes.items()},
            "tickets": self.tickets,
        }
        partial = self.state_path.with_name(f"{self.state_path.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(data))
        partial.replace(self.state_path)

    def _maybe_fail(self, op: Operation) -> None:
        exc = self.fail_next.pop(op, None)
        if exc is not None:
            raise exc

    def runtime_ref(self) -> IsolationRuntimeRef:
        return f"fake-{self.host_id}"

    def capability_report(self) -> IsolationCapabilityReport:
        return IsolationCapabilityReport(
            report_ref=f"report-fake-{self.host_id}",
            adapter_ref=f"fake-{self.host_id}",
            adapter_kind=IsolationRuntimeKind.test_only_fake,
            adapter_version="0",
            health=IsolationRuntimeHealth(),
            # What a default job requires (class container, no capability, the default trust), so a
            # worker with host.runtime = "fake" serves default jobs; the report says it is a fake.
            supported_classes=[IsolationClass.container],
            platform=PlatformReport(platform="portable-test", os="linux", cpu_architecture="x86_64"),
            capabilities=IsolationCapabilitySet.of(
                IsolationCapability.process_signal,
                IsolationCapability.process_stats,
                IsolationCapability.cleanup,
                IsolationCapability.detach,
                IsolationCapability.reclaim,
            ),
            # the trust a default job asks for (``JOB_TRUST``): the fake cleans up all it holds
            trust=IsolationTrustRequirement(
                auditability=AuditabilityRequirement.best_effort,
                cleanup=CleanupGuaranteeRequirement.required,
                secret_isolation=SecretIsolationRequirement.best_effort,
            ),
            unsupported_requirements=[FAKE_NOTICE],
        )

    @_shared
    def prepare_session(self, request: SessionPrepareRequest) -> IsolationSessionRef:
        self._maybe_fail(Operation.prepare_session)
        env_id = request.environment.environment_id
        if env_id not in self.sessions:
            self.effects[Operation.prepare_session] += 1
            self.sessions.add(env_id)
        return f"sess-{slug(env_id)}"

    def resolve_image(self, request: ImageResolveRequest) -> ImageResolution:
        self._maybe_fail(Operation.resolve_image)
        image = request.image
        if image.image_ref not in KNOWN_IMAGES:
            raise NotFound(f"image {image.image_ref} is not present on host {self.host_id}")
        return ImageResolution(image_ref=image.image_ref, digest=KNOWN_IMAGES[image.image_ref])

    def prepare_rootfs(self, request: RootfsPrepareRequest) -> RootfsRef:
        self._maybe_fail(Operation.prepare_rootfs)
        owner = request.environment.environment_id if request.environment else request.rootfs.rootfs_ref
        return f"rootfs-{slug(owner)}"

    def resolve_mounts(self, request: MountResolveRequest) -> MountPlan:
        self._maybe_fail(Operation.resolve_mounts)
        mounts = request.environment.spec.filesystem.mounts
        for m in mounts:
            if m.source_alias != "data":
                raise PolicyDenial(f"mount alias {m.source_alias} is not defined on this host")
        return MountPlan(mounts=[m.mount_ref for m in mounts])

    def configure_network(self, request: NetworkPrepareRequest) -> NetworkNamespaceRef:
        self._maybe_fail(Operation.configure_network)
        return f"net-none-{slug(request.environment.environment_id)}"

    def prepare_secrets(self, request: SecretPrepareRequest) -> SecretMaterializationPlan:
        self._maybe_fail(Operation.prepare_secrets)
        policy = request.environment.spec.secrets
        return SecretMaterializationPlan(
            secret_mount_refs=[s.mount_ref for s in policy.secret_mounts],
            env_secret_keys=[s.env_key for s in policy.env_secrets],
        )

    @_shared
    def prepare_environment(self, request: EnvironmentPrepareRequest) -> PreparedEnvironmentRef:
        self._maybe_fail(Operation.prepare_environment)
        env_id = request.environment.environment_id
        if env_id not in self.containers:
            self.effects["create_container"] += 1
            self.containers[env_id] = "created"
        return f"env-{slug(env_id)}"

    @_shared
    def start_process(self, request: ProcessStartRequest) -> ProcessStartResult:
        self._maybe_fail(Operation.start_process)
        env_id = request.environment.environment_id
        ref = process_ref_for(env_id)
        if self.containers.get(env_id) == "created":
            self.effects[Operation.start_process] += 1
            self.containers[env_id] = "exited"
            argv = request.process.argv
            proc = FakeProcess(env_id, exit_code=0, reason=TerminationReason.exit)
            if argv[0] in self.output:
                proc.stdout += self.output[argv[0]]
            elif os.path.basename(argv[0]) == "echo":
                proc.stdout += (" ".join(argv[1:]) + "\n").encode()
            elif os.path.basename(argv[0]) == "false":
                proc.exit_code = 1
            elif os.path.basename(argv[0]) == "sleep":  # runs until a signal ends it
                proc.exit_code, proc.reason = None, None
            self.processes[ref] = proc
        elif env_id not in self.containers:
            raise NotFound(f"environment {env_id} was not prepared")
        return ProcessStartResult(process_ref=ref, process_status=ProcessStatus(state=ProcessState.running))

    def _process(self, ref: str) -> FakeProcess:
        if ref not in self.processes:
            raise NotFound(f"unknown process {ref}")
        return self.processes[ref]

    @_shared
    def stream_io(self, request: ProcessIoRequest) -> ProcessIoFrame:
        proc = self._process(request.process_ref)
        if request.stream is ProcessIoStream.stdin:
            data = base64.b64decode(request.data_b64 or "")
            self.effects["stdin_write"] += 1
            proc.stdin += data
            chunk, cursor, eof = data, len(proc.stdin), request.close_stdin
        else:
            buf = proc.stdout if request.stream is ProcessIoStream.stdout else proc.stderr
            chunk = bytes(buf[request.cursor : request.cursor + request.max_bytes])
            cursor = request.cursor + len(chunk)
            eof = cursor >= len(buf)
        return ProcessIoFrame(
            stream_ref=f"{request.process_ref}/{request.stream}",
            stream=request.stream,
            start_cursor=request.cursor,
            cursor=cursor,
            byte_count=len(chunk),
            content_hash="sha256:" + hashlib.sha256(chunk).hexdigest(),
            raw_content_present=request.stream is not ProcessIoStream.stdin,
            content_b64=None if request.stream is ProcessIoStream.stdin else base64.b64encode(chunk).decode(),
            eof=eof,
        )

    @_shared
    def signal_process(self, request: ProcessSignalRequest) -> ProcessSignalResult:
        proc = self._process(request.process_ref)
        self.effects[f"signal_{request.signal}"] += 1
        delivered = proc.exit_code is None
        if delivered:
            proc.exit_code, proc.reason = (
                (137 if request.signal is ProcessSignal.kill else 143),
                TerminationReason.signal,
            )
        return ProcessSignalResult(process_ref=request.process_ref, signal=request.signal, delivered=delivered)

    @_shared
    def collect_stats(self, request: ProcessStatsRequest) -> ProcessStatsSnapshot:
        proc = self._process(request.process_ref)
        return ProcessStatsSnapshot(
            snapshot_ref=f"stats-{slug(request.process_ref)}",
            process_ref=request.process_ref,
            state=ProcessState.exited if proc.exit_code is not None else ProcessState.running,
            exit_code=proc.exit_code,
            reason=proc.reason,
            cpu_millis=1,
            memory_bytes=4096,
            process_count=1,
        )

    @_shared
    def cleanup(self, request: CleanupRequest) -> CleanupResult:
        self._maybe_fail(Operation.cleanup)
        env_id = request.environment.environment_id
        removed = self.containers.pop(env_id, None) is not None
        self.sessions.discard(env_id)
        self.processes.pop(process_ref_for(env_id), None)
        if removed:
            self.effects["remove_container"] += 1
        return CleanupResult(
            cleanup_plan_ref=request.cleanup_plan_ref,
            status=CleanupStatus.completed,
            redacted_summary="removed" if removed else "nothing to remove",
        )

    @_shared
    def detach(self, request: DetachTransferRequest) -> DetachTransferResult:
        if not request.environment.spec.ownership.detach_policy.allowed:
            raise PolicyDenial("detach not allowed")
        if request.ticket_ref is None:
            raise InvalidRequest("detach needs a ticket ref")
        self.effects[Operation.detach] += 1
        self.tickets[request.ticket_ref] = request.environment.environment_id
        return DetachTransferResult(
            host_ack_ref=f"ack-{slug(request.ticket_ref)}", ticket_ref=request.ticket_ref, deadline_ms=request.ttl_ms
        )

    @_shared
    def reclaim(self, request: ReclaimRequest) -> ReclaimResult:
        env_id = self.tickets.pop(request.ticket_ref, None) or request.environment_id
        if env_id is None:
            raise NotFound(f"unknown ticket {request.ticket_ref}")
        self.effects[Operation.reclaim] += 1
        self.containers.pop(env_id, None)
        self.processes.pop(process_ref_for(env_id), None)
        return ReclaimResult(ticket_ref=request.ticket_ref, status=CleanupStatus.completed)
