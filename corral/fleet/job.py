"""A job as a scheduler states it, and its translation into contract requests.

``JobSpec`` is the friendly shape (image, argv, limits, ``--env``, ``--mount``, ``--secret``);
``JobSpec.launch`` is the one message that starts it on a host (``LaunchRequest``), and
``chain_requests`` builds from it the exact contract requests of the prepare-to-start chain, the same
on the client and on the host. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from pydantic import BaseModel, ValidationError

from corral.contract.errors import InvalidRequest
from corral.contract.models import (
    DetachPolicy,
    EnvironmentPrepareRequest,
    EnvironmentSpec,
    ExecutionEnvironment,
    FilesystemIsolationPolicy,
    ImageRequest,
    ImageResolveRequest,
    IsolatedProcessSpec,
    IsolationRequirement,
    IsolationTrustRequirement,
    MountPolicy,
    MountResolveRequest,
    NetworkIsolationPolicy,
    NetworkKind,
    NetworkPrepareRequest,
    ProcessIoCapturePolicy,
    ProcessIoPolicy,
    ProcessOwnershipPolicy,
    ProcessStartRequest,
    RedactedEnvVar,
    ResourceLimits,
    RootfsPrepareRequest,
    RootfsRequest,
    SecretEnvPolicy,
    SecretExposurePolicy,
    SecretMountPolicy,
    SecretPrepareRequest,
    SessionPrepareRequest,
)
from corral.contract.operations import CHAIN, Operation
from corral.contract.refs import check_image_ref, new_ref
from corral.contract.vocabulary import (
    AuditabilityRequirement,
    CleanupGuaranteeRequirement,
    MountMode,
    ProcessContentCaptureMode,
    RootFilesystemMode,
    SecretIsolationRequirement,
)
from corral.contract.wire import Model

T = TypeVar("T")


@dataclass(frozen=True)
class JobSpec:
    image: str
    argv: list[str]
    cpus: float = 1.0
    memory_mb: int = 512
    process_count: int = 64
    timeout_ms: int = 600_000
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[str] = field(default_factory=list)
    """``ALIAS:DEST[:rw]`` strings."""
    network: str = "disabled"
    secrets: list[str] = field(default_factory=list)
    """Secret names, each mounted read-only at ``/run/secrets/<name>``."""
    env_secrets: dict[str, str] = field(default_factory=dict)
    """Env variable -> secret name (weaker than files: visible to host admins via ``docker inspect``)."""
    user: str | None = None
    """``USER[:GROUP]`` inside the sandbox; None leaves it to the runtime's non-root default
    (``65534:65534`` on Docker). ``root`` runs as root, still without any capability."""
    workdir: str = "/"
    stdin: bool = False
    allow_detach: bool = False
    writable_root: bool = False
    environment_id: str = field(default_factory=lambda: new_ref("job"))

    def environment(self) -> ExecutionEnvironment:
        check = _build(lambda: check_image_ref(self.image))
        env = self._environment(check)
        problems = env.spec.resources.problems()
        if problems:
            raise InvalidRequest("invalid job: " + "; ".join(problems))
        return env

    def _environment(self, check: str) -> ExecutionEnvironment:
        return _build(
            lambda: ExecutionEnvironment(
                environment_id=self.environment_id,
                spec=EnvironmentSpec(
                    environment_id=self.environment_id,
                    requirement=IsolationRequirement(trust=JOB_TRUST),
                    image=ImageRequest(image_ref=check),
                    resources=ResourceLimits.with_cpus(
                        self.cpus,
                        memory_mb=self.memory_mb,
                        timeout_ms=self.timeout_ms,
                        process_count=self.process_count,
                    ),
                    filesystem=FilesystemIsolationPolicy(
                        root="writable_layer" if self.writable_root else "read_only",
                        mounts=[parse_mount(m, i) for i, m in enumerate(self.mounts)],
                    ),
                    network=NetworkIsolationPolicy(kind=NetworkKind(self.network)),
                    secrets=SecretExposurePolicy(
                        ambient="explicit_refs_only" if self.secrets or self.env_secrets else "denied",
                        secret_mounts=[
                            SecretMountPolicy(secret_ref=name, mount_ref=f"secret-{name}") for name in self.secrets
                        ],
                        env_secrets=[
                            SecretEnvPolicy(secret_ref=name, env_key=key) for key, name in self.env_secrets.items()
                        ],
                    ),
                    ownership=ProcessOwnershipPolicy(detach_policy=DetachPolicy(allowed=self.allow_detach)),
                    io_policy=ProcessIoPolicy(stdout=_raw(), stderr=_raw()),
                ),
            )
        )

    def process(self) -> IsolatedProcessSpec:
        return _build(
            lambda: IsolatedProcessSpec(
                process_id=f"{self.environment_id}-main",
                argv=self.argv,
                cwd=self.workdir,
                env=[RedactedEnvVar(name=k, redacted_value=v) for k, v in self.env.items()],
                user=self.user,
                timeout_ms=self.timeout_ms,
                rlimits=ResourceLimits.with_cpus(
                    self.cpus, memory_mb=self.memory_mb, timeout_ms=self.timeout_ms, process_count=self.process_count
                ),
                stdin_open=self.stdin,
            )
        )

    def launch(self, host: str) -> LaunchRequest:
        """The ``corral.launch`` message that prepares and starts this job on ``host``."""
        return LaunchRequest(environment=self.environment(), process=self.process(), host_ref=host)

    def requests(self, host: str) -> list[tuple[Operation, BaseModel]]:
        """The prepare-to-start chain, in contract order (``CHAIN``)."""
        return self.launch(host).requests()


class LaunchRequest(Model):
    """``corral.launch``: one environment and its process, prepared and started on ``host_ref`` by
    the host running the chain's eight steps in order (``corral.host.launch``). The message carries
    the environment once; each step's request is derived from it (``requests``) exactly as a client
    sending the steps one by one would build it, so each keeps its idempotency key and digest."""

    environment: ExecutionEnvironment
    process: IsolatedProcessSpec
    host_ref: str

    def steps(self) -> ChainRequests:
        return chain_requests(self.environment, self.process, self.host_ref)

    def requests(self) -> list[tuple[Operation, BaseModel]]:
        return self.steps().in_order()


class ChainRequests(NamedTuple):
    """The prepare-to-start chain's requests, one field per step, named by its ``Operation``."""

    prepare_session: SessionPrepareRequest
    resolve_image: ImageResolveRequest
    prepare_rootfs: RootfsPrepareRequest
    resolve_mounts: MountResolveRequest
    configure_network: NetworkPrepareRequest
    prepare_secrets: SecretPrepareRequest
    prepare_environment: EnvironmentPrepareRequest
    start_process: ProcessStartRequest

    def in_order(self) -> list[tuple[Operation, BaseModel]]:
        """(operation, request) in contract order (``CHAIN``)."""
        return [(op, getattr(self, op.value)) for op in CHAIN]


