"""Red-team pass over issue 7's fixes: variations of the escapes the issue did not list, performed
for real against the Docker runtime (one runtime for the module).

Each finding that is still open is a ``strict`` xfail naming it (``red-team: ...``): the test performs
the attack and asserts the safe outcome, so it starts passing (and then fails as an unexpected
pass, to be turned into a plain test) the day the finding is fixed. Every other test proves a
variation is refused, or harmless, today.

Covered: mount sources (a parent flipped into a symlink while the walk runs; a single-file alias
replaced from inside a sandbox by a symlink, a FIFO or a hardlink; ``..`` in configured paths; the
same alias twice read-only and writable; parents of corral's directories; what a failed create
leaves), destinations (``:``, ``,``, newline, ``//``, trailing ``/``, ``/./proc``, a symlink in the
image into ``/proc``, a read-only mount over ``/etc``), users (unicode digits, whitespace,
``0x0``, huge numbers, ``nobody:0``, ``65534:root``, an image whose ``/etc/passwd`` is a symlink or
over 1 MiB, a mount over ``/etc/passwd``), networks (present-but-empty lists), rlimits, image
volumes, and every error checked for this host's paths.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import corral
from corral.contract.errors import AgentError, InvalidRequest, PolicyDenial, Unsupported
from corral.contract.models import (
    CleanupRequest,
    ExecutionEnvironment,
    FilesystemIsolationPolicy,
    IsolatedProcessSpec,
    MountPolicy,
    MountResolveRequest,
    NetworkIsolationPolicy,
    NetworkKind,
    NetworkPrepareRequest,
    ProcessStartRequest,
    RedactedEnvVar,
    SecretExposurePolicy,
    SecretMountPolicy,
    SecretPrepareRequest,
)
from corral.contract.refs import slug
from corral.contract.vocabulary import MountMode
from corral.runtimes.docker import mounts as pins
from corral.runtimes.docker.policy import resolve_mount
from corral.runtimes.docker.runtime import DockerRuntime
from corral.settings import REPO_POLICY, HostSettings
from tests.conftest import missing
from tests.harness import docker_runtime, pinned_mounts, wait_until
from tests.integration.test_docker_runtime import count_labeled, make_env, output, prepare, proc_spec, wait_exit

pytestmark = pytest.mark.docker

CANARY = "CANARY-" + uuid.uuid4().hex[:8]


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("redteam")
    noexec = root / "noexec"  # a source the host mounted noexec, holding an executable
    noexec.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "noexec,nosuid,nodev,size=8m", "tmpfs", str(noexec)], check=True)
    busybox = shutil.which("busybox")
    if busybox:
        shutil.copy(busybox, noexec / "busybox")
    (root / "data").mkdir()
    (root / "data" / "hello.txt").write_text("hello\n")
    pool = root / "pool"  # writable alias "pool": the parent of aliases "b", "file", "fifo", "deep"
    (pool / "b").mkdir(parents=True)
    (pool / "b" / "real.txt").write_text("real\n")
    (pool / "p" / "q").mkdir(parents=True)
    (pool / "p" / "q" / "real.txt").write_text("real\n")
    (pool / "f.txt").write_text("file\n")
    for d in (pool, pool / "b", pool / "p"):
        d.chmod(0o777)  # the sandbox runs as 65534
    canary = root / "canary"  # no alias names it; it has the same shape as the aliases
    (canary / "q").mkdir(parents=True)
    (canary / "canary.txt").write_text(CANARY + "\n")
    (canary / "q" / "canary.txt").write_text(CANARY + "\n")
    etc = root / "etc"  # a passwd/group mapping nobody to 0, for a mount over the image's files
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0::/:/bin/sh\nnobody:x:0:0::/:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nnogroup:x:0:\n")
    tree = root / "tree"  # a root for symlinks = "within_alias"
    (tree / "v1").mkdir(parents=True)
    (tree / "v1" / "version.txt").write_text("v1\n")
    (tree / "cur").symlink_to("v1")
    (tree / "out").symlink_to(canary)
    (tree / "up").symlink_to("../host/secrets")
    (tree / "to_state").symlink_to(root / "host" / "state")
    (root / "host" / "secrets").mkdir(parents=True)
    (root / "host" / "secrets" / "tok").write_text("s3cret-value\n")
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(noexec)], check=False)


@pytest.fixture(scope="module")
def host(base: Path) -> Iterator[HostSettings]:
    host_id = f"rt-{uuid.uuid4().hex[:12]}"
    secrets_root = Path(f"/dev/shm/corral-test-{host_id}")
    settings = HostSettings(
        id=host_id,
        state_dir=str(base / "host" / "state"),
        secrets_root=str(secrets_root),
        secrets_dir=str(base / "host" / "secrets"),
    )
    pool = base / "pool"
    settings.use_mount_aliases(
        {
            "data": str(base / "data"),
            "pool": str(pool),
            "b": str(pool / "b"),
            "deep": str(pool / "p" / "q"),
            "file": str(pool / "f.txt"),
            "fifo": str(pool / "fifo"),
            "passwd": str(base / "etc" / "passwd"),
            "noexec": str(base / "noexec"),
            "etc": str(base / "etc"),
            # forbidden, however spelled
            "hostdir": str(base / "host"),
            "pins": str(base / "host" / "state" / "mounts"),
            "dotdot": f"{pool}/../host/secrets",
            "dotdot_state": f"{base}/data/../host/state/../state",
            "shm": "/dev/shm",
            "code": os.path.dirname(os.path.abspath(corral.__file__)),
            "venv": sys.prefix,
            "shipped_policy": str(REPO_POLICY.parent),  # the policy in force when host.policy_file is unset
            # symlinks = "within_alias": root tree/ (or the whole base for "wide")
            "cur": str(base / "tree" / "cur"),
            "out": str(base / "tree" / "out"),
            "up": str(base / "tree" / "up"),
            "wide": str(base / "tree" / "to_state"),
        },
        ["pool"],
        {"cur": str(base / "tree"), "out": str(base / "tree"), "up": str(base / "tree"), "wide": str(base)},
    )
    yield settings
    shutil.rmtree(secrets_root, ignore_errors=True)


@pytest.fixture(scope="module")
def runtime(docker_client: Any, host: HostSettings) -> Iterator[DockerRuntime]:
    with docker_runtime(docker_client, host, host.id) as rt:
        yield rt


def _rootfs(
    files: dict[str, bytes | str], applets: tuple[str, ...] = ("sh", "cat", "grep", "id", "ls", "true")
) -> bytes:
    """A busybox-static rootfs plus ``files`` (bytes: a file; str: a symlink to that target)."""
    busybox = shutil.which("busybox")
    if busybox is None:
        missing("busybox-static")
    assert busybox is not None
    blob = io.BytesIO()
    with tarfile.open(fileobj=blob, mode="w") as tar:
        for directory in ("bin", "etc", "tmp", "proc", "sys", "dev", "run", "vol"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory in ("tmp", "vol") else 0o755
            tar.addfile(info)
        data = Path(busybox).read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in applets:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    return blob.getvalue()


@pytest.fixture(scope="module")
def image_factory(docker_client: Any) -> Iterator[Callable[..., str]]:
    made: list[str] = []

    def build(files: dict[str, bytes | str], *changes: str) -> str:
        name = f"corral/redteam-{uuid.uuid4().hex[:10]}:latest"
        docker_client.api.import_image_from_data(
            _rootfs(files), repository=name.split(":")[0], tag="latest", changes=["ENV PATH=/bin", *changes]
        )
        made.append(name)
        return name

    yield build
    for name in made:
        docker_client.images.remove(name, force=True)


# ------------------------------------------------------------------------------------- helpers


def mount(alias: str, destination: str = "/data", mode: MountMode = MountMode.read_only, ref: str = "") -> MountPolicy:
    return MountPolicy(mount_ref=ref or f"m-{alias}", source_alias=alias, destination_path=destination, mode=mode)


def with_mounts(image: str, *mounts: MountPolicy) -> ExecutionEnvironment:
    return make_env(image, filesystem=FilesystemIsolationPolicy(mounts=list(mounts)))


def cleanup(rt: DockerRuntime, env: ExecutionEnvironment) -> None:
    result = rt.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="c"))
    assert result.status.value == "completed", result.redacted_summary


def host_paths(host: HostSettings) -> list[str]:
    """Every path of this host an error must not tell: aliases, corral's dirs, the test's tree,
    Docker's own."""
    paths = [*host.mounts.values(), host.state_dir, host.secrets_root, host.secrets_dir, "/var/lib/docker"]
    paths.append(str(Path(host.state_dir).parent.parent))  # the test's base dir
    return [p for p in paths if len(p) > 1 and p not in ("/dev/shm",)]


