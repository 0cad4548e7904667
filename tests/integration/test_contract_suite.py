"""One contract suite over every runtime, as dramatiq runs one suite over every broker (DESIGN.md house
style 5): the same tests, at the adapter level (the ``IsolationRuntime`` Protocol, no coordinator), against
``FakeRuntime`` (with its worker state file) and ``DockerRuntime`` (the real engine, the local busybox image).

They cover the 16 operations' happy paths and rules of CONTRACT.md that an adapter itself keeps: cleanup is
idempotent, reclaiming an unknown ticket is an error and never a silent success, a signal to a process that
has ended is not an error, stats after the exit keep the exit code, the chain never returns a raw secret.
Docker is skipped when absent locally and fails the suite under ``CI=true`` (``tests.conftest.missing``).

The chain is driven as the coordinator drives it: each step in ``CHAIN`` order, ``prepare_environment``
given the results of the steps before it, ``detach`` given the ticket the coordinator would own.
"""

from __future__ import annotations

import base64
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.contract.errors import AgentError, NotFound, PolicyDenial
from corral.contract.models import (
    CleanupRequest,
    DetachTransferRequest,
    ProcessIoFrame,
    ProcessIoRequest,
    ProcessSignalRequest,
    ProcessStartResult,
    ProcessState,
    ProcessStatsRequest,
    ProcessStatsSnapshot,
    ReclaimRequest,
    TerminationReason,
    dump,
)
from corral.contract.operations import CHAIN, OPERATIONS, Operation
from corral.contract.refs import cleanup_plan_ref
from corral.contract.runtime import IsolationRuntime
from corral.contract.vocabulary import CleanupStatus, IsolationClass, ProcessIoStream, ProcessSignal
from corral.fleet.job import JobSpec
from corral.runtimes.fake import FakeRuntime
from corral.settings import HostSettings
from tests.conftest import TEST_IMAGE
from tests.harness import docker_runtime

SECRET_NAME = "api-token"
SECRET_VALUE = "s3cr3t-" + uuid.uuid4().hex

# Where the chain's earlier results go in prepare_environment's request (the coordinator fills them).
EARLIER = {
    Operation.resolve_image: "image",
    Operation.prepare_rootfs: "rootfs",
    Operation.resolve_mounts: "mounts",
    Operation.configure_network: "network",
    Operation.prepare_secrets: "secrets",
}


@dataclass
class Rig:
    """One runtime under test and what the suite needs to drive it."""

    kind: str
    runtime: IsolationRuntime
    host_id: str
    started: list[tuple[JobSpec, str]] = field(default_factory=list)

    def run_chain(self, job: JobSpec) -> dict[Operation, Any]:
        """Every chain step in CHAIN order, as the coordinator runs them; the results by operation."""
        results: dict[Operation, Any] = {}
        for op, request in job.requests(self.host_id):
            if op is Operation.prepare_environment:
                request = request.model_copy(update={EARLIER[o]: results[o] for o in EARLIER})
            results[op] = getattr(self.runtime, op)(request)
        start = results[Operation.start_process]
        assert isinstance(start, ProcessStartResult)
        self.started.append((job, start.process_ref))
        return results

    def start(self, job: JobSpec) -> str:
        return str(self.run_chain(job)[Operation.start_process].process_ref)

    def stats(self, process_ref: str) -> ProcessStatsSnapshot:
        return self.runtime.collect_stats(ProcessStatsRequest(process_ref=process_ref))

    def wait_exit(self, process_ref: str, timeout_s: float = 30) -> ProcessStatsSnapshot:
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats(process_ref)
            if stats.state is ProcessState.exited or time.monotonic() > deadline:
                return stats
            time.sleep(0.1)

    def read(
        self, process_ref: str, stream: ProcessIoStream, cursor: int = 0, max_bytes: int = 65536
    ) -> ProcessIoFrame:
        return self.runtime.stream_io(
            ProcessIoRequest(process_ref=process_ref, stream=stream, cursor=cursor, max_bytes=max_bytes)
        )

    def output(self, process_ref: str, stream: ProcessIoStream = ProcessIoStream.stdout) -> bytes:
        """A stream read to its end, frame by frame from each frame's cursor."""
        data, cursor = b"", 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            frame = self.read(process_ref, stream, cursor)
            data += base64.b64decode(frame.content_b64 or "")
            cursor = frame.cursor
            if frame.eof:
                return data
            time.sleep(0.05)
        raise AssertionError(f"{stream} of {process_ref} did not end: {data!r}")

    def cleanup(self, job: JobSpec) -> Any:
        request = CleanupRequest(environment=job.environment(), cleanup_plan_ref=cleanup_plan_ref(job.environment_id))
        return self.runtime.cleanup(request)


