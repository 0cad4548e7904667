"""Per-process service objects (Redis clients, the runtime, the coordinator), built lazily once.

Nothing here runs at import time. Prefork children must not share their parent's sockets, so the
cache is keyed by PID.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import redis

from corral.coordinator import Coordinator
from corral.journal import Journal
from corral.policy_source import PolicySource
from corral.runtimes import build_runtime
from corral.settings import Settings, load_settings
from corral.store import Store


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: Store
    journal: Journal


def state_services(settings: Settings | None = None) -> Services:
    settings = settings or load_settings()
    client = redis.Redis.from_url(
        settings.redis_url(settings.redis.state_db),
        decode_responses=True,
        health_check_interval=30,
        **(settings.redis_tls() or {}),
    )
    return Services(settings, Store(client, settings.state_ttl_s), Journal(client, settings.state_ttl_s))


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
