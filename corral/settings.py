"""Settings: env ``CORRAL_*`` over a TOML file over defaults.

The TOML file is ``$CORRAL_CONFIG`` when set, else ``/etc/corral/corral.toml`` when it exists,
else the packaged ``config/corral.toml``. Nested keys use ``__`` in the environment
(``CORRAL_HOST__ID=edge-1``). Building settings has no side effect; call ``load_settings()``.
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "corral.toml"


class RedisSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    """``redis://host:port``; unset means ``corral dev`` starts a local redis-server child."""
    broker_db: int = 0
    result_db: int = 1
    beat_db: int = 2
    state_db: int = 3


class HostSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    runtime: str = "docker"
    """``docker`` or ``fake`` (unit tests only)."""
    mounts: dict[str, str] = Field(default_factory=dict)
    """Mount aliases: alias -> host directory. Callers name aliases, never host paths."""
    writable_mounts: list[str] = Field(default_factory=list)
    """Aliases that may be mounted writable; every other alias is read-only."""
    state_dir: str = "/var/lib/corral"
    """Host-local state: I/O spools and detach acknowledgements."""
    secrets_root: str = "/dev/shm/corral-secrets"
    """Where per-session secret directories live; must be on a tmpfs."""
    secrets_dir: str = "/etc/corral/secrets"
    """Host secret provider: one file per secret name."""
    secret_providers: list[str] = Field(
        default_factory=lambda: ["corral.secrets:DirectoryProvider", "corral.secrets:EnvironmentProvider"]
    )
    """Secret providers asked in order, by import path ``package.module:Attribute`` (``corral.secrets``);
    plug-ins are imported on the worker only."""
    allow_secrets_off_tmpfs: bool = False
    """Tests only: let file secrets be written when ``secrets_root`` is not on a tmpfs (they could reach a disk)."""
    heartbeat_s: float = 5.0
    heartbeat_ttl_s: float = 20.0
    reconcile_grace_s: float = 60.0
    """An environment found unowned is reclaimed only once it stayed unowned this long."""
    reconcile_stale_after_s: float = 900.0
    """A session stuck preparing/prepared/cleaning this long is treated as abandoned."""
    allow_raw_output: bool = True
    """Whether ``raw_content_if_policy_allows`` capture may return output bytes."""


class CelerySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    visibility_timeout_s: int = 3600
    """Must be the same on every worker: Redis redelivers a task unacked for this long."""
    restore_interval_s: int = 10
    """How often a worker sweeps for unacked tasks older than the visibility timeout (those of a
    killed worker) and puts them back on their queue."""
    soft_shutdown_timeout_s: float = 10.0
    sweep_interval_s: float = 5.0
    reconcile_interval_s: float = 300.0
    """How often beat asks every live host to reconcile (each worker also does on start)."""
    task_timeout_s: float = 60.0
    """How long a client waits for one operation's result."""


class LimitSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_cpus: float = 16
    max_memory_mb: int = 65_536
    max_timeout_ms: int = 24 * 3600 * 1000
    max_process_count: int = 4096
    max_detach_ttl_ms: int = 7 * 24 * 3600 * 1000


class TestingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faults: str = ""
    """Comma-separated crash-matrix fault points (``corral.faults``); never set in production."""
    fault_dir: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORRAL_", env_nested_delimiter="__", extra="forbid")

    redis: RedisSettings = Field(default_factory=RedisSettings)
    host: HostSettings = Field(default_factory=HostSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    testing: TestingSettings = Field(default_factory=TestingSettings)
    state_ttl_s: int = 7 * 24 * 3600
    """Backstop TTL on every state key."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_path()))

    def redis_url(self, db: int) -> str:
        """The configured Redis URL pointed at logical database ``db`` (any db in the URL is replaced)."""
        if not self.redis.url:
            raise RuntimeError("no Redis URL configured (set CORRAL_REDIS__URL or run `corral dev`)")
        parts = urlsplit(self.redis.url)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "db"]
        if parts.scheme == "unix":  # redis-py: unix://<path>?db=N
            return f"unix://{parts.netloc}{parts.path}?{urlencode([*query, ('db', str(db))])}"
        return urlunsplit((parts.scheme, parts.netloc, f"/{db}", urlencode(query), ""))


def config_path() -> Path | None:
    explicit = os.environ.get("CORRAL_CONFIG")
    if explicit:
        if not Path(explicit).is_file():
            raise RuntimeError(f"CORRAL_CONFIG names a file that does not exist: {explicit}")
        return Path(explicit)
    system = Path("/etc/corral/corral.toml")
    if system.exists():
        return system
    return REPO_CONFIG if REPO_CONFIG.exists() else None


@lru_cache(maxsize=1)
def load_settings(**overrides: Any) -> Settings:
    """Settings for this process, built once (``load_settings.cache_clear()`` in tests)."""
    return Settings(**overrides)
