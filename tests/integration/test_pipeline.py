"""The whole pipeline with real parts: a real Celery worker process on a host queue, real Redis,
the real Docker engine. The client in the test process sends tasks by name, like a scheduler."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.client.client import Client
from corral.contract.errors import NotFound, PolicyDenial
from corral.contract.models import ProcessStartRequest, ProcessStartResult, dump
from corral.contract.operations import CHAIN, OPERATIONS, Operation
from corral.contract.vocabulary import ProcessIoStream
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.conftest import TEST_HOST_IDENTITY, suite_fleet
from tests.harness import REPO, count_labeled, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    settings = Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60})
    c = Client(settings)
    yield c
    c.close()


def job(image: str, *argv: str, **kw: Any) -> JobSpec:
    return JobSpec(image=image, argv=list(argv), memory_mb=128, timeout_ms=60_000, **kw)


def test_chain_runs_a_job_end_to_end_and_journals_every_step(
    worker_factory, client, docker_client, busybox_image, corral_env
) -> None:
    worker = worker_factory()
    out: dict[ProcessIoStream, bytearray] = {ProcessIoStream.stdout: bytearray(), ProcessIoStream.stderr: bytearray()}
    outcome = client.run(
        job(busybox_image, "sh", "-c", "echo hello; echo oops >&2; exit 3"),
        host=worker.host_id,
        on_output=lambda s, d: out[s].extend(d),
    )
    assert outcome.exit_code == 3
    assert bytes(out[ProcessIoStream.stdout]) == b"hello\n"
    assert bytes(out[ProcessIoStream.stderr]) == b"oops\n"
    records = client.journal(outcome.environment_id)
    for op in CHAIN:
        kinds = [r.fields["status"] if r.kind == "result" else r.kind for r in records if r.fields.get("op") == op]
        assert kinds == ["intent", "ok"], (op, kinds)
    assert [r.fields["op"] for r in records if r.kind == "intent"][:8] == list(CHAIN)
    assert client.sessions()[0]["state"] == "cleaned"
    assert count_labeled(docker_client, worker.host_id) == {"containers": 0, "networks": 0}
    spool = Path(corral_env["CORRAL_HOST__STATE_DIR"]) / "spool"
    assert not spool.exists() or not any(spool.iterdir())
    assert not any(Path(corral_env["CORRAL_HOST__SECRETS_ROOT"]).iterdir())


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"image": "corral/does-not-exist:1"}, NotFound),
    ],
)
def test_failing_step_leaves_nothing_behind(worker_factory, client, docker_client, busybox_image, spec, error) -> None:
    worker = worker_factory()
    spec = {"image": busybox_image, **spec}
    bad = JobSpec(argv=["true"], memory_mb=64, **spec)
    handle = client.submit(bad, host=worker.host_id)
    with pytest.raises(error):
        client.wait(handle)
    # link_error sends cleanup to the host: the session ends cleaned, with nothing labeled left.
    assert wait_until(lambda: client.services.store.session(bad.environment_id).get("state") == "cleaned", 20)
    assert count_labeled(docker_client, worker.host_id) == {"containers": 0, "networks": 0}
    records = client.journal(bad.environment_id)
    assert any(r.kind == "result" and r.fields.get("status") == "failed" for r in records)
    assert any(r.fields.get("op") == "cleanup" and r.kind == "result" for r in records)


def test_policy_denial_stops_the_chain_before_any_effect(worker_factory, client, docker_client, busybox_image) -> None:
    # The host policy is checked in prepare_session, before any effect: nothing to clean up afterwards.
    worker = worker_factory()
    bad = JobSpec(image=busybox_image, argv=["true"], memory_mb=64, mounts=["nosuchalias:/data"])
    handle = client.submit(bad, host=worker.host_id)
    with pytest.raises(PolicyDenial) as info:
        client.wait(handle)
    assert info.value.context["rule"] == "mounts.aliases"

    # link_error still sends cleanup; with no session it is refused like a cleanup of anyone else's
    # sandbox (corral.host.tenancy: only an operator cleans up without a record), noted in the host's journal
    def refused_cleanup() -> bool:
        return any(
            r.fields.get("op") == "cleanup" and r.fields.get("environment_id") == bad.environment_id
            for r in client.services.journal.read_host(worker.host_id)
        )

    assert wait_until(refused_cleanup, 20)
    records = client.journal(bad.environment_id)
    assert [(r.kind, r.fields["op"], r.fields["rule"]) for r in records] == [
        ("denial", "prepare_session", "mounts.aliases")
    ]
    assert client.services.store.session(bad.environment_id) == {}
    assert count_labeled(docker_client, worker.host_id) == {"containers": 0, "networks": 0}


def test_replayed_start_process_makes_exactly_one_container(
    worker_factory, client, docker_client, busybox_image
) -> None:
    worker = worker_factory()
    spec = job(busybox_image, "sleep", "30")
    steps = spec.requests(worker.host_id)
    for op, request in steps[:-1]:
        client.send(op, request, worker.host_id).get(timeout=60)
    start: ProcessStartRequest = steps[-1][1]  # type: ignore[assignment]
    # Three deliveries of the same request, concurrently (what a redelivery looks like to a worker).
    pending = [client.send("start_process", start, worker.host_id) for _ in range(3)]
    results = [ProcessStartResult.model_validate(p.get(timeout=60)) for p in pending]
    assert len({r.process_ref for r in results}) == 1
    containers = docker_client.containers.list(all=True, filters={"label": f"corral.host={worker.host_id}"})
    assert len(containers) == 1
    assert containers[0].status == "running"
    journal = client.journal(spec.environment_id)
    starts = [r for r in journal if r.fields.get("op") == "start_process"]
    assert [r.kind for r in starts].count("intent") == 1
    assert [r.kind for r in starts].count("replay") == 2
    handle = client.handle(spec.environment_id)
    assert client.cleanup(handle).status.value == "completed"
    assert count_labeled(docker_client, worker.host_id)["containers"] == 0


def test_expired_detach_ticket_is_reclaimed_by_the_sweeper(
    worker_factory, client, docker_client, busybox_image
) -> None:
    worker = worker_factory(None, "--beat")
    spec = job(busybox_image, "sleep", "60", allow_detach=True)
    handle = client.submit(spec, host=worker.host_id)
    client.wait(handle)
    ticket = client.detach(handle, ttl_ms=1000)
    assert client.services.store.ticket(ticket.ticket_ref)["state"] == "detached"
    assert count_labeled(docker_client, worker.host_id)["containers"] == 1
    # Deadline 1 s + one sweep period (1 s) + the reclaim itself; allow generous slack for CI.
    assert wait_until(lambda: client.services.store.ticket(ticket.ticket_ref).get("state") == "reclaimed", 20), (
        worker.log()
    )
    assert count_labeled(docker_client, worker.host_id)["containers"] == 0
    assert client.services.store.session(spec.environment_id)["state"] == "cleaned"
    kinds = [(r.kind, r.fields.get("op")) for r in client.journal(spec.environment_id)]
    assert ("intent", "reclaim") in kinds
    assert ("result", "reclaim") in kinds


def test_ten_megabytes_of_output_through_frames_is_byte_exact(worker_factory, client, busybox_image) -> None:
    worker = worker_factory()
    count = 1_400_000  # `seq` prints ~10.6 MB
    expected = "".join(f"{i}\n" for i in range(1, count + 1)).encode()
    spec = job(busybox_image, "seq", "1", str(count))
    handle = client.submit(spec, host=worker.host_id)
    client.wait(handle)
    digest = hashlib.sha256()
    total = 0
    frames = 0
    for frame in client.frames(handle, ProcessIoStream.stdout, max_bytes=1 << 20):
        import base64

        chunk = base64.b64decode(frame.content_b64 or "")
        assert frame.start_cursor == total
        assert frame.content_hash == "sha256:" + hashlib.sha256(chunk).hexdigest()
        digest.update(chunk)
        total += len(chunk)
        frames += 1
    assert total == len(expected) > 10_000_000
    assert digest.hexdigest() == hashlib.sha256(expected).hexdigest()
    assert frames >= 10
    client.cleanup(handle)


def test_host_worker_registers_all_sixteen_operations(worker_factory, corral_env) -> None:
    worker = worker_factory()
    # Worker control commands are accepted only when signed by a fleet component (a client's are
    # refused, corral.trust.signing): an operator runs `celery inspect` with a component key.
    operator = {**corral_env, **suite_fleet().role_env("admin", TEST_HOST_IDENTITY)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "workers.app",
            "inspect",
            "registered",
            "-d",
            f"corral@{worker.host_id}",
            "-t",
            "10",
        ],
        env=operator,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (done.stdout, done.stderr)
    out = done.stdout
    for op in OPERATIONS:
        assert f"corral.{op}" in out, out
    assert "corral.sweep_tickets" in out


def test_capability_report_and_runtime_ref_answer_through_the_queue(worker_factory, client) -> None:
    from corral.contract.models import IsolationCapabilityReport, IsolationRuntimeRef

    worker = worker_factory()
    report = client.call(Operation.capability_report, None, worker.host_id, IsolationCapabilityReport)
    assert report.adapter_kind == "container"
    assert report.health.kind.value == "healthy"
    ref = client.call(Operation.runtime_ref, None, worker.host_id, IsolationRuntimeRef)
    assert ref == f"docker@{worker.host_id}"
    assert dump(report)["supported_classes"] == ["container"]
