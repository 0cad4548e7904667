"""pytest-celery's container mode with local images (no registry): its Redis broker container runs
``redis-server`` of ``scripts/build-images``' Debian base with the suite's ACL file (the default user
off), and its worker container is a corral host worker from the ``corral:local`` image, signing as
the suite's host identity, with this machine's Docker socket and its state and secrets directories
at the same paths (the engine resolves bind sources on the host), as in ``docker-compose.yml``.

A job sent from this process (the suite's client role and key) through the container's Redis is
placed on the containerized host worker, whose launch runs the chain in contract order from that
host's queue, and prints its output; a task for another host waits in that host's queue.
pytest-celery's ``celery_setup`` checks both containers ready (by their logs), and tears them and its
network down.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from pytest_celery import (  # type: ignore[import-untyped]
    CeleryBrokerCluster,
    CeleryTestWorker,
    CeleryWorkerCluster,
    RedisContainer,
    RedisTestBroker,
)
from pytest_celery.vendors.worker.container import CeleryWorkerContainer  # type: ignore[import-untyped]
from pytest_docker_tools import container, fxtr  # type: ignore[import-untyped]

from corral.celeryconf import FLEET_QUEUE, queue_for_host
from corral.client.client import Client
from corral.contract.operations import CHAIN
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.conftest import TEST_CLIENT, TEST_HOST_IDENTITY, missing, suite_fleet
from tests.harness import kill_shims, remove_labeled, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.docker, pytest.mark.worker]

BASE_IMAGE = os.environ.get("CORRAL_REDIS_IMAGE", "corral/debian-base:bookworm")
CORRAL_IMAGE = os.environ.get("CORRAL_IMAGE", "corral:local")
HOST = f"pcc-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def local_images(docker_client: Any) -> None:
    import docker.errors

    for image in (BASE_IMAGE, CORRAL_IMAGE):
        try:
            docker_client.images.get(image)
        except docker.errors.ImageNotFound:
            missing(f"the local image {image} (bash scripts/build-images)")


@pytest.fixture
def host_dirs() -> Iterator[dict[str, str]]:
    """State and secrets directories the worker container and the engine see at the same paths."""
    state = Path(tempfile.mkdtemp(prefix="corral-pcc-state-"))
    secrets = Path(tempfile.mkdtemp(prefix="corral-pcc-secrets-", dir="/dev/shm"))
    yield {"state": str(state), "secrets": str(secrets)}
    kill_shims(str(state))
    shutil.rmtree(state, ignore_errors=True)
    shutil.rmtree(secrets, ignore_errors=True)


# -- pytest-celery's broker: its RedisContainer, a local image, the suite's ACL ----------------------


@pytest.fixture
def default_redis_broker_image(local_images: None) -> str:
    return BASE_IMAGE


@pytest.fixture
def default_redis_broker_command() -> list[str]:
    return list(RedisContainer.command("--aclfile", "/fleet/redis/users.acl", "--protected-mode", "yes"))


@pytest.fixture
def fleet_volume() -> dict[str, dict[str, str]]:
    return {str(suite_fleet().root): {"bind": "/fleet", "mode": "ro"}}


@pytest.fixture
def broker_ports() -> dict[str, tuple[str, None]]:
    return {"6379/tcp": ("127.0.0.1", None)}  # published on loopback only


default_redis_broker = container(
    image="{default_redis_broker_image}",
    ports=fxtr("broker_ports"),
    network="{default_pytest_celery_network.name}",
    wrapper_class=RedisContainer,
    timeout=60,
    command=fxtr("default_redis_broker_command"),
    volumes=fxtr("fleet_volume"),
)


@pytest.fixture
def celery_broker_cluster(default_redis_broker: RedisContainer) -> Iterator[CeleryBrokerCluster]:
    cluster = CeleryBrokerCluster(RedisTestBroker(default_redis_broker))
    yield cluster
    cluster.teardown()


@pytest.fixture
def celery_backend_cluster() -> None:
    """Results live in the broker's Redis (corral's settings pick the db): no separate backend."""
    return None


# -- pytest-celery's worker: a corral host worker from corral:local ---------------------------------


class CorralWorkerContainer(CeleryWorkerContainer):  # type: ignore[misc]
    @classmethod
    def command(cls, *args: str, **kwargs: Any) -> list[str]:
        return ["python3", "-m", "workers.main", "worker", "--host", HOST, "--loglevel", "INFO", "--concurrency", "1"]


@pytest.fixture
def corral_worker_image(local_images: None) -> str:
    return CORRAL_IMAGE


@pytest.fixture
def corral_worker_env(default_redis_broker: RedisContainer, host_dirs: dict[str, str]) -> dict[str, str]:
    fleet = "/fleet"
    return {
        "CORRAL_REDIS__URL": f"redis://{default_redis_broker.hostname}:6379",
        "CORRAL_REDIS__USERNAME": "worker",
        "CORRAL_REDIS__PASSWORD_FILE": f"{fleet}/redis/worker.password",
        "CORRAL_SECURITY__KEY_FILE": f"{fleet}/identities/{TEST_HOST_IDENTITY}.key",
        "CORRAL_SECURITY__CERT_FILE": f"{fleet}/identities/{TEST_HOST_IDENTITY}.pem",
        "CORRAL_SECURITY__CLIENT_CERTS": f"{fleet}/trust/clients",
        "CORRAL_SECURITY__COMPONENT_CERTS": f"{fleet}/trust/components",
        "CORRAL_HOST__ID": HOST,
        "CORRAL_HOST__STATE_DIR": host_dirs["state"],
        "CORRAL_HOST__SECRETS_ROOT": host_dirs["secrets"],
        "CORRAL_HOST__HEARTBEAT_S": "1",
        "CORRAL_METRICS__PORT": "0",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture
def corral_worker_volumes(host_dirs: dict[str, str]) -> dict[str, dict[str, str]]:
    return {
        str(suite_fleet().root): {"bind": "/fleet", "mode": "ro"},
        "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
        host_dirs["state"]: {"bind": host_dirs["state"], "mode": "rw"},
        host_dirs["secrets"]: {"bind": host_dirs["secrets"], "mode": "rw"},
    }


corral_worker_container = container(
    image="{corral_worker_image}",
    network="{default_pytest_celery_network.name}",
    environment=fxtr("corral_worker_env"),
    volumes=fxtr("corral_worker_volumes"),
    user="root",
    wrapper_class=CorralWorkerContainer,
    timeout=60,
    command=CorralWorkerContainer.command(),
)


@pytest.fixture
def celery_worker_cluster(
    corral_worker_container: CorralWorkerContainer, celery_setup_app: Any
) -> Iterator[CeleryWorkerCluster]:
    cluster = CeleryWorkerCluster(CeleryTestWorker(corral_worker_container, app=celery_setup_app))
    yield cluster
    cluster.teardown()


def published_port(broker: RedisContainer) -> int:
    """The loopback port Docker published (``RedisContainer.port`` is the in-network one when
    pytest-docker-tools believes it runs inside a container)."""
    return int(broker.ports["6379/tcp"][0])


@pytest.fixture
def client(default_redis_broker: RedisContainer) -> Iterator[Client]:
    """This process as the suite's client, through the broker container's published port."""
    url = f"redis://127.0.0.1:{published_port(default_redis_broker)}"
    c = Client(Settings(redis={"url": url}, celery={"task_timeout_s": 90}))
    assert c.identity == TEST_CLIENT
    yield c
    c.close()


def test_a_job_runs_through_pytest_celerys_broker_and_worker_containers(
    celery_setup: Any, client: Client, default_redis_broker: RedisContainer, docker_client: Any, busybox_image: str
) -> None:
    worker = celery_setup.worker
    try:
        assert wait_until(lambda: client.services.store.host(HOST) is not None, 60), worker.logs()
        output: list[bytes] = []
        spec = JobSpec(image=busybox_image, argv=["echo", "hello from a container worker"], memory_mb=64)
        done = client.run(spec, host=HOST, on_output=lambda _stream, data: output.append(data))
        assert (done.exit_code, done.host, b"".join(output)) == (0, HOST, b"hello from a container worker\n")
        # The launch and the cleanup ran in the worker container (its log); the host ran the chain's
        # steps in contract order (its journal).
        log = worker.logs()
        succeeded = [line.split("Task corral.")[1].split("[")[0] for line in log.splitlines() if "succeeded in" in line]
        assert [task for task in succeeded if task in ("launch", "cleanup")] == ["launch", "cleanup"], log
        ran = [r.fields["op"] for r in client.journal(done.environment_id) if r.kind == "result"]
        assert [op for op in ran if op in CHAIN] == list(CHAIN), ran

        # Routing: a task for another host waits in that host's queue, untouched by this worker.
        other = f"pcc-{uuid.uuid4().hex[:6]}"
        client.send("collect_stats", None, other, payload={"process_ref": "nope"})
        admin = redis.Redis(
            port=published_port(default_redis_broker), username="admin", password=suite_fleet().password("admin"), db=0
        )
        assert wait_until(lambda: admin.llen(queue_for_host(other, "reads")) == 1, 10)  # a read: its reads lane
        assert admin.llen(FLEET_QUEUE) == 0
    finally:
        remove_labeled(docker_client, HOST)