def assert_clean(exc: AgentError, host: HostSettings) -> None:
    text = " ".join([exc.message, str(exc), *exc.context.values()])
    leaked = [p for p in host_paths(host) if p in text]
    assert leaked == [], f"{type(exc).__name__} tells host paths {leaked}: {text}"


def run_to_exit(
    rt: DockerRuntime, sandbox: ExecutionEnvironment, script: str, **kwargs: Any
) -> tuple[int | None, bytes]:
    process = proc_spec("sh", "-c", script, **kwargs)
    prepare(rt, sandbox, process)
    ref = rt.start_process(ProcessStartRequest(environment=sandbox, process=process)).process_ref
    code = wait_exit(rt, ref).exit_code
    return code, output(rt, ref)


def refused(rt: DockerRuntime, env: ExecutionEnvironment, process: IsolatedProcessSpec) -> AgentError:
    """The error the prepare chain (or the start) ends with; a chain that runs is a failure."""
    try:
        prepare(rt, env, process)
        rt.start_process(ProcessStartRequest(environment=env, process=process))
    except AgentError as exc:
        return exc
    raise AssertionError("the request was not refused")


# ------------------------------------------------------------------------------ mount sources


def test_a_parent_flipped_into_a_symlink_during_the_walk_never_opens_the_canary(
    runtime: DockerRuntime, host: HostSettings, base: Path, busybox_image: str
) -> None:
    """A thread flips ``pool/p`` (the parent of alias ``deep``) and ``pool/b`` (alias ``b`` itself)
    between the real directory and a symlink to the canary, as fast as it can, while the worker's
    open walk runs hundreds of times: every open either refuses or yields the real directory."""
    forbidden = runtime.forbidden_sources()
    pool = base / "pool"
    stop = threading.Event()
    flips = [0]

    def flipper() -> None:
        targets = [(pool / "p", base / "canary"), (pool / "b", base / "canary")]
        while not stop.is_set():
            for path, canary in targets:
                aside = path.with_name(path.name + ".real")
                path.rename(aside)
                path.symlink_to(canary)
                path.unlink()
                aside.rename(path)
                flips[0] += 1

    real = {os.stat(pool / "b").st_ino, os.stat(pool / "p" / "q").st_ino}
    opened: list[tuple[str, int]] = []
    thread = threading.Thread(target=flipper)
    thread.start()
    try:
        for i in range(600):
            alias = "deep" if i % 2 else "b"
            planned = resolve_mount(mount(alias), host, FilesystemIsolationPolicy().symlink_policy)
            try:
                fd = pins.open_source(planned, forbidden)
            except AgentError:
                continue
            try:
                opened.append((pins.fd_path(fd), os.fstat(fd).st_ino))
            finally:
                os.close(fd)
    finally:
        stop.set()
        thread.join()
    assert flips[0] > 0
    assert opened, "no open succeeded: the race did not run"
    assert [p for p, _ino in opened if "canary" in p] == []
    assert {ino for _p, ino in opened} <= real  # the real directories (perhaps renamed aside by then)
    # the control: with the parent really a symlink, the walk refuses
    (pool / "p").rename(pool / "p.real")
    (pool / "p").symlink_to(base / "canary")
    try:
        with pytest.raises(PolicyDenial, match="symlink") as info:
            runtime.resolve_mounts(MountResolveRequest(environment=with_mounts(busybox_image, mount("deep"))))
        assert_clean(info.value, host)
    finally:
        (pool / "p").unlink()
        (pool / "p.real").rename(pool / "p")


