"""Mount-source escapes, performed for real against the Docker runtime (issue 7, escapes 1-3).

1. The race: a sandbox with a writable alias that is the parent of another alias flips that alias's
   directory into a symlink to a host directory holding a canary, in a loop, while jobs mount it.
   Docker and runc follow symlinks in a bind source when the container STARTS, so a source that was
   only checked (not pinned) gives some of those jobs the canary. A deterministic variant swaps the
   path between prepare_environment and start_process.
2. A request asking ``follow_within_alias`` never makes the host follow a symlink out of an alias.
3. Docker's and containerd's state, the socket, corral's own directories, anything above them, and
   symlinks to them are refused as alias sources.
4. Cleanup and the reconciler leave no pinned mount behind (``/proc/self/mountinfo``).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.client.client import Client
from corral.contract.errors import AgentError, HostConfigurationNeeded, PolicyDenial
from corral.contract.models import (
    CleanupRequest,
    EnvironmentPrepareRequest,
    ExecutionEnvironment,
    FilesystemIsolationPolicy,
    MountPolicy,
    MountResolveRequest,
    ProcessStartRequest,
)
from corral.contract.vocabulary import MountMode, SymlinkPolicy
from corral.fleet.job import JobSpec
from corral.runtimes.docker.runtime import DockerRuntime
from corral.settings import HostSettings, Settings
from tests.harness import NOTHING, docker_runtime, leftovers, pinned_mounts, wait_until
from tests.integration.test_docker_runtime import count_labeled, make_env, output, prepare, proc_spec, wait_exit

pytestmark = pytest.mark.docker

CANARY = "CANARY-" + uuid.uuid4().hex[:8]


@pytest.fixture
def host_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def host(tmp_path: Path, host_id: str) -> Iterator[HostSettings]:
    pool = tmp_path / "pool"  # alias "pool" (writable): the parent of alias "b"'s directory
    (pool / "b").mkdir(parents=True)
    pool.chmod(0o777)  # the attacking sandbox runs as 65534
    (pool / "b" / "real.txt").write_text("real\n")
    canary = tmp_path / "canary"  # a host directory no alias names
    canary.mkdir()
    (canary / "canary.txt").write_text(CANARY + "\n")
    (tmp_path / "link").symlink_to(canary)
    tree = tmp_path / "tree"  # a root for symlinks = "within_alias"
    (tree / "v1").mkdir(parents=True)
    (tree / "v1" / "version.txt").write_text("v1\n")
    (tree / "current").symlink_to(tree / "v1")
    (tree / "out").symlink_to(canary)
    (tmp_path / "secrets").mkdir()
    secrets_root = Path(f"/dev/shm/corral-test-{host_id}")
    settings = HostSettings(
        id=host_id,
        state_dir=str(tmp_path / "state"),
        secrets_root=str(secrets_root),
        secrets_dir=str(tmp_path / "secrets"),
    )
    settings.use_mount_aliases(
        {
            "pool": str(pool),
            "b": str(pool / "b"),
            "link": str(tmp_path / "link"),
            "current": str(tree / "current"),
            "out": str(tree / "out"),
        },
        ["pool"],
        {"current": str(tree), "out": str(tree)},
    )
    yield settings
    shutil.rmtree(secrets_root, ignore_errors=True)


@pytest.fixture
def runtime(docker_client: Any, host: HostSettings, host_id: str) -> Iterator[DockerRuntime]:
    with docker_runtime(docker_client, host, host_id) as rt:
        yield rt


def with_mounts(image: str, *mounts: MountPolicy, symlinks: SymlinkPolicy = SymlinkPolicy.deny_escapes) -> Any:
    return make_env(image, filesystem=FilesystemIsolationPolicy(mounts=list(mounts), symlink_policy=symlinks))


def mount(alias: str, destination: str = "/data", mode: MountMode = MountMode.read_only) -> MountPolicy:
    return MountPolicy(mount_ref=f"m-{alias}", source_alias=alias, destination_path=destination, mode=mode)


def cleanup(rt: DockerRuntime, env: ExecutionEnvironment) -> None:
    result = rt.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="c"))
    assert result.status.value == "completed", result.redacted_summary


# ------------------------------------------------------------------------------ 1. the race


def test_swapping_the_alias_path_after_prepare_changes_nothing(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings, tmp_path: Path
) -> None:
    """Deterministic: the path is checked and pinned at prepare_environment, then swapped for a
    symlink to the canary before the container starts (when runc resolves bind sources). Docker
    mounts the pin, which shows the directory that was opened. (Handing Docker the alias path here
    shows the canary: runc follows the new symlink at start.)"""
    env = with_mounts(busybox_image, mount("b"))
    process = proc_spec("sh", "-c", "cat /data/*")
    prepare(runtime, env, process)
    b = Path(host.mounts["b"])
    b.rename(b.with_name("b.real"))
    b.symlink_to(tmp_path / "canary")
    try:
        with pytest.raises(PolicyDenial, match="symlink"):  # the swap is real: a fresh check refuses it
            runtime.resolve_mounts(MountResolveRequest(environment=with_mounts(busybox_image, mount("b"))))
        ref = runtime.start_process(ProcessStartRequest(environment=env, process=process)).process_ref
        assert wait_exit(runtime, ref).exit_code == 0
        assert output(runtime, ref) == b"real\n"
    finally:
        b.unlink()
        b.with_name("b.real").rename(b)
        cleanup(runtime, env)
    assert pinned_mounts(host.state_dir) == []


def test_a_sandbox_flipping_another_alias_into_a_symlink_never_exposes_the_host(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings, tmp_path: Path
) -> None:
    """The attack of the issue: a sandbox on the writable parent alias flips b into a symlink to
    the canary in a tight loop while jobs mount b. Every job either runs on the real directory or
    is refused (a symlink, or b briefly absent); none ever sees the canary."""
    canary = tmp_path / "canary"
    attacker = with_mounts(busybox_image, mount("pool", "/pool", MountMode.writable))
    # b is a directory ~80% of the time and a symlink in flips of ~1 ms: most checks pass, and a
    # container started from the alias path itself (not a pin) finds the symlink now and then.
    flip = f"mv b b.real; ln -s {canary} b; usleep 1000; rm b; mv b.real b; usleep 4000"
    loop = f"cd /pool || exit 1; while :; do {flip}; done"
    runtime_sh(runtime, attacker, loop)
    outcomes: dict[str, int] = {"ran": 0, "refused": 0}
    refusals: list[str] = []
    try:
        assert wait_until(lambda: (Path(host.mounts["pool"]) / "b.real").exists() or _flipped(host), 10, 0.01)
        for _ in range(24):
            env = with_mounts(busybox_image, mount("b"))
            try:
                ref = runtime_sh(runtime, env, "cat /data/* 2>&1; ls -a /data")
            except (PolicyDenial, HostConfigurationNeeded) as exc:
                refusals.append(exc.message)
                outcomes["refused"] += 1
            else:
                wait_exit(runtime, ref)
                seen = output(runtime, ref).decode()
                assert CANARY not in seen and "canary.txt" not in seen, seen
                assert seen.startswith("real\n"), seen
                outcomes["ran"] += 1
            finally:
                cleanup(runtime, env)
    finally:
        cleanup(runtime, attacker)
        b = Path(host.mounts["b"])
        if b.is_symlink():
            b.unlink()
        if b.with_name("b.real").exists():
            b.with_name("b.real").rename(b)
    print(f"race outcomes: {outcomes}")
    assert outcomes["ran"] >= 1, outcomes  # the race was run, not only refused
    assert all("symlink" in m or "does not exist" in m for m in refusals), refusals
    assert pinned_mounts(host.state_dir) == []


def runtime_sh(rt: DockerRuntime, env: ExecutionEnvironment, script: str) -> str:
    process = proc_spec("sh", "-c", script)
    prepare(rt, env, process)
    return rt.start_process(ProcessStartRequest(environment=env, process=process)).process_ref


def _flipped(host: HostSettings) -> bool:
    return Path(host.mounts["b"]).is_symlink()


# ------------------------------------------------------------------------------ 2. symlink policy


@pytest.mark.parametrize("requested", list(SymlinkPolicy))
def test_a_request_cannot_make_the_host_follow_a_symlink_out_of_an_alias(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any, host: HostSettings, requested: SymlinkPolicy
) -> None:
    """``link`` is a symlink to the canary on a deny alias; ``out`` a symlink out of its root on a
    within_alias alias. Both are refused whatever the request asks, before anything is created."""
    for alias in ("link", "out"):
        env = with_mounts(busybox_image, mount(alias), symlinks=requested)
        with pytest.raises(PolicyDenial, match="symlink"):
            runtime.resolve_mounts(MountResolveRequest(environment=env))
        with pytest.raises(PolicyDenial, match="symlink"):  # prepare_environment checks again, on its own
            runtime.prepare_environment(EnvironmentPrepareRequest(environment=env, process=proc_spec("true")))
        cleanup(runtime, env)
    assert count_labeled(docker_client, host.id)["containers"] == 0
    assert pinned_mounts(host.state_dir) == []


def test_a_within_alias_alias_follows_a_symlink_inside_its_root(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    env = with_mounts(busybox_image, mount("current"), symlinks=SymlinkPolicy.follow_within_alias)
    ref = runtime_sh(runtime, env, "cat /data/version.txt")
    wait_exit(runtime, ref)
    assert output(runtime, ref) == b"v1\n"
    cleanup(runtime, env)
    assert pinned_mounts(host.state_dir) == []


# ------------------------------------------------------------------------------ 3. forbidden sources


def _forbidden_cases(docker_client: Any, host: HostSettings, tmp_path: Path) -> dict[str, tuple[str, str | None]]:
    """name -> (alias path, symlink root or None). Only paths that exist on this machine."""
    docker_root = str(docker_client.info()["DockerRootDir"])
    for path in (host.state_dir, host.secrets_root, host.secrets_dir):
        Path(path).mkdir(parents=True, exist_ok=True)
    (tmp_path / "to-docker-root").symlink_to(docker_root)
    (tmp_path / "to-state").symlink_to(host.state_dir)
    cases: dict[str, tuple[str, str | None]] = {
        "docker root": (docker_root, None),
        "inside the docker root": (os.path.join(docker_root, "image"), None),
        "above the docker root": (os.path.dirname(docker_root), None),
        "the docker socket": ("/run/docker.sock", None),
        "/run": ("/run", None),
        "corral state": (host.state_dir, None),
        "corral pins": (str(Path(host.state_dir) / "mounts"), None),
        "the secret root": (host.secrets_root, None),
        "the host secrets": (host.secrets_dir, None),
        "above corral state": (str(tmp_path), None),
        "a symlink to the docker root": (str(tmp_path / "to-docker-root"), None),
        "a followed symlink to corral state": (str(tmp_path / "to-state"), str(tmp_path)),
    }
    for path in ("/var/lib/containerd", "/run/containerd", "/run/docker", "/etc/docker", "/run/runc"):
        if os.path.exists(path):
            cases[path] = (path, None)
    return cases


def test_engine_state_corral_dirs_and_their_parents_are_never_sources(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any, host: HostSettings, tmp_path: Path
) -> None:
    cases = _forbidden_cases(docker_client, host, tmp_path)
    aliases = {f"x{i}": path for i, (path, _root) in enumerate(cases.values())}
    roots = {f"x{i}": root for i, (_path, root) in enumerate(cases.values()) if root}
    host.use_mount_aliases({**host.mounts, **aliases}, host.writable_mounts, roots)
    accepted = []
    for i, name in enumerate(cases):
        env = with_mounts(busybox_image, mount(f"x{i}"))
        for step in (
            lambda e=env: runtime.resolve_mounts(MountResolveRequest(environment=e)),
            lambda e=env: runtime.prepare_environment(
                EnvironmentPrepareRequest(environment=e, process=proc_spec("true"))
            ),
        ):
            try:
                step()
            except PolicyDenial:
                continue
            accepted.append(name)
        cleanup(runtime, env)
    assert accepted == []
    assert count_labeled(docker_client, host.id)["containers"] == 0
    assert pinned_mounts(host.state_dir) == []


# ------------------------------------------------------------------------------ 4. no pin leaks


def test_cleanup_unpins_a_running_sandboxs_mounts(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    env = with_mounts(busybox_image, mount("b"), mount("pool", "/pool", MountMode.writable))
    ref = runtime_sh(runtime, env, "sleep 100")
    pins = pinned_mounts(host.state_dir)
    assert len(pins) == 2 and all(p.startswith(host.state_dir + "/mounts/") for p in pins)
    assert [d["corral.session"] for d in runtime.list_labeled()["mount_dirs"]] == [env.environment_id]
    cleanup(runtime, env)
    assert pinned_mounts(host.state_dir) == []
    assert runtime.list_labeled()["mount_dirs"] == []
    assert (Path(host.mounts["b"]) / "real.txt").read_text() == "real\n"  # the source is untouched
    cleanup(runtime, env)  # twice is fine
    assert ref


@pytest.mark.redis
@pytest.mark.worker
def test_the_reconciler_unpins_what_no_session_owns(
    worker_factory: Any, corral_env: dict[str, str], docker_client: Any, busybox_image: str
) -> None:
    """A running job with a mount whose session Redis forgot, and a pin left alone by a chain that
    died right after pinning: the reconciler reclaims both, and nothing is left mounted."""
    import redis

    worker = worker_factory(
        None, env={"CORRAL_HOST__RECONCILE_GRACE_S": "0", "CORRAL_HOST__RECONCILE_STALE_AFTER_S": "0"}
    )
    client = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    try:
        handle = client.submit(
            JobSpec(image=busybox_image, argv=["sleep", "60"], memory_mb=32, mounts=["data:/mnt"]), host=worker.host_id
        )
        client.wait(handle)
        state_dir = corral_env["CORRAL_HOST__STATE_DIR"]
        assert len(pinned_mounts(state_dir)) == 1
        # a pin whose chain died before its container was created: only the pin and its labels exist
        lone = HostSettings(
            state_dir=state_dir,
            secrets_root=corral_env["CORRAL_HOST__SECRETS_ROOT"],
            secrets_dir=corral_env["CORRAL_HOST__SECRETS_DIR"],
            mounts={"data": str(Path(state_dir).parent / "data")},
        )
        orphan = with_mounts(busybox_image, mount("data"))
        DockerRuntime(worker.host_id, lone, docker_client).pin_mounts(orphan)
        assert len(pinned_mounts(state_dir)) == 2
        redis.Redis.from_url(f"{corral_env['CORRAL_REDIS__URL']}/3").flushdb()
        report = client.reconcile(worker.host_id)
        assert sorted((f.environment_id, f.action.value) for f in report.findings) == sorted(
            [(handle.environment_id, "reclaim"), (orphan.environment_id, "reclaim")]
        )
        assert wait_until(lambda: not pinned_mounts(state_dir), 10)
        assert leftovers(docker_client, worker.host_id, corral_env) == NOTHING
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.worker
def test_the_policy_files_symlink_rule_reaches_the_worker(
    worker_factory: Any, corral_env: dict[str, str], docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    """Through the queue: ``symlinks = "within_alias"`` with a ``root`` in the host policy file lets a
    job mount an alias whose path is a symlink inside the root; the same rule refuses a symlink out
    of it, and an alias without the rule refuses any symlink. Nothing is left pinned."""
    tree = tmp_path / "tree"
    (tree / "v1").mkdir(parents=True)
    (tree / "v1" / "version.txt").write_text("v1\n")
    (tree / "current").symlink_to(tree / "v1")
    (tmp_path / "canary").mkdir()
    (tree / "out").symlink_to(tmp_path / "canary")
    policy = tmp_path / "policy" / "policy.toml"
    policy.parent.mkdir()
    policy.write_text(
        f'[mounts.current]\npath = "{tree}/current"\nsymlinks = "within_alias"\nroot = "{tree}"\n'
        f'[mounts.out]\npath = "{tree}/out"\nsymlinks = "within_alias"\nroot = "{tree}"\n'
        f'[mounts.plain]\npath = "{tree}/current"\n'
    )
    worker = worker_factory(None, env={"CORRAL_HOST__POLICY_FILE": str(policy)})
    client = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    try:
        check = 'test "$(cat /data/version.txt)" = v1'
        ok = client.run(
            JobSpec(image=busybox_image, argv=["sh", "-c", check], mounts=["current:/data"]), host=worker.host_id
        )
        assert ok.exit_code == 0
        for alias in ("out", "plain"):
            spec = JobSpec(image=busybox_image, argv=["true"], mounts=[f"{alias}:/data"])
            with pytest.raises(AgentError) as caught:
                client.wait(client.submit(spec, host=worker.host_id))
            assert caught.value.kind.value == "policy_denial", caught.value
            assert "symlink" in caught.value.message, caught.value
        # the refused chains' error cleanup runs after the client has its error
        assert wait_until(lambda: leftovers(docker_client, worker.host_id, corral_env) == NOTHING, 15)
    finally:
        client.close()
