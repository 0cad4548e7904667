"""docker-compose.yml brought up for real, offline: images built here by ``scripts/build-images`` (a
debootstrap Debian base serving Redis, and corral:local on it from a host-built wheelhouse), the stack
healthy, one sandboxed job sent from the host through the stack's Redis with the client credentials
the stack's init service made, Flower seeing the worker and the job, and ``docker-compose down -v``
leaving no container, network or volume of the test project, nor any sandbox.

The images are cached between runs (rebuilt only when their inputs change). Needs docker-compose
and debootstrap (scripts/setup-host installs both); missing, they skip locally and fail under CI.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port, missing

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]


def _compose_env(images: dict[str, str], tmp: Path, secrets_root: Path, host_id: str) -> dict[str, str]:
    # Nothing inherited from a developer's shell may point the stack or the client elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "COMPOSE_", "DOCKER_HOST"))}
    env.update(images)
    env.update(
        CORRAL_HOST_ID=host_id,
        CORRAL_REDIS_PORT=str(free_port()),
        CORRAL_FLOWER_PORT=str(free_port()),
        CORRAL_STATE_DIR=str(tmp / "state"),
        CORRAL_SECRETS_ROOT=str(secrets_root),
        CORRAL_ETC=str(tmp / "etc"),
    )
    return env


def _flower_metrics(port: str) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def _wait_for(what: str, check: object, limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}")


def _leftovers(project: str, host_id: str) -> dict[str, list[str]]:
    def ids(*cmd: str) -> list[str]:
        return subprocess.run(["docker", *cmd, "-q"], capture_output=True, text=True, check=True).stdout.split()

    label = f"label=com.docker.compose.project={project}"
    return {
        "containers": ids("ps", "-a", "--filter", label),
        "networks": ids("network", "ls", "--filter", label),
        "volumes": ids("volume", "ls", "--filter", label),
        "sandboxes": ids("ps", "-a", "--filter", f"label=corral.host={host_id}"),
    }


@pytest.fixture
def built_images(docker_client: object, busybox_image: str) -> dict[str, str]:
    if shutil.which("docker-compose") is None:
        missing("docker-compose")
    if shutil.which("debootstrap") is None:
        missing("debootstrap")
    out = subprocess.run(["bash", str(ROOT / "scripts" / "build-images")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    images = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    assert images["CORRAL_REDIS_IMAGE"] != "redis:7" and images["CORRAL_IMAGE"]
    return images


@pytest.fixture
def stack_dirs() -> Iterator[tuple[Path, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="corral-compose-"))
    (tmp / "state").mkdir()
    (tmp / "etc").mkdir()
    # The worker's host policy: one alias, on a directory of the worker's image.
    (tmp / "etc" / "policy.toml").write_text('[mounts.data]\npath = "/srv"\nmodes = ["read_only"]\n')
    # The secrets root must be a tmpfs (the worker refuses file secrets otherwise).
    secrets_root = Path(tempfile.mkdtemp(prefix="corral-compose-secrets-", dir="/dev/shm"))
    yield tmp, secrets_root
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(secrets_root, ignore_errors=True)


def test_compose_stack_runs_a_job_offline_and_leaves_nothing(
    built_images: dict[str, str], stack_dirs: tuple[Path, Path]
) -> None:
    tmp, secrets_root = stack_dirs
    host_id = f"compose-{uuid.uuid4().hex[:6]}"
    project = f"corral-test-{host_id}"
    env = _compose_env(built_images, tmp, secrets_root, host_id)
    compose = ["docker-compose", "-p", project, "-f", str(ROOT / "docker-compose.yml")]

    def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*compose, *args], env=env, cwd=ROOT, capture_output=True, text=True, **kw)  # type: ignore[call-overload,no-any-return]

    down_done = False
    try:
        up = run("up", "-d", "--no-build", timeout=300)
        assert up.returncode == 0, up.stderr[-3000:]

        # Healthy: Redis by its compose healthcheck, the worker as Flower sees it (events over Redis).
        redis_id = run("ps", "-q", "redis").stdout.strip()

        def redis_healthy() -> bool:
            state = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", redis_id],
                capture_output=True,
                text=True,
            )
            return state.stdout.strip() == "healthy"

        _wait_for("redis healthy", redis_healthy)
        worker = f"corral@{host_id}"
        online = f'flower_worker_online{{worker="{worker}"}} 1.0'
        _wait_for("Flower to see the worker online", lambda: online in _flower_metrics(env["CORRAL_FLOWER_PORT"]))

        # Redis is never open: no credentials, no service.
        if shutil.which("redis-cli"):
            anon = subprocess.run(
                ["redis-cli", "-p", env["CORRAL_REDIS_PORT"], "ping"], capture_output=True, text=True, timeout=10
            )
            assert "NOAUTH" in anon.stdout + anon.stderr

        # The client credentials the stack's init service made, copied out of its volume.
        client_dir = tmp / "client"
        client_dir.mkdir(mode=0o700)
        files = [
            "redis/client.password",
            "identities/compose-client.key",
            "identities/compose-client.pem",
            "flower.auth",
        ]
        tar = subprocess.run(
            [
                *compose,
                "run",
                "--rm",
                "--no-deps",
                "-T",
                "--entrypoint",
                "tar",
                "credentials",
                "-C",
                "/fleet",
                "-c",
                *files,
            ],
            env=env,
            cwd=ROOT,
            capture_output=True,
            timeout=120,
        )
        assert tar.returncode == 0, tar.stderr[-2000:]
        subprocess.run(["tar", "-x", "-C", str(client_dir)], input=tar.stdout, check=True)

        client_env = {
            **env,
            "CORRAL_REDIS__URL": f"redis://127.0.0.1:{env['CORRAL_REDIS_PORT']}",
            "CORRAL_REDIS__USERNAME": "client",
            "CORRAL_REDIS__PASSWORD_FILE": str(client_dir / files[0]),
            "CORRAL_SECURITY__KEY_FILE": str(client_dir / files[1]),
            "CORRAL_SECURITY__CERT_FILE": str(client_dir / files[2]),
        }
        job = subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "corral"),
                "run",
                "--host",
                host_id,
                "corral/busybox:latest",
                "--",
                "sh",
                "-c",
                "echo hello through compose; id -u; touch /x 2>&1 || true",
            ],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert job.returncode == 0, job.stdout + job.stderr
        lines = job.stdout.splitlines()
        assert lines[0] == "hello through compose"
        assert lines[1] == "65534"  # the sandbox's unprivileged default user
        assert "Read-only file system" in job.stdout

        # A mount alias is refused, typed and in one line: the containerized worker cannot pin it.
        mounted = subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "corral"),
                "run",
                "--host",
                host_id,
                "--mount",
                "data:/data",
                "corral/busybox:latest",
                "--",
                "ls",
                "/data",
            ],
            env=client_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert mounted.returncode != 0
        assert "cannot pin the mount source" in mounted.stderr, mounted.stdout + mounted.stderr
        assert "host_configuration_needed" in mounted.stderr

        # Flower's UI and API need the generated basic-auth credentials (its /metrics does not).
        flower = f"http://127.0.0.1:{env['CORRAL_FLOWER_PORT']}"
        user, _, password = (client_dir / "flower.auth").read_text().strip().partition(":")
        for path in ("/workers", "/tasks", "/api/workers"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(flower + path, timeout=10)
            assert refused.value.code == 401, path
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        authed = urllib.request.Request(flower + "/workers", headers={"Authorization": f"Basic {token}"})
        with urllib.request.urlopen(authed, timeout=10) as resp:
            assert resp.status == 200

        # Flower saw the job's tasks run on this host's worker.
        done = re.compile(
            r'flower_events_total\{task="corral\.(\w+)",type="task-succeeded",worker="'
            + re.escape(worker)
            + r'"\} ([0-9.]+)'
        )

        def flower_saw_job() -> bool:
            seen = dict(done.findall(_flower_metrics(env["CORRAL_FLOWER_PORT"])))
            return all(float(seen.get(t, 0)) >= 1 for t in ("launch", "cleanup"))

        _wait_for("Flower to show the job's tasks succeeded", flower_saw_job, limit_s=60)

        down = run("down", "-v", "--remove-orphans", timeout=180)
        down_done = True
        assert down.returncode == 0, down.stderr[-3000:]
        assert _leftovers(project, host_id) == {"containers": [], "networks": [], "volumes": [], "sandboxes": []}
    finally:
        if not down_done:
            run("down", "-v", "--remove-orphans", timeout=180)
