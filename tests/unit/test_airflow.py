"""The pure parts of ``corral.airflow``: the idempotency key of a task instance, the XCom value of an
output, what of a job's tail the live stream missed, and the settings an Airflow Connection gives (the
DAG runs are in tests/integration)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from corral.settings import load_settings
from tests.conftest import IN_CI

if importlib.util.find_spec("airflow") is None:  # skip locally, fail under CI (tests/conftest.py)
    if IN_CI:
        pytest.fail("apache-airflow (the [airflow] extra) is required under CI=true", pytrace=False)
    pytest.skip("apache-airflow not installed", allow_module_level=True)

import json

from airflow.models.connection import Connection

from corral.airflow import CorralBatchTrigger, connection_settings, idempotency_key, last_line, missing_part
from corral.settings import Settings


def test_idempotency_key_is_one_per_task_instance_and_bounded() -> None:
    key = idempotency_key("etl", "manual__2026-11-30T13:00:00+00:00", "load", -1)
    assert key == "airflow:etl:manual__2026-11-30T13:00:00+00:00:load:-1"
    assert key == idempotency_key("etl", "manual__2026-11-30T13:00:00+00:00", "load", -1)
    assert key != idempotency_key("etl", "manual__2026-11-30T13:00:00+00:00", "load", 0)
    long = idempotency_key("d" * 250, "r", "t", -1)
    assert len(long) <= 200 and long == idempotency_key("d" * 250, "r", "t", -1)
    assert long != idempotency_key("d" * 249, "r", "t", -1)


@pytest.mark.parametrize(
    ("text", "name", "value"),
    [
        ("a\nb\n", None, "b"),
        ("a\nb\n\n  \n", None, "b"),
        ("", None, None),
        ("rows=1\nx\nrows=2\ny\n", "rows", "2"),
        ("rowsx=1\n", "rows", None),
        ("rows=\n", "rows", ""),
    ],
)
def test_last_line_and_named_output(text: str, name: str | None, value: str | None) -> None:
    assert last_line(text, name) == value


@pytest.mark.parametrize(
    ("seen", "tail", "rest"),
    [
        ("abc\ndef\n", "def\n", ""),  # streamed everything
        ("abc\n", "abc\ndef\n", "def\n"),  # the stream stopped early: the tail has the rest
        ("", "xyz\n", "xyz\n"),  # nothing streamed
        ("0123456789", "6789AB", "AB"),  # the tail is the end of a longer output
        ("abc", "", ""),
    ],
)
def test_missing_part(seen: str, tail: str, rest: str) -> None:
    assert missing_part(seen, tail) == rest


def test_the_trigger_serializes_to_what_rebuilds_it() -> None:
    path, kwargs = CorralBatchTrigger("bat-0123456789ab", 0.5).serialize()
    assert path == "corral.airflow.CorralBatchTrigger"
    assert CorralBatchTrigger(**kwargs).serialize() == (path, kwargs)


@pytest.mark.redis
def test_the_trigger_fires_once_the_batch_is_over(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """The trigger's own loop against a real Redis: it waits while a job runs, fires when none is left."""
    import redis

    monkeypatch.setenv("CORRAL_REDIS__URL", redis_url)
    load_settings.cache_clear()  # settings are built once per process: another test may have built them
    request.addfinalizer(load_settings.cache_clear)
    r = redis.Redis.from_url(f"{redis_url}/3", decode_responses=True)
    key = "corral:batch:bat-0123456789ab"
    r.hset(key, mapping={"state": "active", "running": "1", "total": "1", "succeeded": "0"})

    async def first_event() -> dict[str, object]:
        events = CorralBatchTrigger("bat-0123456789ab", 0.05).run()
        waiting = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0.3)
        assert not waiting.done()  # still running: no event
        r.hset(key, mapping={"state": "finished", "running": "0", "succeeded": "1"})
        event = await asyncio.wait_for(waiting, 10)
        await events.aclose()
        return dict(event.payload)

    payload = asyncio.run(first_event())
    assert (payload["batch_id"], payload["state"], payload["succeeded"]) == ("bat-0123456789ab", "finished", "1")
    r.delete(key)

    async def gone() -> object:
        events = CorralBatchTrigger("bat-0123456789ab", 0.05).run()
        event = await events.__anext__()
        await events.aclose()
        return event.payload

    assert asyncio.run(gone()) == {"batch_id": "bat-0123456789ab", "state": "missing"}
    r.close()


def test_host_login_and_identity_come_from_the_connection() -> None:
    conn = Connection(
        conn_id="corral_default",
        conn_type="corral",
        host="redis.internal",
        port=6380,
        login="client",
        password="s3cret",
        extra=json.dumps({"key_file": "/keys/etl.key", "cert_file": "/keys/etl.crt", "state_db": 5}),
    )
    base = Settings(redis={"url": "redis://elsewhere:6379", "username": "other"}, celery={"task_timeout_s": 9})
    settings = connection_settings(conn, base)
    assert settings.redis_url(settings.redis.state_db) == "redis://client:s3cret@redis.internal:6380/5"
    assert (settings.security.key_file, settings.security.cert_file) == ("/keys/etl.key", "/keys/etl.crt")
    assert settings.celery.task_timeout_s == 9  # what the connection leaves out stays the process's own
    assert base.redis.url == "redis://elsewhere:6379"  # the base is not changed


def test_tls_a_whole_url_and_unknown_extras() -> None:
    tls = Connection(conn_id="c", conn_type="corral", host="r", extra=json.dumps({"tls": True, "tls_ca_file": "/ca"}))
    settings = connection_settings(tls, Settings())
    assert settings.redis.url == "rediss://r:6379" and settings.redis.tls_ca_file == "/ca"
    whole = Connection(conn_id="c", conn_type="corral", extra=json.dumps({"url": "redis://u:p@h:1"}))
    assert connection_settings(whole, Settings()).redis.url == "redis://u:p@h:1"
    typo = Connection(conn_id="c", conn_type="corral", host="r", extra=json.dumps({"keyfile": "/k"}))
    with pytest.raises(ValueError, match="unknown extra field"):
        connection_settings(typo, Settings())
