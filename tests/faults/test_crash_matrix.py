"""The crash matrix: a worker killed with SIGKILL at each point of the pipeline ends, once a
worker serves that host again, in a definite state — running with exactly one container, or
cleaned up — never two containers and never a leaked container, network, secret dir or spool.

Faults are injected by the test-only seam ``corral.host.faults`` (``CORRAL_TESTING__FAULTS``): the pool
process running the task (or, with ``!worker``, the whole worker) kills itself at the named point,
once. Everything else is real: Celery worker processes, Redis, the Docker engine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from corral.client.client import Client
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.harness import NOTHING, leftovers

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 90}))
    yield c
    c.close()


def faulty_env(tmp_path: Path, *points: str, visibility_s: int | None = None) -> dict[str, str]:
    fault_dir = tmp_path / "faults"
    fault_dir.mkdir(exist_ok=True)
    env = {"CORRAL_TESTING__FAULTS": ",".join(points), "CORRAL_TESTING__FAULT_DIR": str(fault_dir)}
    if visibility_s is not None:
        env["CORRAL_CELERY__VISIBILITY_TIMEOUT_S"] = str(visibility_s)
        env["CORRAL_CELERY__RESTORE_INTERVAL_S"] = "1"
    return env


def fired(tmp_path: Path, point: str) -> bool:
    return (tmp_path / "faults" / point.split("!")[0].replace(":", "__")).exists()


def takeovers(client: Client, environment_id: str, op: str) -> int:
    return sum(
        1
        for r in client.journal(environment_id)
        if r.kind == "recovery" and r.fields.get("op") == op and r.fields.get("action") == "takeover"
    )


CHAIN_POINTS = [
    "prepare_session:before_adapter",
    "prepare_environment:before_adapter",
    "prepare_environment:after_adapter",
    "start_process:before_intent",
    "start_process:before_adapter",
    "start_process:after_adapter",
    "start_process:after_result",
    "prepare_environment:after_record",
    "start_process:after_record",
]
"""``after_record``: the outcome is recorded, the session's own writes are not: the redelivery is answered
by a replay, which must settle them (before: the session stayed ``prepared`` with its process running)."""


@pytest.mark.parametrize("point", CHAIN_POINTS)
def test_pool_process_killed_during_the_chain_ends_running_with_one_container(
    worker_factory, client, docker_client, busybox_image, corral_env, tmp_path, point
) -> None:
    worker = worker_factory(None, env=faulty_env(tmp_path, point))
    spec = JobSpec(image=busybox_image, argv=["sleep", "60"], memory_mb=64)
    handle = client.submit(spec, host=worker.host_id)
    client.wait(handle, timeout=90)  # the killed task is requeued and its redelivery finishes it
    assert fired(tmp_path, point), worker.log()
    containers = docker_client.containers.list(all=True, filters={"label": f"corral.host={worker.host_id}"})
    assert [c.status for c in containers] == ["running"]
    op = point.split(":")[0]
    if not point.endswith(("before_intent", "after_result", "after_record")):
        assert takeovers(client, spec.environment_id, op) == 1
    assert client.services.store.session(spec.environment_id)["state"] == "running"
    assert client.cleanup(handle).status.value == "completed"
    assert leftovers(docker_client, worker.host_id, corral_env) == NOTHING


@pytest.mark.parametrize("point", ["cleanup:before_adapter", "cleanup:after_adapter", "cleanup:after_result"])
def test_pool_process_killed_during_cleanup_ends_cleaned(
    worker_factory, client, docker_client, busybox_image, corral_env, tmp_path, point
) -> None:
    worker = worker_factory(None, env=faulty_env(tmp_path, point))
    spec = JobSpec(image=busybox_image, argv=["sleep", "60"], memory_mb=64)
    handle = client.submit(spec, host=worker.host_id)
    client.wait(handle, timeout=90)
    assert client.cleanup(handle).status.value == "completed"
    assert fired(tmp_path, point)
    assert client.services.store.session(spec.environment_id)["state"] == "cleaned"
    assert leftovers(docker_client, worker.host_id, corral_env) == NOTHING


@pytest.mark.parametrize("point", ["reclaim:before_adapter", "reclaim:after_adapter"])
def test_pool_process_killed_during_reclaim_ends_reclaimed(
    worker_factory, client, docker_client, busybox_image, corral_env, tmp_path, point
) -> None:
    worker = worker_factory(None, env=faulty_env(tmp_path, point))
    spec = JobSpec(image=busybox_image, argv=["sleep", "60"], memory_mb=64, allow_detach=True)
    handle = client.submit(spec, host=worker.host_id)
    client.wait(handle, timeout=90)
    ticket = client.detach(handle, ttl_ms=3_600_000)
    assert client.reclaim(ticket.ticket_ref).status.value == "completed"
    assert fired(tmp_path, point)
    assert client.services.store.ticket(ticket.ticket_ref)["state"] == "reclaimed"
    assert leftovers(docker_client, worker.host_id, corral_env) == NOTHING


@pytest.mark.parametrize("point", ["start_process:after_adapter!worker", "prepare_environment:after_adapter!worker"])
def test_whole_worker_killed_ends_running_once_a_worker_serves_the_host_again(
    worker_factory, client, docker_client, busybox_image, corral_env, tmp_path, point
) -> None:
    # The unacked task comes back only after the visibility timeout: keep it short here.
    env = faulty_env(tmp_path, point, visibility_s=5)
    first = worker_factory(None, env=env)
    spec = JobSpec(image=busybox_image, argv=["sleep", "60"], memory_mb=64)
    handle = client.submit(spec, host=first.host_id)
    assert first.proc is not None
    first.proc.wait(30)  # the fault killed the whole worker
    assert fired(tmp_path, point)
    worker_factory(first.host_id, env=env)  # the host comes back
    client.wait(handle, timeout=90)
    containers = docker_client.containers.list(all=True, filters={"label": f"corral.host={first.host_id}"})
    assert [c.status for c in containers] == ["running"]
    assert takeovers(client, spec.environment_id, point.split(":")[0]) == 1
    assert client.cleanup(handle).status.value == "completed"
    assert leftovers(docker_client, first.host_id, corral_env) == NOTHING
