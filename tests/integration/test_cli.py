"""``corral`` as a user runs it: a subprocess against a real worker, Redis and Docker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import NOTHING, REPO, count_labeled, leftovers

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]

CORRAL = [sys.executable, "-m", "corral"]


def corral(env: dict[str, str], *args: str, timeout: float = 90, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CORRAL, *args], env=env, cwd=REPO, capture_output=True, timeout=timeout, check=False, **kw)


def test_run_prints_output_and_exits_with_the_process_code(
    worker_factory, corral_env, docker_client, busybox_image
) -> None:
    worker = worker_factory()
    done = corral(
        corral_env,
        "run",
        "--host",
        worker.host_id,
        busybox_image,
        "--",
        "sh",
        "-c",
        "printf 'out\\377\\n'; echo err >&2; exit 42",
    )
    assert done.returncode == 42, done.stderr
    assert done.stdout == b"out\xff\n"
    assert done.stderr == b"err\n"
    assert leftovers(docker_client, worker.host_id, corral_env) == NOTHING


def test_run_json_reports_outcome(worker_factory, corral_env, busybox_image) -> None:
    worker = worker_factory()
    done = corral(
        corral_env,
        "run",
        "--json",
        "--host",
        worker.host_id,
        "--env",
        "GREETING=hi",
        "--mount",
        "data:/data",
        busybox_image,
        "--",
        "sh",
        "-c",
        "echo $GREETING; cat /data/hello.txt",
    )
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    import base64

    assert base64.b64decode(outcome["stdout_b64"]) == b"hi\nhello from the host\n"
    assert outcome["exit_code"] == 0
    assert outcome["cleanup"] == "completed"


def test_run_secret_is_mounted_and_never_printed_by_corral(worker_factory, corral_env, busybox_image, tmp_path) -> None:
    (Path(corral_env["CORRAL_HOST__SECRETS_DIR"]) / "token").write_text("s3cr3t-value")
    policy = tmp_path / "policy" / "tenants.toml"  # secrets are a tenant grant (corral.host.tenancy)
    policy.parent.mkdir()
    policy.write_text('[tenants.default]\nidentities = ["*"]\nsecrets = ["token"]\n')
    worker = worker_factory(None, env={"CORRAL_HOST__POLICY_FILE": str(policy)})
    done = corral(
        corral_env,
        "run",
        "--json",
        "--host",
        worker.host_id,
        "--secret",
        "token",
        busybox_image,
        "--",
        "sh",
        "-c",
        'test "$(cat /run/secrets/token)" = s3cr3t-value && echo match',
    )
    assert done.returncode == 0, done.stderr
    assert b"s3cr3t-value" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["corral/does-not-exist:1", "--", "true"], b"not_found"),
        (["{image}", "--"], b"argv"),
        (["--host", "no-such-host", "{image}", "--", "true"], b"unknown host"),
        (["--mount", "nosuchalias:/data", "{image}", "--", "true"], b"policy_denial"),
        (["--memory", "-5", "{image}", "--", "true"], b"invalid_request"),
        (["--cpus", "100000", "{image}", "--", "true"], b"cpus"),
        (["--pids", "0", "{image}", "--", "true"], b"process_count"),
        (["--timeout", "soon", "{image}", "--", "true"], b"not a duration"),
        (["busybox;rm -rf /", "--", "true"], b"image"),
    ],
)
def test_run_rejects_bad_input_with_one_line_and_no_leftovers(
    worker_factory, corral_env, docker_client, busybox_image, args, message
) -> None:
    worker = worker_factory()
    argv = [a.replace("{image}", busybox_image) for a in args]
    if "--host" not in argv:
        argv = ["--host", worker.host_id, *argv]
    done = corral(corral_env, "run", *argv)
    assert done.returncode == 125, (done.stdout, done.stderr)
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("corral: "), done.stderr
    assert message in done.stderr
    assert b"Traceback" not in done.stderr
    time.sleep(1)  # the chain's error cleanup is asynchronous
    assert leftovers(docker_client, worker.host_id, corral_env) == NOTHING


def test_kill_with_unknown_signal_and_control_character_ids_are_rejected(worker_factory, corral_env) -> None:
    worker_factory()
    bad_signal = corral(corral_env, "kill", "job-x", "--signal", "SIGBOGUS")
    assert bad_signal.returncode == 125 and b"unknown signal" in bad_signal.stderr
    bad_ref = corral(corral_env, "logs", "job-\x01x")
    assert bad_ref.returncode == 125 and b"control characters" in bad_ref.stderr


def test_ctrl_c_terminates_and_cleans_up(worker_factory, corral_env, docker_client, busybox_image) -> None:
    worker = worker_factory()
    argv = [*CORRAL, "run", "--host", worker.host_id, busybox_image, "--", "sh", "-c", "echo started; sleep 60"]
    with subprocess.Popen(argv, env=corral_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"started\n"
        os.kill(proc.pid, signal.SIGINT)
        proc.wait(60)
    assert proc.returncode == 143  # SIGTERM delivered to the sandboxed shell
    assert leftovers(docker_client, worker.host_id, corral_env) == NOTHING


def test_detach_ps_tickets_reclaim_and_journal(worker_factory, corral_env, docker_client, busybox_image) -> None:
    worker = worker_factory()
    done = corral(
        corral_env,
        "run",
        "--json",
        "--detach",
        "--ttl",
        "1h",
        "--host",
        worker.host_id,
        busybox_image,
        "--",
        "sleep",
        "60",
    )
    assert done.returncode == 0, done.stderr
    detached = json.loads(done.stdout)
    env_id, ticket = detached["environment_id"], detached["ticket_ref"]
    ps = json.loads(corral(corral_env, "ps", "--json").stdout)
    assert [(p["id"], p["state"]) for p in ps] == [(env_id, "detached")]
    tickets = json.loads(corral(corral_env, "tickets", "--json").stdout)
    assert tickets[0]["ticket_ref"] == ticket
    stats = json.loads(corral(corral_env, "stats", "--json", env_id).stdout)
    assert stats["state"] == "running" and stats["process_count"] >= 1
    assert count_labeled(docker_client, worker.host_id)["containers"] == 1
    reclaimed = corral(corral_env, "reclaim", ticket)
    assert reclaimed.returncode == 0, reclaimed.stderr
    assert leftovers(docker_client, worker.host_id, corral_env) == NOTHING
    journal = json.loads(corral(corral_env, "journal", "--json", env_id).stdout)
    assert ("intent", "detach") in [(r["kind"], r.get("op")) for r in journal]
    assert ("result", "reclaim") in [(r["kind"], r.get("op")) for r in journal]
    hosts = json.loads(corral(corral_env, "hosts", "--json").stdout)
    assert [(h["host"], h["up"]) for h in hosts] == [(worker.host_id, True)]


def test_interactive_run_forwards_stdin_byte_exact(worker_factory, corral_env, busybox_image) -> None:
    worker = worker_factory()
    payload = bytes(range(256)) * 1024 + b"end"
    done = corral(
        corral_env,
        "run",
        "-i",
        "--host",
        worker.host_id,
        busybox_image,
        "--",
        "sh",
        "-c",
        "cat; echo done",
        input=payload,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == payload + b"done\n"


def test_stdin_beyond_the_host_cap_is_refused_and_the_process_still_ends(
    worker_factory, corral_env, busybox_image
) -> None:
    worker = worker_factory()
    done = corral(
        corral_env,
        "run",
        "-i",
        "--host",
        worker.host_id,
        busybox_image,
        "--",
        "sh",
        "-c",
        "wc -c; echo done",
        input=b"\0" * ((64 << 20) + (1 << 20)),
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(64 << 20).encode(), b"done"]  # exactly the cap got through, then EOF
    assert b"corral: policy_denial" in done.stderr and b"limits.max_stdin_bytes" in done.stderr  # the host policy's cap