def test_a_sandbox_cannot_turn_a_single_file_alias_into_a_symlink_fifo_or_hardlink(
    runtime: DockerRuntime, host: HostSettings, base: Path, busybox_image: str
) -> None:
    """A sandbox with the writable parent replaces alias ``file`` by a symlink to the host's
    /etc/shadow, makes alias ``fifo`` a FIFO, and tries to hardlink a file it can read into the
    pool. Jobs mounting those aliases are refused; the hardlink never exists (EXDEV)."""
    pool = base / "pool"
    attacker = with_mounts(busybox_image, mount("pool", "/pool", MountMode.writable))
    script = (
        "ln /etc/passwd /pool/hard 2>/dev/null && echo LINKED; "
        "ln /data/x /pool/hard2 2>/dev/null && echo LINKED2; "
        "rm -f /pool/f.txt && ln -s /etc/shadow /pool/f.txt && mkfifo /pool/fifo && echo DONE"
    )
    try:
        code, out = run_to_exit(runtime, attacker, script)
        cleanup(runtime, attacker)
        assert (code, out) == (0, b"DONE\n")
        assert (pool / "f.txt").is_symlink() and stat.S_ISFIFO(os.lstat(pool / "fifo").st_mode)
        assert not (pool / "hard").exists()
        for alias, why in (("file", "symlink"), ("fifo", "neither a directory nor a regular file")):
            env = with_mounts(busybox_image, mount(alias, "/f"))
            with pytest.raises(PolicyDenial, match=why) as info:
                runtime.resolve_mounts(MountResolveRequest(environment=env))
            assert_clean(info.value, host)
            exc = refused(runtime, env, proc_spec("cat", "/f"))
            assert isinstance(exc, PolicyDenial), exc
            assert_clean(exc, host)
            cleanup(runtime, env)
        assert pinned_mounts(host.state_dir) == []
    finally:
        for name in ("f.txt", "fifo", "hard"):
            (pool / name).unlink(missing_ok=True)
        (pool / "f.txt").write_text("file\n")


@pytest.mark.parametrize("alias", ["hostdir", "pins", "dotdot", "dotdot_state", "shm"])
def test_parents_of_corrals_dirs_are_refused_however_spelled(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, docker_client: Any, alias: str
) -> None:
    """``hostdir`` holds the state and secrets dirs; ``pins`` is the pin directory itself;
    ``dotdot``/``dotdot_state`` reach the secrets and state dirs through ``..``; ``/dev/shm`` holds
    the secrets root. Refused when planned and when pinned, writable or not; nothing pinned."""
    for mode in (MountMode.read_only, MountMode.writable):
        env = with_mounts(busybox_image, mount(alias, "/x", mode))
        if mode is MountMode.read_only:
            with pytest.raises(PolicyDenial) as info:
                runtime.resolve_mounts(MountResolveRequest(environment=env))
            assert_clean(info.value, host)
        exc = refused(runtime, env, proc_spec("ls", "/x"))
        assert isinstance(exc, PolicyDenial), exc
        assert_clean(exc, host)
        cleanup(runtime, env)
    assert count_labeled(docker_client, host.id)["containers"] == 0
    assert pinned_mounts(host.state_dir) == []


@pytest.mark.parametrize("alias", ["code", "venv", "shipped_policy"])
def test_corrals_own_code_is_never_a_mount_source(runtime: DockerRuntime, busybox_image: str, alias: str) -> None:
    with pytest.raises(PolicyDenial):
        runtime.resolve_mounts(MountResolveRequest(environment=with_mounts(busybox_image, mount(alias, "/x"))))


def test_the_same_alias_twice_read_only_and_writable_keeps_each_mode(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, base: Path
) -> None:
    """One mount_ref, one alias, two modes: two pins; the read-only one is read-only inside, the
    writable one ``nosuid,nodev``."""
    env = with_mounts(
        busybox_image,
        mount("pool", "/r", MountMode.read_only, ref="m-dup"),
        mount("pool", "/w", MountMode.writable, ref="m-dup"),
    )
    script = (
        "echo x > /r/t 2>/dev/null && echo WROTE-RO; echo y > /w/t2 && echo WROTE-RW; "
        "grep -E ' /(r|w) ' /proc/self/mountinfo | cut -d' ' -f5,6"
    )
    try:
        code, out = run_to_exit(runtime, env, script)
    finally:
        cleanup(runtime, env)
        (base / "pool" / "t2").unlink(missing_ok=True)
    lines = out.decode().splitlines()
    assert code == 0 and "WROTE-RO" not in lines and "WROTE-RW" in lines, out
    options = dict(line.split(" ", 1) for line in lines if line.startswith("/"))
    assert options["/r"].split(",")[0] == "ro" and options["/w"].split(",")[0] == "rw", options
    assert {"nosuid", "nodev"} <= set(options["/w"].split(",")), options
    assert not (base / "pool" / "t").exists()
    assert pinned_mounts(host.state_dir) == []


def test_a_noexec_source_stays_noexec_in_a_read_only_mount(runtime: DockerRuntime, busybox_image: str) -> None:
    env = with_mounts(busybox_image, mount("noexec", "/r"))
    try:
        code, out = run_to_exit(runtime, env, "/r/busybox echo EXECUTED 2>/dev/null; true")
    finally:
        cleanup(runtime, env)
    assert code == 0 and b"EXECUTED" not in out


def test_a_read_only_mount_is_nosuid_and_nodev_inside(runtime: DockerRuntime, busybox_image: str) -> None:
    env = with_mounts(busybox_image, mount("data", "/r"))
    try:
        code, out = run_to_exit(runtime, env, "grep ' /r ' /proc/self/mountinfo | cut -d' ' -f6")
    finally:
        cleanup(runtime, env)
    assert code == 0 and {"ro", "nosuid", "nodev"} <= set(out.decode().strip().split(",")), out


@pytest.mark.xfail(
    strict=True,
    reason="red-team: a sandbox reads its aliases' host paths (and the secrets root's) in /proc/self/mountinfo "
    "(the root field of a bind is the source's path in its filesystem); a client gets them as output",
)
def test_a_sandbox_cannot_read_the_host_path_of_its_mounts(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str
) -> None:
    env = make_env(
        busybox_image,
        filesystem=FilesystemIsolationPolicy(mounts=[mount("data", "/d")]),
        secrets=SecretExposurePolicy(
            secret_mounts=[SecretMountPolicy(secret_ref="tok", mount_ref="s", path="/run/s/tok")]
        ),
    )
    try:
        code, out = run_to_exit(runtime, env, "cat /proc/self/mountinfo")
    finally:
        cleanup(runtime, env)
    assert code == 0
    text = out.decode()
    assert [p for p in (host.mounts["data"], host.secrets_root) if p in text] == []


