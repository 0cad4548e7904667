"""The broker as a trust boundary, attacked for real: a Redis connection without credentials is
refused, each role is confined to its keys and commands, and a task message pushed straight into a
host queue without a valid signature has no effect (counted, journaled) while a client-signed chain
cannot run a later step as somebody else."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

import pytest
import redis

from corral.celeryconf import queue_for_host
from corral.client.client import Client
from corral.contract.models import (
    CleanupRequest,
    CleanupResult,
    ProcessSignalRequest,
    ProcessState,
    SessionPrepareRequest,
    dump,
)
from corral.contract.vocabulary import ProcessSignal
from corral.fleet.job import JobSpec
from corral.settings import Settings
from corral.trust.signing import (
    BIND_KEY,
    CONTENT_TYPE,
    MessageSigner,
    _identity_of_cert,
    build_signer,
    create_identity,
    load_key,
)
from tests.conftest import TEST_CLIENT, free_port, suite_fleet
from tests.harness import REPO, count_labeled, remove_labeled, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    yield c
    c.close()


def port_of(url: str) -> int:
    return int(urlsplit(url).port or 6379)


def role(port: int, name: str) -> redis.Redis:
    return redis.Redis(port=port, username=name, password=suite_fleet().password(name), db=3)


def test_redis_refuses_connections_without_credentials(redis_url: str) -> None:
    port = port_of(redis_url)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, username="default", password="").ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, username="client", password="guess").ping()


@pytest.mark.parametrize(
    "command",
    [
        ("SET", "corral:session:x", "1"),
        ("HSET", "corral:session:x", "state", "cleaned"),
        ("DEL", "corral:host:x"),
        ("LRANGE", "corral.host.x", "0", "-1"),  # another job's queued messages
        ("DEL", "corral.host.x"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
        ("KEYS", "*"),
        ("ACL", "LIST"),
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_the_client_role_is_confined(redis_url: str, command: tuple[str, ...]) -> None:
    port = port_of(redis_url)
    with pytest.raises(redis.exceptions.NoPermissionError):
        role(port, "client").execute_command(*command)


def test_the_client_role_can_do_its_job(redis_url: str) -> None:
    """What a client needs works: read state, push to a host queue (the worker decides what runs)."""
    port = port_of(redis_url)
    c = role(port, "client")
    assert c.hgetall("corral:session:none") == {}
    broker = redis.Redis(port=port, username="client", password=suite_fleet().password("client"), db=0)
    assert broker.lpush("corral.host.nobody", b"x") == 1
    redis.Redis.from_url(f"{redis_url}/0").delete("corral.host.nobody")


@pytest.mark.parametrize("command", [("FLUSHALL",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("SAVE",), ("ACL", "LIST")])
def test_workers_and_flower_cannot_run_dangerous_commands(redis_url: str, command: tuple[str, ...]) -> None:
    port = port_of(redis_url)
    for name in ("worker", "flower", "beat"):
        with pytest.raises(redis.exceptions.NoPermissionError):
            role(port, name).execute_command(*command)


# -- forged messages -----------------------------------------------------------------------------


def publish(
    client: Client,
    host: str,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    encode: Callable[[Any], tuple[bytes, str, str]],
) -> str:
    """Push a protocol 2 task message straight into a host queue, encoded by ``encode``, with the
    client's own Redis credentials (what any holder of client credentials can do)."""
    task_id = str(uuid.uuid4())
    message = client.app.amqp.as_task_v2(task_id, name, args=args, kwargs=kwargs)
    body, content_type, encoding = encode(list(message.body))
    with client.app.connection_for_write() as conn:
        conn.Producer().publish(
            body,
            exchange="",
            routing_key=queue_for_host(host),
            headers=message.headers,
            content_type=content_type,
            content_encoding=encoding,
            **message.properties,
        )
    return task_id


def as_json(body: Any) -> tuple[bytes, str, str]:
    return json.dumps(body).encode(), "application/json", "utf-8"


def as_raw_data(body: Any) -> tuple[bytes, str, str]:
    """kombu trusts ``application/data`` and hands it over undecoded; the worker's gate does not."""
    return json.dumps(body).encode(), "application/data", "binary"


def signed_by(signer: MessageSigner) -> Callable[[Any], tuple[bytes, str, str]]:
    return lambda body: (signer.serialize(body), CONTENT_TYPE, "binary")


def replayed_as(signer: MessageSigner, task: str) -> Callable[[Any], tuple[bytes, str, str]]:
    """A validly signed body bound to another task name (a captured ``collect_stats``), published with
    the header of ``signal_process``."""

    def encode(body: Any) -> tuple[bytes, str, str]:
        body[2][BIND_KEY] = [task, "some-other-id"]
        return signer.serialize(body), CONTENT_TYPE, "binary"

    return encode


