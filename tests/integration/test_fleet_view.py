"""What an operator and a user see of the fleet, with a real worker, Redis and Docker: the worker's
Prometheus endpoint moving while jobs run (``corral.host.metrics``, ``workers.observe``), ``corral ps`` for a
detached sandbox whose process timed out, the line a process killed for memory leaves on stderr, and
the progress shown on a terminal only."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from corral.client.client import Client
from corral.contract.errors import AgentError
from corral.contract.models import ProcessSignalRequest
from corral.contract.operations import Operation
from corral.contract.vocabulary import ProcessSignal
from corral.settings import Settings
from tests.conftest import free_port
from tests.harness import REPO, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]

CORRAL = [sys.executable, "-m", "corral"]


def corral(env: dict[str, str], *args: str, timeout: float = 90, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CORRAL, *args], env=env, cwd=REPO, capture_output=True, timeout=timeout, check=False, **kw)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def pool_children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def test_metrics_move_when_jobs_run(worker_factory, corral_env, busybox_image, redis_url) -> None:
    port = free_port()
    worker = worker_factory(None, "--concurrency", "1", env={"CORRAL_METRICS__PORT": str(port)})
    host_queue = f"corral.host.{worker.host_id}"
    before = scrape(port)
    assert sample(before, "corral_metrics_source_up", source="state_store") == 1
    assert sample(before, "corral_metrics_source_up", source="broker") == 1
    assert sample(before, "corral_sandboxes_max") == 256  # the shipped policy's limits.max_sandboxes

    done = corral(corral_env, "run", "--host", worker.host_id, busybox_image, "--", "echo", "hi")
    assert done.returncode == 0, done.stderr
    denied = corral(corral_env, "run", "--host", worker.host_id, "--mount", "nope:/x", busybox_image, "--", "true")
    assert denied.returncode == 125, denied.stderr
    detached = corral(
        corral_env, "run", "--json", "--detach", "--host", worker.host_id, "--cpus", "0.5", "--memory", "64m",
        busybox_image, "--", "sleep", "120",
    )  # fmt: skip
    assert detached.returncode == 0, detached.stderr

    after = scrape(port)
    ok = ("corral_operations_total", {"operation": "start_process", "outcome": "ok"})
    assert sample(after, ok[0], **ok[1]) == sample(before, ok[0], **ok[1]) + 2
    launches = "corral_launch_duration_seconds_count"
    assert sample(after, launches) == sample(before, launches) + 2
    assert sample(after, "corral_operation_duration_seconds_count", operation="prepare_environment") >= 2
    denial = {"operation": "prepare_session", "kind": "policy_denial", "retry": "not_retryable"}
    denial["rule"] = "mounts.aliases"
    assert sample(after, "corral_operation_failures_total", **denial) == 1, [
        k for k in after if k[0] == "corral_operation_failures_total"
    ]
    assert sample(after, "corral_sandboxes", state="detached") == 1
    assert sample(after, "corral_sandboxes_live") == 1
    assert sample(after, "corral_allocated_cpus") == 0.5
    assert sample(after, "corral_allocated_memory_bytes") == 64 * 1024 * 1024
    assert sample(after, "corral_io_helpers") == 1
    assert sample(after, "corral_admission_reserved", resource="slots") == 1
    assert sample(after, "corral_admission_capacity", resource="slots") >= 1
    assert sample(after, "corral_io_helpers_rss_bytes") > 1024 * 1024

    # Queue depth: with the pool stopped the worker reserves one message (prefetch 1 x concurrency 1),
    # the rest wait in the host queue, and the endpoint (main process) still answers.
    children = pool_children(worker.proc.pid)
    assert children
    for child in children:
        os.kill(child, signal.SIGSTOP)
    client = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}))
    try:
        results = [
            # a lifecycle operation: reads (collect_stats) have their own queue and pool, never stopped here
            client.send(
                Operation.signal_process,
                ProcessSignalRequest(process_ref="proc-nowhere", signal=ProcessSignal.kill, grace_ms=0),
                worker.host_id,
            )
            for _ in range(5)
        ]
        assert wait_until(lambda: sample(scrape(port), "corral_queue_depth", queue=host_queue) >= 3, 20)
    finally:
        for child in children:
            os.kill(child, signal.SIGCONT)
    assert wait_until(lambda: sample(scrape(port), "corral_queue_depth", queue=host_queue) == 0, 30)
    for result in results:  # each was run once the pool went on: the answer for a process that does not exist
        with pytest.raises(AgentError, match="proc-nowhere"):
            result.get(timeout=30)
    client.close()


def test_ps_shows_a_detached_sandbox_that_timed_out_as_exited_with_its_reason(
    worker_factory, corral_env, busybox_image
) -> None:
    port = free_port()
    worker = worker_factory(None, env={"CORRAL_METRICS__PORT": str(port)})
    started = corral(
        corral_env, "run", "--json", "--detach", "--timeout", "1s", "--host", worker.host_id,
        busybox_image, "--", "sleep", "300",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    env_id = json.loads(started.stdout)["environment_id"]

    def shown() -> dict[str, Any]:
        rows = json.loads(corral(corral_env, "ps", "--json").stdout)
        return next(r for r in rows if r["id"] == env_id)

    # Nobody asks for stats: the worker's exit watch finds the ended process by itself.
    assert wait_until(lambda: shown()["state"] == "exited", 30), shown()
    row = shown()
    assert (row["session_state"], row["reason"]) == ("detached", "timeout")
    assert row["exit_code"] in ("143", "137")  # terminated at the deadline, or killed after the grace
    table = corral(corral_env, "ps").stdout.decode()
    line = next(x for x in table.splitlines() if env_id in x)
    assert " exited " in line and " timeout " in line and " detached " not in line
    assert sample(scrape(port), "corral_process_exits_total", reason="timeout") == 1
    assert sample(scrape(port), "corral_sandboxes", state="exited") == 1


def test_a_process_killed_for_memory_says_so_on_stderr(worker_factory, corral_env, busybox_image) -> None:
    worker = worker_factory()
    argv = ["--host", worker.host_id, "--memory", "16m", busybox_image, "--", "sh", "-c", "sleep 0.2; tail /dev/zero"]
    done = corral(corral_env, "run", *argv)
    assert done.returncode == 137, done.stderr
    assert done.stderr.decode().splitlines()[-1] == "corral: killed: out of memory (limit 16 MiB)"
    as_json = corral(corral_env, "run", "--json", *argv)
    assert json.loads(as_json.stdout)["oom_killed"] is True
    assert b"killed" not in as_json.stderr  # --json carries it; stderr stays quiet


def corral_on_terminal(env: dict[str, str], *args: str, timeout: float = 90) -> tuple[int, bytes, bytes]:
    """Run ``corral ARGS`` with stderr on a pseudo-terminal: (exit code, stdout, what the terminal saw)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*CORRAL, *args], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    out, _ = proc.communicate(timeout=timeout)
    os.close(leader)
    return proc.returncode, out, seen


