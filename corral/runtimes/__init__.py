"""Runtime adapters and the one place a runtime is chosen (where mypy checks Protocol conformance)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from corral.contract.errors import HostConfigurationNeeded
from corral.contract.runtime import IsolationRuntime
from corral.sandbox.policy import HostPolicy
from corral.settings import Settings


def preload_runtime(settings: Settings) -> None:
    """Import the host's runtime adapter (no client, no connection): a worker does it before its pool
    forks, so every pool process shares the imported modules instead of importing them at its first task."""
    if settings.host.runtime == "docker":
        import corral.runtimes.docker.runtime  # noqa: F401


def build_runtime(settings: Settings, policy: Callable[[], HostPolicy] = HostPolicy) -> IsolationRuntime:
    """The host's runtime. ``policy`` is the host policy in force (the coordinator's
    ``PolicySource.current``): a runtime that learns more than a request says (Docker resolves the
    user in the image) judges it by the same policy."""
    kind = settings.host.runtime
    if kind == "docker":
        from corral.runtimes.docker.runtime import DockerRuntime

        docker_runtime: IsolationRuntime = DockerRuntime(settings.host.id, settings.host, policy=policy)
        return docker_runtime
    if kind == "fake":
        from corral.runtimes.fake import FakeRuntime

        # One state file for the worker's pool processes and its reads lane (each builds a runtime).
        state = Path(settings.host.state_dir) / "fake" / f"{settings.host.id}.json"
        fake: IsolationRuntime = FakeRuntime(settings.host.id, state_path=state)
        return fake
    raise HostConfigurationNeeded(f"unknown runtime {kind!r} (expected docker or fake)", context={"runtime": kind})