def test_a_read_only_alias_under_a_writable_one_stays_read_only(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, base: Path
) -> None:
    """``pool`` writable at /w and ``b`` (pool/b) read-only at /w/b: the sandbox cannot write b's
    files, nor move or remove b from under its mount through the writable parent."""
    env = with_mounts(busybox_image, mount("pool", "/w", MountMode.writable), mount("b", "/w/b"))
    script = (
        "echo x > /w/b/new 2>/dev/null && echo WROTE; rm -f /w/b/real.txt 2>/dev/null; "
        "mv /w/b /w/moved 2>/dev/null && echo MOVED; rm -rf /w/b 2>/dev/null; cat /w/b/real.txt"
    )
    try:
        code, out = run_to_exit(runtime, env, script)
    finally:
        cleanup(runtime, env)
    assert (code, out) == (0, b"real\n"), out
    assert (base / "pool" / "b" / "real.txt").read_text() == "real\n"
    assert not (base / "pool" / "moved").exists() and not (base / "pool" / "b" / "new").exists()
    assert pinned_mounts(host.state_dir) == []


def test_a_failed_create_leaves_no_pin_after_cleanup(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, docker_client: Any
) -> None:
    """The engine refuses a destination with ``:`` after the sources are pinned; a forbidden second
    mount is refused after the first is pinned. Both errors are not retryable and tell no host path;
    the pins exist until cleanup, and cleanup leaves none (nor their directory)."""
    for env in (
        with_mounts(busybox_image, mount("data", "/x:rw")),
        with_mounts(busybox_image, mount("data", "/d"), mount("hostdir", "/h")),
    ):
        exc = refused(runtime, env, proc_spec("true"))
        assert isinstance(exc, (InvalidRequest, PolicyDenial)) and not exc.retryable, exc
        assert_clean(exc, host)
        cleanup(runtime, env)
        assert pinned_mounts(host.state_dir) == []
        assert not pins.pin_dir(host, slug(env.environment_id)).exists()
    assert count_labeled(docker_client, host.id)["containers"] == 0


# ------------------------------------------------------------------------------ destinations


@pytest.mark.parametrize(
    "destination",
    ["/x/../proc", "/dev/../proc", "relative", "/", "/x\0y"],
)
def test_destinations_the_model_refuses(destination: str) -> None:
    with pytest.raises(ValidationError):
        mount("data", destination)


@pytest.mark.parametrize(
    "destination", ["/./proc", "//proc", "/proc/", "/sys/fs/cgroup", "/dev/shm", "/tmp/x", "//tmp"]
)
def test_destinations_normalized_into_forbidden_places_are_denied(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, destination: str
) -> None:
    env = with_mounts(busybox_image, mount("data", destination))
    with pytest.raises(PolicyDenial) as info:
        runtime.resolve_mounts(MountResolveRequest(environment=env))
    assert_clean(info.value, host)


@pytest.mark.parametrize("destination", ["/x:rw", "/x:ro", "/x:z", "/x:rw,shared", "/a:/b"])
def test_a_colon_in_a_destination_injects_no_option(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, docker_client: Any, destination: str
) -> None:
    """Docker's bind string is ``src:dst:mode``: a destination with ``:`` never becomes a mode (a
    writable or relabelled or shared mount of a read-only alias). The engine refuses the whole
    spec; corral says so without the pin's host path, not retryable."""
    for spot in ("mount", "secret"):
        if spot == "mount":
            env = with_mounts(busybox_image, mount("data", destination))
        else:
            env = make_env(
                busybox_image,
                secrets=SecretExposurePolicy(
                    secret_mounts=[SecretMountPolicy(secret_ref="tok", mount_ref="s", path=destination)]
                ),
            )
        exc = refused(runtime, env, proc_spec("true"))
        assert isinstance(exc, InvalidRequest) and not exc.retryable, exc
        assert_clean(exc, host)
        assert "s3cret" not in exc.message
        cleanup(runtime, env)
    assert count_labeled(docker_client, host.id)["containers"] == 0


@pytest.mark.parametrize("destination", ["/x,bind-propagation=shared", "/x,rw", "/x\ny", "//x//y/", "/x/./y/"])
def test_commas_newlines_and_slashes_in_a_destination_are_just_a_path(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, destination: str
) -> None:
    """A comma is ``--mount`` syntax, not bind syntax: the mount lands at the literal (normalized)
    path, read-only, private (no ``shared:`` peer group)."""
    env = with_mounts(busybox_image, mount("data", destination))
    normal = env.spec.filesystem.mounts[0].destination_path
    script = 'cat "$D/hello.txt"; echo x > "$D/w" 2>/dev/null && echo WROTE; grep -F " $M " /proc/self/mountinfo'
    escaped = normal.replace("\n", "\\012")  # mountinfo's escape
    process_env = [RedactedEnvVar(name="D", redacted_value=normal), RedactedEnvVar(name="M", redacted_value=escaped)]
    try:
        code, out = run_to_exit(runtime, env, script, env=process_env)
    finally:
        cleanup(runtime, env)
    lines = out.decode().splitlines()
    assert code == 0 and lines[0] == "hello" and "WROTE" not in lines, out
    fields = lines[1].split(" ")
    assert fields[4] == escaped and fields[5].split(",")[0] == "ro", lines
    optional = fields[6 : fields.index("-")]
    assert not any(f.startswith("shared:") for f in optional), lines


def test_a_destination_through_an_image_symlink_into_proc_is_refused(
    runtime: DockerRuntime, host: HostSettings, image_factory: Callable[..., str]
) -> None:
    """The image has ``/p -> /proc``: a mount at ``/p/sys`` passes corral's literal check, but runc
    resolves the destination in the rootfs and refuses a mount inside /proc. Nothing runs; the
    error tells no host path."""
    image = image_factory({"p": "/proc", "etc/passwd": b"nobody:x:65534:65534::/:/bin/sh\n"})
    env = with_mounts(image, mount("data", "/p/sys"))
    exc = refused(runtime, env, proc_spec("true"))
    assert_clean(exc, host)
    cleanup(runtime, env)


