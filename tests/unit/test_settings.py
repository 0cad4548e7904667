"""corral.settings: env ``CORRAL_*`` over the TOML file over defaults, and ``redis_url(db)``."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from corral import settings as settings_mod
from corral.contract.errors import HostConfigurationNeeded
from corral.settings import Settings, config_path, load_settings

WriteToml = Callable[[str], Path]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No CORRAL_* variable of the outer environment leaks into these tests."""
    for name in list(os.environ):
        if name.startswith("CORRAL_"):
            monkeypatch.delenv(name)
    load_settings.cache_clear()
    yield
    load_settings.cache_clear()


@pytest.fixture
def write_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> WriteToml:
    """Write a TOML file and point CORRAL_CONFIG at it."""

    def write(text: str) -> Path:
        path = tmp_path / "corral.toml"
        path.write_text(text, encoding="utf-8")
        monkeypatch.setenv("CORRAL_CONFIG", str(path))
        return path

    return write


def test_defaults_apply_when_the_toml_file_is_empty(write_toml: WriteToml) -> None:
    write_toml("")
    s = Settings()
    assert s.redis.url is None
    assert (s.redis.broker_db, s.redis.result_db, s.redis.beat_db, s.redis.state_db) == (0, 1, 2, 3)
    assert s.host.runtime == "docker"
    assert s.host.id == socket.gethostname().split(".")[0]
    assert s.host.mounts == {}
    assert s.celery.visibility_timeout_s == 3600
    assert s.state_ttl_s == 7 * 24 * 3600


def test_toml_overrides_defaults(write_toml: WriteToml) -> None:
    write_toml(
        """
        [redis]
        url = "redis://toml-redis:6379"
        state_db = 9

        [host]
        id = "toml-host"
        runtime = "fake"
        writable_mounts = ["scratch"]

        [host.mounts]
        data = "/srv/data"
        scratch = "/srv/scratch"

        [celery]
        visibility_timeout_s = 120
        """
    )
    s = Settings()
    assert s.redis.url == "redis://toml-redis:6379"
    assert s.redis.state_db == 9
    assert s.redis.broker_db == 0  # untouched keys of a section keep their defaults
    assert s.host.id == "toml-host"
    assert s.host.runtime == "fake"
    assert s.host.mounts == {"data": "/srv/data", "scratch": "/srv/scratch"}
    assert s.host.writable_mounts == ["scratch"]
    assert s.celery.visibility_timeout_s == 120
    assert s.celery.soft_shutdown_timeout_s == 10.0