def tampered(signer: MessageSigner) -> Callable[[Any], tuple[bytes, str, str]]:
    def encode(body: Any) -> tuple[bytes, str, str]:
        raw = signer.serialize(body)
        return raw.replace(b'"grace_ms": 0', b'"grace_ms": 1'), CONTENT_TYPE, "binary"

    return encode


@pytest.fixture
def rogue(tmp_path: Path) -> MessageSigner:
    """A well-formed key pair no worker trusts."""
    key, cert = create_identity(TEST_CLIENT, tmp_path / "rogue")  # even claiming a trusted name
    return MessageSigner(load_key(str(key)), _identity_of_cert(str(cert))[1], {}, {})


def test_unsigned_forged_and_tampered_messages_have_no_effect(
    worker_factory, client: Client, busybox_image: str, docker_client, rogue: MessageSigner, redis_url: str
) -> None:
    admin = redis.Redis.from_url(f"{redis_url}/0", decode_responses=True)
    admin.execute_command("ACL", "LOG", "RESET")
    worker = worker_factory()
    host = worker.host_id
    handle = client.submit(JobSpec(image=busybox_image, argv=["sleep", "60"]), host=host)
    client.wait(handle)
    kill = dump(ProcessSignalRequest(process_ref=handle.process_ref, signal=ProcessSignal.kill, grace_ms=0))
    kwargs = {"host": host, "caller": TEST_CLIENT}
    mine = build_signer(client.settings)
    new_env = JobSpec(image=busybox_image, argv=["true"]).environment()
    prepare = dump(SessionPrepareRequest(environment=new_env, host_ref=host))
    forged = {
        publish(client, host, "corral.signal_process", [kill], kwargs, as_json): "unsigned",
        publish(client, host, "corral.signal_process", [kill], kwargs, as_raw_data): "unsigned",
        publish(client, host, "corral.signal_process", [kill], kwargs, signed_by(rogue)): "unknown signer",
        publish(client, host, "corral.signal_process", [kill], kwargs, tampered(mine)): "bad signature",
        publish(client, host, "corral.prepare_session", [prepare], kwargs, as_json): "unsigned",
        publish(client, host, "corral.signal_process", [kill], kwargs, replayed_as(mine, "corral.collect_stats")): (
            "headers do not match the signed body"
        ),
    }
    store = client.services.store
    assert wait_until(lambda: store.rejections(host).get("total") == len(forged), 30), (
        store.rejections(host),
        worker.log(),
    )
    assert store.rejections(host) == {
        "total": 6,
        "unsigned": 3,
        "unknown signer": 1,
        "bad signature": 1,
        "headers do not match the signed body": 1,
    }
    # No effect: the sandbox still runs, the forged session does not exist, nothing new was created.
    assert client.stats(handle).state is ProcessState.running
    assert store.session(new_env.environment_id) == {}
    assert count_labeled(docker_client, host) == {"containers": 1, "networks": 0}
    # Journaled with the task name, id and reason only: nothing of the refused payload.
    records = [r for r in client.services.journal.read_host(host) if r.fields.get("rule") == "signature"]
    assert {r.fields["task_id"]: r.fields["reason"] for r in records} == forged
    for record in records:
        assert set(record.fields) == {"kind", "op", "task_id", "rule", "reason"}
        assert record.kind == "denial"
        assert handle.process_ref not in json.dumps(record.fields)
    # The same request, properly signed, does take effect (the forged ones were refused, not lost).
    client.signal(handle, ProcessSignal.kill, grace_ms=0)
    assert wait_until(lambda: client.stats(handle).state is ProcessState.exited, 30)
    client.cleanup(handle)
    # The roles are tight, not broken: the client and the worker did all of the above without a denial.
    assert [(e["username"], e["reason"], e["object"]) for e in admin.acl_log(100)] == []