@pytest.mark.parametrize("case", ["ro /etc", "dir over /bin/sh", "symlink into /proc"])
def test_a_mount_runc_always_refuses_is_not_retryable(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, image_factory: Callable[..., str], case: str
) -> None:
    """runc refuses these at start every time (a read-only mount over /etc, where Docker then mounts
    resolv.conf; a directory over a file; a destination that resolves into /proc through a symlink
    in the image). Found retryable (a new shim per retry) by this pass; now not retryable."""
    if case == "ro /etc":
        env = with_mounts(busybox_image, mount("etc", "/etc"))
    elif case == "dir over /bin/sh":
        env = with_mounts(busybox_image, mount("data", "/bin/sh"))
    else:
        env = with_mounts(image_factory({"p": "/proc"}), mount("data", "/p/sys"))
    exc = refused(runtime, env, proc_spec("true"))
    cleanup(runtime, env)
    assert_clean(exc, host)
    assert isinstance(exc, InvalidRequest) and not exc.retryable, exc


# ------------------------------------------------------------------------------ users


@pytest.mark.parametrize(
    "user",
    [
        "\u0660",
        "\uff10",
        "0\n",
        " 0",
        "0 ",
        "\t0",
        "0\t",
        ":0",
        "0:",
        "nobody:",
        "-0",
        "+0",
        "a:b:c",
        "x" * 33,
        "\u01c5",
    ],
)
def test_user_spellings_the_model_refuses(user: str) -> None:
    """Unicode digits (Arabic-Indic zero, fullwidth zero), whitespace, a trailing newline, empty
    parts, signs: refused before anything parses them as a number."""
    with pytest.raises(ValidationError):
        proc_spec("id", user=user)


@pytest.mark.parametrize(
    "user", ["nobody:0", "65534:root", "0:65534", "nobody:00", "root", "root:nogroup", "00:nogroup"]
)
def test_root_spellings_on_the_shared_image_are_denied_before_a_container(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, docker_client: Any, user: str
) -> None:
    env = make_env(busybox_image)
    exc = refused(runtime, env, proc_spec("id", user=user))
    assert isinstance(exc, PolicyDenial) and exc.context["rule"] == "users.allow_root", exc
    assert_clean(exc, host)
    assert count_labeled(docker_client, host.id, env.environment_id)["containers"] == 0
    cleanup(runtime, env)


@pytest.mark.parametrize(
    "user", ["0x0", "4294967296", "nobody:4294967296", "99999999999999999999", "2147483648:65534", "1e3", "0.0"]
)
def test_odd_numbers_are_names_or_out_of_range_and_refused(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, docker_client: Any, user: str
) -> None:
    """``0x0``, ``1e3``, ``0.0`` and a number past int64 are names (runc's Atoi fails) the image
    lacks; a number past 2^31-1 is out of runc's range (never wrapped to 0)."""
    env = make_env(busybox_image)
    exc = refused(runtime, env, proc_spec("id", user=user))
    assert isinstance(exc, InvalidRequest) and not exc.retryable, exc
    assert_clean(exc, host)
    assert count_labeled(docker_client, host.id, env.environment_id)["containers"] == 0
    cleanup(runtime, env)


def test_an_image_whose_passwd_is_a_symlink_or_huge_only_runs_numeric_users(
    runtime: DockerRuntime, host: HostSettings, image_factory: Callable[..., str]
) -> None:
    """Docker follows ``/etc/passwd -> passwd.real`` (admin is 0 there) and reads a 2 MiB passwd
    whose last line maps admin to 0. Corral cannot judge a name in either, so it refuses names and
    runs only a numeric ``UID:GID``, as that uid."""
    evil = b"admin:x:0:0::/:/bin/sh\n"
    linked = image_factory({"etc/passwd.real": evil, "etc/passwd": "passwd.real", "etc/group": b"wheel:x:0:admin\n"})
    padding = b"".join(b"u%07d:x:%d:%d::/:/bin/sh\n" % (i, 10000 + i, 10000 + i) for i in range(60000))
    huge = image_factory({"etc/passwd": padding + evil})
    for image in (linked, huge):
        env = make_env(image)
        exc = refused(runtime, env, proc_spec("id", user="admin"))
        assert isinstance(exc, (InvalidRequest, PolicyDenial)) and not exc.retryable, exc
        cleanup(runtime, env)
        env = make_env(image)
        code, out = run_to_exit(runtime, env, "id -u", user="65534:65534")
        cleanup(runtime, env)
        assert (code, out) == (0, b"65534\n")


def test_a_mount_over_etc_passwd_does_not_change_who_runs(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str
) -> None:
    """A single-file alias whose passwd maps nobody to 0, mounted over the image's /etc/passwd:
    Docker resolves the user in the image (as corral predicted), not in the mount."""
    env = with_mounts(busybox_image, mount("passwd", "/etc/passwd"))
    try:
        code, out = run_to_exit(runtime, env, "grep ^nobody /etc/passwd; id -u; id -g", user="nobody")
    finally:
        cleanup(runtime, env)
    assert (code, out) == (0, b"nobody:x:0:0::/:/bin/sh\n65534\n65534\n")


# ------------------------------------------------------------------------------ network


@pytest.mark.parametrize(
    "policy",
    [
        NetworkIsolationPolicy(kind=NetworkKind.allowlist, hosts=[""]),
        NetworkIsolationPolicy(kind=NetworkKind.allowlist, hosts=["0.0.0.0/0"]),
        NetworkIsolationPolicy(kind=NetworkKind.egress_scoped, rules=[""]),
        NetworkIsolationPolicy(kind=NetworkKind.exposed_ports),
        NetworkIsolationPolicy(kind=NetworkKind.socket_relay),
    ],
    ids=["allowlist-empty-string", "allowlist-everything", "egress-empty-rule", "exposed-no-ports", "relay"],
)
def test_present_but_empty_network_lists_are_unsupported(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, docker_client: Any, policy: NetworkIsolationPolicy
) -> None:
    env = make_env(busybox_image, network=policy)
    with pytest.raises(Unsupported):
        runtime.configure_network(NetworkPrepareRequest(environment=env))
    exc = refused(runtime, env, proc_spec("true"))
    assert isinstance(exc, Unsupported), exc
    cleanup(runtime, env)
    assert count_labeled(docker_client, host.id, env.environment_id) == {"containers": 0, "networks": 0}


