"""The isolation runtime contract: 16 operations, one Protocol, the only place it lives.

Adapters (``corral.runtimes.docker.runtime.DockerRuntime``, ``corral.runtimes.fake.FakeRuntime``) do not
inherit it; mypy checks their conformance where a runtime is chosen (``corral.runtimes.build``).
The Protocol is synchronous, like upstream's trait, docker-py and Celery's prefork workers.

Adapters perform effects only; journaling, idempotency, policy and redaction of what leaves the
host belong to the coordinator around them (``corral.host.coordinator``).
"""

from __future__ import annotations

from typing import Protocol

from corral.contract.models import (
    CleanupRequest,
    CleanupResult,
    DetachTransferRequest,
    DetachTransferResult,
    EnvironmentPrepareRequest,
    ImageResolution,
    ImageResolveRequest,
    IsolationCapabilityReport,
    IsolationRuntimeRef,
    IsolationSessionRef,
    MountPlan,
    MountResolveRequest,
    NetworkNamespaceRef,
    NetworkPrepareRequest,
    PreparedEnvironmentRef,
    ProcessIoFrame,
    ProcessIoRequest,
    ProcessSignalRequest,
    ProcessSignalResult,
    ProcessStartRequest,
    ProcessStartResult,
    ProcessStatsRequest,
    ProcessStatsSnapshot,
    ReclaimRequest,
    ReclaimResult,
    RootfsPrepareRequest,
    RootfsRef,
    SecretMaterializationPlan,
    SecretPrepareRequest,
    SessionPrepareRequest,
)


class IsolationRuntime(Protocol):
    """What a host's isolation backend must do. Every method raises only ``AgentError``. The methods are
    named by ``corral.contract.operations.Operation``, in its order."""

    def runtime_ref(self) -> IsolationRuntimeRef: ...

    def capability_report(self) -> IsolationCapabilityReport: ...

    def prepare_session(self, request: SessionPrepareRequest) -> IsolationSessionRef: ...

    def resolve_image(self, request: ImageResolveRequest) -> ImageResolution: ...

    def prepare_rootfs(self, request: RootfsPrepareRequest) -> RootfsRef: ...

    def resolve_mounts(self, request: MountResolveRequest) -> MountPlan: ...

    def configure_network(self, request: NetworkPrepareRequest) -> NetworkNamespaceRef: ...

    def prepare_secrets(self, request: SecretPrepareRequest) -> SecretMaterializationPlan: ...

    def prepare_environment(self, request: EnvironmentPrepareRequest) -> PreparedEnvironmentRef: ...

    def start_process(self, request: ProcessStartRequest) -> ProcessStartResult: ...

    def stream_io(self, request: ProcessIoRequest) -> ProcessIoFrame: ...

    def signal_process(self, request: ProcessSignalRequest) -> ProcessSignalResult: ...

    def collect_stats(self, request: ProcessStatsRequest) -> ProcessStatsSnapshot: ...

    def cleanup(self, request: CleanupRequest) -> CleanupResult: ...

    def detach(self, request: DetachTransferRequest) -> DetachTransferResult: ...

    def reclaim(self, request: ReclaimRequest) -> ReclaimResult: ...
