"""README's roll-out of a fleet host, run verbatim on a real systemd host, then checked.

``scripts/build-images --systemd-host`` makes a Debian 12 image with systemd as init, redis-server,
and corral installed at /opt/corral/venv (README's step 0). The test boots it as a container, runs
the block between ``<!-- rollout:begin -->`` and ``<!-- rollout:end -->`` in README.md (credentials,
service users, Redis, settings and policy, the shipped units, a job as the client) and checks what
the units really did: each unit active under its own user, Flower unable to read beat's key, beat
firing the sweep, Flower seeing the worker, the job's sandbox gone.

Two adjustments that belong to the container, not to the roll-out: the host's Docker socket is
bind-mounted (a stub docker.service satisfies the worker unit's Requires=), and Debian's redis-server
unit gets PrivateUsers=no (a user namespace cannot be made inside this container).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import missing

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]

PREPARE = r"""
set -eu
printf '%s\n' '[Unit]' 'Description=the Docker engine under this container (socket bind-mounted)' \
  '[Service]' Type=oneshot RemainAfterExit=yes ExecStart=/bin/true > /etc/systemd/system/docker.service
mkdir -p /etc/systemd/system/redis-server.service.d
printf '[Service]\nPrivateUsers=no\n' > /etc/systemd/system/redis-server.service.d/container.conf
systemctl daemon-reload
"""


def rollout_block(host_id: str) -> str:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- rollout:begin -->\n```sh\n(.*?)```\n<!-- rollout:end -->", text, re.S)
    assert found, "README.md has no rollout block"
    return found.group(1).replace("edge-1", host_id)


@pytest.fixture
def fleet_host_image(docker_client: object, busybox_image: str) -> str:
    if shutil.which("debootstrap") is None:
        missing("debootstrap")
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-images"), "--systemd-host"], capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    images = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return images["CORRAL_SYSTEMD_HOST_IMAGE"]


def _cgroup_args() -> list[str]:
    if subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True).stdout.strip() == (
        "cgroup2fs"
    ):
        return ["--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"]
    return ["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"]


def test_readme_rollout_on_a_systemd_host(fleet_host_image: str) -> None:
    host_id = f"rollout-{uuid.uuid4().hex[:6]}"
    name = f"corral-test-{host_id}"
    boot = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--hostname",
            host_id,
            "--user",
            "root",
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--tmpfs",
            "/tmp",
            *_cgroup_args(),
            "-e",
            "container=docker",
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "--label",
            "corral.test=rollout",
            fleet_host_image,
            "/sbin/init",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if boot.returncode != 0:
        missing(f"a systemd container ({boot.stderr.strip()[-300:]})")

    def sh(script: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "exec", "-w", "/src", name, "bash", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    try:
        # systemd's bus appears a moment after the container starts.
        booted = sh("timeout 60 systemctl is-system-running --wait || true")
        deadline = time.monotonic() + 60
        while "Failed to connect to bus" in booted.stderr and time.monotonic() < deadline:
            time.sleep(1)
            booted = sh("timeout 60 systemctl is-system-running --wait || true")
        assert booted.stdout.strip() in ("running", "degraded"), booted.stdout + booted.stderr
        prepared = sh(PREPARE)
        assert prepared.returncode == 0, prepared.stderr

        rollout = sh("set -euxo pipefail\n" + rollout_block(host_id), timeout=300)
        log = rollout.stdout + rollout.stderr
        journal = sh("journalctl --no-pager -n 200 -u 'corral-*' -u redis-server").stdout
        assert rollout.returncode == 0, log[-4000:] + journal[-4000:]
        assert "NOAUTH" in log
        assert f"hello from {host_id}" in rollout.stdout

        units = [f"corral-worker@{host_id}", "corral-beat", "corral-flower", "redis-server"]
        active = sh("systemctl is-active " + " ".join(units))
        assert active.stdout.split() == ["active"] * 4, active.stdout + journal[-4000:]

        # Each unit runs as the user the roll-out gave it.
        users = sh(
            "for u in " + " ".join(units[:3]) + '; do ps -o user= -p "$(systemctl show -p MainPID --value $u)"; done'
        )
        assert users.stdout.split() == ["root", "corral-beat", "corral-flower"], users.stdout + users.stderr

        # Flower's user cannot read beat's signing key, nor a worker's (it must not be able to sign).
        for key in ("corral-beat.key", f"corral-host-{host_id}.key"):
            stolen = sh(f"runuser -u corral-flower -- cat /etc/corral/fleet/identities/{key}")
            assert stolen.returncode != 0 and "Permission denied" in stolen.stderr

        # Beat fires the sweep and the worker runs it; Flower sees the worker.
        def beat_fired() -> bool:
            return "Sending due task corral-sweep-tickets" in sh("journalctl --no-pager -u corral-beat").stdout

        def flower_sees_worker() -> bool:
            metrics = sh(
                'python3 -c "import urllib.request; '
                "print(urllib.request.urlopen('http://127.0.0.1:5555/metrics').read().decode())\""
            ).stdout
            return f'flower_worker_online{{worker="corral@{host_id}"}} 1.0' in metrics

        for check in (beat_fired, flower_sees_worker):
            deadline = time.monotonic() + 60
            while not check() and time.monotonic() < deadline:
                time.sleep(1)
            assert check(), f"{check.__name__}: " + sh("journalctl --no-pager -n 80 -u 'corral-*'").stdout[-4000:]
        # Flower's API asks for the operator password the roll-out wrote.
        api = sh(
            'python3 -c "import urllib.request, urllib.error\n'
            "try:\n urllib.request.urlopen('http://127.0.0.1:5555/api/workers')\n"
            'except urllib.error.HTTPError as e:\n print(e.code)"'
        )
        assert api.stdout.strip() == "401"
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", name], capture_output=True, timeout=120)
    left = subprocess.run(
        ["docker", "ps", "-a", "-q", "--filter", f"label=corral.host={host_id}"], capture_output=True, text=True
    ).stdout.split()
    assert left == []
