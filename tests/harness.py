"""Real Celery worker processes for integration and fault tests (fixtures re-exported by their conftests).

``worker_factory`` starts ``python -m workers.main worker --host <id>`` as a subprocess against the
test Redis and this machine's Docker (or the fake runtime when asked), waits for its heartbeat,
and at teardown stops it and removes every Docker resource labeled with its host id.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import TEST_CLIENT, TEST_HOST_IDENTITY, suite_fleet

REPO = Path(__file__).resolve().parents[1]


@dataclass
class WorkerProc:
    host_id: str
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)

    def start(self, redis_url: str, timeout_s: float = 30) -> None:
        with self.log_path.open("ab") as log:
            self.proc = self._spawn(log)
        self._wait_for_heartbeat(redis_url, timeout_s)

    def _spawn(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "workers.main", "worker", "--host", self.host_id, "--loglevel", "INFO", *self.extra],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _wait_for_heartbeat(self, redis_url: str, timeout_s: float) -> None:
        assert self.proc is not None
        client = redis.Redis.from_url(f"{redis_url}/3", decode_responses=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if client.exists(f"corral:host:{self.host_id}"):
                # Heartbeat comes from the main process; give the pool a moment to accept tasks.
                time.sleep(0.5)
                client.close()
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"worker {self.host_id} did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(autouse=True)
def client_role(monkeypatch: pytest.MonkeyPatch) -> None:
    """Integration and fault tests: a ``Client`` built in this process is the suite's client role."""
    for key, value in suite_fleet().role_env("client", TEST_CLIENT).items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def corral_env(redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for corral processes (workers, CLI, client) of one test."""
    secrets_root = Path(tempfile.mkdtemp(prefix="corral-test-secrets-", dir="/dev/shm"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "hello.txt").write_text("hello from the host\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update(
        {
            "CORRAL_REDIS__URL": redis_url,
            "CORRAL_HOST__STATE_DIR": str(tmp_path / "state"),
            "CORRAL_HOST__SECRETS_ROOT": str(secrets_root),
            "CORRAL_HOST__SECRETS_DIR": str(tmp_path / "secrets"),
            "CORRAL_HOST__MOUNTS": f'{{"data": "{data}"}}',
            "CORRAL_HOST__HEARTBEAT_S": "1",
            "CORRAL_HOST__HEARTBEAT_TTL_S": "4",
            "CORRAL_CELERY__SWEEP_INTERVAL_S": "1",
            "CORRAL_CELERY__TASK_TIMEOUT_S": "60",
            "CORRAL_METRICS__PORT": "0",  # off unless a test asks (workers of one test share the machine)
            "CORRAL_CONFIG": str(REPO / "config" / "corral.toml"),
            "PYTHONUNBUFFERED": "1",
            **suite_fleet().role_env("client", TEST_CLIENT),
        }
    )
    (tmp_path / "secrets").mkdir()
    yield env
    kill_shims(str(tmp_path))  # and the shim template of any host whose state lived here
    shutil.rmtree(secrets_root, ignore_errors=True)


@pytest.fixture
def worker_factory(
    corral_env: dict[str, str], redis_url: str, tmp_path: Path, docker_client, busybox_image
) -> Iterator[object]:  # type: ignore[no-untyped-def]
    started: list[WorkerProc] = []

    def start(host_id: str | None = None, *extra: str, env: dict[str, str] | None = None) -> WorkerProc:
        host = host_id or f"it-{uuid.uuid4().hex[:8]}"
        role = suite_fleet().role_env("worker", TEST_HOST_IDENTITY)
        worker_env = {**corral_env, **role, **(env or {})}
        worker = WorkerProc(host, worker_env, tmp_path / f"worker-{host}.log", extra=list(extra))
        worker.start(worker.env["CORRAL_REDIS__URL"])
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
    for worker in started:
        remove_labeled(docker_client, worker.host_id)
        unpin_all(worker.env["CORRAL_HOST__STATE_DIR"])


def remove_labeled(docker_client, host_id: str) -> None:  # type: ignore[no-untyped-def]
    label = f"corral.host={host_id}"
    for container in docker_client.containers.list(all=True, filters={"label": label}):
        container.remove(force=True)
    for network in docker_client.networks.list(filters={"label": label}):
        network.remove()


def count_labeled(docker_client, host_id: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    label = f"corral.host={host_id}"
    return {
        # sparse: no inspect per container, which races a removal (NotFound) while a reconcile runs
        "containers": len(docker_client.containers.list(all=True, sparse=True, filters={"label": label})),
        "networks": len(docker_client.networks.list(filters={"label": label})),
    }


NOTHING = {"containers": 0, "networks": 0, "secret_dirs": 0, "spools": 0, "pinned_mounts": 0, "pin_dirs": 0}


def pinned_mounts(state_dir: str) -> list[str]:
    """Mount points under a state dir's pin directory, read from /proc/self/mountinfo."""
    from corral.runtimes.docker.mounts import mount_points

    return sorted(mount_points(str(Path(state_dir) / "mounts")))


def unpin_all(state_dir: str) -> None:
    """Teardown safety net: detach every pin under a state dir (a leaked bind of a test's alias must
    never be walked into when pytest later deletes old tmp dirs)."""
    for point in reversed(pinned_mounts(state_dir)):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def leftovers(docker_client, host: str, env: dict[str, str]) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Everything a host could leak, counted: labeled containers and networks, secret dirs, spools,
    pinned mount sources (mounted, and their session directories)."""
    counts = count_labeled(docker_client, host)
    counts["secret_dirs"] = len(list(Path(env["CORRAL_HOST__SECRETS_ROOT"]).iterdir()))
    state = Path(env["CORRAL_HOST__STATE_DIR"])
    spool = state / "spool"
    counts["spools"] = len(list(spool.iterdir())) if spool.exists() else 0
    counts["pinned_mounts"] = len(pinned_mounts(str(state)))
    pins = state / "mounts"
    counts["pin_dirs"] = len(list(pins.iterdir())) if pins.exists() else 0
    return counts


def wait_until(predicate: Any, timeout_s: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def helper_pids(state_dir: str, module: str = "corral.io.shim") -> list[int]:
    """Pids of the I/O helpers (``corral.io.shim`` or ``corral.io.template``) whose command line
    names ``state_dir``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if module.encode() in cmdline and state_dir.encode() in cmdline:
            found.append(int(entry.name))
    return found


def kill_shims(state_dir: str) -> None:
    """Teardown safety net: SIGKILL any I/O shim (and the shim template) whose command line names
    this test's state dir."""
    for pid in helper_pids(state_dir) + helper_pids(state_dir, "corral.io.template"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def docker_runtime(docker_client, host, host_id: str) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """A DockerRuntime for one test; afterwards its shims, containers and networks are gone."""
    from corral.runtimes.docker.runtime import DockerRuntime

    try:
        yield DockerRuntime(host_id, host, docker_client)
    finally:
        kill_shims(host.state_dir)
        remove_labeled(docker_client, host_id)
        unpin_all(host.state_dir)
