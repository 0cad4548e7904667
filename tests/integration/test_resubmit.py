"""Resubmitting a job whose sandbox was already cleaned up, through a real host worker, real Redis
and real Docker: the chain is refused (``Conflict``), nothing is created, nothing claims the gone
process is running."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.client.client import Client
from corral.contract.errors import Conflict
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.harness import count_labeled

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    yield c
    c.close()


def test_resubmitting_a_cleaned_up_job_is_refused_and_creates_nothing(
    worker_factory, client, docker_client, busybox_image
) -> None:
    worker = worker_factory()
    spec = JobSpec(image=busybox_image, argv=["sleep", "30"], memory_mb=64, timeout_ms=60_000)
    handle = client.submit(spec, host=worker.host_id)
    status = client.wait(handle).process_status
    assert status is not None and status.state == "running"
    assert client.cleanup(handle).status.value == "completed"
    assert count_labeled(docker_client, worker.host_id) == {"containers": 0, "networks": 0}

    again = client.send_job(spec, worker.host_id)  # the same job, the same environment id
    with pytest.raises(Conflict) as info:
        client.wait(again)
    assert info.value.context["state"] == "cleaned"
    assert info.value.context["environment_id"] == spec.environment_id
    assert client.services.store.session(spec.environment_id)["state"] == "cleaned"
    assert count_labeled(docker_client, worker.host_id) == {"containers": 0, "networks": 0}
    starts = [r.kind for r in client.journal(spec.environment_id) if r.fields.get("op") == "start_process"]
    assert starts == ["intent", "result"]  # one start, never replayed
