"""A reconcile pass through a real host worker (Redis + Docker) does not stop at a malformed session
record: that sandbox is reported (``error``) and left alone, and the others are still reconciled."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

from corral.client.client import Client
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.harness import count_labeled

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]

NO_GRACE = {"CORRAL_HOST__RECONCILE_GRACE_S": "0"}
"""Leftovers of cleaned sessions are reclaimed at once; a chain in flight (preparing) is not stale, so the
worker's own start-up pass never races the sandboxes this test starts."""


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    yield c
    c.close()


def _started(client: Client, host: str, image: str) -> Any:
    handle = client.submit(JobSpec(image=image, argv=["sleep", "60"], memory_mb=64), host=host)
    client.wait(handle)
    return handle


def test_a_malformed_record_is_reported_and_the_pass_goes_on(
    worker_factory, client, docker_client, busybox_image, corral_env
) -> None:
    worker = worker_factory(None, env=NO_GRACE)
    garbled, unreadable, leftover = (_started(client, worker.host_id, busybox_image) for _ in range(3))
    # Written as the admin: the client's Redis user only reads state.
    db = redis.Redis.from_url(f"{corral_env['CORRAL_REDIS__URL']}/3", decode_responses=True)
    db.hset(f"corral:session:{garbled.environment_id}", mapping={"state": "preparing", "updated_ms": "yesterday"})
    db.hset(f"corral:session:{unreadable.environment_id}", mapping={"state": "cleaned", "environment": "{oops"})
    db.hset(f"corral:session:{leftover.environment_id}", "state", "cleaned")

    report = client.reconcile(worker.host_id)

    found = {f.environment_id: (f.action.value, f.outcome) for f in report.findings}
    assert found == {
        garbled.environment_id: ("error", ""),
        unreadable.environment_id: ("reclaim", "cleanup completed (environment record unreadable: cleaned up by id)"),
        leftover.environment_id: ("reclaim", "cleanup completed"),
    }
    assert count_labeled(docker_client, worker.host_id)["containers"] == 1  # only the garbled one is left
    assert client.services.store.session(garbled.environment_id)["state"] == "preparing"
    client.cleanup(garbled)
    assert count_labeled(docker_client, worker.host_id) == {"containers": 0, "networks": 0}