def test_a_client_cannot_run_a_later_chain_step_as_someone_else(
    worker_factory, client: Client, busybox_image: str
) -> None:
    """Step 2 of a client-signed chain names another identity as its caller; the worker that publishes
    step 2 (with its own key) carries the signer's identity instead, and that is what the task sees."""
    worker = worker_factory()
    host, queue = worker.host_id, queue_for_host(worker.host_id)
    env = JobSpec(image=busybox_image, argv=["true"]).environment()
    first = client.app.signature(
        "corral.runtime_ref", kwargs={"host": host, "caller": TEST_CLIENT}, immutable=True
    ).set(queue=queue)
    second = client.app.signature(
        "corral.prepare_session",
        args=[dump(SessionPrepareRequest(environment=env, host_ref=host))],
        kwargs={"host": host, "caller": "other-client"},
        immutable=True,
    ).set(queue=queue)
    result = (first | second).apply_async()
    result.get(timeout=60)
    record = client.services.store.session(env.environment_id)
    assert record["identity"] == TEST_CLIENT
    client.call(
        "cleanup", CleanupRequest(environment=env, cleanup_plan_ref=f"plan-{env.environment_id}"), host, CleanupResult
    )


# -- corral dev ----------------------------------------------------------------------------------


def test_corral_dev_never_runs_an_open_redis(
    corral_env: dict[str, str], tmp_path: Path, docker_client, busybox_image: str
) -> None:
    """`corral dev` creates its credentials on first start (private files), its Redis refuses a
    connection without them, a client with the printed settings runs a job, and Flower (read-mostly
    user, no signing key) still shows the tasks."""
    host = f"it-dev-{uuid.uuid4().hex[:6]}"
    state = tmp_path / "devstate"
    env = {k: v for k, v in corral_env.items() if not k.startswith(("CORRAL_REDIS__", "CORRAL_SECURITY__"))}
    env["CORRAL_HOST__STATE_DIR"] = str(state)
    flower_port = free_port()
    argv = [sys.executable, "-m", "corral", "dev", "--host", host, "--flower-port", str(flower_port)]
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        env_file = state / "dev" / "env" / "client.env"
        assert wait_until(lambda: env_file.exists() or proc.poll() is not None, 60)
        assert proc.poll() is None, log.read_text()
        client_env = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
        port = port_of(client_env["CORRAL_REDIS__URL"])
        # Private credentials: directories 0700, secrets 0600; nothing in the env file is a secret.
        assert (state / "dev").stat().st_mode & 0o777 == 0o700
        for path in [*(state / "dev" / "redis").iterdir(), *(state / "dev" / "identities").glob("*.key"), env_file]:
            assert path.stat().st_mode & 0o777 == 0o600, path
        password = Path(client_env["CORRAL_REDIS__PASSWORD_FILE"]).read_text().strip()
        assert password not in env_file.read_text()
        # The attack: anybody on this machine connecting without credentials.
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, username="default", password="").ping()
        # What the printed settings are for: a client in another shell runs a job.
        run_env = {**env, **client_env}
        assert wait_until(lambda: corral_cli(run_env, "hosts", "--json").returncode == 0, 60)
        done = corral_cli(run_env, "run", "--host", host, busybox_image, "--", "echo", "hello")
        assert (done.returncode, done.stdout) == (0, b"hello\n"), done.stderr
        # Flower answers its operator only (the basic auth `corral dev` generates; test_flower_browser.py).
        flower_auth = base64.b64encode((state / "dev" / "flower.auth").read_text().strip().encode()).decode()
        url = f"http://127.0.0.1:{flower_port}/api/tasks"
        request = Request(url, headers={"Authorization": f"Basic {flower_auth}"})
        tasks = json.loads(urlopen(request, timeout=10).read())
        assert any(t.get("name") == "corral.launch" for t in tasks.values()), tasks
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        remove_labeled(docker_client, host)


def corral_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], env=env, cwd=REPO, capture_output=True, timeout=120, check=False
    )


def test_a_standalone_beat_runs_sweeps_with_its_own_role(
    worker_factory, corral_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    """`corral beat` as the beat user with the corral-beat key: its scheduled sweeps are accepted by a
    worker (a fleet component's signature) and Redis denies it nothing it needs."""
    admin = redis.Redis.from_url(f"{redis_url}/0", decode_responses=True)
    admin.execute_command("ACL", "LOG", "RESET")
    worker = worker_factory()
    env = {**corral_env, **suite_fleet().role_env("beat", "corral-beat")}
    env.pop("CORRAL_SECURITY__CLIENT_CERTS", None)
    log = tmp_path / "beat.log"
    with log.open("wb") as out:
        beat = subprocess.Popen(
            [sys.executable, "-m", "workers.main", "beat"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert wait_until(lambda: worker.log().count("corral.sweep_tickets") >= 4, 60), log.read_text()[-3000:]
    finally:
        os.killpg(beat.pid, signal.SIGTERM)
        beat.wait(30)
    denied = [(e["reason"], e["object"]) for e in admin.acl_log(100) if e["username"] == "beat"]
    assert denied == []
    assert "refused task message" not in worker.log()
