"""Bad input through the real Celery boundary: malformed payloads, huge strings, control
characters, traversal, absurd limits, shell metacharacters. Each gets a typed, not-retryable
``AgentError`` with no traceback, no side effect happens, and the worker stays healthy."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.client.client import Client
from corral.contract.errors import AgentError, RetryClass
from corral.contract.models import dump
from corral.contract.operations import ACCESSORS, OPERATIONS
from corral.fleet.job import JobSpec
from corral.settings import Settings
from tests.harness import count_labeled

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]

SIDE_EFFECT_OPS = [op for op in OPERATIONS if op not in ACCESSORS]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)


@pytest.fixture
def boundary(worker_factory, corral_env, docker_client) -> Iterator[tuple[Client, Any, str]]:  # type: ignore[no-untyped-def]
    worker = worker_factory()
    client = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 30}))
    yield client, docker_client, worker.host_id
    client.close()


def send_raw(client: Client, op: str, payload: Any, host: str) -> Any:
    result = client.app.send_task(f"corral.{op}", args=[payload], kwargs={"host": host}, queue=f"corral.host.{host}")
    return client._get(result, op, 30)


def assert_rejected(client: Client, op: str, payload: Any, host: str) -> AgentError:
    with pytest.raises(AgentError) as caught:
        send_raw(client, op, payload, host)
    error = caught.value
    assert error.retry is RetryClass.not_retryable, error
    assert "Traceback" not in error.message
    return error


# One worker serves every example of a test: hypothesis reuses the function-scoped fixture on purpose.
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(op=st.sampled_from(SIDE_EFFECT_OPS), payload=json_values)
def test_malformed_payloads_are_typed_errors(boundary, op: str, payload: Any) -> None:
    client, _, host = boundary
    assert_rejected(client, op, payload, host)


def valid_env(image: str, **kw: Any) -> dict[str, Any]:
    return dump(JobSpec(image=image, argv=["true"], **kw).environment())


BAD_ENVIRONMENTS = [
    (lambda e: e.update(environment_id="job-\x07bell"), "control character"),
    (lambda e: e.update(environment_id="x" * 600), "exceeds max 512"),
    (lambda e: e["spec"]["resources"].update(memory_mb=-1), "memory_mb"),
    (lambda e: e["spec"]["resources"].update(cpus=10**9), "cpus"),
    (lambda e: e["spec"]["resources"].update(process_count=0), "process_count"),
    (lambda e: e["spec"]["resources"].update(timeout_ms=-5), "timeout_ms"),
    (lambda e: e["spec"].update(image={"image_ref": "busybox; rm -rf /"}), "image"),
    (lambda e: e["spec"].update(image={"image_ref": "$(reboot)"}), "image"),
    (
        lambda e: e["spec"]["filesystem"].update(
            mounts=[{"mount_ref": "m", "source_alias": "../../etc", "destination_path": "/data"}]
        ),
        "source_alias",
    ),
    (
        lambda e: e["spec"]["filesystem"].update(
            mounts=[{"mount_ref": "m", "source_alias": "data", "destination_path": "/../etc/x/../.."}]
        ),
        "'..'",
    ),
    (
        lambda e: e["spec"]["filesystem"].update(
            mounts=[{"mount_ref": "m", "source_alias": "data", "destination_path": "relative"}]
        ),
        "absolute",
    ),
    (lambda e: e.update(unexpected="field"), "unexpected"),
]


def test_bad_environments_are_rejected_before_any_effect(boundary, busybox_image) -> None:
    client, docker_client, host = boundary
    for index, (mutate, fragment) in enumerate(BAD_ENVIRONMENTS):
        env = valid_env(busybox_image)
        mutate(env)
        error = assert_rejected(client, "prepare_session", {"environment": env, "host_ref": host}, host)
        assert fragment in error.message, (index, error.message)
    assert count_labeled(docker_client, host)["containers"] == 0
    assert client.sessions() == []


def test_huge_strings_are_rejected_or_bounded(boundary, busybox_image) -> None:
    client, docker_client, host = boundary
    env = valid_env(busybox_image)
    process = {"process_id": "p", "argv": ["echo", "x" * 200_000]}
    assert_rejected(client, "prepare_environment", {"environment": env, "process": process}, host)
    assert count_labeled(docker_client, host)["containers"] == 0


def test_oversized_stdin_write_and_unknown_signal_are_rejected(boundary) -> None:
    client, _, host = boundary
    two_mib = base64.b64encode(b"\0" * (2 << 20)).decode()
    error = assert_rejected(
        client, "stream_io", {"process_ref": "proc-0123456789abcdef", "stream": "stdin", "data_b64": two_mib}, host
    )
    assert "data_b64" in error.message
    error = assert_rejected(
        client, "signal_process", {"process_ref": "proc-0123456789abcdef", "signal": "SIGBOGUS"}, host
    )
    assert "signal" in error.message


def test_the_worker_stays_healthy_after_the_barrage(boundary, busybox_image) -> None:
    client, docker_client, host = boundary
    outcome = client.run(JobSpec(image=busybox_image, argv=["echo", "still here"], memory_mb=32), host=host)
    assert outcome.exit_code == 0
    assert count_labeled(docker_client, host)["containers"] == 0


def test_mount_escapes_are_denied_through_the_queue(
    worker_factory, corral_env, docker_client, busybox_image, tmp_path
) -> None:
    """A host alias that is a symlink out of its tree, and the Docker socket, are refused at resolve_mounts;
    the chain's error cleanup leaves nothing behind."""
    (tmp_path / "link").symlink_to("/etc")
    mounts = json.dumps(
        {"data": str(tmp_path / "data"), "link": str(tmp_path / "link"), "sock": "/var/run/docker.sock"}
    )
    worker = worker_factory(None, env={"CORRAL_HOST__MOUNTS": mounts})
    client = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 30}))
    try:
        for alias in ("link", "sock"):
            spec = JobSpec(image=busybox_image, argv=["true"], mounts=[f"{alias}:/mnt"])
            with pytest.raises(AgentError) as caught:
                client.wait(client.submit(spec, host=worker.host_id))
            assert caught.value.kind.value == "policy_denial", caught.value
            assert caught.value.context.get("rule") != "policy.file", caught.value
            assert "Traceback" not in caught.value.message
        assert count_labeled(docker_client, worker.host_id)["containers"] == 0
        # The host's policy itself is fine: an ordinary mount on the same worker runs.
        ok = client.run(
            JobSpec(image=busybox_image, argv=["cat", "/mnt/hello.txt"], mounts=["data:/mnt"]), host=worker.host_id
        )
        assert ok.exit_code == 0
    finally:
        client.close()