def test_progress_shows_on_a_terminal_only(worker_factory, corral_env, busybox_image) -> None:
    worker = worker_factory()
    argv = ["run", "--host", worker.host_id, busybox_image, "--", "echo", "hi"]
    piped = corral(corral_env, *argv)
    assert piped.returncode == 0 and piped.stderr == b"" and piped.stdout == b"hi\n"

    code, out, seen = corral_on_terminal(corral_env, *argv)
    assert code == 0 and out == b"hi\n"
    assert f"corral: preparing on {worker.host_id}".encode() in seen
    assert seen.endswith(b"\r\x1b[2K")  # the line is erased before the job's own output


def test_batch_wait_shows_progress_on_a_terminal_only(worker_factory, corral_env, busybox_image) -> None:
    worker_factory()
    submitted = corral(corral_env, "batch", "submit", "--json", "--array", "2", busybox_image, "--", "sleep", "1")
    assert submitted.returncode == 0, submitted.stderr
    batch_id = json.loads(submitted.stdout)["batch_id"]

    code, out, seen = corral_on_terminal(corral_env, "batch", "wait", batch_id)
    assert code == 0, out
    assert f"batch {batch_id}: ".encode() in seen and b" succeeded" in seen
    assert seen.endswith(b"\r\x1b[2K")  # erased before the summary on stdout
    assert b"succeeded 2" in out

    piped = corral(corral_env, "batch", "wait", batch_id)  # over already: piped, nothing on stderr
    assert piped.returncode == 0 and piped.stderr == b""
