"""This host worker process's coordinator (runtime, policy, state), built lazily once.

Nothing here runs at import time. Prefork children must not share their parent's sockets, so the
cache is keyed by PID.
"""

from __future__ import annotations

import os

from corral.host.coordinator import Coordinator
from corral.host.policy_source import PolicySource
from corral.runtimes import build_runtime
from corral.state.services import state_services

_coordinators: dict[int, Coordinator] = {}


def coordinator() -> Coordinator:
    """This process's coordinator for this host."""
    pid = os.getpid()
    if pid not in _coordinators:
        services = state_services()
        settings = services.settings
        _coordinators.clear()
        # Before the runtime: loading the policy installs its mount aliases into settings.host.
        policy = PolicySource.from_settings(settings)
        _coordinators[pid] = Coordinator(
            build_runtime(settings, policy.current),
            services.store,
            services.journal,
            settings.host.id,
            policy=policy,
            admission_lease_ms=int(settings.host.admission_lease_s * 1000),
        )
    return _coordinators[pid]