def chain_requests(env: ExecutionEnvironment, proc: IsolatedProcessSpec, host: str) -> ChainRequests:
    """The prepare-to-start chain's requests for ``env`` and ``proc`` on ``host``."""
    return ChainRequests(
        prepare_session=SessionPrepareRequest(environment=env, host_ref=host),
        resolve_image=ImageResolveRequest(image=image_of(env), environment=env),
        prepare_rootfs=RootfsPrepareRequest(rootfs=rootfs_of(env), environment=env),
        resolve_mounts=MountResolveRequest(environment=env),
        configure_network=NetworkPrepareRequest(environment=env),
        prepare_secrets=SecretPrepareRequest(environment=env),
        prepare_environment=EnvironmentPrepareRequest(environment=env, process=proc),
        start_process=ProcessStartRequest(environment=env, process=proc, effect_intent=proc.effect_intent(env)),
    )


JOB_TRUST = IsolationTrustRequirement(
    auditability=AuditabilityRequirement.best_effort,
    cleanup=CleanupGuaranteeRequirement.required,
    secret_isolation=SecretIsolationRequirement.best_effort,
)
"""What a job asks of a host's trust: audit records, guaranteed cleanup and isolated secrets."""


def image_of(env: ExecutionEnvironment) -> ImageRequest:
    """The image request of an environment (corral's environments always name one)."""
    if env.spec.image is None:
        raise InvalidRequest("the environment names no image", context={"environment_id": env.environment_id})
    return env.spec.image


def rootfs_of(env: ExecutionEnvironment) -> RootfsRequest:
    """The root filesystem a job asks for: the image's, read-only unless the spec says writable."""
    if env.spec.rootfs is not None:
        return env.spec.rootfs
    read_only = env.spec.filesystem.root is RootFilesystemMode.read_only
    return RootfsRequest(rootfs_ref=f"rootfs.{image_of(env).image_ref}"[:512], read_only=read_only)


def _raw() -> ProcessIoCapturePolicy:
    return ProcessIoCapturePolicy(default_capture=ProcessContentCaptureMode.raw_content_if_policy_allows)


def parse_mount(text: str, index: int) -> MountPolicy:
    parts = text.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise InvalidRequest(f"mount {text!r} is not ALIAS:DEST[:ro|rw]", context={"mount": text[:100]})
    mode = MountMode.writable if len(parts) == 3 and parts[2] == "rw" else MountMode.read_only
    return MountPolicy(mount_ref=f"mount-{index}", source_alias=parts[0], destination_path=parts[1], mode=mode)


def _build(make: Callable[[], T]) -> T:
    """Run a model constructor, turning validation errors into one readable ``InvalidRequest``."""
    try:
        return make()
    except ValidationError as exc:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
        raise InvalidRequest("invalid job: " + "; ".join(problems), context={"model": exc.title}) from None
    except ValueError as exc:
        raise InvalidRequest(f"invalid job: {exc}") from None
