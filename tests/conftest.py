"""Shared fixtures: a private real Redis server per test session, the host's real Docker engine,
and the locally built busybox test image.

A missing service skips the tests that need it on a developer machine and FAILS them under
``CI=true`` (dramatiq's convention): CI must never go green by skipping.
"""

from __future__ import annotations

import gc
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TEST_IMAGE = os.environ.get("CORRAL_TEST_IMAGE", "corral/busybox:latest")


@pytest.fixture(autouse=True, scope="module")
def _collect_sockets_per_module() -> Iterator[None]:
    """Collect a module's garbage when it ends. A library socket left to the garbage collector (kombu's
    or redis-py's after a connection the test made Redis reset) would otherwise raise its
    ResourceWarning in whichever test happens to run next in this process, often another file's
    under ``--dist loadfile``."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def missing(what: str) -> None:
    """Skip locally, fail under CI."""
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true", pytrace=False)
    pytest.skip(f"{what} not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_FLEET: Any = None
TEST_CLIENT = "tester"
"""The client identity of the test suite (its certificate is in the workers' client trust store)."""
TEST_HOST_IDENTITY = "corral-host-test"
"""The component identity every test worker signs with."""


def suite_fleet() -> Any:
    """The suite's credentials (``corral.trust.credentials``), made once per session: Redis ACL users per
    role and signing identities. Every test Redis loads its ACL file and every test worker verifies
    signatures, so all integration tests run the production trust boundary. In integration and fault
    tests this process (a ``Client`` built by a test) acts as the client role with the ``tester``
    identity (``tests.harness.client_role``)."""
    global _FLEET
    if _FLEET is None:
        from corral.trust.credentials import init_fleet

        root = Path(tempfile.mkdtemp(prefix="corral-fleet-"))
        _FLEET = init_fleet(root, [TEST_HOST_IDENTITY, "corral-beat", TEST_CLIENT, "other-client"])
    return _FLEET


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The suite's credentials go with the session (private keys and passwords in a temp dir)."""
    if _FLEET is not None:
        shutil.rmtree(_FLEET.root, ignore_errors=True)


def admin_url(port: int) -> str:
    fleet = suite_fleet()
    return f"redis://admin:{fleet.password('admin')}@127.0.0.1:{port}"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on loopback with the suite's ACL users (the default user is off);
    yields its base URL (no db suffix) with the ``admin`` user's credentials."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing("redis-server")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="corral-redis-")
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--aclfile",
            str(suite_fleet().acl_file),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--maxmemory-policy",
            "noeviction",
            "--proto-max-bulk-len",  # as config/redis.conf and corral dev
            "32mb",
            "--databases",
            "64",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        missing("a working redis-server")
    yield admin_url(port)
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: str) -> str:
    """The state database of the test Redis, flushed before each test."""
    import redis

    client = redis.Redis.from_url(f"{redis_server}/3")
    client.flushall()
    client.close()
    return redis_server


@pytest.fixture(scope="session")
def docker_client():  # type: ignore[no-untyped-def]
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
    except Exception as exc:
        missing(f"the Docker engine ({exc.__class__.__name__})")
    return client


@pytest.fixture(scope="session")
def busybox_image(docker_client) -> str:  # type: ignore[no-untyped-def]
    """The local test image, built from busybox-static by ``docker import`` when absent."""
    import docker.errors

    try:
        docker_client.images.get(TEST_IMAGE)
        return TEST_IMAGE
    except docker.errors.ImageNotFound:
        pass
    script = Path(__file__).resolve().parent.parent / "scripts" / "build-test-image"
    if not script.exists() or shutil.which("busybox") is None:
        missing(f"the test image {TEST_IMAGE}")
    subprocess.run(["bash", str(script), TEST_IMAGE], check=True)
    return TEST_IMAGE
