"""The per-sandbox I/O shim against this machine's Docker: killed mid-stream (the sandbox runs on,
the spool stays byte-exact up to the kill, a supervisor still enforces the timeout and the frames
say what was lost), its place in the helpers' cgroup, and that cgroup's CPU cap holding against a
sandbox that floods its output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.contract.models import ProcessIoRequest, ProcessStatsRequest
from corral.contract.refs import slug
from corral.contract.vocabulary import ProcessIoStream
from corral.fleet.job import JobSpec
from corral.io import cgroup, files
from corral.io.spool import SpoolLayout
from corral.runtimes.docker import process as proc
from corral.runtimes.docker.resources import session_paths, shim_pid
from corral.runtimes.docker.runtime import DockerRuntime
from corral.settings import HostSettings
from tests.harness import docker_runtime, wait_until

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
TICKER = "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.02; done"


@pytest.fixture
def host(tmp_path: Path) -> HostSettings:
    host_id = f"t-{uuid.uuid4().hex[:12]}"
    return HostSettings(id=host_id, state_dir=str(tmp_path / "state"), secrets_root=f"/dev/shm/corral-test-{host_id}")


@pytest.fixture
def runtime(docker_client: Any, host: HostSettings) -> Iterator[DockerRuntime]:
    with docker_runtime(docker_client, host, host.id) as rt:
        yield rt


def start(rt: DockerRuntime, image: str, argv: list[str], timeout_ms: int = 60_000) -> tuple[str, str]:
    """The whole prepare-to-start chain of one job, as the Celery chain sends it; (process_ref,
    environment id)."""
    job = JobSpec(image=image, argv=argv, memory_mb=64, timeout_ms=timeout_ms)
    result: Any = None
    for op, request in job.requests(rt.host_id):
        result = getattr(rt, op.value)(request)
    return result.process_ref, job.environment().environment_id


def _alive(pid: int) -> bool:
    """Running, not a zombie (nobody may reap a daemonized shim here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _lines(n: int) -> bytes:
    return b"".join(b"line-%d\n" % i for i in range(1, n + 1))


def test_a_shim_killed_mid_stream_loses_only_what_came_after_and_the_timeout_still_holds(
    runtime: DockerRuntime, host: HostSettings, docker_client: Any, busybox_image: str
) -> None:
    """I/O shim SIGKILLed mid-stream: the sandbox runs on, the spool is byte-exact up to the kill, a
    supervisor enforces the timeout, and the frames say what was lost"""
    process_ref, env_id = start(runtime, busybox_image, ["sh", "-c", TICKER], timeout_ms=5000)
    layout = session_paths(host, slug(env_id)).spool
    stdout = layout.stream("stdout")
    assert wait_until(lambda: stdout.read_bytes().count(b"\n") >= 30, 10, step=0.02)
    pid = shim_pid(layout)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # mid-stream: the ticker writes every 20 ms
    assert wait_until(lambda: not _alive(pid), 5, step=0.01)
    at_kill = stdout.read_bytes()

    time.sleep(0.5)
    container = docker_client.containers.get(f"corral-{slug(env_id)}")
    assert container.status == "running"  # the sandbox does not depend on its shim
    # Byte-exact up to the kill: whole lines 1..k, nothing torn, nothing added since.
    assert at_kill == _lines(at_kill.count(b"\n"))
    assert stdout.read_bytes() == at_kill

    # What the worker's heartbeat does (``Reconciler.record_exits`` -> ``supervise_io``): once.
    assert runtime.supervise_io() == 1
    assert wait_until(lambda: shim_pid(layout) is not None and layout.lost.exists(), 5, step=0.02)
    assert runtime.supervise_io() == 0  # the supervisor is alive: no second one
    assert files.read_json(layout.lost)["stdout"] == len(at_kill)

    # Nobody polls: the supervisor alone stops the process at its deadline (5 s after start).
    assert wait_until(lambda: layout.exit.exists(), 10, step=0.1)
    record = json.loads(layout.exit.read_text())
    assert (record["reason"], record["exit_code"], record["output_lost"]) == ("timeout", 143, True)  # SIGTERM
    container.reload()
    assert container.status == "exited"
    assert stdout.read_bytes() == at_kill

    frame = runtime.stream_io(
        ProcessIoRequest(process_ref=process_ref, stream=ProcessIoStream.stdout, cursor=0, max_bytes=1 << 20)
    )
    assert frame.eof and frame.cursor == len(at_kill)
    assert f"after byte {len(at_kill)} was not captured" in frame.redacted_summary
    snap = runtime.collect_stats(ProcessStatsRequest(process_ref=process_ref))
    assert snap.reason is not None and snap.reason.value == "timeout"
    assert "not captured" in snap.redacted_summary


def test_stats_on_a_sandbox_whose_shim_died_revive_the_supervisor(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str
) -> None:
    process_ref, env_id = start(runtime, busybox_image, ["sleep", "30"], timeout_ms=1500)
    layout = session_paths(host, slug(env_id)).spool
    pid = shim_pid(layout)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not _alive(pid), 5, step=0.01)
    runtime.collect_stats(ProcessStatsRequest(process_ref=process_ref))  # anyone looking revives it
    assert wait_until(lambda: shim_pid(layout) is not None, 5, step=0.02)
    assert wait_until(lambda: layout.exit.exists(), 10, step=0.1)
    assert json.loads(layout.exit.read_text())["reason"] == "timeout"


