"""Airflow 3 runs real DAGs with ``CorralOperator`` against a real corral stack: a host worker on this
machine's Docker, the suite's Redis with ACL users, messages signed by the test's client identity.

Each DAG runs as Airflow's own ``dag.test()`` (tasks, XCom, retries and deferral through Airflow's
real task runner and its in-line triggerer) on SQLite after ``airflow db migrate``, in a subprocess
with the client role's environment: what a scheduler's worker would have."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.client.client import Client
from corral.settings import Settings, load_settings
from tests.conftest import missing
from tests.harness import REPO

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker, pytest.mark.timeout(400)]

AIRFLOW_BIN = Path(sys.executable).with_name("airflow")


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A fresh Airflow home (SQLite metadata database, migrated) for this module's DAGs."""
    try:
        import airflow  # noqa: F401
    except ImportError:
        missing("apache-airflow (the [airflow] extra)")
    home = tmp_path_factory.mktemp("airflow")
    (home / "dags").mkdir()
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }
    run = subprocess.run(
        [str(AIRFLOW_BIN), "db", "migrate"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return env


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    yield c
    c.close()


HEADER = """
import json
from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from corral.airflow import CorralOperator

IMAGE = {image!r}
JOB = dict(image=IMAGE, cpus=0.25, memory_mb=32, poll_interval=0.5)


@task
def seen(name, value):
    print("XCOM_SEEN", name, json.dumps(value))
"""

FOOTER = """
if __name__ == "__main__":
    run = dag.test()
    tasks = {{ti.task_id: [str(ti.state), ti.try_number] for ti in run.get_task_instances()}}
    print("RESULT " + json.dumps({{"state": str(run.state), "tasks": tasks}}))
"""


def run_dag(home: dict[str, str], env: dict[str, str], name: str, body: str, image: str) -> tuple[dict[str, Any], str]:
    """Write ``body`` (a ``with DAG(...) as dag:`` block) as a DAG file and ``dag.test()`` it."""
    path = Path(home["AIRFLOW__CORE__DAGS_FOLDER"]) / f"{name}.py"
    path.write_text(HEADER.format(image=image) + textwrap.dedent(body) + FOOTER.format())
    proc = subprocess.run(
        [sys.executable, str(path)],
        env={**env, **home},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    out = proc.stdout + proc.stderr
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and results, out[-6000:]
    return json.loads(results[-1][len("RESULT ") :]), out


def xcoms(out: str) -> dict[str, Any]:
    rows = [line.split(" ", 2) for line in out.splitlines() if line.startswith("XCOM_SEEN ")]
    return {name: json.loads(value) for _, name, value in rows}


def operator_lines(out: str, logger: str = "CorralOperator") -> list[str]:
    """The task-log messages CorralOperator (or ``logger``) wrote (Airflow's console log: ``... [info] MSG
    [logger]``)."""
    lines = []
    for line in out.splitlines():
        if f"{logger}]" in line and "[info" in line:
            found = re.match(rf"(.*?)\s*\[[\w.]*{logger}\]", line.split("] ", 1)[1])
            if found:
                lines.append(found.group(1).strip())
    return lines


def test_a_dag_runs_to_success_with_output_in_the_task_log_and_xcom(
    worker_factory, corral_env, airflow_home, client, busybox_image
) -> None:
    worker_factory("af-ok", "--slots", "4")
    body = """
    with DAG("corral_ok", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        one = CorralOperator(
            task_id="one",
            command=["sh", "-c", "echo first-line; echo oops >&2; echo rows=42; echo last-line"],
            **JOB,
        )
        named = CorralOperator(task_id="named", command="sh -c 'echo rows=7; echo after'", xcom_output="rows", **JOB)
        many = CorralOperator(  # not streamed live (live_jobs): each job's tail is logged when it ends
            task_id="many", command=["sh", "-c", "echo idx-$CORRAL_ARRAY_INDEX"], array=3, live_jobs=2, **JOB
        )
        keyed = CorralOperator(task_id="keyed", command=["true"], idempotency_key="k-{{ ti.try_number }}", **JOB)
        one >> named >> many >> keyed
        seen("one", one.output)
        seen("named", named.output)
        seen("many", many.output)
    """
    result, out = run_dag(airflow_home, corral_env, "corral_ok", body, busybox_image)
    assert result["state"] == "success", out[-6000:]
    assert xcoms(out) == {"one": "last-line", "named": "7", "many": ["idx-0", "idx-1", "idx-2"]}
    logged = operator_lines(out)
    for line in ("first-line", "stderr: oops", "rows=42", "last-line", "[0] idx-0", "[2] idx-2"):
        assert line in logged, (line, logged)
    # A batch per task, keyed by its task instance (or by the templated key); every job ran once.
    batches = {b["idempotency_key"]: b for b in client.batches()}
    assert len(batches) == 4 and "k-1" in batches
    assert sum(key.startswith("airflow:corral_ok:manual__") for key in batches) == 3
    assert sorted(b["total"] for b in batches.values()) == ["1", "1", "1", "3"]
    assert all(b["state"] == "finished" and b["succeeded"] == b["total"] for b in batches.values())


def test_a_non_zero_exit_fails_the_task_and_its_retry_reuses_the_batch(
    worker_factory, corral_env, airflow_home, client, busybox_image
) -> None:
    worker_factory("af-fail")
    body = """
    with DAG("corral_fail", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        CorralOperator(
            task_id="fails",
            command=["sh", "-c", "echo attempt-$CORRAL_ATTEMPT; exit 3"],
            retries=1,
            retry_delay=timedelta(seconds=0),
            **JOB,
        )
    """
    result, out = run_dag(airflow_home, corral_env, "corral_fail", body, busybox_image)
    assert result["state"] == "failed", out[-6000:]
    assert result["tasks"]["fails"] == ["failed", 2]  # Airflow tried twice
    assert "AirflowException: corral batch" in out and "exit 3" in out
    # One batch for both tries: the retry found it by its key and re-ran the failed job in it.
    batches = client.batches()
    assert len(batches) == 1, batches
    batch_id = batches[0]["id"]
    assert f"try 2 reuses batch {batch_id}" in out
    job = client.batch(batch_id).status(jobs=True)["jobs"]["0"]
    # The re-run is the job's attempt 2, in a new sandbox, with the batch's budget fresh for it.
    assert [(h["attempt"], h["exit_code"]) for h in job["history"]] == [(1, 3), (2, 3)], json.dumps(job)
    logged = operator_lines(out)
    assert "attempt-1" in logged and "attempt-2" in logged, logged


def test_deferrable_mode_waits_in_the_triggerer_and_succeeds(
    worker_factory, corral_env, airflow_home, client, busybox_image
) -> None:
    worker_factory("af-defer")
    body = """
    with DAG("corral_defer", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        later = CorralOperator(
            task_id="later", command=["sh", "-c", "sleep 2; echo deferred-out"], deferrable=True, **JOB
        )
        seen("later", later.output)
    """
    result, out = run_dag(airflow_home, corral_env, "corral_defer", body, busybox_image)
    assert result["state"] == "success", out[-6000:]
    assert "running trigger in line" in out  # the task deferred to CorralBatchTrigger
    assert xcoms(out) == {"later": "deferred-out"}
    # The trigger streamed the job's output while the task was deferred; the resumed task did not log it again.
    streamed = operator_lines(out, "CorralBatchTrigger")
    assert "deferred-out" in streamed and "corral: attempt 1 on af-defer ended: exit 0 (exit)" in streamed, out[-6000:]
    assert "deferred-out" not in operator_lines(out)
    (batch,) = client.batches()
    assert (batch["state"], batch["succeeded"]) == ("finished", "1")


def test_a_timed_out_task_cancels_its_batch(worker_factory, corral_env, airflow_home, client, busybox_image) -> None:
    worker_factory("af-kill")
    body = """
    with DAG("corral_kill", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        CorralOperator(task_id="slow", command=["sleep", "120"], execution_timeout=timedelta(seconds=20), **JOB)
    """
    result, out = run_dag(airflow_home, corral_env, "corral_kill", body, busybox_image)
    assert result["state"] == "failed", out[-6000:]
    (batch,) = client.batches()
    assert f"corral: task killed; cancelling batch {batch['id']}" in operator_lines(out), out[-8000:]
    status = client.batch(batch["id"]).wait(timeout=60)
    assert (status["batch"]["state"], status["batch"]["cancelled"]) == ("cancelled", "1")
    assert status["jobs"]["0"]["reason"] == "signal"  # it had started (20 s): terminated long before its 120 s


def test_killing_a_deferred_task_cancels_its_batch(
    worker_factory, corral_env, client, busybox_image, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """What Airflow's triggerer calls when a user marks a deferred task failed: the trigger's on_kill."""
    import asyncio

    from corral.airflow import CorralBatchTrigger
    from corral.fleet.job import JobSpec
    from tests.harness import wait_until

    worker_factory("af-defer-kill")
    monkeypatch.setenv("CORRAL_REDIS__URL", corral_env["CORRAL_REDIS__URL"])
    load_settings.cache_clear()  # the trigger reads settings built once per process: rebuild them here
    request.addfinalizer(load_settings.cache_clear)
    spec = JobSpec(image=busybox_image, argv=["sleep", "120"], cpus=0.25, memory_mb=32)
    handle = client.submit_batch(spec, array="1")
    assert wait_until(lambda: handle.status()["batch"]["running"] == "1", 60)
    asyncio.run(CorralBatchTrigger(handle.batch_id).on_kill())
    status = handle.wait(timeout=60)
    assert (status["batch"]["state"], status["batch"]["cancelled"]) == ("cancelled", "1")
    assert status["jobs"]["0"]["reason"] == "signal"


def test_mapped_tasks_and_a_connection_instead_of_environment_variables(
    worker_factory, corral_env, airflow_home, client, busybox_image
) -> None:
    """``CorralOperator.partial(...).expand(command=[...])``: one batch per mapped instance, its XCom per
    map index. The DAG's process has no ``CORRAL_*`` variable at all: where corral is (Redis, the
    client's Redis user) and who the client is (key and certificate) come from an Airflow Connection
    (``conn_id``), for the operator, its deferred trigger and the resumed task."""
    from urllib.parse import urlsplit

    worker_factory("af-map", "--slots", "4")
    url = urlsplit(corral_env["CORRAL_REDIS__URL"])
    connection = {
        "conn_type": "corral",
        "host": url.hostname,
        "port": url.port,
        "login": corral_env["CORRAL_REDIS__USERNAME"],
        "extra": {
            "password_file": corral_env["CORRAL_REDIS__PASSWORD_FILE"],
            "key_file": corral_env["CORRAL_SECURITY__KEY_FILE"],
            "cert_file": corral_env["CORRAL_SECURITY__CERT_FILE"],
        },
    }
    bare = {k: v for k, v in corral_env.items() if not k.startswith("CORRAL_")}
    bare["AIRFLOW_CONN_CORRAL_TEST"] = json.dumps(connection)
    body = """
    @task
    def seen_all(name, values):  # a mapped task's XCom is a lazy sequence: one value per map index
        print("XCOM_SEEN", name, json.dumps(list(values)))

    with DAG("corral_mapped", schedule=None, start_date=datetime(2026, 1, 1)) as dag:
        mapped = CorralOperator.partial(task_id="mapped", conn_id="corral_test", **JOB).expand(
            command=[["echo", "m-a"], ["echo", "m-b"], ["sh", "-c", "echo m-c"]]
        )
        later = CorralOperator(  # larger than live_jobs: job ends from the trigger, tails when resumed
            task_id="later", command=["sh", "-c", "echo deferred-$CORRAL_ARRAY_INDEX"], array=2, live_jobs=1,
            deferrable=True, conn_id="corral_test", **JOB
        )
        seen_all("mapped", mapped.output)
        seen("later", later.output)
    """
    result, out = run_dag(airflow_home, bare, "corral_mapped", body, busybox_image)
    assert result["state"] == "success", out[-6000:]
    assert xcoms(out) == {"mapped": ["m-a", "m-b", "m-c"], "later": ["deferred-0", "deferred-1"]}
    assert "running trigger in line" in out
    logged = operator_lines(out)
    assert {"m-a", "m-b", "m-c", "[0] deferred-0", "[1] deferred-1"} <= set(logged), logged
    batches = client.batches()
    keys = sorted(b["idempotency_key"] for b in batches)
    assert all(k.startswith("airflow:corral_mapped:") for k in keys), keys
    assert [k.rsplit(":", 1)[1] for k in keys if ":mapped:" in k] == ["0", "1", "2"]  # one per map index
    assert len(batches) == 4 and all(b["state"] == "finished" and b["succeeded"] == b["total"] for b in batches)
    # The trigger logged the deferred jobs' ends while the task was deferred.
    ends = operator_lines(out, "CorralBatchTrigger")
    for index in (0, 1):
        assert f"corral: job {index} attempt 1 on af-map ended: exit 0 (exit)" in ends, out[-6000:]
