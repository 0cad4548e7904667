"""One Celery task per contract operation, named ``corral.<operation>``.

Thin like web views: parse the request model, call the host's coordinator, dump the result. The
``host`` keyword names the host the task is meant for (the router reads it; the task checks it).
The ``caller`` keyword is the verified identity the coordinator authorizes (tenants, ``corral.host.tenancy``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import shared_task

from corral.celeryconf import READS_SUFFIX, task_name
from corral.contract import models as m
from corral.contract.operations import Operation
from corral.contract.wire import WireResult
from corral.host.services import coordinator
from corral.trust.identity import Caller
from tasks.base import CorralTask


def _as(identity: str | None) -> Caller:
    """The verified caller (stamped by the worker from the message signature, ``corral.trust.signing``) as
    this host's policy maps it to a tenant (``corral.host.tenancy``); a message without one is anonymous."""
    return coordinator().caller(identity)


def _task(operation: Operation) -> Callable[[Callable[..., WireResult]], Any]:
    """Register a bound task ``corral.<operation>`` (celery is untyped: the task object is ``Any``)."""
    decorator: Callable[[Callable[..., WireResult]], Any] = shared_task(
        bind=True, base=CorralTask, name=task_name(operation)
    )
    return decorator


@_task(Operation.runtime_ref)
def runtime_ref(
    self: CorralTask, request: Any = None, *, host: str | None = None, caller: str | None = None
) -> WireResult:
    return self.run_operation(host, lambda: coordinator().runtime_ref())


@_task(Operation.capability_report)
def capability_report(
    self: CorralTask, request: Any = None, *, host: str | None = None, caller: str | None = None
) -> WireResult:
    return self.run_operation(host, lambda: coordinator().capability_report())


@_task(Operation.prepare_session)
def prepare_session(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> WireResult:
    return self.run_operation(
        host, lambda: coordinator().prepare_session(self.parse(m.SessionPrepareRequest, request), caller=_as(caller))
    )


@_task(Operation.resolve_image)
def resolve_image(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> WireResult:
    return self.run_operation(
        host, lambda: coordinator().resolve_image(self.parse(m.ImageResolveRequest, request), caller=_as(caller))
    )


@_task(Operation.prepare_rootfs)
def prepare_rootfs(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> WireResult:
    return self.run_operation(
        host, lambda: coordinator().prepare_rootfs(self.parse(m.RootfsPrepareRequest, request), caller=_as(caller))
    )


@_task(Operation.resolve_mounts)
def resolve_mounts(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> WireResult:
    return self.run_operation(
        host, lambda: coordinator().resolve_mounts(self.parse(m.MountResolveRequest, request), caller=_as(caller))
    )


@_task(Operation.configure_network)
def configure_network(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> WireResult:
    return self.run_operation(
        host, lambda: coordinator().configure_network(self.parse(m.NetworkPrepareRequest, request), caller=_as(caller))
    )


@_task(Operation.prepare_secrets)
def prepare_secrets(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> WireResult:
    return self.run_operation(
        host, lambda: coordinator().prepare_secrets(self.parse(m.SecretPrepareRequest, request), caller=_as(caller))
    )


@_task(Operation.prepare_environment)
def prepare_environment(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> WireResult:
    return self.run_operation(
        host,
        lambda: coordinator().prepare_environment(self.parse(m.EnvironmentPrepareRequest, request), caller=_as(caller)),
    )


@_task(Operation.start_process)
def start_process(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> WireResult:
    return self.run_operation(
        host, lambda: coordinator().start_process(self.parse(m.ProcessStartRequest, request), caller=_as(caller))
    )


@_task(Operation.stream_io)
def stream_io(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> WireResult:
    def run() -> m.ProcessIoFrame:
        parsed = self.parse(m.ProcessIoRequest, request)
        if parsed.wait_ms and not _from_reads_lane(self):
            # A read is held only by the reads lane, whose threads are there for it: held in the
            # lifecycle lane it would keep a pool process from the launches of every tenant.
            parsed = parsed.model_copy(update={"wait_ms": 0})
        return coordinator().stream_io(parsed, self.request.id, caller=_as(caller))

    return self.run_operation(host, run)


def _from_reads_lane(task: CorralTask) -> bool:
    routing_key = str((task.request.delivery_info or {}).get("routing_key") or "")
    return routing_key.endswith(READS_SUFFIX)


@_task(Operation.signal_process)
def signal_process(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> WireResult:
    return self.run_operation(
        host,
        lambda: coordinator().signal_process(
            self.parse(m.ProcessSignalRequest, request), self.request.id, caller=_as(caller)
        ),
    )


@_task(Operation.collect_stats)
def collect_stats(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> WireResult:
    return self.run_operation(
        host, lambda: coordinator().collect_stats(self.parse(m.ProcessStatsRequest, request), caller=_as(caller))
    )


@_task(Operation.cleanup)
def cleanup(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> WireResult:
    return self.run_operation(
        host, lambda: coordinator().cleanup(self.parse(m.CleanupRequest, request), caller=_as(caller))
    )


@_task(Operation.detach)
def detach(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> WireResult:
    return self.run_operation(
        host, lambda: coordinator().detach(self.parse(m.DetachTransferRequest, request), caller=_as(caller))
    )


@_task(Operation.reclaim)
def reclaim(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> WireResult:
    return self.run_operation(
        host, lambda: coordinator().reclaim(self.parse(m.ReclaimRequest, request), caller=_as(caller))
    )
