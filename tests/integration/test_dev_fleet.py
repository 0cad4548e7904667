"""``corral dev --hosts 3``: a fleet of three host workers on this machine, used as a new user would
(the printed client settings, the ``corral`` CLI in another "shell"), real Docker and Redis."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.harness import REPO, remove_labeled, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]


def corral_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], env=env, cwd=REPO, capture_output=True, timeout=180, check=False
    )


def test_corral_dev_hosts_3_is_a_fleet_that_admission_spreads_over(
    corral_env: dict[str, str], tmp_path: Path, docker_client, busybox_image: str
) -> None:
    base = f"it-fleet-{uuid.uuid4().hex[:6]}"
    hosts = [f"{base}-{i}" for i in (1, 2, 3)]
    state = tmp_path / "devstate"
    env = {k: v for k, v in corral_env.items() if not k.startswith(("CORRAL_REDIS__", "CORRAL_SECURITY__"))}
    env["CORRAL_HOST__STATE_DIR"] = str(state)
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral", "dev", "--host", base, "--hosts", "3"],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert wait_until(lambda: b"stack up" in log.read_bytes() or proc.poll() is not None, 120), log.read_text()
        assert proc.poll() is None, log.read_text()
        env_file = state / "dev" / "env" / "client.env"
        client_env = {**env, **dict(line.split("=", 1) for line in env_file.read_text().splitlines())}
        listed = corral_cli(client_env, "hosts", "--json")
        assert listed.returncode == 0, listed.stderr
        up = {h["host"]: h for h in json.loads(listed.stdout) if h["up"]}
        assert sorted(up) == hosts
        assert all(h["capacity"]["slots"] > 0 for h in up.values())
        # Each host its own identity.
        identities = {p.stem for p in (state / "dev" / "identities").glob("corral-host-*.pem")}
        assert {f"corral-host-{h}" for h in hosts} <= identities
        # Three jobs at once from three shells: admission spreads them, one per host.
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "corral", "run", "--json", "--cpus", "0.5", busybox_image, "--", "sleep", "8"],
                env=client_env,
                cwd=REPO,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for _ in hosts
        ]
        outcomes = []
        for run in runs:
            stdout, stderr = run.communicate(timeout=180)
            assert run.returncode == 0, stderr
            outcomes.append(json.loads(stdout))
        assert sorted(o["host"] for o in outcomes) == hosts
        assert all((state / "hosts" / h).is_dir() for h in hosts)  # each ran its job in its own state dir
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for host in hosts:
            remove_labeled(docker_client, host)
            shutil.rmtree(f"{corral_env['CORRAL_HOST__SECRETS_ROOT'].rstrip('/')}-{host}", ignore_errors=True)
