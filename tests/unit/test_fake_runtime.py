"""corral.runtimes.fake as a worker runs it: chosen by ``host.runtime = "fake"``, accepted for a default job
by fail-closed matching, honest that it is a fake, and one state shared by every process of the worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.contract.errors import NotFound
from corral.contract.matching import match
from corral.contract.models import CleanupRequest, ProcessStatsRequest
from corral.contract.operations import Operation
from corral.contract.vocabulary import IsolationClass
from corral.fleet.job import JobSpec
from corral.runtimes import build_runtime
from corral.runtimes.fake import FAKE_NOTICE, FakeRuntime
from corral.settings import HostSettings, Settings

IMAGE = "corral/busybox:latest"


def run_chain(runtime: FakeRuntime, job: JobSpec) -> str:
    results: dict[Operation, object] = {}
    for op, request in job.requests(runtime.host_id):
        if op is Operation.prepare_environment:
            earlier = {
                "image": results[Operation.resolve_image],
                "rootfs": results[Operation.prepare_rootfs],
                "mounts": results[Operation.resolve_mounts],
                "network": results[Operation.configure_network],
                "secrets": results[Operation.prepare_secrets],
            }
            request = request.model_copy(update=earlier)
        results[op] = getattr(runtime, op)(request)
    return str(results[Operation.start_process].process_ref)  # type: ignore[attr-defined]


def test_a_fake_host_is_chosen_by_settings_and_keeps_its_state_under_the_state_dir(tmp_path: Path) -> None:
    settings = Settings(host=HostSettings(id="fk-1", runtime="fake", state_dir=str(tmp_path)))
    runtime = build_runtime(settings)
    assert isinstance(runtime, FakeRuntime)
    assert runtime.state_path is not None and runtime.state_path.is_relative_to(tmp_path)


def test_a_default_job_matches_the_fake_and_the_report_says_it_is_a_fake() -> None:
    report = FakeRuntime("fk-1").capability_report()
    requirement = JobSpec(image=IMAGE, argv=["true"]).environment().spec.requirement
    assert match(requirement, report).ok
    assert report.supported_classes == [IsolationClass.container]
    assert FAKE_NOTICE in report.unsupported_requirements
    assert "fake" in str(report.adapter_kind)


def test_runtimes_over_one_state_file_see_each_others_sessions_and_processes(tmp_path: Path) -> None:
    """A worker's pool children and its reads lane each build a runtime: one prepares, another starts,
    a third reads and cleans up."""
    state = tmp_path / "fake" / "fk-1.json"
    a, b, c = (FakeRuntime("fk-1", state_path=state) for _ in range(3))
    job = JobSpec(image=IMAGE, argv=["echo", "shared"])
    requests = dict(job.requests("fk-1"))
    a.prepare_session(requests[Operation.prepare_session])  # type: ignore[arg-type]
    ref = run_chain(b, job)
    stats = c.collect_stats(ProcessStatsRequest(process_ref=ref))
    assert stats.exit_code == 0
    c.cleanup(CleanupRequest(environment=job.environment(), cleanup_plan_ref="plan-1"))
    with pytest.raises(NotFound):
        a.collect_stats(ProcessStatsRequest(process_ref=ref))
    # In memory (no path), two runtimes share nothing: the file is what makes a worker's processes agree.
    lonely = FakeRuntime("fk-1")
    with pytest.raises(NotFound):
        lonely.collect_stats(ProcessStatsRequest(process_ref=ref))