def test_nested_env_overrides_toml_key_by_key(write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml(
        """
        [host]
        id = "toml-host"
        runtime = "fake"
        [redis]
        url = "redis://toml-redis:6379"
        """
    )
    monkeypatch.setenv("CORRAL_HOST__ID", "env-host")
    monkeypatch.setenv("CORRAL_REDIS__STATE_DB", "7")
    s = Settings()
    assert s.host.id == "env-host"
    # The env source overrides one key; the rest of the TOML section still applies (deep merge).
    assert s.host.runtime == "fake"
    assert s.redis.url == "redis://toml-redis:6379"
    assert s.redis.state_db == 7
    assert isinstance(s.redis.state_db, int)


def test_env_applies_without_any_toml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_CONFIG", raising=False)
    monkeypatch.setattr(settings_mod, "config_path", lambda: None)
    monkeypatch.setenv("CORRAL_REDIS__URL", "redis://env-redis:6380")
    monkeypatch.setenv("CORRAL_HOST__ID", "edge-1")
    monkeypatch.setenv("CORRAL_CELERY__SWEEP_INTERVAL_S", "2.5")
    s = Settings()
    assert s.redis.url == "redis://env-redis:6380"
    assert s.host.id == "edge-1"
    assert s.celery.sweep_interval_s == 2.5


def test_init_arguments_override_env(write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml('[host]\nid = "toml-host"\n')
    monkeypatch.setenv("CORRAL_HOST__ID", "env-host")
    assert Settings(host={"id": "init-host"}).host.id == "init-host"


def test_invalid_env_value_is_rejected(write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml("")
    monkeypatch.setenv("CORRAL_HOST__HEARTBEAT_S", "soon")
    with pytest.raises(ValidationError, match="heartbeat_s"):
        Settings()


@pytest.mark.parametrize(
    "toml",
    [
        '[redis]\nurll = "redis://typo:6379"\n',
        "[host]\nheartbeat = 5\n",
        "[celerry]\nvisibility_timeout_s = 1\n",
        "unknown_top_level = 1\n",
    ],
    ids=["redis-key", "host-key", "section", "top-level"],
)
def test_typos_in_the_toml_file_are_rejected(write_toml: WriteToml, toml: str) -> None:
    write_toml(toml)
    with pytest.raises(ValidationError):
        Settings()


def test_config_path_follows_corral_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "elsewhere.toml"
    target.write_text("")
    monkeypatch.setenv("CORRAL_CONFIG", str(target))
    assert config_path() == target


def test_config_path_naming_a_missing_file_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(RuntimeError, match="does not exist"):
        config_path()


def test_config_path_defaults_to_system_then_repo_file(monkeypatch: pytest.MonkeyPatch) -> None:
    if Path("/etc/corral/corral.toml").exists():
        assert config_path() == Path("/etc/corral/corral.toml")
    else:
        assert config_path() == settings_mod.REPO_CONFIG


def test_shipped_config_file_is_valid_and_matches_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """config/corral.toml must load under extra="forbid" and agree with the code's defaults."""
    assert settings_mod.REPO_CONFIG.is_file()
    monkeypatch.setenv("CORRAL_CONFIG", str(settings_mod.REPO_CONFIG))
    shipped = Settings()
    monkeypatch.setattr(settings_mod, "config_path", lambda: None)
    defaults = Settings()
    assert shipped.model_dump() == defaults.model_dump()


def test_load_settings_is_cached_until_cleared(write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml("")
    monkeypatch.setenv("CORRAL_HOST__ID", "first")
    first = load_settings()
    monkeypatch.setenv("CORRAL_HOST__ID", "second")
    assert load_settings() is first
    assert load_settings().host.id == "first"
    load_settings.cache_clear()
    assert load_settings().host.id == "second"


# ---------------------------------------------------------------------------------------------
# redis_url(db)


@pytest.mark.parametrize(
    ("url", "db", "expected"),
    [
        ("redis://127.0.0.1:6379", 3, "redis://127.0.0.1:6379/3"),
        ("redis://127.0.0.1:6379/", 0, "redis://127.0.0.1:6379/0"),
        ("redis://127.0.0.1:6379/0", 3, "redis://127.0.0.1:6379/3"),
        ("redis://127.0.0.1:6379/15", 2, "redis://127.0.0.1:6379/2"),
        ("redis://redis", 1, "redis://redis/1"),
        ("redis://redis/4", 1, "redis://redis/1"),
        ("redis://:s3cret@10.0.0.5:6379/5", 2, "redis://:s3cret@10.0.0.5:6379/2"),
        ("redis://user:pw@redis.example:6379", 3, "redis://user:pw@redis.example:6379/3"),
        (
            "rediss://redis.example:6380/0?ssl_cert_reqs=required",
            1,
            "rediss://redis.example:6380/1?ssl_cert_reqs=required",
        ),
    ],
)
def test_redis_url_points_at_the_requested_db(url: str, db: int, expected: str) -> None:
    assert Settings(redis={"url": url}).redis_url(db) == expected


def test_redis_url_uses_the_env_url(write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml('[redis]\nurl = "redis://toml:6379/0"\n')
    monkeypatch.setenv("CORRAL_REDIS__URL", "redis://env:6379/9")
    s = Settings()
    assert s.redis_url(s.redis.state_db) == "redis://env:6379/3"


def test_redis_url_without_a_configured_url_raises(write_toml: WriteToml) -> None:
    write_toml("")
    with pytest.raises(RuntimeError, match="CORRAL_REDIS__URL"):
        Settings().redis_url(0)


def test_redis_url_is_understood_by_redis_py() -> None:
    from redis.connection import parse_url

    parsed = parse_url(Settings(redis={"url": "redis://:pw@10.0.0.5:6380/0"}).redis_url(3))
    assert (parsed["host"], parsed["port"], parsed["password"], parsed["db"]) == ("10.0.0.5", 6380, "pw", 3)


def test_redis_url_keeps_a_unix_socket_path() -> None:
    from redis.connection import parse_url

    parsed = parse_url(Settings(redis={"url": "unix:///run/redis/redis.sock"}).redis_url(3))
    assert (parsed["path"], parsed["db"]) == ("/run/redis/redis.sock", 3)


def test_redis_url_overrides_a_db_query_parameter() -> None:
    from redis.connection import parse_url

    parsed = parse_url(Settings(redis={"url": "redis://h:6379/0?db=5"}).redis_url(3))
    assert parsed["db"] == 3


def test_role_credentials_replace_url_credentials_and_are_quoted(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("p@ss:w/rd%\n")
    s = Settings(redis={"url": "redis://admin:old@10.0.0.5:6380/7", "username": "client", "password_file": str(secret)})
    assert s.redis_url(3) == "redis://client:p%40ss%3Aw%2Frd%25@10.0.0.5:6380/3"
    assert s.redis_tls() is None
    unix = Settings(redis={"url": "unix:///run/redis.sock", "username": "worker", "password": "x"})
    assert unix.redis_url(2) == "unix://worker:x@/run/redis.sock?db=2"
    import redis

    parsed = redis.connection.parse_url(s.redis_url(3))
    assert (parsed["username"], parsed["password"], parsed["db"]) == ("client", "p@ss:w/rd%", 3)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://127.0.0.1:6379redis://127.0.0.1:6380", "two URLs pasted together"),
        ("redis://127.0.0.1:6379 redis://127.0.0.1:6380", "white space"),
        ("http://127.0.0.1:6379", "scheme"),
        ("redis://127.0.0.1:63x9", "port"),
        ("redis://:6379", "host name"),
        ("redis://h:6379/zero", "database number"),
        ("unix://", "socket path"),
    ],
)
def test_a_malformed_redis_url_is_one_clear_line(
    write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch, url: str, why: str
) -> None:
    write_toml("")
    monkeypatch.setenv("CORRAL_REDIS__URL", url)
    with pytest.raises(HostConfigurationNeeded) as raised:
        load_settings()
    message = raised.value.message
    assert message.startswith("invalid setting redis.url (CORRAL_REDIS__URL): ")
    assert why in message and "\n" not in message


def test_a_bad_setting_never_echoes_its_value(write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch) -> None:
    write_toml("")
    monkeypatch.setenv("CORRAL_REDIS__URL", "redis://worker:hunter2@h:6379redis://x:1")
    with pytest.raises(HostConfigurationNeeded) as raised:
        load_settings()
    assert "hunter2" not in str(raised.value) and "hunter2" not in repr(raised.value.context)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379", "rediss://u:p@h:6380/2?x=1", "unix:///run/redis.sock"])
def test_good_redis_urls_pass(write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    write_toml("")
    monkeypatch.setenv("CORRAL_REDIS__URL", url)
    assert load_settings().redis.url == url


def test_an_unparsable_settings_file_is_one_line(write_toml: WriteToml) -> None:
    path = write_toml("x = [\n")
    with pytest.raises(HostConfigurationNeeded, match=f"cannot read the settings file {path}"):
        load_settings()


def test_the_cli_turns_a_bad_setting_into_one_line_and_exit_125(
    write_toml: WriteToml, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from corral.client.cli import main

    write_toml("")
    monkeypatch.setenv("CORRAL_REDIS__URL", "redis://127.0.0.1:6379redis://127.0.0.1:6379")
    result = CliRunner().invoke(main, ["ps"])
    assert result.exit_code == 125
    assert result.stderr.splitlines() == [
        "corral: host_configuration_needed (host_configuration_needed): invalid setting redis.url "
        "(CORRAL_REDIS__URL): not one Redis URL: it holds 2 '://' separators (two URLs pasted together?)"
    ]


def test_corral_worker_runs_the_host_worker_with_its_reads_lane_size(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from corral.client import cli

    ran: list[list[str]] = []

    def execv(path: str, argv: list[str]) -> None:
        ran.append(argv)

    monkeypatch.setattr(cli.os, "execv", execv)
    result = CliRunner().invoke(cli.main, ["worker", "--host", "h1", "--read-concurrency", "16"])
    assert result.exit_code == 0, result.output
    [argv] = ran
    assert argv[1:] == [
        *("-m", "workers.main", "worker", "--host", "h1", "--concurrency", "4"),
        *("--read-concurrency", "16"),
    ]
    refused = CliRunner().invoke(cli.main, ["worker", "--host", "h1", "--read-concurrency", "1"])
    assert refused.exit_code == 2 and "read-concurrency" in refused.output
