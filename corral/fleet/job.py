"""A job as a scheduler states it, and its translation into contract requests.

``JobSpec`` is the friendly shape (image, argv, limits, ``--env``, ``--mount``, ``--secret``);
``JobSpec.requests`` builds the exact contract requests of the prepare-to-start chain. Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from corral.contract.errors import InvalidRequest
from corral.contract.models import (
    CaptureMode,
    DetachPolicy,
    EnvironmentPrepareRequest,
    EnvironmentSpec,
    EnvSecret,
    ExecutionEnvironment,
    FilesystemPolicy,
    ImageRequest,
    ImageResolveRequest,
    IoPolicy,
    IsolatedProcessSpec,
    MountMode,
    MountPolicy,
    MountResolveRequest,
    NetworkMode,
    NetworkPolicy,
    NetworkPrepareRequest,
    OwnershipPolicy,
    ProcessStartRequest,
    RedactedEnvVar,
    ResourceLimits,
    RootfsPrepareRequest,
    SecretMount,
    SecretPolicy,
    SecretPrepareRequest,
    SessionPrepareRequest,
    StdinMode,
    StreamIoPolicy,
)
from corral.contract.operations import CHAIN, Operation
from corral.contract.refs import new_ref

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
        return _build(
            lambda: ExecutionEnvironment(
                environment_id=self.environment_id,
                spec=EnvironmentSpec(
                    image=ImageRequest(image_ref=self.image),
                    resources=ResourceLimits(
                        cpus=self.cpus,
                        memory_mb=self.memory_mb,
                        timeout_ms=self.timeout_ms,
                        process_count=self.process_count,
                    ),
                    filesystem=FilesystemPolicy(
                        root="writable_layer" if self.writable_root else "read_only",
                        mounts=[parse_mount(m, i) for i, m in enumerate(self.mounts)],
                    ),
                    network=NetworkPolicy(mode=NetworkMode(self.network)),
                    secrets=SecretPolicy(
                        ambient="explicit_refs_only" if self.secrets or self.env_secrets else "denied",
                        secret_mounts=[
                            SecretMount(secret_ref=name, mount_ref=f"secret-{name}", destination=f"/run/secrets/{name}")
                            for name in self.secrets
                        ],
                        env_secrets=[EnvSecret(secret_ref=name, env_key=key) for key, name in self.env_secrets.items()],
                    ),
                    ownership=OwnershipPolicy(detach_policy=DetachPolicy(allowed=self.allow_detach)),
                    io_policy=IoPolicy(stdout=_raw(), stderr=_raw()),
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
                stdin=StdinMode.open if self.stdin else StdinMode.closed,
            )
        )

    def requests(self, host: str) -> list[tuple[Operation, BaseModel]]:
        """The prepare-to-start chain, in contract order (``CHAIN``)."""
        env = self.environment()
        proc = self.process()
        requests: dict[Operation, BaseModel] = {
            Operation.prepare_session: SessionPrepareRequest(environment=env, host_ref=host),
            Operation.resolve_image: ImageResolveRequest(environment=env),
            Operation.prepare_rootfs: RootfsPrepareRequest(environment=env),
            Operation.resolve_mounts: MountResolveRequest(environment=env),
            Operation.configure_network: NetworkPrepareRequest(environment=env),
            Operation.prepare_secrets: SecretPrepareRequest(environment=env),
            Operation.prepare_environment: EnvironmentPrepareRequest(environment=env, process=proc),
            Operation.start_process: ProcessStartRequest(environment=env, process=proc),
        }
        return [(op, requests[op]) for op in CHAIN]


def _raw() -> StreamIoPolicy:
    return StreamIoPolicy(default_capture=CaptureMode.raw_content_if_policy_allows)


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
