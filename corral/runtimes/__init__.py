"""Runtime adapters and the one place a runtime is chosen (where mypy checks Protocol conformance)."""

from __future__ import annotations

from corral.contract import IsolationRuntime
from corral.errors import HostConfigurationNeeded
from corral.settings import Settings


def build_runtime(settings: Settings) -> IsolationRuntime:
    kind = settings.host.runtime
    if kind == "docker":
        from corral.runtimes.docker import DockerRuntime

        docker_runtime: IsolationRuntime = DockerRuntime(settings.host.id, settings.host)
        return docker_runtime
    if kind == "fake":
        from corral.runtimes.fake import FakeRuntime

        fake: IsolationRuntime = FakeRuntime(settings.host.id)
        return fake
    raise HostConfigurationNeeded(f"unknown runtime {kind!r} (expected docker or fake)", context={"runtime": kind})