@pytest.mark.parametrize(
    "document",
    [
        {"egress_scoped": {"rules": [], "hosts": ["0.0.0.0/0", "host.docker.internal"]}},
        {"disabled": {"hosts": ["0.0.0.0/0"]}},
        {"kind": "adapter_defined_denied", "hosts": ["0.0.0.0/0"], "ports": [80]},
        {"kind": "disabled", "hosts": ["0.0.0.0/0"], "rules": ["allow all"], "ports": [22]},
    ],
    ids=[
        "egress-hosts-without-rules",
        "disabled-with-hosts",
        "denied-with-hosts-and-ports",
        "disabled-with-everything",
    ],
)
def test_no_egress_modes_with_stray_fields_are_refused_on_decode(document: dict[str, object]) -> None:
    """Fields a no-egress mode does not have can never ride along and widen it: upstream's network policy
    is a tagged enum, so a variant carries only its own fields, and the model refuses the rest."""
    with pytest.raises(ValidationError, match=r"does not belong|has no field"):
        NetworkIsolationPolicy.model_validate(document)


# ------------------------------------------------------------------------------ rlimits


@pytest.mark.parametrize("rlimit", [("rtprio", 99), ("nice", 40), ("memlock", 1 << 40)])
def test_an_rlimit_above_the_hosts_is_denied_by_policy_before_any_container(
    runtime: DockerRuntime, busybox_image: str, docker_client: Any, host: HostSettings, rlimit: tuple[str, int]
) -> None:
    env = make_env(busybox_image)
    try:
        with pytest.raises(PolicyDenial):
            prepare(runtime, env, proc_spec("true", posix_rlimits=dict([rlimit])))
        assert count_labeled(docker_client, host.id, env.environment_id)["containers"] == 0
    finally:
        cleanup(runtime, env)


@pytest.mark.parametrize("value", [1 << 63, 1 << 64, 1 << 200])
def test_an_rlimit_past_int64_is_refused_not_retried(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings, docker_client: Any, value: int
) -> None:
    env = make_env(busybox_image)
    exc = refused(runtime, env, proc_spec("true", posix_rlimits={"nofile": value}))
    cleanup(runtime, env)
    assert isinstance(exc, InvalidRequest | PolicyDenial) and not exc.retryable, exc
    assert_clean(exc, host)
    assert count_labeled(docker_client, host.id, env.environment_id)["containers"] == 0


# ------------------------------------------------------------------------------ image volumes


@pytest.fixture(scope="module")
def volume_image(image_factory: Callable[..., str]) -> str:
    """An allowed image (``corral/*``) that declares ``VOLUME /vol`` (mode 1777 in the image)."""
    return image_factory({"etc/passwd": b"nobody:x:65534:65534::/:/bin/sh\n"}, "VOLUME /vol")


def _volumes(docker_client: Any, env: ExecutionEnvironment, host: HostSettings) -> list[str]:
    found = docker_client.containers.list(
        all=True, filters={"label": [f"corral.host={host.id}", f"corral.session={env.environment_id}"]}
    )
    return [m["Name"] for c in found for m in c.attrs.get("Mounts", []) if m.get("Type") == "volume"]


def test_an_image_volume_is_not_writable_host_storage(runtime: DockerRuntime, volume_image: str) -> None:
    env = make_env(volume_image)
    try:
        code, out = run_to_exit(runtime, env, "echo x > /vol/f 2>/dev/null && echo WROTE; true")
    finally:
        cleanup(runtime, env)
    assert code == 0 and b"WROTE" not in out


def test_cleanup_removes_the_anonymous_volumes_of_an_image(
    runtime: DockerRuntime, volume_image: str, docker_client: Any, host: HostSettings
) -> None:
    """Whatever an image declares, cleanup leaves no volume behind on the host; nor does the
    never-started probe that reads the image's passwd for a user given by name (found leaking one
    anonymous volume per container by this pass: ``remove`` without ``v``)."""
    dangling = {v.name for v in docker_client.volumes.list(filters={"dangling": True})}
    env = make_env(volume_image)
    code, _out = run_to_exit(runtime, env, "true", user="nobody")  # a name: the probe reads passwd
    assert code == 0
    volumes = _volumes(docker_client, env, host)
    assert volumes == []  # the VOLUME is covered by a tmpfs, never an anonymous volume on the host disk
    cleanup(runtime, env)
    left = [v.name for v in docker_client.volumes.list(filters={"dangling": True}) if v.name not in dangling]
    for name in left:  # do not leak them from the test either
        docker_client.volumes.get(name).remove(force=True)
    assert left == []


# ------------------------------------------------------------------------------ within_alias roots


@pytest.mark.parametrize("alias", ["out", "up", "wide"])
def test_within_alias_never_leaves_its_root_nor_reaches_corrals_dirs(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, alias: str
) -> None:
    """``out`` is an absolute symlink to the canary, ``up`` a relative one climbing to the secrets
    dir, ``wide`` (root: the whole test tree, which holds corral's dirs) one to the state dir: all
    refused, judged on the opened descriptor."""
    env = with_mounts(busybox_image, mount(alias, "/x"))
    with pytest.raises(PolicyDenial) as info:
        runtime.resolve_mounts(MountResolveRequest(environment=env))
    assert_clean(info.value, host)
    exc = refused(runtime, env, proc_spec("ls", "/x"))
    assert isinstance(exc, PolicyDenial), exc
    cleanup(runtime, env)
    assert pinned_mounts(host.state_dir) == []


def test_within_alias_symlink_flipped_in_and_out_of_its_root_never_opens_outside(
    runtime: DockerRuntime, host: HostSettings, base: Path
) -> None:
    """``tree/cur`` is atomically replaced (rename of a symlink) between ``v1`` and the canary
    outside the root while the worker opens it hundreds of times: every open is ``v1`` or refused."""
    tree = base / "tree"
    forbidden = runtime.forbidden_sources()
    stop = threading.Event()

    def flipper() -> None:
        while not stop.is_set():
            for target in (str(base / "canary"), "v1"):
                tmp = tree / "cur.tmp"
                tmp.unlink(missing_ok=True)
                tmp.symlink_to(target)
                tmp.rename(tree / "cur")

    v1 = os.stat(tree / "v1").st_ino
    inodes: list[int] = []
    thread = threading.Thread(target=flipper)
    thread.start()
    try:
        for _ in range(400):
            planned = resolve_mount(mount("cur"), host, FilesystemIsolationPolicy().symlink_policy)
            try:
                fd = pins.open_source(planned, forbidden)
            except PolicyDenial:
                continue
            try:
                inodes.append(os.fstat(fd).st_ino)
            finally:
                os.close(fd)
    finally:
        stop.set()
        thread.join()
        (tree / "cur.tmp").unlink(missing_ok=True)
        (tree / "cur").unlink(missing_ok=True)
        (tree / "cur").symlink_to("v1")
    assert inodes and set(inodes) == {v1}


