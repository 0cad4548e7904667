"""Batches with real parts: several host workers on this machine's Docker, real Redis, signed messages;
the batch is submitted by the test's client identity and dispatched by the fleet (``corral.host.dispatcher``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.client.client import Client
from corral.fleet.batch import wait_exit_code
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.harness import REPO, count_labeled, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    yield c
    c.close()


def job(image: str, script: str, **kw: Any) -> JobSpec:
    return JobSpec(image=image, argv=["sh", "-c", script], cpus=0.25, memory_mb=32, timeout_ms=60_000, **kw)


def test_a_30_job_array_returns_every_index_output_exactly_once(
    worker_factory, client, docker_client, busybox_image
) -> None:
    workers = [worker_factory(f"bat-{i}", "--slots", "4") for i in range(3)]
    script = 'echo "index=$CORRAL_ARRAY_INDEX attempt=$CORRAL_ATTEMPT batch=$CORRAL_BATCH_ID"'
    handle = client.submit_batch(job(busybox_image, script), array="0-29%6")
    status = handle.wait(timeout=300)
    meta, jobs = status["batch"], status["jobs"]
    failed = {i: r for i, r in jobs.items() if r["state"] != "succeeded"}
    assert (meta["state"], meta["succeeded"], meta["failed"], meta["running"], meta["queued"]) == (
        "finished", "30", "0", "0", "0",
    ), json.dumps(failed)  # fmt: skip
    assert wait_exit_code(meta) == 0
    lines = [rec["stdout_tail"] for rec in jobs.values()]
    assert sorted(lines) == sorted(f"index={i} attempt=1 batch={handle.batch_id}\n" for i in range(30))
    assert {int(i) for i in jobs} == set(range(30))
    # Spread over the fleet, every sandbox cleaned up, every reservation returned.
    hosts = Counter(rec["host"] for rec in jobs.values())
    assert set(hosts) == {w.host_id for w in workers}
    for w in workers:
        assert count_labeled(docker_client, w.host_id)["containers"] == 0
        assert client.usage(w.host_id)[1].slots == 0
    assert all(s["state"] == "cleaned" for s in client.sessions(100))


def test_retry_rules_act_as_written(worker_factory, client, busybox_image) -> None:
    worker_factory("bat-retry")
    # Index 0 exits 3 on its first attempt only (retried by exit:3); index 1 always exits 4 (no rule:
    # fails at once); index 2 always exits 3 (retried until its own budget of 3 attempts is spent).
    script = 'case "$CORRAL_ARRAY_INDEX:$CORRAL_ATTEMPT" in 0:1) exit 3;; 0:*) exit 0;; 1:*) exit 4;; *) exit 3;; esac'
    handle = client.submit_batch(job(busybox_image, script), array="3", retry=["exit:3"], max_attempts=3)
    status = handle.wait(timeout=300)
    jobs = {int(i): rec for i, rec in status["jobs"].items()}
    assert (jobs[0]["state"], jobs[0]["attempt"], jobs[0]["exit_code"]) == ("succeeded", 2, 0)
    assert (jobs[1]["state"], jobs[1]["attempt"], jobs[1]["exit_code"]) == ("failed", 1, 4)
    assert (jobs[2]["state"], jobs[2]["attempt"], jobs[2]["exit_code"]) == ("failed", 3, 3)
    assert [h["exit_code"] for h in jobs[2]["history"]] == [3, 3, 3]
    meta = status["batch"]
    assert (meta["succeeded"], meta["failed"]) == ("1", "2") and wait_exit_code(meta) == 1


def test_an_idempotent_resubmission_creates_nothing(worker_factory, client, busybox_image) -> None:
    worker_factory("bat-idem")
    spec = job(busybox_image, "true")
    first = client.submit_batch(spec, array="2", idempotency_key="nightly-2026-11-30")
    again = client.submit_batch(spec, array="5", idempotency_key="nightly-2026-11-30")
    assert first.created and not again.created and again.batch_id == first.batch_id
    assert first.wait(timeout=120)["batch"]["total"] == "2"
    assert [b["id"] for b in client.batches()] == [first.batch_id]


def test_the_cli_batch_verbs(worker_factory, corral_env, busybox_image, tmp_path: Path) -> None:
    worker_factory("bat-cli")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "corral", "batch", *args],
            env=corral_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )

    lines = tmp_path / "jobs.jsonl"
    lines.write_text(
        json.dumps({"image": busybox_image, "argv": ["echo", "one"], "cpus": 0.25, "memory_mb": 32})
        + "\n"
        + json.dumps({"image": busybox_image, "argv": ["sh", "-c", "exit 7"], "cpus": 0.25, "memory_mb": 32})
        + "\n"
    )
    submitted = cli("submit", "--json", "--file", str(lines))
    assert submitted.returncode == 0, submitted.stderr
    batch_id = json.loads(submitted.stdout)["batch_id"]
    waited = cli("wait", "--json", batch_id)
    assert waited.returncode == 1, waited.stderr  # one job failed
    jobs = json.loads(waited.stdout)["jobs"]
    assert (jobs["0"]["stdout_tail"], jobs["1"]["exit_code"]) == ("one\n", 7)
    status = cli("status", batch_id)
    assert "succeeded 1" in status.stdout and "failed 1" in status.stdout
    noop = cli("cancel", batch_id)
    assert noop.returncode == 0 and "nothing to cancel" in noop.stdout
    listed = cli("ls", "--json")
    assert [b["id"] for b in json.loads(listed.stdout)] == [batch_id]
    # Bad input: a malformed line (its number named), nothing submitted.
    lines.write_text(json.dumps({"image": busybox_image, "argv": ["true"]}) + "\n" + '{"image": 1}\n')
    bad = cli("submit", "--file", str(lines))
    assert bad.returncode == 125 and "line 2" in bad.stderr + bad.stdout
    for args in (["--array", "5-2"], ["--array", "0"], ["--array", "0-9%0"], ["--retry", "exitcode:3"],
                 ["--deadline", "2001-01-01T00:00:00Z"]):  # fmt: skip
        refused = cli("submit", *args, busybox_image, "--", "true")
        assert refused.returncode == 125, (args, refused.stdout, refused.stderr)
    assert [b["id"] for b in json.loads(cli("ls", "--json").stdout)] == [batch_id]


def test_killing_a_host_worker_mid_batch_moves_its_jobs(worker_factory, client, busybox_image) -> None:
    doomed, survivor = worker_factory("bat-doomed", "--slots", "2"), worker_factory("bat-survivor", "--slots", "2")
    handle = client.submit_batch(job(busybox_image, 'sleep 6; echo "done $CORRAL_ARRAY_INDEX"'), array="4")

    def running_on_doomed() -> bool:
        jobs = handle.status(jobs=True)["jobs"]
        on = [r for r in jobs.values() if r.get("host") == doomed.host_id and r.get("state") == "running"]
        return len(on) == 2

    assert wait_until(running_on_doomed, 60)
    doomed.stop(signal.SIGKILL)  # the whole worker, at once: no soft shutdown, no goodbye
    status = handle.wait(timeout=240)
    jobs = status["jobs"]
    assert status["batch"]["succeeded"] == "4", json.dumps(jobs)
    moved = [r for r in jobs.values() if r["history"][0]["reason"] == "host_lost"]
    assert len(moved) == 2
    for rec in moved:
        assert rec["history"][0]["host"] == doomed.host_id
        assert (rec["host"], rec["attempt"], rec["exit_code"]) == (survivor.host_id, 2, 0)
    assert sorted(r["stdout_tail"] for r in jobs.values()) == [f"done {i}\n" for i in range(4)]


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_cancel_and_deadline_stop_queued_jobs_and_terminate_running_ones(
    worker_factory, client, docker_client, busybox_image, how
) -> None:
    worker = worker_factory(f"bat-{how}", "--slots", "2")
    deadline = int(time.time() * 1000) + 8000 if how == "deadline" else None
    handle = client.submit_batch(job(busybox_image, "sleep 60"), array="5", deadline_ms=deadline)
    assert wait_until(lambda: handle.status()["batch"]["running"] == "2", 60)
    if how == "cancel":
        handle.cancel()
    status = handle.wait(timeout=90)  # long before the jobs' own 60 s
    meta = status["batch"]
    assert (meta["state"], meta["cancelled"], meta["succeeded"]) == ("cancelled", "5", "0")
    assert meta["cancel_reason"] == ("deadline" if how == "deadline" else "cancelled by tester")
    terminated = [r for r in status["jobs"].values() if r.get("host")]
    assert len(terminated) == 2 and all(r["reason"] == "signal" for r in terminated)
    assert count_labeled(docker_client, worker.host_id)["containers"] == 0
    assert wait_exit_code(meta) == 1


def test_retry_failed_reruns_only_the_failed_jobs_in_new_sandboxes(worker_factory, client, busybox_image) -> None:
    worker_factory("bat-rerun")
    script = 'echo "i=$CORRAL_ARRAY_INDEX a=$CORRAL_ATTEMPT"; [ "$CORRAL_ARRAY_INDEX:$CORRAL_ATTEMPT" != 1:1 ]'
    handle = client.submit_batch(job(busybox_image, script), array="2")
    first = handle.wait(timeout=120)["batch"]
    assert (first["succeeded"], first["failed"]) == ("1", "1")
    handle.retry_failed()
    status = handle.wait(timeout=120)
    meta, jobs = status["batch"], status["jobs"]
    assert (meta["state"], meta["succeeded"], meta["failed"]) == ("finished", "2", "0"), json.dumps(jobs)
    # Attempt 2 of index 1 ran in a sandbox of its own (reusing attempt 1's id once made it start_failed).
    assert (jobs["1"]["stdout_tail"], jobs["1"]["environment_id"]) == ("i=1 a=2\n", f"{handle.batch_id}.1.a2")
    assert [h["exit_code"] for h in jobs["1"]["history"]] == [1, 0]
    assert (jobs["0"]["attempt"], jobs["0"]["stdout_tail"]) == (1, "i=0 a=1\n")  # not run again
