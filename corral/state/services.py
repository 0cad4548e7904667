"""The state services of a process (settings, store, journal over one Redis client), built on demand.

Clients and host workers alike reach corral's state through these; a host worker's coordinator is
built on top of them (``corral.host.services``).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from corral.settings import Settings, load_settings
from corral.state.journal import Journal
from corral.state.store import Store


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
