"""Host caps and error hygiene, performed for real: a real worker process with a host policy file,
real Redis, the real Docker engine, a client in this process like a scheduler.

- caps a request cannot raise: a 1 TiB spool cap, 8 MiB of argv (and nothing large left in Redis),
  one sandbox too many, stdin past the cap; each denied with its rule name;
- deterministic engine failures (a mount destination Docker cannot express, a user the image lacks,
  an rlimit the kernel refuses at start) are not retryable, attempted once, tell no host path, and
  leave nothing behind."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from corral.client.client import Client
from corral.contract.errors import AgentError, PolicyDenial, RetryClass, TimeoutFailure
from corral.contract.models import (
    ExecutionEnvironment,
    IsolatedProcessSpec,
    MountPolicy,
    ProcessIoCapturePolicy,
    ProcessIoPolicy,
)
from corral.contract.vocabulary import MountMode, ProcessIoStream
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.harness import NOTHING, count_labeled, leftovers, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]

HUGE_ARGV = ["sh", *["x" * 131_072] * 64]  # ~8 MiB, the example


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Client]:
    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    yield c
    c.close()


def worker_with(worker_factory: Any, tmp_path: Path, **limits: int) -> Any:
    """A worker whose host policy is the defaults with these ``[limits]``."""
    path = tmp_path / "policy.toml"
    path.write_text("version = 1\n[limits]\n" + "".join(f"{k} = {v}\n" for k, v in limits.items()))
    return worker_factory(env={"CORRAL_HOST__POLICY_FILE": str(path)})


def job(image: str, *argv: str, **kw: Any) -> JobSpec:
    return JobSpec(image=image, argv=list(argv), memory_mb=128, timeout_ms=60_000, **kw)


@dataclass(frozen=True)
class Custom(JobSpec):
    """A job with what JobSpec has no option for: a spool cap, raw mounts, rlimits."""

    spool_bytes: int | None = None
    raw_mounts: tuple[MountPolicy, ...] = ()
    rlimits: tuple[tuple[str, int], ...] = ()

    def environment(self) -> ExecutionEnvironment:
        env = super().environment()
        spec = env.spec
        if self.spool_bytes is not None:
            spec = spec.model_copy(
                update={"io_policy": ProcessIoPolicy(stdout=ProcessIoCapturePolicy(max_bytes=self.spool_bytes))}
            )
        if self.raw_mounts:
            spec = spec.model_copy(
                update={"filesystem": spec.filesystem.model_copy(update={"mounts": list(self.raw_mounts)})}
            )
        return env.model_copy(update={"spec": spec})

    def process(self) -> IsolatedProcessSpec:
        return super().process().model_copy(update={"posix_rlimits": dict(self.rlimits)})


def denied(client: Client, spec: JobSpec, host: str) -> PolicyDenial:
    handle = client.submit(spec, host)
    with pytest.raises(PolicyDenial) as info:
        client.wait(handle)
    return info.value


def intents(client: Client, environment_id: str, op: str) -> int:
    return sum(1 for r in client.journal(environment_id) if r.kind == "intent" and r.fields.get("op") == op)


# -- caps a request cannot raise -------------------------------------------------------------------


def test_a_one_tib_spool_cap_is_denied_before_anything_is_created(
    worker_factory, client, docker_client, busybox_image
) -> None:
    worker = worker_factory()
    spec = Custom(image=busybox_image, argv=["true"], spool_bytes=1 << 40)
    error = denied(client, spec, worker.host_id)
    assert error.context["rule"] == "limits.max_spool_bytes"
    assert "limits.max_spool_bytes" in error.message
    records = client.journal(spec.environment_id)
    assert (records[0].kind, records[0].fields.get("op")) == ("denial", "prepare_session")
    assert intents(client, spec.environment_id, "prepare_session") == 0
    assert count_labeled(docker_client, worker.host_id) == {"containers": 0, "networks": 0}


def test_eight_mib_of_argv_is_denied_and_nothing_large_stays_in_redis(
    worker_factory, client, docker_client, busybox_image, corral_env, redis_url
) -> None:
    worker = worker_factory()
    spec = job(busybox_image, *HUGE_ARGV)
    error = denied(client, spec, worker.host_id)
    assert error.context["rule"] == "limits.max_argv_bytes"
    # judged before the launch's first step: nothing was prepared, so nothing is left to clean up
    records = client.journal(spec.environment_id)
    first = records[0].fields
    assert (first["kind"], first["op"], first["rule"]) == ("denial", "prepare_session", "limits.max_argv_bytes")
    assert not any(r.kind == "intent" for r in records)
    assert "retrying" not in worker.log()
    assert client.services.store.session(spec.environment_id) == {}
    assert leftovers(docker_client, worker.host_id, corral_env) == NOTHING

    def biggest() -> list[tuple[int, int, str]]:
        found = []
        for db in range(4):  # broker, results, beat, state
            r = redis.Redis.from_url(f"{redis_url}/{db}")
            found += [(r.memory_usage(k, samples=0) or 0, db, k.decode()) for k in r.scan_iter("*")]
            r.close()
        return sorted(found, reverse=True)[:3]

    # the launch message is acknowledged and gone; no record kept the argv
    assert wait_until(lambda: biggest()[0][0] < 256 * 1024, 30), biggest()


def test_max_sandboxes_refuses_one_too_many_until_a_slot_is_free(
    worker_factory, client, docker_client, busybox_image, tmp_path
) -> None:
    worker = worker_with(worker_factory, tmp_path, max_sandboxes=1)
    first = job(busybox_image, "sleep", "60")
    handle = client.submit(first, worker.host_id)
    client.wait(handle)
    second = job(busybox_image, "true")
    # Admission keeps the job waiting (the host publishes one slot); the host's own cap is what a
    # client that skips admission meets.
    with pytest.raises(TimeoutFailure, match="1 host full"):
        client.submit(second, worker.host_id, queue_timeout_s=1)
    handle_2 = client.send_job(second, worker.host_id)
    with pytest.raises(PolicyDenial) as info:
        client.wait(handle_2)
    error = info.value
    assert error.context["rule"] == "limits.max_sandboxes"
    assert intents(client, second.environment_id, "prepare_session") == 0
    assert count_labeled(docker_client, worker.host_id)["containers"] == 1  # only the first one's
    client.cleanup(handle)
    outcome = client.run(job(busybox_image, "true"), host=worker.host_id)
    assert outcome.exit_code == 0


def test_stdin_past_the_policy_cap_is_refused_and_exactly_the_cap_gets_through(
    worker_factory, client, busybox_image, tmp_path
) -> None:
    worker = worker_with(worker_factory, tmp_path, max_stdin_bytes=1000)
    handle = client.submit(job(busybox_image, "sh", "-c", "wc -c", stdin=True), worker.host_id)
    try:
        client.wait(handle)
        assert client.write_stdin(handle, b"a" * 600).cursor == 600
        with pytest.raises(PolicyDenial) as info:
            client.write_stdin(handle, b"b" * 401)
        assert info.value.context["rule"] == "limits.max_stdin_bytes"
        assert client.write_stdin(handle, b"c" * 400, close=True).cursor == 1000
        out = bytearray()
        stats = client.follow(
            handle, lambda stream, data: out.extend(data) if stream is ProcessIoStream.stdout else None
        )
        assert stats.exit_code == 0
        assert out.split() == [b"1000"]
    finally:
        client.cleanup_quietly(handle)


# -- deterministic failures: not retryable, once, no host path -------------------------------------


def host_paths(corral_env: dict[str, str], tmp_path: Path) -> list[str]:
    return [
        str(tmp_path),  # the data alias, the state dir and the secrets dir all live under it
        corral_env["CORRAL_HOST__STATE_DIR"],
        corral_env["CORRAL_HOST__SECRETS_ROOT"],
        "/var/lib/docker",
    ]


def assert_refused_once(
    client: Client, worker: Any, spec: JobSpec, corral_env: dict[str, str], tmp_path: Path, docker_client: Any
) -> AgentError:
    handle = client.submit(spec, worker.host_id)
    with pytest.raises(AgentError) as info:
        client.wait(handle)
    error = info.value
    assert error.retry is RetryClass.not_retryable, error
    records = client.journal(spec.environment_id)
    text = " ".join([error.message, str(error.context), *(str(r.fields) for r in records)])
    for path in host_paths(corral_env, tmp_path):
        assert path not in text, (path, text)
    failed = [r.fields["op"] for r in records if r.kind == "result" and r.fields.get("status") == "failed"]
    assert len(failed) <= 1, failed  # the failing step ran (at most) once: no retry, no second shim
    if failed:
        assert intents(client, spec.environment_id, failed[0]) == 1
    assert "retrying" not in worker.log()
    assert wait_until(lambda: leftovers(docker_client, worker.host_id, corral_env) == NOTHING, 30)
    return error


def test_a_mount_destination_docker_cannot_express_is_refused_once_without_host_paths(
    worker_factory, client, docker_client, busybox_image, corral_env, tmp_path
) -> None:
    worker = worker_factory()
    mount = MountPolicy(mount_ref="m-0", source_alias="data", destination_path="/r:rw", mode=MountMode.read_only)
    spec = Custom(image=busybox_image, argv=["true"], raw_mounts=(mount,))
    assert_refused_once(client, worker, spec, corral_env, tmp_path, docker_client)


def test_an_unknown_user_is_refused_once_without_host_paths(
    worker_factory, client, docker_client, busybox_image, corral_env, tmp_path
) -> None:
    worker = worker_factory()
    spec = job(busybox_image, "true", user="nosuchuser")
    error = assert_refused_once(client, worker, spec, corral_env, tmp_path, docker_client)
    assert "user" in error.message


def test_an_rlimit_the_kernel_refuses_at_start_is_refused_once_and_leaves_nothing(
    worker_factory, client, docker_client, busybox_image, corral_env, tmp_path
) -> None:
    # The policy's rlimit ceiling would deny this first; raise it so the engine is the one refusing.
    path = tmp_path / "policy.toml"
    path.write_text(f"version = 1\n[limits.rlimits]\nnofile = [64, {1 << 41}]\n")
    worker = worker_factory(env={"CORRAL_HOST__POLICY_FILE": str(path)})
    spec = Custom(image=busybox_image, argv=["true"], rlimits=(("nofile", 1 << 40),))
    error = assert_refused_once(client, worker, spec, corral_env, tmp_path, docker_client)
    assert error.message.startswith("start_process: ")
    assert intents(client, spec.environment_id, "start_process") == 1
    # the one shim that tried has exited: no shim names this test's state dir any more
    state = corral_env["CORRAL_HOST__STATE_DIR"].encode()
    shims = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and b"corral.io.shim" in _cmdline(p) and state in _cmdline(p)
    ]
    assert shims == []


def _cmdline(p: Path) -> bytes:
    try:
        return (p / "cmdline").read_bytes()
    except OSError:
        return b""


def test_stdin_bytes_are_counted_per_process_not_per_write(worker_factory, client, busybox_image, tmp_path) -> None:
    """Many small writes add up: the cap is on the total, so splitting a payload does not evade it."""
    worker = worker_with(worker_factory, tmp_path, max_stdin_bytes=100)
    handle = client.submit(job(busybox_image, "sh", "-c", "cat >/dev/null", stdin=True), worker.host_id)
    try:
        client.wait(handle)
        for _ in range(10):
            client.write_stdin(handle, b"0123456789")
        with pytest.raises(PolicyDenial):
            client.write_stdin(handle, b"x")
        assert client.write_stdin(handle, b"", close=True).eof  # closing carries no data: never refused
    finally:
        client.cleanup_quietly(handle)
