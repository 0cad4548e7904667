"""corral.runtimes.docker.failure: Docker's failures classified by retry class (texts recorded from
Docker 20.10 on this machine) and no host path of this host in any error that leaves the adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests

from corral.contract.errors import (
    AgentError,
    Conflict,
    HostConfigurationNeeded,
    InvalidRequest,
    IsolationFailure,
    NotFound,
    RetryClass,
)
from corral.runtimes.docker import process as proc
from corral.runtimes.docker.failure import HostPaths, engine_failure
from corral.settings import HostSettings

# (status, what Docker 20.10 answered) for requests that fail the same way every time
DETERMINISTIC = [
    (500, "unable to find user nosuchuser: no matching entries in passwd file"),
    (500, "unable to find group nosuchgroup: no matching entries in group file"),
    (
        500,
        "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container "
        "process: error during container init: error setting rlimits for ready process: error setting rlimit "
        "type 7: operation not permitted: unknown",
    ),
    (500, "invalid volume specification: '/srv/private/data:/r:rw:rw'"),
    (400, "invalid mount config for type \"bind\": invalid mount path: 'r' mount path must be absolute"),
    (
        400,
        "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container "
        'process: exec: "/nosuch": stat /nosuch: no such file or directory: unknown',
    ),
    (400, "Minimum memory limit allowed is 6MB"),
    (
        500,
        "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container "
        'process: error during container init: error mounting "/var/lib/docker/containers/dd60/resolv.conf" to '
        'rootfs at "/etc/resolv.conf": open /var/lib/docker/overlay2/64b9/merged/etc/resolv.conf: read-only file '
        "system: unknown",
    ),
    (
        500,
        "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container "
        'process: error during container init: error mounting "/srv/private/state/mounts/330d/05bf" to rootfs at '
        '"/p/sys": "/var/lib/docker/overlay2/26b2/merged/proc/sys" cannot be mounted because it is inside /proc: '
        "unknown",
    ),
    (
        500,
        "json: cannot unmarshal number 18446744073709551616 into Go struct field Ulimit.HostConfig.Ulimits.Soft "
        "of type int64",
    ),
]
TRANSIENT = [
    (500, "an error occurred while talking to the daemon: context deadline exceeded"),
    (503, "daemon is busy"),
    (502, "bad gateway"),
]


@pytest.mark.parametrize(("status", "text"), DETERMINISTIC)
def test_deterministic_engine_failures_are_not_retryable(status: int, text: str) -> None:
    error = engine_failure("start_process", status, text, None)
    assert isinstance(error, InvalidRequest)
    assert error.retry is RetryClass.not_retryable
    assert "/srv/private" not in error.message


@pytest.mark.parametrize(("status", "text"), TRANSIENT)
def test_transient_engine_failures_stay_retryable(status: int, text: str) -> None:
    error = engine_failure("prepare_environment", status, text, None)
    assert isinstance(error, IsolationFailure)
    assert error.retryable
    assert error.context["status"] == str(status)


def test_a_shim_failure_without_a_status_is_classified_by_its_text() -> None:
    assert isinstance(
        engine_failure("start_process", None, "unable to find user x: no matching entries", None), InvalidRequest
    )
    other = engine_failure("start_process", None, "container is running, not created", None)
    assert other.retryable and other.message == "start_process: container is running, not created"


def test_not_found_and_conflict_keep_their_kinds() -> None:
    assert isinstance(engine_failure("inspect", 404, "No such container: x", None), NotFound)
    assert isinstance(engine_failure("create", 409, "name already in use", None), Conflict)


def test_a_recognised_failure_is_told_in_our_words_and_the_raw_text_only_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    text = "unable to find user s3cr3t-user: no matching entries in passwd file"
    with caplog.at_level("WARNING"):
        error = engine_failure("start_process", 500, text, [b"s3cr3t"])
    assert error.message == "start_process: the user does not exist in the image (refused by the engine)"
    assert "s3cr3t" not in caplog.text  # the log keeps the text, redacted
    assert "no matching entries in passwd file" in caplog.text


def test_docker_internal_paths_are_scrubbed_from_unrecognised_texts() -> None:
    text = "error mounting /var/lib/docker/overlay2/abc/merged to rootfs at /proc/4242/fd/7: device busy"
    error = engine_failure("start_process", 500, text, None)
    assert "/var/lib/docker" not in error.message and "/proc/4242" not in error.message
    assert "<host path>" in error.message
    assert error.retryable


@pytest.fixture
def host(tmp_path: Path) -> HostSettings:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    return HostSettings(
        id="h",
        state_dir=str(tmp_path / "state"),
        secrets_root=str(tmp_path / "shm"),
        secrets_dir=str(tmp_path / "secrets"),
        mounts={"data": str(tmp_path / "link"), "data2": str(tmp_path / "link" / "deeper")},
    )


def test_host_paths_name_what_they_are(host: HostSettings, tmp_path: Path) -> None:
    host.use_mount_aliases(dict(host.mounts), [], symlink_roots={"data2": str(tmp_path / "tree")})
    paths = HostPaths.of(host)
    text = (
        f"bind {tmp_path}/link/deeper/x and {tmp_path}/real (resolved) and {tmp_path}/state/spool/s/stdout "
        f"and {tmp_path}/shm/sess and {tmp_path}/secrets/token and {tmp_path}/tree/y"
    )
    clean = paths.scrub(text)
    assert str(tmp_path) not in clean
    assert clean == (
        "bind <alias data2>/x and <alias data> (resolved) and <state dir>/spool/s/stdout "
        "and <secrets root>/sess and <secrets dir>/token and <root of alias data2>/y"
    )


class _Runtime:
    """Stands in for DockerRuntime: ``contract_errors`` reads the host paths from ``self.host``."""

    def __init__(self, host: HostSettings, failure: BaseException) -> None:
        self.host = host
        self.failure = failure

    @proc.contract_errors
    def operate(self) -> None:
        raise self.failure


@pytest.mark.parametrize(
    "make",
    [
        lambda p: HostConfigurationNeeded(
            f"alias source {p}/link is on a read-only filesystem", context={"p": p + "/state"}
        ),
        lambda p: docker.errors.APIError("x", response=_response(500), explanation=f"cannot mount {p}/link: busy"),
        lambda p: docker.errors.APIError("x", response=_response(400), explanation=f"bad bind {p}/state/b:/r"),
    ],
)
def test_no_error_leaves_the_adapter_with_a_host_path(host: HostSettings, tmp_path: Path, make: Any) -> None:
    with pytest.raises(AgentError) as info:
        _Runtime(host, make(str(tmp_path))).operate()
    error = info.value
    assert str(tmp_path) not in error.message and str(tmp_path) not in str(error.context)
    assert "<alias data>" in error.message or "<state dir>" in error.message


def test_unexpected_failures_name_only_their_type(host: HostSettings, tmp_path: Path) -> None:
    with pytest.raises(IsolationFailure) as info:
        _Runtime(host, FileNotFoundError(2, "No such file", f"{tmp_path}/state/x")).operate()
    assert str(tmp_path) not in info.value.message
    with pytest.raises(IsolationFailure) as caught:
        _Runtime(host, requests.exceptions.ConnectionError("refused")).operate()
    assert caught.value.retryable


def _response(status: int) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    return response
