"""corral: fleet-wide sandbox execution on Celery.

The public surface: ``Client`` (send contract operations and run jobs), ``JobSpec`` (a job as a
scheduler states it) and the ``AgentError`` tree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.errors import AgentError
from corral.job import JobSpec

if TYPE_CHECKING:
    from corral.client import Client

__all__ = ["AgentError", "Client", "JobSpec"]


def __getattr__(name: str) -> Any:
    # Client pulls in Celery; import it on first use only.
    if name == "Client":
        from corral.client import Client

        return Client
    raise AttributeError(name)
