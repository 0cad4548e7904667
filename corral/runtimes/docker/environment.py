"""Secrets and container creation for the Docker runtime (``prepare_secrets``, ``prepare_environment``).

Both are idempotent: secret files are rewritten in place, and a container that already exists
under the session's name with the same settings digest is reused. ``prepare_environment`` re-runs
the earlier planning steps itself (mounts, network, secrets) instead of trusting refs from the
request, because refs never carry host paths and every step is cheap and repeatable.

File secrets live in ``<host.secrets_root>/<slug>/`` (root-owned, 0700), which must be on a tmpfs
(refused otherwise, unless ``host.allow_secrets_off_tmpfs``, a tests-only switch). Each file is
0400 and owned by the sandbox user, so only that user can read it inside the sandbox, through a
read-only bind of that one file. ``prepare_secrets`` does not know the process yet and writes
root-owned files; ``prepare_environment`` rewrites them for the process user: a number is used as
is, a name is resolved from the image's own /etc/passwd and /etc/group (read once per image id
with ``docker create`` + ``get_archive``, never run). When the worker is not root and cannot chown,
the file falls back to 0444 (readable by every user in the sandbox); the capability report says so.

The process user: ``prepare_environment`` resolves it in the image this host resolved, exactly as
Docker will (``corral.sandbox.userspec``), and judges the result by the host policy's ``[users]`` rules
before anything is created: uid 0, gid 0 or a supplementary gid 0 is refused whatever the spelling
(``admin`` mapped to 0, ``1000:wheel``, a member of a gid-0 group) unless ``allow_root``; a name the
image does not know is an ``InvalidRequest`` (Docker would refuse it at start).
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import docker.errors

from corral.contract.errors import Conflict, HostConfigurationNeeded, InvalidRequest
from corral.contract.models import (
    EnvironmentPrepareRequest,
    ExecutionEnvironment,
    ImageResolution,
    ImageResolveRequest,
    IsolatedProcessSpec,
    RootfsPrepareRequest,
    RootfsRef,
    SecretMaterializationPlan,
)
from corral.contract.operations import Operation
from corral.contract.refs import slug
from corral.io.spool import write_json
from corral.runtimes.docker import process as proc
from corral.runtimes.docker import resources as res
from corral.runtimes.docker.capabilities import TMPFS_TYPES, fs_type
from corral.runtimes.docker.policy import (
    DEFAULT_USER,
    ContainerPlan,
    ResolvedMount,
    check_destination,
    check_hardened,
    check_process,
    check_sandbox_user,
    config_digest,
    create_kwargs,
    env_secret_text,
    needs_user_tables,
    network_mode,
)
from corral.runtimes.docker.resources import container_name_of
from corral.sandbox.policy import HostPolicy, check_rlimits
from corral.sandbox.secrets import SecretChain
from corral.sandbox.userspec import ExecUser, UserTables, exec_user
from corral.settings import HostSettings


class Preparer(Protocol):
    """What building a container needs from the adapter (``DockerRuntime`` is one): its client,
    settings, secrets and policy, and the earlier preparation steps for a request that arrives
    without their results. A protocol, not an import: ``runtime`` imports this module, never
    the other way round."""

    host_id: str
    host: HostSettings
    policy: Callable[[], HostPolicy]

    @property
    def client(self) -> Any: ...
    @property
    def secrets(self) -> SecretChain: ...
    def labels_of(self, env: ExecutionEnvironment) -> dict[str, str]: ...
    def paths_of(self, environment_id: str) -> res.SessionPaths: ...
    def pin_mounts(self, env: ExecutionEnvironment) -> list[ResolvedMount]: ...
    def resolve_image(self, request: ImageResolveRequest) -> ImageResolution: ...
    def prepare_rootfs(self, request: RootfsPrepareRequest) -> RootfsRef: ...
    def image_volumes(self, image_id: str) -> list[str]: ...


PROBE_LABEL = "corral.probe"
PROBE_PREFIX = "corral-probe-"
MAX_USER_FILE = 1 << 20
_TABLES: dict[str, UserTables | None] = {}
_TABLES_LOCK = threading.Lock()


class _Unreadable(Exception):
    """The file exists but is not a plain file corral can read the way Docker would (a symlink, a
    directory, too large): nothing that depends on it can be judged."""


def _read_archive_file(container: Any, path: str) -> bytes:
    """One regular file of a (never started) container; empty when absent (Docker then finds no
    entry either); ``_Unreadable`` when it is there but not a plain file of a sane size."""
    try:
        chunks, info = container.get_archive(path)
    except docker.errors.NotFound:
        return b""
    if int(info.get("size") or 0) > MAX_USER_FILE:  # an image's file could be gigabytes: never pull it in
        raise _Unreadable(path)
    blob = bytearray()
    for chunk in chunks:
        blob += chunk
        if len(blob) > MAX_USER_FILE + (64 << 10):  # the file plus tar headers and padding
            raise _Unreadable(path)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for member in tar.getmembers():
            if member.isfile() and member.size <= MAX_USER_FILE:
                handle = tar.extractfile(member)
                if handle is not None:
                    return handle.read()
            break
    raise _Unreadable(path)


def _remove_stale_probes(client: Any, older_than_s: float = 300.0) -> None:
    """Probe containers left by a worker that died between create and remove (best effort). The
    label alone is not proof: a container inherits its image's labels, so an image labelled
    ``corral.probe`` would have its running sandboxes swept. Only the name corral gave is."""
    now = time.time()
    # The engine's listing, not docker-py's (which inspects each: a probe removed meanwhile was a 404).
    for container in client.api.containers(all=True, filters={"label": PROBE_LABEL}):
        if not container_name_of(container).startswith(PROBE_PREFIX):
            continue
        created = container.get("Created")
        if isinstance(created, int | float) and now - created > older_than_s:
            with contextlib.suppress(docker.errors.APIError):
                client.api.remove_container(container["Id"], force=True, v=True)


def image_user_tables(client: Any, image_id: str) -> UserTables | None:
    """The image's passwd/group tables, read once per image id (an id names immutable content) from
    a container that is created and removed, never started. A missing file is an empty table (as for
    Docker); None when either is not a plain file (then only numeric ``UID:GID`` users resolve)."""
    with _TABLES_LOCK:
        if image_id in _TABLES:
            return _TABLES[image_id]
    _remove_stale_probes(client)
    container = client.containers.create(
        image_id,
        command=["/corral-probe-never-runs"],
        name=f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}",
        labels={PROBE_LABEL: "passwd"},
        network_mode="none",
        log_config={"type": "none"},
    )
    tables: UserTables | None = None
    try:
        passwd, group = _read_archive_file(container, "/etc/passwd"), _read_archive_file(container, "/etc/group")
        # surrogateescape: names compare byte for byte, as runc compares them
        tables = UserTables.parse(passwd.decode("utf-8", "surrogateescape"), group.decode("utf-8", "surrogateescape"))
    except _Unreadable:
        pass
    finally:
        container.remove(force=True, v=True)
    with _TABLES_LOCK:
        if len(_TABLES) >= 256:
            _TABLES.clear()
        _TABLES[image_id] = tables
    return tables


def write_secret_file(directory: Path, name: str, data: bytes, owner: tuple[int, int] | None) -> None:
    """Replace ``directory/name`` atomically by a 0400 file owned by ``owner`` (a reader sees the old
    file or the new one). Without an owner (or when it cannot be given), 0444 owned by the worker."""
    path = directory / name
    tmp = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
    tmp.unlink(missing_ok=True)  # a leftover of a crash (secret names never start with a dot)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if owner is None:
                os.fchmod(handle.fileno(), 0o444)
            elif owner != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(handle.fileno(), *owner)
                except PermissionError:  # a non-root worker cannot give files away
                    if owner[0] != os.geteuid():
                        os.fchmod(handle.fileno(), 0o444)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_secrets_root(secrets_root: str, allow_off_tmpfs: bool) -> None:
    """File secrets are only written to a tmpfs: on a disk they would outlive the session."""
    kind = fs_type(secrets_root)
    if kind not in TMPFS_TYPES and not allow_off_tmpfs:
        raise HostConfigurationNeeded(
            "secrets_root is not on a tmpfs; file secrets are refused on this host",
            context={"filesystem": kind or "unknown"},
        )


def _secret_names(env: ExecutionEnvironment) -> list[str]:
    policy = env.spec.secrets
    return sorted({m.secret_ref for m in policy.secret_mounts} | {e.secret_ref for e in policy.env_secrets})


class EnvironmentBuilder:
    """One use per request; holds the runtime for its client, host settings and secret provider."""

    def __init__(self, runtime: Preparer) -> None:
        self.rt = runtime

    def materialize_secrets(
        self, env: ExecutionEnvironment, owner: tuple[int, int] | None = (0, 0)
    ) -> SecretMaterializationPlan:
        """Write secret mounts as 0400 files owned by ``owner`` in the session's tmpfs dir; check env
        secrets exist. Every value is resolved before anything is written, so an unknown secret
        leaves nothing behind. Only names go to the spool (``secrets.json``, for redaction)."""
        policy = env.spec.secrets
        paths = self.rt.paths_of(env.environment_id)
        labels = self.rt.labels_of(env)
        for mount in policy.secret_mounts:
            check_destination(mount.container_path)
        if policy.secret_mounts:
            check_secrets_root(self.rt.host.secrets_root, self.rt.host.allow_secrets_off_tmpfs)
        for item in policy.env_secrets:
            self.rt.secrets.resolve(item.secret_ref)
        files = {m.secret_ref: self.rt.secrets.resolve(m.secret_ref) for m in policy.secret_mounts}
        res.ensure_labeled_dir(paths.spool.root, labels)
        write_json(paths.spool.secrets, _secret_names(env))
        if files:
            res.ensure_labeled_dir(paths.secret_dir, labels)
            check_secrets_root(str(paths.secret_dir), self.rt.host.allow_secrets_off_tmpfs)  # not a link away
        for name, value in files.items():
            write_secret_file(paths.secret_dir, name, value, owner)
        return SecretMaterializationPlan(
            secret_mount_refs=[m.mount_ref for m in policy.secret_mounts],
            env_secret_keys=[e.env_key for e in policy.env_secrets],
            teardown_required=policy.teardown_required,
        )

    def create(self, request: EnvironmentPrepareRequest) -> None:
        env, process = request.environment, request.process
        if process is None:
            raise InvalidRequest("prepare_environment needs the process the container is created for")
        check_process(process)
        check_rlimits(self.rt.policy(), process.posix_rlimits)  # also the coordinator's; the adapter is the last gate
        plan = self._plan(request, process)
        secret_keys = sorted(plan.secret_env)
        kwargs = create_kwargs(plan)
        check_hardened(kwargs)
        kwargs["labels"][res.LABEL_CONFIG] = config_digest(kwargs, secret_keys)
        self._write_process_files(env, process)
        values = [v.encode() for v in plan.secret_env.values()]
        with proc.docker_errors(Operation.prepare_environment, values):
            # Create first, look only on a name conflict (a replay, or a stale container): the common
            # case is one engine call, not an inspect before it.
            for attempt in (1, 2):
                try:
                    self.rt.client.containers.create(**kwargs)
                    return
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise
                    if self._reusable(env, kwargs["labels"][res.LABEL_CONFIG]):
                        return
                    if attempt == 2:  # replaced once and taken again meanwhile: not ours to fight over
                        raise

    def _plan(self, request: EnvironmentPrepareRequest, process: IsolatedProcessSpec) -> ContainerPlan:
        env = request.environment
        spec = env.spec
        if request.image is not None:
            image = request.image.digest
        elif spec.image is not None:
            image = self.rt.resolve_image(ImageResolveRequest(image=spec.image, environment=env)).digest
        else:
            raise InvalidRequest("the environment names no image", context={"environment_id": env.environment_id})
        who = self._identity(image, process)  # before anything is created: a denied user leaves nothing
        mounts = self.rt.pin_mounts(env)
        network = network_mode(spec.network)
        self.materialize_secrets(env, (who.uid, who.gid) if spec.secrets.secret_mounts else None)
        secret_dir = self.rt.paths_of(env.environment_id).secret_dir
        binds = [(str(secret_dir / m.secret_ref), m.container_path) for m in spec.secrets.secret_mounts]
        destinations = [m.destination for m in mounts] + [dst for _src, dst in binds]
        if len(set(destinations)) != len(destinations):
            raise InvalidRequest("two mounts or secrets share a destination")
        secret_env = {
            e.env_key: env_secret_text(e.env_key, self.rt.secrets.resolve(e.secret_ref))
            for e in spec.secrets.env_secrets
        }
        clash = sorted({v.name for v in process.env} & set(secret_env))
        if clash:
            raise InvalidRequest("an env name is both a plain variable and a secret", context={"env": ",".join(clash)})
        return ContainerPlan(
            name=res.container_name(slug(env.environment_id)),
            image=image,
            labels=self.rt.labels_of(env),
            process=process,
            resources=spec.resources,
            scratch_mb=spec.filesystem.scratch,
            read_only=spec.root_read_only,
            network=network,
            mounts=mounts,
            secret_binds=binds,
            secret_env=secret_env,
            image_volumes=self.rt.image_volumes(image),
        )

    def _identity(self, image_id: str, process: IsolatedProcessSpec) -> ExecUser:
        """Who the process will run as in this image (the id ``resolve_image`` resolved on this host),
        resolved like Docker does, and judged by the host policy's ``[users]`` rules: uid 0, gid 0 or
        a supplementary gid 0 is denied unless ``allow_root``, whatever the spelling. A user Docker
        would refuse (unknown name) is an ``InvalidRequest``. It also owns the secret files."""
        user = process.user or DEFAULT_USER
        tables = None
        if needs_user_tables(user):
            with proc.docker_errors(Operation.prepare_environment):
                tables = image_user_tables(self.rt.client, image_id)
        who = exec_user(user, tables)
        if process.user is not None:  # the default user is the host's choice, not the caller's
            check_sandbox_user(self.rt.policy().users, user, who)
        return who

    def _write_process_files(self, env: ExecutionEnvironment, process: IsolatedProcessSpec) -> None:
        layout = self.rt.paths_of(env.environment_id).spool
        write_json(layout.io_policy, env.spec.io_policy.model_dump(mode="json"))
        write_json(
            layout.process,
            {
                "stdin": "open" if process.stdin_open else "closed",
                "timeout_ms": min(process.timeout_ms, env.spec.resources.timeout_ms),
                "grace_ms": process.grace_ms,
                # collect_stats counts a writable root's layer through the engine; a read-only one needs no engine
                "read_only_root": env.spec.root_read_only,
            },
        )

    def _reusable(self, env: ExecutionEnvironment, digest: str) -> bool:
        """True when the session's container exists with the same settings. A stale one that was
        never started is replaced; a started one with other settings is a conflict."""
        name = res.container_name(slug(env.environment_id))
        try:
            existing: Any = self.rt.client.containers.get(name)
        except docker.errors.NotFound:
            return False
        if not res.owns(existing.labels, self.rt.host_id, env.environment_id):
            raise Conflict("a container with this session's name belongs to another host or session")
        if (existing.labels or {}).get(res.LABEL_CONFIG) == digest:
            return True
        if existing.status != "created":
            raise Conflict("the session's container was already started with other settings")
        existing.remove(force=True, v=True)
        return False
