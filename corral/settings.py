"""Settings: env ``CORRAL_*`` over a TOML file over defaults.

The TOML file is ``$CORRAL_CONFIG`` when set, else ``/etc/corral/corral.toml`` when it exists,
else the packaged ``config/corral.toml``. Nested keys use ``__`` in the environment
(``CORRAL_HOST__ID=edge-1``). Building settings has no side effect; call ``load_settings()``.

What a request may ask for (images, mount aliases, limits, network, detach, users, fallback
approvals) is not a setting but the host policy, a separate file named by ``host.policy_file``
(``corral.sandbox.policy``, reloaded while running by ``corral.host.policy_source``).
"""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from corral.contract.errors import HostConfigurationNeeded

REPO_CONFIG = Path(__file__).resolve().parent.parent / "config" / "corral.toml"
REPO_POLICY = REPO_CONFIG.with_name("policy.toml")
SYSTEM_POLICY = Path("/etc/corral/policy.toml")


class RedisSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    """``redis://host:port`` or ``rediss://host:port`` (TLS); unset means ``corral dev`` starts a local
    redis-server child. Credentials may be in the URL; ``username``/``password_file`` replace them."""
    broker_db: int = 0
    result_db: int = 1
    beat_db: int = 2
    state_db: int = 3
    username: str | None = None
    """The Redis ACL user of this process's role (worker, client, beat, flower, admin)."""
    password_file: str | None = None
    """A file holding that user's password (mode 0600); preferred over ``password``."""
    password: str | None = None
    """The password itself (visible in the environment of the process: prefer ``password_file``)."""
    tls_ca_file: str | None = None
    """``rediss://`` only: CA bundle that signed the server certificate (unset: the system store)."""
    tls_cert_file: str | None = None
    """``rediss://`` only: client certificate, when the server asks for one (``tls-auth-clients``)."""
    tls_key_file: str | None = None
    tls_verify: bool = True
    """``rediss://`` only: verify the server certificate (never turn off outside a test)."""

    @field_validator("url")
    @classmethod
    def _one_url(cls, value: str | None) -> str | None:
        if value is not None:
            check_redis_url(value)
        return value

    def secret(self) -> str | None:
        if self.password_file:
            try:
                return Path(self.password_file).read_text().strip()
            except OSError as exc:
                raise RuntimeError(f"cannot read redis.password_file {self.password_file}: {exc.strerror}") from None
        return self.password

    def tls_options(self) -> dict[str, Any]:
        """redis-py keyword arguments for ``rediss://`` (kombu, the result backend and redbeat take the same)."""
        import ssl

        options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED if self.tls_verify else ssl.CERT_NONE}
        if self.tls_ca_file:
            options["ssl_ca_certs"] = self.tls_ca_file
        if self.tls_cert_file:
            options["ssl_certfile"] = self.tls_cert_file
        if self.tls_key_file:
            options["ssl_keyfile"] = self.tls_key_file
        return options


def check_redis_url(url: str) -> None:
    """Refuse a Redis URL that redis-py would choke on later with a traceback. The messages never
    repeat the URL: it may hold a password."""
    if not url or any(c.isspace() for c in url):
        raise ValueError("not a Redis URL: it is empty or contains white space")
    if url.count("://") != 1:
        raise ValueError(f"not one Redis URL: it holds {url.count('://')} '://' separators (two URLs pasted together?)")
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("the scheme must be redis://, rediss:// or unix://")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("a unix:// URL needs the socket path (unix:///run/redis.sock)")
        return
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ValueError("the port is not a number from 1 to 65535 (redis://HOST:PORT)") from None
    if not parts.hostname:
        raise ValueError("no host name (redis://HOST:PORT)")
    if parts.path not in ("", "/") and not parts.path.lstrip("/").isdigit():
        raise ValueError("the path must be empty or a database number (redis://HOST:PORT/0)")


class SecuritySettings(BaseModel):
    """Message signing (``corral.trust.signing``). Every process has its own key pair; the certificate's
    common name is its identity. Workers verify with two trust stores: client certificates (their
    caller is the signer) and fleet component certificates (``corral-*``: workers, beat)."""

    model_config = ConfigDict(extra="forbid")
    key_file: str | None = None
    """This process's Ed25519 private key (PEM, mode 0600); made by ``corral keys``."""
    cert_file: str | None = None
    """Its self-signed certificate; the subject common name is this process's identity."""
    client_certs: str | None = None
    """Worker side: a directory of trusted client certificates (one identity each)."""
    component_certs: str | None = None
    """Worker, beat and Flower side: a directory of trusted fleet component certificates."""


class HostSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    runtime: str = "docker"
    """``docker``, or ``fake``: runs nothing and isolates nothing, for trials and tests (it serves default
    jobs, and its capability report says it is a fake; ``corral.runtimes.fake``)."""
    policy_file: str | None = None
    """The host policy (TOML); unset: ``/etc/corral/policy.toml`` if present, else the shipped
    ``config/policy.toml``. A named file that is missing or invalid denies every request."""
    policy_check_s: float = Field(default=2.0, ge=0)
    """How often (at most) the policy file's mtime is checked for a reload."""
    mounts: dict[str, str] = Field(default_factory=dict)
    """Legacy mount aliases (alias -> host path), merged into the policy's ``[mounts]`` as read-only
    aliases. Once the policy is loaded this holds the whole alias table (what the runtime reads)."""
    writable_mounts: list[str] = Field(default_factory=list)
    """Legacy: aliases of ``mounts`` that may also be mounted writable."""
    state_dir: str = "/var/lib/corral"
    """Host-local state: I/O spools and detach acknowledgements."""
    secrets_root: str = "/dev/shm/corral-secrets"
    """Where per-session secret directories live; must be on a tmpfs."""
    secrets_dir: str = "/etc/corral/secrets"
    """Host secret provider: one file per secret name."""
    secret_providers: list[str] = Field(
        default_factory=lambda: [
            "corral.sandbox.secrets:DirectoryProvider",
            "corral.sandbox.secrets:EnvironmentProvider",
        ]
    )
    """Secret providers asked in order, by import path ``package.module:Attribute`` (``corral.sandbox.secrets``);
    plug-ins are imported on the worker only."""
    allow_secrets_off_tmpfs: bool = False
    """Tests only: let file secrets be written when ``secrets_root`` is not on a tmpfs (they could reach a disk)."""
    heartbeat_s: float = 5.0
    heartbeat_ttl_s: float = 20.0
    slots: int | None = Field(default=None, ge=0)
    """Sandboxes admission places here at once (``corral worker --slots N``); unset: the policy's
    ``limits.max_sandboxes`` (which also caps this)."""
    capacity_cpus: float | None = Field(default=None, ge=0)
    """CPUs admission may allocate here (jobs' ``cpus`` summed); unset: ``os.cpu_count()`` times
    ``cpu_overcommit``."""
    cpu_overcommit: float = Field(default=4.0, gt=0)
    """A job's ``cpus`` is a limit (a CFS quota), not a guarantee, so by default admission lets the
    limits add up to 4x the machine's CPUs; 1 makes every limit a reservation (Nomad's default)."""
    capacity_memory_mb: int | None = Field(default=None, ge=0)
    """Memory admission may allocate here (jobs' ``memory_mb`` summed); unset: MemTotal."""
    admission_lease_s: float = Field(default=120.0, gt=0)
    """How long a reservation this worker's placement makes waits for its session (the chain's
    ``prepare_session``) before its capacity returns (a client that reserved and died)."""
    reconcile_grace_s: float = 60.0
    """An environment found unowned is reclaimed only once it stayed unowned this long."""
    reconcile_stale_after_s: float = 900.0
    """A session stuck preparing/prepared/cleaning this long is treated as abandoned."""
    allow_raw_output: bool = True
    """Whether ``raw_content_if_policy_allows`` capture may return output bytes."""

    _configured: tuple[dict[str, str], list[str]] = PrivateAttr(default=({}, []))
    _symlink_roots: dict[str, str] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        self._configured = (dict(self.mounts), list(self.writable_mounts))

    def configured_mounts(self) -> tuple[dict[str, str], list[str]]:
        """``mounts`` / ``writable_mounts`` as configured (before any policy aliases were merged in)."""
        return dict(self._configured[0]), list(self._configured[1])

    def use_mount_aliases(
        self, mounts: dict[str, str], writable: list[str], symlink_roots: dict[str, str] | None = None
    ) -> None:
        """Install the policy's alias table, in place: a runtime holding this object sees it at once.
        ``symlink_roots``: alias -> the directory symlinks in its path may resolve within (policy
        ``symlinks = "within_alias"``); only the policy file sets it, never a setting or a request."""
        self.mounts = dict(mounts)
        self.writable_mounts = list(writable)
        self._symlink_roots = dict(symlink_roots or {})

    def symlink_root(self, alias: str) -> str | None:
        """Where symlinks in ``alias``'s path may lead; None: no symlink is followed at all."""
        return self._symlink_roots.get(alias)


class CelerySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    visibility_timeout_s: int = 3600
    """Must be the same on every worker: Redis redelivers a task unacked for this long."""
    restore_interval_s: int = 10
    """How often a worker sweeps for unacked tasks older than the visibility timeout (those of a
    killed worker) and puts them back on their queue."""
    soft_shutdown_timeout_s: float = 10.0
    sweep_interval_s: float = 5.0
    dispatch_interval_s: float = Field(default=1.0, gt=0)
    """How often the batch dispatcher runs while batches are active (and beat's backstop period)."""
    reconcile_interval_s: float = 300.0
    """How often beat asks every live host to reconcile (each worker also does on start)."""
    task_timeout_s: float = 60.0
    """How long a client waits for one operation's result."""


class MetricsSettings(BaseModel):
    """The worker's Prometheus endpoint (``corral.host.metrics``), served by its main process."""

    model_config = ConfigDict(extra="forbid")
    port: int = Field(default=9808, ge=0, le=65535)
    """TCP port of ``/metrics``; 0 turns the endpoint off. One worker per host: one port."""
    bind: str = "127.0.0.1"
    """Address to listen on: loopback unless a scraper elsewhere must reach it (then firewall it)."""
    multiproc_dir: str | None = None
    """Where the pool's processes keep their counters (prometheus_client multiprocess mode); wiped at
    worker start. Unset: ``<host.state_dir>/metrics/<host.id>``."""


class TestingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    faults: str = ""
    """Comma-separated crash-matrix fault points (``corral.host.faults``); never set in production."""
    fault_dir: str | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CORRAL_", env_nested_delimiter="__", extra="forbid")

    redis: RedisSettings = Field(default_factory=RedisSettings)
    host: HostSettings = Field(default_factory=HostSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    testing: TestingSettings = Field(default_factory=TestingSettings)
    state_ttl_s: int = 7 * 24 * 3600
    """Backstop TTL on every state key."""

    @model_validator(mode="before")
    @classmethod
    def _limits_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "limits" in data:
            raise ValueError(
                "the [limits] section moved to the host policy file ([limits] in config/policy.toml, "
                "named by host.policy_file); max_detach_ttl_ms is now [detach] max_ttl_ms"
            )
        return data

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
        netloc = parts.netloc
        if self.redis.username is not None or self.redis.password_file or self.redis.password:
            # The role's credentials replace any in the URL (quoted: a password may hold any byte).
            user = quote(self.redis.username or "", safe="")
            secret = self.redis.secret()
            auth = f"{user}:{quote(secret, safe='')}" if secret is not None else user
            netloc = f"{auth}@{netloc.rpartition('@')[2]}"
        if parts.scheme == "unix":  # redis-py: unix://<path>?db=N
            return f"unix://{netloc}{parts.path}?{urlencode([*query, ('db', str(db))])}"
        return urlunsplit((parts.scheme, netloc, f"/{db}", urlencode(query), ""))

    def redis_tls(self) -> dict[str, Any] | None:
        """TLS options for every Redis client when the URL is ``rediss://``; None otherwise."""
        if not self.redis.url or urlsplit(self.redis.url).scheme != "rediss":
            return None
        return self.redis.tls_options()


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


def policy_path(settings: Settings) -> Path | None:
    """The host policy file: ``host.policy_file`` (even when missing: that fails closed), else the
    system file, else the shipped one; None when there is none at all (built-in defaults apply)."""
    if settings.host.policy_file:
        return Path(settings.host.policy_file)
    for candidate in (SYSTEM_POLICY, REPO_POLICY):
        if candidate.exists():
            return candidate
    return None


def setting_name(loc: tuple[int | str, ...]) -> str:
    """``redis.url (CORRAL_REDIS__URL)`` for a validation error's location."""
    keys = [str(part) for part in loc if isinstance(part, str)]
    dotted = ".".join(keys) or "<settings>"
    return f"{dotted} (CORRAL_{'__'.join(k.upper() for k in keys)})" if keys else dotted


def settings_error(exc: ValidationError) -> HostConfigurationNeeded:
    """One readable line for invalid settings: each bad key and why, never the value it held
    (a Redis URL or a password may be in it)."""
    problems = []
    for error in exc.errors()[:3]:
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{setting_name(tuple(error['loc']))}: {message}")
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return HostConfigurationNeeded(
        "invalid setting " + "; ".join(problems) + more, context={"errors": str(exc.error_count())}
    )


@lru_cache(maxsize=1)
def load_settings(**overrides: Any) -> Settings:
    """Settings for this process, built once (``load_settings.cache_clear()`` in tests). Bad settings
    (environment, TOML file) raise ``HostConfigurationNeeded`` with one readable line."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise settings_error(exc) from None
    except RuntimeError as exc:  # CORRAL_CONFIG naming a missing file
        raise HostConfigurationNeeded(str(exc)) from None
    except (ValueError, OSError) as exc:  # the TOML file itself: unreadable or not TOML
        raise HostConfigurationNeeded(f"cannot read the settings file {config_path()}: {exc}") from None
