"""Leak proof: jobs that print their secrets in many shapes, then a scan of every place a value
could land — every Redis database (broker, results, beat, state and the journal), the worker's
log, Flower's API answers, ``corral``'s own output and ``docker inspect`` of file-secret
containers — for the values and all the encodings the redactor knows: zero hits."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from corral.sandbox.redact import Redactor
from tests import conftest
from tests.conftest import TEST_CLIENT, free_port
from tests.harness import REPO

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]

PRINT_EVERYTHING = (
    "cat /run/secrets/token; echo; base64 /run/secrets/token; "
    "od -An -tx1 /run/secrets/token | tr -d ' \\n'; echo; "
    "head -c 6 /run/secrets/token; sleep 0.3; tail -c +7 /run/secrets/token; echo; "
    'echo "$APIKEY"; printf %s "$APIKEY" | base64; echo "$APIKEY" >&2; '
    'printf \'{"token": "%s"}\\n\' "$(cat /run/secrets/token)"'
)


def needles(*values: bytes) -> list[bytes]:
    found: set[bytes] = set()
    for value in values:
        found.update(Redactor([value]).variants)
        found.add(value)
    return sorted(found, key=len, reverse=True)


def dump_redis(url: str) -> bytes:
    """Every key and value of every logical database, as bytes."""
    out = bytearray()
    for db in range(16):
        r = redis.Redis.from_url(f"{url}/{db}")
        for key in r.scan_iter(count=1000):
            kind = r.type(key).decode()
            out += key + b"\n"
            if kind == "string":
                out += r.get(key) or b""
            elif kind == "hash":
                out += repr(r.hgetall(key)).encode()
            elif kind == "list":
                out += repr(r.lrange(key, 0, -1)).encode()
            elif kind == "set":
                out += repr(r.smembers(key)).encode()
            elif kind == "zset":
                out += repr(r.zrange(key, 0, -1, withscores=True)).encode()
            elif kind == "stream":
                out += repr(r.xrange(key)).encode()
        r.close()
    return bytes(out)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:  # loopback Flower only
        return bytes(response.read())


def hits(haystack: bytes, secret_needles: list[bytes]) -> list[bytes]:
    return [n for n in secret_needles if n in haystack]


def test_no_secret_value_or_encoding_lands_anywhere(
    worker_factory, corral_env, docker_client, busybox_image, tmp_path: Path
) -> None:
    file_secret = ("tok-" + secrets.token_hex(12)).encode()
    env_secret = ("key-" + secrets.token_hex(12)).encode()
    (Path(corral_env["CORRAL_HOST__SECRETS_DIR"]) / "token").write_bytes(file_secret)
    # Secrets are a tenant grant (corral.host.tenancy): the suite's client identity is granted these two.
    policy = tmp_path / "policy" / "tenants.toml"
    policy.parent.mkdir()
    policy.write_text(f'[tenants.leak]\nidentities = ["{TEST_CLIENT}"]\nsecrets = ["token", "apikey"]\n')
    worker = worker_factory(
        None, env={"CORRAL_SECRET_APIKEY": env_secret.decode(), "CORRAL_HOST__POLICY_FILE": str(policy)}
    )
    flower_port = free_port()
    # Flower runs as its own Redis role (corral.trust.credentials): it may subscribe to task events.
    flower_env = {**corral_env, **conftest.suite_fleet().role_env("flower"), "FLOWER_UNAUTHENTICATED_API": "true"}
    with subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers.app", "flower", "--address=127.0.0.1", f"--port={flower_port}"],
        env=flower_env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as flower:
        try:
            time.sleep(3)
            outputs = []
            for args in (["--json"], []):
                done = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "corral",
                        "run",
                        *args,
                        "--host",
                        worker.host_id,
                        "--secret",
                        "token",
                        "--secret-env",
                        "APIKEY=apikey",
                        busybox_image,
                        "--",
                        "sh",
                        "-c",
                        PRINT_EVERYTHING,
                    ],
                    env=corral_env,
                    cwd=REPO,
                    capture_output=True,
                    timeout=120,
                    check=False,
                )
                assert done.returncode == 0, done.stderr
                outputs.append(done.stdout + done.stderr)
            # A file-secret container, inspected while it runs.
            detached = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "corral",
                    "run",
                    "--json",
                    "--detach",
                    "--host",
                    worker.host_id,
                    "--secret",
                    "token",
                    busybox_image,
                    "--",
                    "sleep",
                    "30",
                ],
                env=corral_env,
                cwd=REPO,
                capture_output=True,
                timeout=120,
                check=False,
            )
            assert detached.returncode == 0, detached.stderr
            containers = docker_client.containers.list(filters={"label": f"corral.host={worker.host_id}"})
            inspected = json.dumps([c.attrs for c in containers]).encode()
            env_id = json.loads(detached.stdout)["environment_id"]
            views = b"".join(
                subprocess.run(
                    [sys.executable, "-m", "corral", *cmd],
                    env=corral_env,
                    cwd=REPO,
                    capture_output=True,
                    timeout=60,
                    check=False,
                ).stdout
                for cmd in (
                    ["ps", "--all", "--json"],
                    ["journal", "--json", env_id],
                    ["hosts", "--json"],
                    ["logs", "--json", env_id],
                )
            )
            time.sleep(1)  # let Flower take in the last events
            base = f"http://127.0.0.1:{flower_port}"
            tasks = json.loads(get(f"{base}/api/tasks"))
            flower_answers = (
                get(f"{base}/api/tasks")
                + get(f"{base}/api/workers?refresh=1")
                + b"".join(get(f"{base}/api/task/info/{task_id}") for task_id in list(tasks)[:200])
            )
            # Flower saw the jobs' tasks (3 launches, their placements and cleanups; reads send no events)
            names = {task.get("name") for task in tasks.values()}
            assert {"corral.place", "corral.launch", "corral.cleanup"} <= names and len(tasks) >= 8, tasks
            subprocess.run(
                [sys.executable, "-m", "corral", "rm", env_id],
                env=corral_env,
                cwd=REPO,
                timeout=60,
                check=False,
                capture_output=True,
            )
        finally:
            flower.terminate()
    secret_needles = needles(file_secret, env_secret)
    places = {
        "corral run output": b"".join(outputs),
        "redis (all databases)": dump_redis(corral_env["CORRAL_REDIS__URL"]),
        "worker log": worker.log_path.read_bytes(),
        "flower api": flower_answers,
        "docker inspect (file secret)": inspected,
        "corral ps/journal/hosts/logs": views,
    }
    leaks = {place: hits(data, secret_needles) for place, data in places.items()}
    assert all(not found for found in leaks.values()), leaks
    # The scan is not vacuous: the job really printed its secrets (as redaction markers).
    assert b"[REDACTED]" in b"".join(outputs)
    assert os.environ.get("CORRAL_SECRET_APIKEY") is None