@pytest.fixture(params=["fake", pytest.param("docker", marks=pytest.mark.docker)])
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Rig]:
    host_id = f"cs-{uuid.uuid4().hex[:10]}"
    if request.param == "fake":
        # With a state file, as a worker's fake keeps it (every call loads and saves it).
        yield Rig("fake", FakeRuntime(host_id, state_path=tmp_path / "fake" / "state.json"), host_id)
        return
    docker_client = request.getfixturevalue("docker_client")  # skips locally, fails under CI=true
    request.getfixturevalue("busybox_image")
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / SECRET_NAME).write_text(SECRET_VALUE)
    secrets_root = Path(f"/dev/shm/corral-suite-{host_id}")
    host = HostSettings(
        id=host_id,
        state_dir=str(tmp_path / "state"),
        secrets_root=str(secrets_root),
        secrets_dir=str(secrets_dir),
        mounts={},
    )
    try:
        with docker_runtime(docker_client, host, host_id) as runtime:
            yield Rig("docker", runtime, host_id)
    finally:
        shutil.rmtree(secrets_root, ignore_errors=True)


def job(*argv: str, **kw: Any) -> JobSpec:
    return JobSpec(image=TEST_IMAGE, argv=list(argv), memory_mb=64, **kw)


def error_of(call: Callable[[], object]) -> AgentError:
    with pytest.raises(AgentError) as info:
        call()
    return info.value


# ------------------------------------------------------------------------------- 1-2 accessors


def test_runtime_ref_and_capability_report_describe_a_runtime_a_default_job_may_use(rig: Rig) -> None:
    ref = rig.runtime.runtime_ref()
    assert ref and rig.runtime.runtime_ref() == ref  # a read-only accessor: stable
    report = rig.runtime.capability_report()
    assert IsolationClass.container in report.supported_classes
    assert report.report_ref and report.adapter_ref and report.adapter_version
    # The report is a contract document: it survives the wire and comes back equal.
    assert type(report).model_validate(dump(report)) == report


# ------------------------------------------------------------------------------- 3-10 the chain


def test_the_chain_prepares_every_piece_and_starts_one_process(rig: Rig) -> None:
    spec = job("echo", "hello", "contract")
    results = rig.run_chain(spec)
    assert list(results) == list(CHAIN)
    session = results[Operation.prepare_session]
    assert session  # a session ref (upstream: a bare string)
    image = results[Operation.resolve_image]
    assert image.image_ref == TEST_IMAGE and image.digest.startswith("sha256:")
    assert results[Operation.prepare_rootfs]
    assert results[Operation.configure_network]
    assert results[Operation.prepare_environment]
    started = results[Operation.start_process]
    assert started.process_ref
    # Replaying a step with the same request changes nothing and answers alike (adapters are idempotent
    # by deterministic names; the coordinator keys them besides).
    again = rig.runtime.resolve_image(dict(spec.requests(rig.host_id))[Operation.resolve_image])  # type: ignore[arg-type]
    assert again == image

    stats = rig.wait_exit(started.process_ref)
    assert stats.state is ProcessState.exited and stats.exit_code == 0
    assert rig.output(started.process_ref) == b"hello contract\n"
    assert rig.cleanup(spec).status is CleanupStatus.completed


def test_prepare_secrets_names_secrets_and_never_returns_their_values(rig: Rig) -> None:
    spec = job("true", secrets=[SECRET_NAME])
    results = rig.run_chain(spec)
    plan = results[Operation.prepare_secrets]
    assert plan.secret_mount_refs  # the mount is named...
    for op in OPERATIONS:  # ...and no result of any step carries the value
        if op in results:
            assert SECRET_VALUE not in str(results[op])
    rig.cleanup(spec)


# ------------------------------------------------------------------------------- 11-13 the process


def test_stream_io_frames_are_bounded_and_resume_from_their_cursor(rig: Rig) -> None:
    spec = job("echo", "0123456789")
    ref = rig.start(spec)
    rig.wait_exit(ref)
    first = rig.read(ref, ProcessIoStream.stdout, 0, max_bytes=4)
    assert first.byte_count == 4 and base64.b64decode(first.content_b64 or "") == b"0123"
    assert first.cursor == 4 and not first.eof
    rest = rig.read(ref, ProcessIoStream.stdout, first.cursor)
    assert base64.b64decode(rest.content_b64 or "") == b"456789\n" and rest.eof
    again = rig.read(ref, ProcessIoStream.stdout, first.cursor)  # the same cursor reads the same bytes
    assert (again.cursor, again.content_hash) == (rest.cursor, rest.content_hash)
    rig.cleanup(spec)


