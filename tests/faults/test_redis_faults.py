"""Redis faults with real parts: an AOF Redis killed (SIGKILL) and restarted under load loses no
session, ticket or journal record; a broker restart in the middle of a chain makes no duplicate
and leaves nothing behind."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.client.client import Client
from corral.contract.errors import AgentError
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.conftest import admin_url, free_port, missing, suite_fleet
from tests.harness import count_labeled

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]


class AofRedis:
    """A redis-server with appendonly + fsync always, killable and restartable on the same port/dir."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server") or ""
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return admin_url(self.port)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--proto-max-bulk-len",
                "32mb",
                "--databases",
                "16",
                "--aclfile",  # the suite's ACL users, like every test Redis
                str(suite_fleet().acl_file),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def aof(tmp_path: Path) -> Iterator[AofRedis]:
    if not shutil.which("redis-server"):
        missing("redis-server")
    server = AofRedis(tmp_path / "aof")
    server.dir.mkdir()
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(10)


def supervise(worker_factory: Any, worker: Any, env: dict[str, str]) -> None:
    """What systemd's Restart=always does: a worker that exited is started again. (kombu's Redis
    transport can crash the worker while it closes a channel after a broker loss, AttributeError in
    ``_connparams``; that is why workers run supervised.)"""
    assert worker.proc is not None
    try:
        worker.proc.wait(20)  # a crashed worker finishes its running task, then exits
    except subprocess.TimeoutExpired:
        return  # it survived the broker loss
    worker_factory(worker.host_id, env=env)


def snapshot(client: Client) -> dict[str, Any]:
    sessions = {s["environment_id"]: s["state"] for s in client.sessions(1000)}
    return {
        "sessions": sessions,
        "tickets": {t["ticket_ref"]: t["state"] for t in client.tickets()},
        "journal": {env: len(client.journal(env)) for env in sessions},
    }


def containers_per_session(docker_client: Any, host: str) -> Counter[str]:
    found = docker_client.containers.list(all=True, filters={"label": f"corral.host={host}"})
    return Counter(c.labels["corral.session"] for c in found)


def test_redis_killed_and_restarted_under_load_loses_no_record(
    aof, worker_factory, docker_client, busybox_image, tmp_path
) -> None:
    env = {
        "CORRAL_REDIS__URL": aof.url,
        "CORRAL_CELERY__VISIBILITY_TIMEOUT_S": "10",
        "CORRAL_CELERY__RESTORE_INTERVAL_S": "1",
    }
    worker = worker_factory(None, env=env)
    client = Client(Settings(redis={"url": aof.url}, celery={"task_timeout_s": 60}))
    handles = []
    for i in range(4):
        handle = client.submit(
            JobSpec(image=busybox_image, argv=["sleep", "120"], memory_mb=32, allow_detach=True), host=worker.host_id
        )
        client.wait(handle)
        if i % 2:
            client.detach(handle, ttl_ms=3_600_000)
        handles.append(handle)
    before = snapshot(client)
    stop = threading.Event()
    load_errors: list[str] = []

    def load() -> None:  # keep submitting while Redis dies and comes back
        while not stop.is_set():
            try:
                h = client.submit(JobSpec(image=busybox_image, argv=["true"], memory_mb=32), host=worker.host_id)
                handles.append(h)
                client.wait(h, timeout=30)
            except Exception as exc:  # expected while Redis is down
                load_errors.append(type(exc).__name__)
                time.sleep(0.2)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    time.sleep(1)
    aof.kill()
    time.sleep(1)
    aof.start()
    supervise(worker_factory, worker, env)
    time.sleep(3)
    stop.set()
    loader.join(60)
    after = snapshot(client)
    for env_id, state in before["sessions"].items():
        assert after["sessions"].get(env_id) == state, env_id
    assert after["tickets"] == {**after["tickets"], **before["tickets"]}
    for env_id, length in before["journal"].items():
        assert after["journal"][env_id] >= length
    assert max(containers_per_session(docker_client, worker.host_id).values()) == 1
    for handle in handles:
        client.cleanup_quietly(handle)
    client.reconcile(worker.host_id)  # whatever a failed submission left (e.g. a lost session record)
    client.close()
    assert count_labeled(docker_client, worker.host_id)["containers"] == 0


def test_broker_restart_during_a_chain_makes_no_duplicate_and_no_leak(
    aof, worker_factory, docker_client, busybox_image, tmp_path
) -> None:
    faults = tmp_path / "faults"
    faults.mkdir()
    env = {
        "CORRAL_REDIS__URL": aof.url,
        "CORRAL_CELERY__VISIBILITY_TIMEOUT_S": "10",
        "CORRAL_CELERY__RESTORE_INTERVAL_S": "1",
        "CORRAL_TESTING__FAULTS": "prepare_environment:before_adapter!sleep=3",
        "CORRAL_TESTING__FAULT_DIR": str(faults),
    }
    worker = worker_factory(None, env=env)
    client = Client(Settings(redis={"url": aof.url}, celery={"task_timeout_s": 90}))
    handle = client.submit(JobSpec(image=busybox_image, argv=["sleep", "120"], memory_mb=32), host=worker.host_id)
    deadline = time.monotonic() + 30
    while not (faults / "prepare_environment__before_adapter").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    aof.kill()  # the broker and the state store vanish while the chain is inside prepare_environment
    time.sleep(1)
    aof.start()
    supervise(worker_factory, worker, env)
    outcome = "completed"
    try:
        client.wait(handle, timeout=90)
    except AgentError as exc:
        outcome = f"failed: {exc.kind}"
    assert max(containers_per_session(docker_client, worker.host_id).values(), default=0) <= 1
    if outcome == "completed":
        assert [
            c.status
            for c in docker_client.containers.list(all=True, filters={"label": f"corral.host={worker.host_id}"})
        ] == ["running"]
    client.cleanup_quietly(handle)
    client.reconcile(worker.host_id)
    client.close()
    assert count_labeled(docker_client, worker.host_id)["containers"] == 0
