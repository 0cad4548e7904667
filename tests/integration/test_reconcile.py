"""Anti-entropy with real parts: what a crash or a flushed Redis leaves on a host is found by
label and reclaimed (journaled), and what is still owned is kept."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from corral.client.client import Client
from corral.fleet.job import JobSpec
from corral.settings import Settings
from corral.state.store import Store
from tests.harness import REPO, count_labeled

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]

NO_GRACE = {"CORRAL_HOST__RECONCILE_GRACE_S": "0"}
"""Grace 0 only: with stale_after 0 too, the worker's own start-up pass could reclaim a chain the test
is still preparing (a race seen under load); the stuck chain below is made ancient instead."""


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    yield c
    c.close()


def started(client: Client, host: str, image: str, **kw: Any) -> Any:
    handle = client.submit(JobSpec(image=image, argv=["sleep", "60"], memory_mb=64, **kw), host=host)
    client.wait(handle)
    return handle


def state_db(env: dict[str, str]) -> redis.Redis:
    return redis.Redis.from_url(f"{env['CORRAL_REDIS__URL']}/3", decode_responses=True)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_orphans_after_a_redis_flush_are_shown_by_dry_run_then_reclaimed(
    worker_factory, client, docker_client, busybox_image, corral_env
) -> None:
    worker = worker_factory(None, env=NO_GRACE)
    handle = started(client, worker.host_id, busybox_image)
    state_db(corral_env).flushdb()  # the state store forgets everything; the host still runs the sandbox
    dry = json.loads(
        cli({**corral_env, **NO_GRACE}, "reconcile", "--dry-run", "--json", "--host", worker.host_id).stdout
    )
    assert [(f["environment_id"], f["action"], f["outcome"]) for f in dry[0]["findings"]] == [
        (handle.environment_id, "reclaim", "")
    ]
    assert count_labeled(docker_client, worker.host_id)["containers"] == 1  # dry run touched nothing
    first = client.reconcile(worker.host_id)
    assert [f.action.value for f in first.findings] == ["reclaim"]
    assert count_labeled(docker_client, worker.host_id) == {"containers": 0, "networks": 0}
    kinds = [(r.kind, r.fields.get("op")) for r in client.journal(handle.environment_id)]
    assert ("intent", "cleanup") in kinds and ("result", "cleanup") in kinds


def test_owned_sandboxes_are_kept(worker_factory, client, docker_client, busybox_image) -> None:
    worker = worker_factory(None, env=NO_GRACE)
    handle = started(client, worker.host_id, busybox_image)
    report = client.reconcile(worker.host_id)
    assert [(f.environment_id, f.action.value) for f in report.findings] == [(handle.environment_id, "keep")]
    assert count_labeled(docker_client, worker.host_id)["containers"] == 1
    client.cleanup(handle)


def test_a_detached_sandbox_whose_ticket_redis_lost_is_kept_and_its_ticket_restored(
    worker_factory, client, docker_client, busybox_image, corral_env
) -> None:
    worker = worker_factory(None, env=NO_GRACE)
    handle = started(client, worker.host_id, busybox_image, allow_detach=True)
    ticket = client.detach(handle, ttl_ms=3_600_000)
    state_db(corral_env).flushdb()
    report = client.reconcile(worker.host_id)
    assert [f.action.value for f in report.findings] == ["register_ticket"]
    assert count_labeled(docker_client, worker.host_id)["containers"] == 1
    restored = client.services.store.ticket(ticket.ticket_ref)
    assert restored["environment_id"] == handle.environment_id
    assert abs(int(restored["deadline_ms"]) - ticket.deadline_ms) < 5_000
    assert client.reclaim(ticket.ticket_ref).status.value == "completed"
    assert count_labeled(docker_client, worker.host_id)["containers"] == 0


def test_leftovers_of_a_cleaned_session_and_a_stuck_chain_are_reclaimed(
    worker_factory, client, docker_client, busybox_image, corral_env
) -> None:
    worker = worker_factory(None, env=NO_GRACE)
    cleaned = started(client, worker.host_id, busybox_image)
    stuck = started(client, worker.host_id, busybox_image)
    db = state_db(corral_env)
    db.hset(f"corral:session:{cleaned.environment_id}", "state", "cleaned")  # cleanup "ran" but left it all
    db.hset(f"corral:session:{stuck.environment_id}", mapping={"state": "preparing", "updated_ms": "1"})
    report = client.reconcile(worker.host_id)
    actions = {f.environment_id: (f.action.value, f.outcome) for f in report.findings}
    assert actions == {
        cleaned.environment_id: ("reclaim", "cleanup completed"),
        stuck.environment_id: ("reclaim", "cleanup completed"),
    }
    assert count_labeled(docker_client, worker.host_id) == {"containers": 0, "networks": 0}
    assert client.services.store.session(stuck.environment_id)["state"] == "cleaned"


def test_a_running_session_whose_container_vanished_is_marked_lost(
    worker_factory, client, docker_client, busybox_image, corral_env
) -> None:
    worker = worker_factory(None, env=NO_GRACE)
    handle = started(client, worker.host_id, busybox_image)
    client.cleanup(handle)
    # The state an interrupted cleanup could leave, written as the admin (the client's Redis user only reads).
    Store(state_db(corral_env)).update_session(handle.environment_id, {"state": "running", "started_ms": "1"}, 1)
    report = client.reconcile(worker.host_id)
    assert [(f.environment_id, f.action.value) for f in report.findings] == [(handle.environment_id, "mark_lost")]
    record = client.services.store.session(handle.environment_id)
    assert (record["state"], record["reason"]) == ("exited", "lost")
    assert any(
        r.kind == "recovery" and r.fields.get("action") == "mark_lost" for r in client.journal(handle.environment_id)
    )


def test_a_worker_reconciles_on_start(worker_factory, client, docker_client, busybox_image, corral_env) -> None:
    first = worker_factory(None, env=NO_GRACE)
    started(client, first.host_id, busybox_image)
    first.stop()
    state_db(corral_env).flushdb()
    assert count_labeled(docker_client, first.host_id)["containers"] == 1
    worker_factory(first.host_id, env=NO_GRACE)  # grace 0: the start-up pass reclaims the orphan
    deadline = time.monotonic() + 30
    while count_labeled(docker_client, first.host_id)["containers"] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert count_labeled(docker_client, first.host_id) == {"containers": 0, "networks": 0}


def test_an_exit_nobody_collected_is_recorded(worker_factory, client, docker_client, busybox_image) -> None:
    # The worker's own exit watch (every heartbeat) would record the exit too, racing this test under
    # load: a slow heartbeat leaves the exit to the reconcile pass asked for here.
    slow_watch = {"CORRAL_HOST__HEARTBEAT_S": "60", "CORRAL_HOST__HEARTBEAT_TTL_S": "180"}
    worker = worker_factory(None, env={**NO_GRACE, **slow_watch})
    handle = client.submit(JobSpec(image=busybox_image, argv=["sh", "-c", "exit 7"], memory_mb=32), host=worker.host_id)
    client.wait(handle)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the process ends; nobody reads its output or stats
        statuses = [
            c.status
            for c in docker_client.containers.list(all=True, filters={"label": f"corral.host={worker.host_id}"})
        ]
        if statuses == ["exited"]:
            break
        time.sleep(0.2)
    assert client.services.store.session(handle.environment_id)["state"] == "running"
    report = client.reconcile(worker.host_id)
    assert [(f.action.value, f.outcome) for f in report.findings] == [
        ("record_exit", "exit recorded by reconcile: code 7, reason exit")
    ]
    record = client.services.store.session(handle.environment_id)
    assert (record["state"], record["exit_code"]) == ("exited", "7")
    assert any(
        r.kind == "recovery" and r.fields.get("action") == "record_exit" for r in client.journal(handle.environment_id)
    )
    client.cleanup(handle)
