"""An in-memory runtime for unit tests of the coordinator, tasks and client.

It keeps the same observable rules as a real adapter (idempotent effects, typed errors, cleanup
that reports instead of raising) and counts every effect, so tests can prove "exactly once".
It never stands in for an integration test: ``DockerRuntime`` has its own suite.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter
from dataclasses import dataclass, field

from corral.contract.errors import InvalidRequest, NotFound, PolicyDenial
from corral.contract.models import (
    Capability,
    CleanupRequest,
    CleanupResult,
    CleanupStatus,
    DetachTransferRequest,
    DetachTransferResult,
    EnvironmentPrepareRequest,
    Health,
    ImageResolution,
    ImageResolveRequest,
    IoStream,
    IsolationCapabilityReport,
    IsolationClass,
    IsolationRuntimeRef,
    IsolationSessionRef,
    MountPlan,
    MountRef,
    MountResolveRequest,
    NetworkNamespaceRef,
    NetworkPrepareRequest,
    Platform,
    PreparedEnvironmentRef,
    ProcessIoFrame,
    ProcessIoRequest,
    ProcessSignal,
    ProcessSignalRequest,
    ProcessSignalResult,
    ProcessStartRequest,
    ProcessStartResult,
    ProcessState,
    ProcessStatsRequest,
    ProcessStatsSnapshot,
    ReclaimRequest,
    ReclaimResult,
    RootfsPrepareRequest,
    RootfsRef,
    SecretMaterializationPlan,
    SecretMountRef,
    SecretPrepareRequest,
    SessionPrepareRequest,
    TerminalStatus,
    TerminationReason,
    TrustVector,
)
from corral.contract.operations import Operation
from corral.contract.refs import process_ref_for, slug

KNOWN_IMAGES = {"corral/busybox:latest": "sha256:" + "0" * 64}


@dataclass
class FakeProcess:
    environment_id: str
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    stdin: bytearray = field(default_factory=bytearray)
    exit_code: int | None = None
    reason: TerminationReason | None = None


class FakeRuntime:
    """``output`` maps an argv[0] to the bytes the fake process prints on stdout before exiting 0."""

    def __init__(self, host_id: str = "fake-host", output: dict[str, bytes] | None = None) -> None:
        self.host_id = host_id
        self.output = output or {}
        self.effects: Counter[str] = Counter()
        self.sessions: set[str] = set()
        self.containers: dict[str, str] = {}
        self.processes: dict[str, FakeProcess] = {}
        self.tickets: dict[str, str] = {}
        self.fail_next: dict[str, Exception] = {}
        """Operation name -> exception to raise once (for failure-path tests)."""

    def _maybe_fail(self, op: Operation) -> None:
        exc = self.fail_next.pop(op, None)
        if exc is not None:
            raise exc

    def runtime_ref(self) -> IsolationRuntimeRef:
        return IsolationRuntimeRef(runtime_ref=f"fake-{self.host_id}", adapter_kind="fake", host_ref=self.host_id)

    def capability_report(self) -> IsolationCapabilityReport:
        return IsolationCapabilityReport(
            report_ref=f"report-fake-{self.host_id}",
            adapter_ref=f"fake-{self.host_id}",
            adapter_kind="fake",
            adapter_version="0",
            health=Health(),
            supported_classes=[IsolationClass.host_process],
            platform=Platform(os="linux", cpu_architecture="x86_64"),
            capabilities=[Capability.cleanup, Capability.detach, Capability.reclaim],
            trust=TrustVector(),
            unsupported_requirements=["everything: this runtime isolates nothing"],
        )

    def prepare_session(self, request: SessionPrepareRequest) -> IsolationSessionRef:
        self._maybe_fail(Operation.prepare_session)
        env_id = request.environment.environment_id
        if env_id not in self.sessions:
            self.effects[Operation.prepare_session] += 1
            self.sessions.add(env_id)
        return IsolationSessionRef(session_ref=f"sess-{slug(env_id)}", environment_id=env_id, host_ref=self.host_id)

    def resolve_image(self, request: ImageResolveRequest) -> ImageResolution:
        self._maybe_fail(Operation.resolve_image)
        image = request.environment.spec.image
        if image is None:
            raise InvalidRequest("the environment names no image")
        if image.image_ref not in KNOWN_IMAGES:
            raise NotFound(f"image {image.image_ref} is not present on host {self.host_id}")
        return ImageResolution(image_ref=image.image_ref, digest=KNOWN_IMAGES[image.image_ref])

    def prepare_rootfs(self, request: RootfsPrepareRequest) -> RootfsRef:
        self._maybe_fail(Operation.prepare_rootfs)
        fs = request.environment.spec.filesystem
        return RootfsRef(
            rootfs_ref=f"rootfs-{slug(request.environment.environment_id)}",
            read_only=fs.root == "read_only",
            scratch_mb=fs.scratch_mb,
        )

    def resolve_mounts(self, request: MountResolveRequest) -> MountPlan:
        self._maybe_fail(Operation.resolve_mounts)
        mounts = request.environment.spec.filesystem.mounts
        for m in mounts:
            if m.source_alias != "data":
                raise PolicyDenial(f"mount alias {m.source_alias} is not defined on this host")
        return MountPlan(
            mounts=[
                MountRef(
                    mount_ref=m.mount_ref, source_alias=m.source_alias, destination_path=m.destination_path, mode=m.mode
                )
                for m in mounts
            ]
        )

    def configure_network(self, request: NetworkPrepareRequest) -> NetworkNamespaceRef:
        self._maybe_fail(Operation.configure_network)
        return NetworkNamespaceRef(
            network_ref=f"net-none-{slug(request.environment.environment_id)}",
            mode=request.environment.spec.network.mode,
        )

    def prepare_secrets(self, request: SecretPrepareRequest) -> SecretMaterializationPlan:
        self._maybe_fail(Operation.prepare_secrets)
        policy = request.environment.spec.secrets
        return SecretMaterializationPlan(
            secret_mount_refs=[
                SecretMountRef(secret_ref=s.secret_ref, mount_ref=s.mount_ref, destination=s.destination)
                for s in policy.secret_mounts
            ],
            env_secret_keys=[s.env_key for s in policy.env_secrets],
        )

    def prepare_environment(self, request: EnvironmentPrepareRequest) -> PreparedEnvironmentRef:
        self._maybe_fail(Operation.prepare_environment)
        env_id = request.environment.environment_id
        if env_id not in self.containers:
            self.effects["create_container"] += 1
            self.containers[env_id] = "created"
        return PreparedEnvironmentRef(prepared_ref=f"env-{slug(env_id)}", environment_id=env_id)

    def start_process(self, request: ProcessStartRequest) -> ProcessStartResult:
        self._maybe_fail(Operation.start_process)
        env_id = request.environment.environment_id
        ref = process_ref_for(env_id)
        if self.containers.get(env_id) == "created":
            self.effects[Operation.start_process] += 1
            self.containers[env_id] = "exited"
            proc = FakeProcess(env_id, exit_code=0, reason=TerminationReason.exit)
            proc.stdout += self.output.get(request.process.argv[0], b"")
            self.processes[ref] = proc
        elif env_id not in self.containers:
            raise NotFound(f"environment {env_id} was not prepared")
        return ProcessStartResult(process_ref=ref, terminal_status=TerminalStatus(state=ProcessState.running))

    def _process(self, ref: str) -> FakeProcess:
        if ref not in self.processes:
            raise NotFound(f"unknown process {ref}")
        return self.processes[ref]

    def stream_io(self, request: ProcessIoRequest) -> ProcessIoFrame:
        proc = self._process(request.process_ref)
        if request.stream is IoStream.stdin:
            data = base64.b64decode(request.data_b64 or "")
            self.effects["stdin_write"] += 1
            proc.stdin += data
            chunk, cursor, eof = data, len(proc.stdin), request.close_stdin
        else:
            buf = proc.stdout if request.stream is IoStream.stdout else proc.stderr
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
            raw_content_present=request.stream is not IoStream.stdin,
            content_b64=None if request.stream is IoStream.stdin else base64.b64encode(chunk).decode(),
            eof=eof,
        )

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

    def reclaim(self, request: ReclaimRequest) -> ReclaimResult:
        env_id = self.tickets.pop(request.ticket_ref, None) or request.environment_id
        if env_id is None:
            raise NotFound(f"unknown ticket {request.ticket_ref}")
        self.effects[Operation.reclaim] += 1
        self.containers.pop(env_id, None)
        self.processes.pop(process_ref_for(env_id), None)
        return ReclaimResult(ticket_ref=request.ticket_ref, status=CleanupStatus.completed)