# ------------------------------------------------------------------------------ secrets and mounts


def test_a_secret_under_a_writable_mount_never_writes_its_value_to_the_alias(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, base: Path
) -> None:
    """The secret's destination lies inside a writable alias: runc makes the mount point there (on
    the host), but the value stays on the secrets tmpfs; the alias never holds it, during or after."""
    env = make_env(
        busybox_image,
        filesystem=FilesystemIsolationPolicy(mounts=[mount("pool", "/w", MountMode.writable)]),
        secrets=SecretExposurePolicy(secret_mounts=[SecretMountPolicy(secret_ref="tok", mount_ref="s", path="/w/tok")]),
    )
    try:
        code, out = run_to_exit(runtime, env, "cat /w/tok; cp /w/tok /w/copy 2>/dev/null; echo x > /w/tok || true")
        seen = (base / "pool" / "tok").read_bytes() if (base / "pool" / "tok").exists() else b""
    finally:
        cleanup(runtime, env)
        for name in ("tok", "copy"):
            (base / "pool" / name).unlink(missing_ok=True)
    assert code == 0 and out.startswith(b"[REDACTED]"), out  # it was there (and redacted in the output)
    assert b"s3cret" not in seen


# ------------------------------------------------------------------------------ image labels


def test_an_image_labelled_as_a_probe_does_not_get_sandboxes_swept(
    runtime: DockerRuntime, image_factory: Callable[..., str], docker_client: Any, host: HostSettings
) -> None:
    """Containers inherit their image's labels. An image carrying ``corral.probe`` (the label of the
    never-started passwd probe) must not make its running sandboxes look like stale probes: the
    sweep that removes probes left by a dead worker spares them."""
    from corral.runtimes.docker.environment import _remove_stale_probes

    image = image_factory({"etc/passwd": b"nobody:x:65534:65534::/:/bin/sh\n"}, "LABEL corral.probe=passwd")
    env = make_env(image)
    process = proc_spec("sh", "-c", "sleep 30")
    prepare(runtime, env, process)
    runtime.start_process(ProcessStartRequest(environment=env, process=process))
    try:
        _remove_stale_probes(docker_client, older_than_s=0)
        assert count_labeled(docker_client, host.id, env.environment_id)["containers"] == 1
    finally:
        cleanup(runtime, env)


# ------------------------------------------------------------------------------ argv


def test_an_argument_past_the_kernels_per_argument_limit_fails_inside_once(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str
) -> None:
    """One 128 KiB argument passes the model and the host's argv cap (256 KiB) but execve refuses it
    (MAX_ARG_STRLEN is 128 KiB with the NUL): the sandbox's init reports it as the exit status, once;
    no engine error, nothing to retry."""
    env = make_env(busybox_image)
    process = proc_spec("echo", "a" * 131_072)
    try:
        prepare(runtime, env, process)
        ref = runtime.start_process(ProcessStartRequest(environment=env, process=process)).process_ref
        code = wait_exit(runtime, ref).exit_code
    finally:
        cleanup(runtime, env)
    assert code not in (None, 0)


# ------------------------------------------------------------------------------ the passwd probe


def test_a_huge_passwd_is_never_pulled_into_the_worker(
    runtime: DockerRuntime, image_factory: Callable[..., str], docker_client: Any
) -> None:
    """An allowed image whose /etc/passwd is 32 MiB (it could be gigabytes: zeros compress): the
    root worker reading it to resolve a user name must not hold it in memory (found: the whole
    archive was joined before the 1 MiB check)."""
    import tracemalloc

    from corral.runtimes.docker.environment import image_user_tables

    image = image_factory({"etc/passwd": b"\n" * (32 << 20)})
    image_id = docker_client.images.get(image).id
    tracemalloc.start()
    try:
        tables = image_user_tables(docker_client, image_id)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert tables is None  # unreadable: only a numeric UID:GID can be judged in this image
    assert peak < 8 << 20, f"peak {peak >> 20} MiB"


def _start_with_rlimit(
    runtime: DockerRuntime, busybox_image: str, rlimit: tuple[str, int]
) -> tuple[int | None, AgentError | None]:
    env = make_env(busybox_image)
    process = proc_spec("sh", "-c", "echo hi", posix_rlimits=dict([rlimit]))
    try:
        prepare(runtime, env, process)
        ref = runtime.start_process(ProcessStartRequest(environment=env, process=process)).process_ref
        return wait_exit(runtime, ref).exit_code, None
    except AgentError as exc:
        return None, exc
    finally:
        cleanup(runtime, env)


@pytest.mark.parametrize("rlimit", [("nproc", 0), ("fsize", 0), ("stack", 0), ("core", 0)])
def test_an_rlimit_that_starves_the_sandbox_only_ends_the_sandbox(
    runtime: DockerRuntime, busybox_image: str, rlimit: tuple[str, int]
) -> None:
    """Lowering these to 0 only hurts the sandbox: it starts and exits, once."""
    code, exc = _start_with_rlimit(runtime, busybox_image, rlimit)
    assert exc is None and code is not None, exc


@pytest.mark.parametrize("rlimit", [("nofile", 0), ("cpu", 0), ("data", 0)])
def test_an_rlimit_that_kills_runcs_init_is_not_retryable(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings, rlimit: tuple[str, int]
) -> None:
    _code, exc = _start_with_rlimit(runtime, busybox_image, rlimit)
    assert exc is None or not exc.retryable, exc
    if exc is not None:
        assert_clean(exc, host)