def test_the_shim_runs_in_the_helpers_cgroup_with_its_limits(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str
) -> None:
    _ref, env_id = start(runtime, busybox_image, ["sleep", "30"])
    pid = shim_pid(session_paths(host, slug(env_id)).spool)
    assert pid is not None
    if cgroup.is_unified():
        pytest.skip("cgroup v2 host: the helpers' group needs a delegated parent (see corral.io.cgroup)")
    groups = cgroup.own_cgroups(pid)
    wanted = {h: p for h, p in groups.items() if set(h.split(",")) & {"cpu", "cpuacct", "memory", "pids"}}
    assert wanted and all(p.rstrip("/").endswith(f"/{proc.HELPER_CGROUP}") for p in wanted.values()), groups
    cpu = next(h for h in wanted if "cpu" in h.split(","))
    quota = Path(cgroup.CGROUP_ROOT, cpu, wanted[cpu].strip("/"), "cpu.cfs_quota_us").read_text().strip()
    assert quota == str(int(proc.HELPER_CPUS * 100_000))


def test_the_timeout_holds_after_the_process_closed_its_output(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str
) -> None:
    """The attach stream ends when the process closes stdout and stderr, not when it exits: the
    shim then sleeps on the engine's wait, still enforcing the deadline."""
    _ref, env_id = start(runtime, busybox_image, ["sh", "-c", "echo bye; exec >&- 2>&-; sleep 30"], timeout_ms=1500)
    layout = session_paths(host, slug(env_id)).spool
    assert wait_until(lambda: layout.exit.exists(), 10, step=0.1)
    assert files.read_json(layout.exit)["reason"] == "timeout"
    assert layout.stream("stdout").read_bytes() == b"bye\n"


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_flooding_sandbox_cannot_take_cpu_through_its_shim_beyond_the_helpers_cap(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    """A sandbox writing as fast as it can keeps its shim busy; in a helpers' group capped at 5% of
    a core, the shim gets about that (CFS throttles it) and the output is still spooled."""
    if cgroup.is_unified() or not Path(cgroup.CGROUP_ROOT, "cpu").is_dir():
        pytest.skip("needs a cgroup v1 cpu hierarchy")
    name = f"corral-io-test-{uuid.uuid4().hex[:8]}"
    spool = tmp_path / "spool"
    spool.mkdir()
    files.write_json(spool / "io_policy.json", {"stdout": {"max_bytes": 1 << 40}})
    container = docker_client.containers.create(
        busybox_image, ["cat", "/dev/zero"], network_mode="none", labels={"corral.test": name}
    )
    cmd = [
        *proc.shim_command(proc.shim_arguments(container.name, SpoolLayout(spool), 0, 100, "SIGTERM", False)),
    ]
    cmd[cmd.index("--cgroup") + 1] = name
    cmd[cmd.index("--cgroup-cpus") + 1] = "0.05"
    notify = proc.spawn_detached(cmd, spool / "shim.log", spool, notify=True)
    pid = 0
    try:
        proc.wait_started(SpoolLayout(spool), [], notify_fd=notify)
        pid = int((spool / "shim.pid").read_text())
        before, began = _cpu_s(pid), time.monotonic()
        time.sleep(3)
        used = (_cpu_s(pid) - before) / (time.monotonic() - began)
        cpu_dir = Path(cgroup.CGROUP_ROOT, "cpu", cgroup.own_cgroups(pid)["cpu"].strip("/"))
        throttled = dict(line.split() for line in (cpu_dir / "cpu.stat").read_text().splitlines())
        assert cpu_dir.name == name
        assert used < 0.05 * 2, f"the shim used {used:.3f} cores under a 0.05 cap"
        assert int(throttled["nr_throttled"]) > 0
        assert (spool / "stdout").stat().st_size > 0
    finally:
        container.remove(force=True)
        if pid:
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not _alive(pid), 5, step=0.02)
        for hierarchy, path in cgroup.helper_group_dirs(name).items():
            if Path(path).is_dir() and hierarchy:
                subprocess.run(["rmdir", path], check=False)


def test_start_process_is_told_at_once_when_the_shim_cannot_start(tmp_path: Path) -> None:
    """The launcher waits on the shim's notify pipe, not on a fixed boot delay: a shim that fails
    (no such container) answers in well under the old 5 s boot grace."""
    spool = tmp_path / "spool"
    spool.mkdir()
    cmd = proc.shim_command(
        proc.shim_arguments("corral-no-such-container", SpoolLayout(spool), 0, 100, "SIGTERM", False)
    )
    began = time.monotonic()
    notify = proc.spawn_detached(cmd, spool / "shim.log", spool, notify=True)
    with pytest.raises(Exception, match=r"[Nn]o such container"):
        proc.wait_started(SpoolLayout(spool), [], notify_fd=notify)
    assert time.monotonic() - began < 3
    assert sys.executable in cmd and "-S" in cmd
