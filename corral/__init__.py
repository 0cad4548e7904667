"""corral: fleet-wide sandbox execution on Celery.

The public surface: ``Client`` (send contract operations and run jobs), ``JobSpec`` (a job as a
scheduler states it) and the ``AgentError`` tree. Packages are cut by the process that runs them:
``contract`` (everywhere), ``client``, ``fleet`` and ``state`` (clients and workers), ``host`` and
``runtimes`` (the host worker), ``io`` (the per-sandbox helper, standard library only).

Nothing is imported eagerly: the I/O helper runs as ``python -m corral.io.shim`` and must not pay for
pydantic or Celery through this file.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not ``typing.TYPE_CHECKING``: importing typing costs every I/O shim 1.7 MiB
if TYPE_CHECKING:
    from typing import Any

    from corral.client.client import Client
    from corral.contract.errors import AgentError
    from corral.fleet.job import JobSpec

__all__ = ["AgentError", "Client", "JobSpec"]


def __getattr__(name: str) -> Any:
    if name == "Client":
        from corral.client.client import Client

        return Client
    if name == "JobSpec":
        from corral.fleet.job import JobSpec

        return JobSpec
    if name == "AgentError":
        from corral.contract.errors import AgentError

        return AgentError
    raise AttributeError(name)
