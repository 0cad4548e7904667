"""Flower as the operator sees it: `corral dev --hosts 2` with Flower, a job that runs and one
that fails, read in headless Chromium (Debian's ``chromium``) over the DevTools protocol.

The tasks page screenshot is written to ``docs/flower-tasks.png`` when ``CORRAL_UPDATE_DOCS=1``
(otherwise into the test's temp dir), so the picture in the docs is what this test saw.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest

from corral.client.devstack import FLOWER_TASKS_COLUMNS
from corral.trust.credentials import Fleet
from tests.browser import Browser, chromium_binary
from tests.conftest import free_port, missing
from tests.harness import REPO, remove_labeled, wait_until

COLUMN = {name: index for index, name in enumerate(FLOWER_TASKS_COLUMNS.split(","))}


def corral_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "corral", *args], env=env, cwd=REPO, capture_output=True, timeout=120, check=False
    )


def status_without_auth(url: str, auth: str | None = None) -> int:
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    try:
        with urlopen(Request(url, headers=headers), timeout=10) as answer:  # loopback Flower only
            return int(answer.status)
    except HTTPError as exc:
        return exc.code


@pytest.fixture
def browser() -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        missing("chromium (apt-get install chromium)")
    assert binary is not None
    try:
        import websocket  # noqa: F401
    except ImportError:
        missing("websocket-client")
    driver = Browser(binary)
    yield driver
    driver.close()


JOB_TASKS = ("corral.launch", "corral.cleanup")
"""The lifecycle tasks of one `corral run` (its reads, from the host's reads lane, send no task events)."""


def test_flower_shows_hosts_jobs_and_typed_errors_only_to_an_authenticated_operator(
    corral_env: dict[str, str], tmp_path: Path, docker_client: Any, busybox_image: str, browser: Browser
) -> None:
    name = f"fl-{uuid.uuid4().hex[:6]}"
    host, other = f"{name}-1", f"{name}-2"  # `corral dev --hosts 2`
    state = tmp_path / "devstate"
    env = {k: v for k, v in corral_env.items() if not k.startswith(("CORRAL_REDIS__", "CORRAL_SECURITY__"))}
    env = {k: v for k, v in env.items() if not k.startswith("FLOWER_")}
    env["CORRAL_HOST__STATE_DIR"] = str(state)
    env.pop("CORRAL_CELERY__SWEEP_INTERVAL_S")  # the default: sweeps do not crowd the tasks page
    port = free_port()
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "corral", "dev", "--host", name, "--hosts", "2", "--flower-port", str(port)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert wait_until(lambda: b"Ctrl-C stops" in log.read_bytes() or proc.poll() is not None, 90), log.read_text()
        assert proc.poll() is None, log.read_text()
        # The generated credentials: printed once by `corral dev`, kept private.
        auth_file = state / "dev" / "flower.auth"
        auth = auth_file.read_text().strip()
        assert auth_file.stat().st_mode & 0o777 == 0o600
        assert auth.split(":", 1)[1] in log.read_text()
        fleet = Fleet(state / "dev")
        client_env = dict(line.split("=", 1) for line in fleet.env_file("client").read_text().splitlines())
        run_env = {**env, **client_env}

        done = corral_cli(run_env, "run", "--host", host, busybox_image, "--", "echo", "hello")
        assert (done.returncode, done.stdout) == (0, b"hello\n"), done.stderr
        failed = corral_cli(run_env, "run", "--host", other, "--mount", "nosuch:/data", busybox_image, "--", "true")
        assert failed.returncode != 0
        error = failed.stderr.decode()

        base = f"http://127.0.0.1:{port}"
        # The attack: anyone on this machine reading Flower without the credentials.
        for path in ("/", "/workers", "/tasks", "/api/tasks", "/api/workers", "/tasks/datatable"):
            assert status_without_auth(base + path) == 401, path
            assert status_without_auth(base + path, "operator:wrong") == 401, path
        assert browser.navigate(f"{base}/tasks") == 401
        assert "corral.launch" not in browser.text()

        # The workers page lists each host worker.
        assert browser.navigate(f"{base}/workers", auth=auth) == 200
        names = {f"corral@{host}", f"corral@{other}"}
        rows = browser.wait_for_rows(lambda rows: names <= {row[0] for row in rows if row})
        assert names <= {row[0] for row in rows if row}, rows
        assert all(row[1] == "Online" for row in rows if row and row[0] in names), rows

        # The tasks page: the job's launch and its cleanup succeeded on the host's queue; the failed
        # job's launch shows its step's typed error.
        # Columns: devstack.FLOWER_TASKS_COLUMNS (name, uuid, state, routing key, worker, ...).
        assert browser.navigate(f"{base}/tasks", auth=auth) == 200

        def cells(rows: list[list[str]], *names: str) -> list[list[str]]:
            return [[row[COLUMN[name]] for name in names] for row in rows if len(row) == len(COLUMN)]

        def job_seen(rows: list[list[str]]) -> bool:
            done = {name for name, state in cells(rows, "name", "state") if state == "SUCCESS"}
            return set(JOB_TASKS) <= done and ["FAILURE"] in cells(rows, "state")

        browser.evaluate("$('#tasks-table').DataTable().page.len(100).draw()")
        rows = browser.wait_for_rows(job_seen)
        seen = cells(rows, "name", "state", "routing_key", "worker")
        for name in JOB_TASKS:
            assert [name, "SUCCESS", f"corral.host.{host}", f"corral@{host}"] in seen, (name, rows)
        failures = [row for row in cells(rows, "state", "routing_key", "exception") if row[0] == "FAILURE"]
        assert failures, rows
        assert all(routing_key == f"corral.host.{other}" for _, routing_key, _ in failures), failures
        assert any(re.match(r"PolicyDenial\(.*unknown mount alias", exc) for _, _, exc in failures), (failures, error)
        # Every task's kwargs are its host and caller only.
        kwargs = [text for (text,) in cells(rows, "kwargs")]
        assert all(re.fullmatch(r"\{('host': '[\w-]+', )?'caller': '[\w-]+'\}", text) for text in kwargs), kwargs
        shot = tmp_path / "flower-tasks.png"
        browser.screenshot(shot)
        # A task's own page: arguments are a summary, never the request (argv, image, env).
        triples = cells(rows, "name", "routing_key", "uuid")
        start = next(u for n, q, u in triples if n == "corral.launch" and q == f"corral.host.{host}")
        assert browser.navigate(f"{base}/task/{start[:36]}", auth=auth) == 200
        text = browser.wait_for(lambda t: "argument hidden" in t)
        assert re.search(r"<1 argument hidden, \d+ bytes>", text), text
        assert "echo" not in text and "hello" not in text and busybox_image not in text, text
        assert shot.read_bytes().startswith(b"\x89PNG")
        if os.environ.get("CORRAL_UPDATE_DOCS") == "1":
            (REPO / "docs").mkdir(exist_ok=True)
            shutil.copyfile(shot, REPO / "docs" / "flower-tasks.png")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        remove_labeled(docker_client, host)
        remove_labeled(docker_client, other)
