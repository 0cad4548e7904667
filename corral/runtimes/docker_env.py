"""Secrets and container creation for the Docker runtime (``prepare_secrets``, ``prepare_environment``).

Both are idempotent: secret files are rewritten in place, and a container that already exists
under the session's name with the same settings digest is reused. ``prepare_environment`` re-runs
the earlier planning steps itself (mounts, network, secrets) instead of trusting refs from the
request, because refs never carry host paths and every step is cheap and repeatable.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import docker.errors

from corral.errors import Conflict, InvalidRequest
from corral.models import (
    EnvironmentPrepareRequest,
    ExecutionEnvironment,
    ImageResolveRequest,
    IsolatedProcessSpec,
    RootfsPrepareRequest,
    SecretMaterializationPlan,
    SecretMountRef,
)
from corral.refs import slug
from corral.runtimes import docker_process as proc
from corral.runtimes import docker_resources as res
from corral.runtimes.docker_policy import (
    ContainerPlan,
    check_destination,
    check_process,
    config_digest,
    create_kwargs,
    env_secret_text,
    network_internal,
    resolve_mounts,
)
from corral.runtimes.spool import atomic_write, write_json

if TYPE_CHECKING:
    from corral.runtimes.docker import DockerRuntime


def _secret_names(env: ExecutionEnvironment) -> list[str]:
    policy = env.spec.secrets
    return sorted({m.secret_ref for m in policy.secret_mounts} | {e.secret_ref for e in policy.env_secrets})


class EnvironmentBuilder:
    """One use per request; holds the runtime for its client, host settings and secret provider."""

    def __init__(self, runtime: DockerRuntime) -> None:
        self.rt = runtime

    def materialize_secrets(self, env: ExecutionEnvironment) -> SecretMaterializationPlan:
        """Write secret mounts as 0400 files in the session's tmpfs dir; check env secrets exist.
        Only names go to the spool (``secrets.json``, for redaction); values go nowhere else."""
        policy = env.spec.secrets
        paths = self.rt.paths_of(env.environment_id)
        labels = self.rt.labels_of(env)
        res.ensure_labeled_dir(paths.spool.root, labels)
        write_json(paths.spool.secrets, _secret_names(env))
        for item in policy.env_secrets:
            self.rt.secrets.resolve(item.secret_ref)
        if policy.secret_mounts:
            res.ensure_labeled_dir(paths.secret_dir, labels)
        for mount in policy.secret_mounts:
            check_destination(mount.destination)
            atomic_write(paths.secret_dir / mount.secret_ref, self.rt.secrets.resolve(mount.secret_ref), mode=0o400)
        return SecretMaterializationPlan(
            secret_mount_refs=[
                SecretMountRef(secret_ref=m.secret_ref, mount_ref=m.mount_ref, destination=m.destination)
                for m in policy.secret_mounts
            ],
            env_secret_keys=[e.env_key for e in policy.env_secrets],
            teardown_required=policy.teardown_required,
        )

    def create(self, request: EnvironmentPrepareRequest) -> None:
        env, process = request.environment, request.process
        check_process(process)
        plan = self._plan(request)
        secret_keys = sorted(plan.secret_env)
        kwargs = create_kwargs(plan)
        kwargs["labels"][res.LABEL_CONFIG] = config_digest(kwargs, secret_keys)
        self._write_process_files(env, process)
        values = [v.encode() for v in plan.secret_env.values()]
        with proc.docker_errors("prepare_environment", values):
            if self._reusable(env, kwargs["labels"][res.LABEL_CONFIG]):
                return
            try:
                self.rt.client.containers.create(**kwargs)
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or not self._reusable(env, kwargs["labels"][res.LABEL_CONFIG]):
                    raise

    def _plan(self, request: EnvironmentPrepareRequest) -> ContainerPlan:
        env, process = request.environment, request.process
        spec = env.spec
        image = (
            request.image.digest
            if request.image
            else self.rt.resolve_image(ImageResolveRequest(environment=env)).digest
        )
        rootfs = request.rootfs or self.rt.prepare_rootfs(RootfsPrepareRequest(environment=env))
        mounts = resolve_mounts(spec.filesystem, self.rt.host)
        network = self.rt.ensure_network(env) if network_internal(spec.network) else "none"
        self.materialize_secrets(env)
        secret_dir = self.rt.paths_of(env.environment_id).secret_dir
        binds = [(str(secret_dir / m.secret_ref), m.destination) for m in spec.secrets.secret_mounts]
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
        self._share_secret_files(binds, process)
        return ContainerPlan(
            name=res.container_name(slug(env.environment_id)),
            image=image,
            labels=self.rt.labels_of(env),
            process=process,
            resources=spec.resources,
            scratch_mb=rootfs.scratch_mb,
            read_only=rootfs.read_only,
            network=network,
            mounts=mounts,
            secret_binds=binds,
            secret_env=secret_env,
        )

    @staticmethod
    def _share_secret_files(binds: list[tuple[str, str]], process: IsolatedProcessSpec) -> None:
        """Secret files are root-owned 0400; a non-root process user must still read its own
        secrets: a numeric uid gets ownership, a user *name* (unknown on the host) gets 0444."""
        user = (process.user or "").split(":")[0]
        if user in ("", "root", "0"):
            return
        for src, _dst in binds:
            if user.isdigit():
                os.chown(src, int(user), -1)
            else:
                os.chmod(src, 0o444)

    def _write_process_files(self, env: ExecutionEnvironment, process: IsolatedProcessSpec) -> None:
        layout = self.rt.paths_of(env.environment_id).spool
        write_json(layout.io_policy, env.spec.io_policy.model_dump(mode="json"))
        write_json(
            layout.process,
            {
                "stdin": process.stdin.value,
                "timeout_ms": process.timeout_ms or env.spec.resources.timeout_ms,
                "grace_ms": env.spec.lifecycle.grace_ms,
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
        existing.remove(force=True)
        return False