def test_stdin_write_is_one_bounded_frame_counting_what_was_written(rig: Rig) -> None:
    spec = job("cat", stdin=True)
    ref = rig.start(spec)
    data = b"line one\n"
    frame = rig.runtime.stream_io(
        ProcessIoRequest(
            process_ref=ref,
            stream=ProcessIoStream.stdin,
            data_b64=base64.b64encode(data).decode(),
            close_stdin=True,
        )
    )
    assert frame.stream is ProcessIoStream.stdin
    assert frame.byte_count == len(data) and frame.cursor == len(data)
    assert frame.content_b64 is None  # what went in is not echoed back
    rig.cleanup(spec)


def test_signal_kills_a_running_process_and_stats_say_how_it_ended(rig: Rig) -> None:
    spec = job("sleep", "60")
    ref = rig.start(spec)
    assert rig.stats(ref).state is ProcessState.running
    result = rig.runtime.signal_process(ProcessSignalRequest(process_ref=ref, signal=ProcessSignal.kill, grace_ms=0))
    assert result.delivered and result.process_ref == ref and result.signal is ProcessSignal.kill
    stats = rig.wait_exit(ref)
    assert stats.state is ProcessState.exited
    assert stats.exit_code == 137 and stats.reason is TerminationReason.signal
    rig.cleanup(spec)


def test_a_signal_to_a_process_that_ended_is_not_delivered_and_not_an_error(rig: Rig) -> None:
    spec = job("true")
    ref = rig.start(spec)
    assert rig.wait_exit(ref).state is ProcessState.exited
    result = rig.runtime.signal_process(
        ProcessSignalRequest(process_ref=ref, signal=ProcessSignal.terminate, grace_ms=100)
    )
    assert result.delivered is False
    rig.cleanup(spec)


def test_stats_after_the_exit_keep_the_exit_code(rig: Rig) -> None:
    spec = job("false")
    ref = rig.start(spec)
    first = rig.wait_exit(ref)
    assert first.state is ProcessState.exited and first.exit_code == 1
    assert first.reason is TerminationReason.exit
    later = rig.stats(ref)
    assert (later.state, later.exit_code, later.reason) == (first.state, first.exit_code, first.reason)
    assert later.process_ref == ref
    rig.cleanup(spec)


# ------------------------------------------------------------------------------- 14-16 teardown


def test_cleanup_is_idempotent_and_cleaning_nothing_is_success(rig: Rig) -> None:
    spec = job("true")
    ref = rig.start(spec)
    rig.wait_exit(ref)
    first = rig.cleanup(spec)
    assert first.status is CleanupStatus.completed
    assert first.cleanup_plan_ref == cleanup_plan_ref(spec.environment_id)
    assert rig.cleanup(spec).status is CleanupStatus.completed  # what is gone is removed
    never = job("true")  # never prepared at all
    assert rig.cleanup(never).status is CleanupStatus.completed
    # What cleanup removed is gone for every process operation.
    assert isinstance(error_of(lambda: rig.stats(ref)), NotFound)


def test_detach_hands_the_sandbox_to_a_ticket_and_reclaim_removes_it(rig: Rig) -> None:
    spec = job("sleep", "60", allow_detach=True)
    ref = rig.start(spec)
    ticket = f"tkt-{spec.environment_id}"
    ack = rig.runtime.detach(DetachTransferRequest(environment=spec.environment(), ttl_ms=60_000, ticket_ref=ticket))
    assert ack.host_ack_ref and ack.ticket_ref == ticket
    assert rig.stats(ref).state is ProcessState.running  # detached is not stopped
    reclaimed = rig.runtime.reclaim(ReclaimRequest(ticket_ref=ticket))  # the ticket alone names what it covers
    assert reclaimed.status is CleanupStatus.completed and reclaimed.ticket_ref == ticket
    assert isinstance(error_of(lambda: rig.stats(ref)), NotFound)


def test_detach_is_refused_unless_the_ownership_policy_allows_it(rig: Rig) -> None:
    spec = job("true")  # allow_detach defaults to False
    rig.start(spec)
    request = DetachTransferRequest(environment=spec.environment(), ttl_ms=60_000, ticket_ref="tkt-refused")
    assert isinstance(error_of(lambda: rig.runtime.detach(request)), PolicyDenial)
    rig.cleanup(spec)


def test_reclaim_of_an_unknown_ticket_is_not_found_never_a_silent_success(rig: Rig) -> None:
    error = error_of(lambda: rig.runtime.reclaim(ReclaimRequest(ticket_ref=f"tkt-unknown-{uuid.uuid4().hex[:8]}")))
    assert isinstance(error, NotFound)
