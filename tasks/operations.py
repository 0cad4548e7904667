"""One Celery task per contract operation, named ``corral.<operation>``.

Thin like web views: parse the request model, call the host's coordinator, dump the result. The
``host`` keyword names the host the task is meant for (the router reads it; the task checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import shared_task

from corral import models as m
from corral.services import coordinator
from tasks.base import CorralTask


def _task(name: str) -> Callable[[Callable[..., dict[str, Any]]], Any]:
    """Register a bound task ``corral.<name>`` (celery is untyped: the task object is ``Any``)."""
    decorator: Callable[[Callable[..., dict[str, Any]]], Any] = shared_task(
        bind=True, base=CorralTask, name=f"corral.{name}"
    )
    return decorator


@_task("runtime_ref")
def runtime_ref(
    self: CorralTask, request: Any = None, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().runtime_ref())


@_task("capability_report")
def capability_report(
    self: CorralTask, request: Any = None, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().capability_report())


@_task("prepare_session")
def prepare_session(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().prepare_session(self.parse(m.SessionPrepareRequest, request)))


@_task("resolve_image")
def resolve_image(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().resolve_image(self.parse(m.ImageResolveRequest, request)))


@_task("prepare_rootfs")
def prepare_rootfs(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().prepare_rootfs(self.parse(m.RootfsPrepareRequest, request)))


@_task("resolve_mounts")
def resolve_mounts(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().resolve_mounts(self.parse(m.MountResolveRequest, request)))


@_task("configure_network")
def configure_network(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(
        host, lambda: coordinator().configure_network(self.parse(m.NetworkPrepareRequest, request))
    )


@_task("prepare_secrets")
def prepare_secrets(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().prepare_secrets(self.parse(m.SecretPrepareRequest, request)))


@_task("prepare_environment")
def prepare_environment(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(
        host, lambda: coordinator().prepare_environment(self.parse(m.EnvironmentPrepareRequest, request))
    )


@_task("start_process")
def start_process(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().start_process(self.parse(m.ProcessStartRequest, request)))


@_task("stream_io")
def stream_io(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> dict[str, Any]:
    return self.run_operation(
        host, lambda: coordinator().stream_io(self.parse(m.ProcessIoRequest, request), self.request.id)
    )


@_task("signal_process")
def signal_process(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(
        host, lambda: coordinator().signal_process(self.parse(m.ProcessSignalRequest, request), self.request.id)
    )


@_task("collect_stats")
def collect_stats(
    self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None
) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().collect_stats(self.parse(m.ProcessStatsRequest, request)))


@_task("cleanup")
def cleanup(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().cleanup(self.parse(m.CleanupRequest, request)))


@_task("detach")
def detach(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().detach(self.parse(m.DetachTransferRequest, request)))


@_task("reclaim")
def reclaim(self: CorralTask, request: Any, *, host: str | None = None, caller: str | None = None) -> dict[str, Any]:
    return self.run_operation(host, lambda: coordinator().reclaim(self.parse(m.ReclaimRequest, request)))