def test_the_spool_cap_bounds_what_a_sandbox_writes_to_the_host_disk(
    runtime: DockerRuntime, busybox_image: str, host: HostSettings
) -> None:
    """A sandbox writes 24 MiB to stdout and stderr against a 1 MiB spool cap: the host keeps at most
    the cap of each stream on disk."""
    from corral.contract.models import ProcessIoCapturePolicy, ProcessIoPolicy

    capped = ProcessIoCapturePolicy(max_bytes=1 << 20)
    env = make_env(busybox_image, io_policy=ProcessIoPolicy(stdout=capped, stderr=capped))
    process = proc_spec("sh", "-c", "yes abcdefgh | head -c 25165824; yes abcdefgh | head -c 25165824 >&2")
    try:
        prepare(runtime, env, process)
        ref = runtime.start_process(ProcessStartRequest(environment=env, process=process)).process_ref
        assert wait_exit(runtime, ref, timeout_s=60).exit_code == 0
        spool = runtime.paths_of(env.environment_id).spool.root
        sizes = {p.name: p.stat().st_size for p in spool.rglob("*") if p.is_file()}
    finally:
        cleanup(runtime, env)
    assert sizes and max(sizes.values()) <= (1 << 20) + (64 << 10), sizes
    assert sum(sizes.values()) <= 3 << 20, sizes


# ------------------------------------------------------------------------------ caps through a worker


@pytest.fixture
def client(corral_env: dict[str, str]) -> Iterator[Any]:
    from corral.client.client import Client
    from corral.settings import Settings

    c = Client(Settings(redis={"url": corral_env["CORRAL_REDIS__URL"]}, celery={"task_timeout_s": 60}))
    yield c
    c.close()


def _biggest_redis_keys(redis_url: str) -> list[tuple[int, int, str]]:
    import redis

    found = []
    for db in range(4):  # broker, results, beat, state
        r = redis.Redis.from_url(f"{redis_url}/{db}")
        found += [(r.memory_usage(k, samples=0) or 0, db, k.decode()) for k in r.scan_iter("*")]
        r.close()
    return sorted(found, reverse=True)[:3]


@pytest.mark.redis
@pytest.mark.worker
def test_megabytes_in_a_field_no_cap_counts_are_not_kept_in_redis(
    worker_factory: Any, client: Any, busybox_image: str, redis_url: str
) -> None:
    from dataclasses import dataclass

    from corral.fleet.job import JobSpec

    @dataclass(frozen=True)
    class Padded(JobSpec):
        def environment(self) -> ExecutionEnvironment:
            env = super().environment()
            # 1 MiB in an allowlist (refused later anyway): every step of the chain carries the spec (base64 twice
            # over), and Redis takes no value over 32 MiB
            network = NetworkIsolationPolicy(kind=NetworkKind.allowlist, hosts=["h" * (128 << 10)] * 8)
            return env.model_copy(update={"spec": env.spec.model_copy(update={"network": network})})

    worker = worker_factory()
    spec = Padded(image=busybox_image, argv=["true"], memory_mb=128, timeout_ms=60_000)
    handle = client.submit(spec, worker.host_id)
    with pytest.raises(PolicyDenial, match="max_spec_bytes"):
        client.wait(handle)
    assert wait_until(lambda: _biggest_redis_keys(redis_url)[0][0] < 256 * 1024, 10), _biggest_redis_keys(redis_url)


# ------------------------------------------------------------------------------ forbidden by identity


def test_a_forbidden_dir_reached_through_the_source_of_its_bind_mount_is_refused(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    """The host's secrets dir is a bind mount of ``disk/secrets`` (as Docker's data root often is of a
    directory on another disk); alias ``disk`` names the disk's top. The sandbox must not read the
    secret through it."""
    disk = tmp_path / "disk"
    (disk / "secrets").mkdir(parents=True)
    (disk / "secrets" / "tok").write_text("bound-secret\n")
    secrets_dir = tmp_path / "etc-corral-secrets"
    secrets_dir.mkdir()
    subprocess.run(["mount", "--bind", str(disk / "secrets"), str(secrets_dir)], check=True)
    secrets_root = Path(f"/dev/shm/corral-test-bind-{uuid.uuid4().hex[:8]}")
    try:
        host = HostSettings(
            id=f"rt-{uuid.uuid4().hex[:12]}",
            state_dir=str(tmp_path / "state"),
            secrets_root=str(secrets_root),
            secrets_dir=str(secrets_dir),
        )
        host.use_mount_aliases({"disk": str(disk)}, [])
        with docker_runtime(docker_client, host, host.id) as rt:
            env = with_mounts(busybox_image, mount("disk", "/disk"))
            try:
                with pytest.raises(PolicyDenial, match="the host's secrets"):
                    run_to_exit(rt, env, "cat /disk/secrets/tok 2>/dev/null; true")
            finally:
                cleanup(rt, env)
    finally:
        subprocess.run(["umount", "-l", str(secrets_dir)], check=False)
        shutil.rmtree(secrets_root, ignore_errors=True)


@pytest.mark.parametrize("destination", ["/./proc/tok", "//sys/tok", "/dev/shm/tok", "/tmp/tok", "//tmp/tok"])
def test_secret_destinations_normalized_into_forbidden_places_write_nothing(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, destination: str
) -> None:
    env = make_env(
        busybox_image,
        secrets=SecretExposurePolicy(
            secret_mounts=[SecretMountPolicy(secret_ref="tok", mount_ref="s", path=destination)]
        ),
    )
    with pytest.raises(PolicyDenial) as info:
        runtime.prepare_secrets(SecretPrepareRequest(environment=env))
    assert_clean(info.value, host)
    assert not runtime.paths_of(env.environment_id).secret_dir.exists()
    cleanup(runtime, env)


def test_a_mount_and_a_secret_on_one_destination_however_spelled_are_refused(
    runtime: DockerRuntime, host: HostSettings, busybox_image: str, docker_client: Any
) -> None:
    """``/d/tok/`` and ``//d/./tok`` are ``/d/tok``: a mount there would hide the secret (or the
    secret the mount); refused before any container."""
    env = make_env(
        busybox_image,
        filesystem=FilesystemIsolationPolicy(mounts=[mount("file", "/d/tok/")]),
        secrets=SecretExposurePolicy(
            secret_mounts=[SecretMountPolicy(secret_ref="tok", mount_ref="s", path="//d/./tok")]
        ),
    )
    exc = refused(runtime, env, proc_spec("true"))
    cleanup(runtime, env)
    assert isinstance(exc, InvalidRequest) and not exc.retryable, exc
    assert count_labeled(docker_client, host.id, env.environment_id)["containers"] == 0
