"""The Docker adapter of the isolation contract (``corral.contract.runtime.IsolationRuntime``).

Stateless on purpose: each resource of a session is found from deterministic names (from
``refs.slug(environment_id)``) and labels, so any worker process of the host, or a restarted one,
continues where another stopped, and repeating any operation after a crash creates nothing twice.
Output goes through a detached per-sandbox I/O shim into a host spool (see ``shim`` and ``spool``),
never through Docker's logs. Pure policy lives in ``docker_policy``, names/labels/removal in
``docker_resources``, the process half in ``docker_process``.
"""

from __future__ import annotations

import fcntl
import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors

from corral.contract.errors import AgentError, InvalidRequest, NotFound, PolicyDenial
from corral.contract.models import (
    CleanupRequest,
    CleanupResult,
    DetachTransferRequest,
    DetachTransferResult,
    EnvironmentPrepareRequest,
    ExecutionEnvironment,
    ImageResolution,
    ImageResolveRequest,
    IsolationCapabilityReport,
    IsolationRuntimeRef,
    IsolationSessionRef,
    MountPlan,
    MountResolveRequest,
    NetworkNamespaceRef,
    NetworkPrepareRequest,
    PreparedEnvironmentRef,
    ProcessIoFrame,
    ProcessIoRequest,
    ProcessSignalRequest,
    ProcessSignalResult,
    ProcessStartRequest,
    ProcessStartResult,
    ProcessState,
    ProcessStatsRequest,
    ProcessStatsSnapshot,
    ProcessStatus,
    ReclaimRequest,
    ReclaimResult,
    RootfsPrepareRequest,
    RootfsRef,
    SecretMaterializationPlan,
    SecretPrepareRequest,
    SessionPrepareRequest,
)
from corral.contract.operations import Operation
from corral.contract.refs import check_image_ref, process_ref_for, slug, slug_of_process_ref
from corral.contract.vocabulary import CleanupStatus
from corral.io.spool import SpoolLayout, read_json, write_json
from corral.runtimes.docker import capabilities as caps
from corral.runtimes.docker import mounts as pins
from corral.runtimes.docker import process as proc
from corral.runtimes.docker import resources as res
from corral.runtimes.docker import usage
from corral.runtimes.docker.environment import EnvironmentBuilder
from corral.runtimes.docker.policy import (
    DOCKER_ROOT,
    ResolvedMount,
    forbidden_sources,
    network_mode,
    resolve_mounts,
)
from corral.sandbox.policy import HostPolicy
from corral.sandbox.secrets import SecretChain, SessionSecrets
from corral.settings import HostSettings

MAX_HELD_READS = 4
"""Reads held open for output at once in one process (``ProcessIoRequest.wait_ms``): half of the
reads lane's default 8 threads, so stats and frames always find a thread; a read that finds no
slot answers at once (the client then paces itself)."""
MAX_KNOWN_IMAGES = 256
"""Image ids whose ``VOLUME`` paths a process keeps (the oldest goes first)."""


class DockerRuntime:
    """``IsolationRuntime`` on the local Docker engine (structurally; it does not inherit it)."""

    adapter_kind = "docker"

    def __init__(
        self,
        host_id: str,
        host: HostSettings,
        client: Any | None = None,
        *,
        clock: Callable[[], float] = time.time,
        policy: Callable[[], HostPolicy] = HostPolicy,
    ) -> None:
        self.host_id = host_id
        self.policy = policy
        """The host policy in force (``PolicySource.current`` on a worker; the documented defaults
        otherwise): ``prepare_environment`` judges the user it resolves in the image by its ``[users]``."""
        self.host = host
        self._client = client
        self._clock = clock
        self._secrets: SecretChain | None = None
        self._session_secrets = SessionSecrets()
        """Secret values per live session, for redacting its frames (memory only; dropped at cleanup)."""
        self._docker_root: str | None = None
        self._engine_info = caps.EngineInfo(lambda: self.client)
        self._held_reads: threading.BoundedSemaphore | None = threading.BoundedSemaphore(MAX_HELD_READS)
        self._shim_template = proc.ShimTemplate(host.state_dir)
        self._volumes: dict[str, list[str]] = {}
        """The ``VOLUME`` paths of each image id this process has inspected (an id names its content,
        so they never change): ``prepare_environment`` covers them without asking the engine again."""

    @property
    def secrets(self) -> SecretChain:
        """The host's secret providers (``host.secret_providers``), imported on first use: only a
        worker that runs sandboxes ever loads a plug-in. A plug-in that cannot be loaded is
        ``HostConfigurationNeeded`` (and a degraded capability report)."""
        if self._secrets is None:
            self._secrets = SecretChain.from_settings(self.host)
        return self._secrets

    @property
    def client(self) -> Any:
        """The docker client, built on first use (no import-time or constructor side effect)."""
        if self._client is None:
            with proc.docker_errors("connect"):
                self._client = docker.from_env(timeout=60)
            if self._client.api.base_url.startswith("http+docker://"):
                # A unix socket takes no proxy and no .netrc; without this, requests walks the whole
                # process environment for proxy settings on every Docker call (~0.5 ms each, ~15 a launch).
                self._client.api.trust_env = False
        return self._client

    # ------------------------------------------------------------------ helpers

    def labels_of(self, env: ExecutionEnvironment) -> dict[str, str]:
        return res.labels_for(self.host_id, env.environment_id, env.spec.ownership.owner_run_id)

    def paths_of(self, environment_id: str) -> res.SessionPaths:
        return res.session_paths(self.host, slug(environment_id))

    def _layout_of(self, process_ref: str) -> tuple[str, SpoolLayout]:
        try:
            s = slug_of_process_ref(process_ref)
        except ValueError:
            raise NotFound("unknown process", context={"process_ref": process_ref[:64]}) from None
        return s, res.session_paths(self.host, s).spool

    def _container(self, s: str, process_ref: str) -> Any:
        """The session's container, checked to be ours; NotFound when absent."""
        with proc.docker_errors("inspect"):
            try:
                container = self.client.containers.get(res.container_name(s))
            except docker.errors.NotFound:
                raise NotFound("unknown process", context={"process_ref": process_ref}) from None
        if (container.labels or {}).get(res.LABEL_HOST) != self.host_id:
            raise NotFound("unknown process on this host", context={"process_ref": process_ref})
        return container

    def _secret_values(self, layout: SpoolLayout) -> tuple[list[bytes], list[str]]:
        """The session's secret values, for redaction: asked of the providers once per session and kept
        in this process (``SessionSecrets``), not once per output frame. The list of names is stamped
        by its file's identity, so a list written anew is resolved anew."""
        try:
            st = layout.secrets.stat()
        except (FileNotFoundError, NotADirectoryError):  # no provider is asked (or loaded) without secrets
            return [], []

        def resolve() -> tuple[list[bytes], list[str]]:
            names = read_json(layout.secrets)
            if names is None:  # there, but not readable as a list: fail closed (no raw content)
                return [], ["(secret names unreadable)"]
            if not names:
                return [], []
            return self.secrets.resolve_many([str(n) for n in names])

        return self._session_secrets.values(str(layout.root), (st.st_ino, st.st_mtime_ns, st.st_size), resolve)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def forbidden_sources(self) -> list[tuple[str, str]]:
        """What no mount may expose; the engine's data root is asked once (``docker info``)."""
        if self._docker_root is None:
            try:
                self._docker_root = str(self.client.info().get("DockerRootDir") or DOCKER_ROOT)
            except Exception:  # the engine is unreachable: the default root is refused anyway
                return forbidden_sources(self.host)
        return forbidden_sources(self.host, self._docker_root)

    def pin_mounts(self, env: ExecutionEnvironment) -> list[ResolvedMount]:
        """The environment's mounts, each source opened, checked and pinned (``docker_mounts``);
        Docker is given the pinned paths only."""
        planned = resolve_mounts(env.spec.filesystem, self.host)
        if not planned:
            return []
        forbidden = self.forbidden_sources()
        s = slug(env.environment_id)
        return pins.pin_all(self.host, s, self.labels_of(env), planned, forbidden)

    # ------------------------------------------------------------------ 1-2 reports

    @proc.contract_errors
    def runtime_ref(self) -> IsolationRuntimeRef:
        return f"docker@{self.host_id}"

    @proc.contract_errors
    def capability_report(self) -> IsolationCapabilityReport:
        problem = None
        try:
            self.secrets.describe()
        except AgentError as exc:
            problem = f"secret providers: {exc.message} ({exc.context.get('provider', '?')})"
        return caps.report(self.runtime_ref(), self.host_id, self.host, self._engine_info, providers_problem=problem)

    # ------------------------------------------------------------------ 3-9 preparation

    @proc.contract_errors
    def prepare_session(self, request: SessionPrepareRequest) -> IsolationSessionRef:
        env = request.environment
        res.ensure_labeled_dir(self.paths_of(env.environment_id).spool.root, self.labels_of(env))
        return f"sess-{slug(env.environment_id)}"

    @proc.contract_errors
    def resolve_image(self, request: ImageResolveRequest) -> ImageResolution:
        image = request.image
        try:
            check_image_ref(image.image_ref)
        except ValueError as exc:
            raise InvalidRequest(str(exc), context={"image": image.image_ref[:80]}) from None
        with proc.docker_errors(Operation.resolve_image):
            try:
                found = self.client.images.get(image.image_ref)
            except docker.errors.ImageNotFound:
                raise NotFound(
                    "image is not present on this host (never pulled)", context={"image": image.image_ref}
                ) from None
        digest = str(found.id)
        self._remember_volumes(digest, found.attrs.get("Config") or {})
        arch = found.attrs.get("Architecture")
        repo_digests = [str(d).rsplit("@", 1)[-1] for d in found.attrs.get("RepoDigests") or []]
        if image.expected_digest and image.expected_digest not in (digest, *repo_digests):
            raise PolicyDenial("image digest does not match the expected digest", context={"image": image.image_ref})
        if image.expected_architecture and image.expected_architecture != arch:
            raise PolicyDenial(
                "image architecture does not match",
                context={"image": image.image_ref, "architecture": str(arch)},
            )
        return ImageResolution(image_ref=image.image_ref, digest=digest, architecture=arch)

    def limit_held_reads(self, slots: int) -> None:
        """At most ``slots`` (and ``MAX_HELD_READS``) reads held at once in this process: the reads
        lane gives half its threads (``workers.warmup``), so stats and frames always find one."""
        self._held_reads = threading.BoundedSemaphore(min(slots, MAX_HELD_READS)) if slots > 0 else None

    def image_volumes(self, image_id: str) -> list[str]:
        """The image's ``VOLUME`` paths (each gets a tmpfs over it, ``policy.container_kwargs``)."""
        known = self._volumes.get(image_id)
        if known is None:
            with proc.docker_errors(Operation.prepare_environment):
                known = self._remember_volumes(image_id, self.client.images.get(image_id).attrs.get("Config") or {})
        return known

    def _remember_volumes(self, image_id: str, config: dict[str, Any]) -> list[str]:
        if len(self._volumes) >= MAX_KNOWN_IMAGES:
            self._volumes.pop(next(iter(self._volumes)))
        self._volumes[image_id] = volumes = sorted(config.get("Volumes") or {})
        return volumes

    @proc.contract_errors
    def prepare_rootfs(self, request: RootfsPrepareRequest) -> RootfsRef:
        # Nothing to prepare ahead: the container's root is the image's, made read-only (or given a
        # writable layer) when the container is created (``environment``), from the same request.
        env = request.environment
        owner = slug(env.environment_id) if env is not None else slug(request.rootfs.rootfs_ref)
        return f"rootfs-{owner}"

    @proc.contract_errors
    def resolve_mounts(self, request: MountResolveRequest) -> MountPlan:
        planned = resolve_mounts(request.environment.spec.filesystem, self.host)
        if planned:
            pins.require_root()  # fail before any later step: a mount could never be pinned here
            forbidden = self.forbidden_sources()
            planned = [pins.check(m, forbidden) for m in planned]
        mounts = planned
        return MountPlan(mounts=[m.to_ref() for m in mounts], expanded_exposure_audits=[m.audit() for m in mounts])

    @proc.contract_errors
    def configure_network(self, request: NetworkPrepareRequest) -> NetworkNamespaceRef:
        """No network object is created: every mode this runtime accepts runs with ``network_mode:
        none`` (only lo, no route). Networks labeled by older versions are still removed at cleanup."""
        env = request.environment
        network_mode(env.spec.network)  # Unsupported for anything that would need egress filtering
        return f"net-none-{slug(env.environment_id)}"

    @proc.contract_errors
    def prepare_secrets(self, request: SecretPrepareRequest) -> SecretMaterializationPlan:
        return self._builder().materialize_secrets(request.environment)

    @proc.contract_errors
    def prepare_environment(self, request: EnvironmentPrepareRequest) -> PreparedEnvironmentRef:
        self._builder().create(request)
        return f"env-{slug(request.environment.environment_id)}"

    def _builder(self) -> EnvironmentBuilder:
        return EnvironmentBuilder(self)

    # ------------------------------------------------------------------ 10-13 the process

    @proc.contract_errors
    def start_process(self, request: ProcessStartRequest) -> ProcessStartResult:
        env = request.environment
        s = slug(env.environment_id)
        process_ref = process_ref_for(env.environment_id)
        container = self._container(s, process_ref)
        layout = self.paths_of(env.environment_id).spool
        res.ensure_labeled_dir(layout.root, self.labels_of(env))
        with layout.start_lock.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one launcher per sandbox across worker processes
            self._launch_once(container, layout, request)
        return ProcessStartResult(
            process_ref=process_ref,
            adapter_session_ref=f"sess-{s}",
            process_status=ProcessStatus(state=ProcessState.running),
            redacted_summary="started in a container; output spooled on the host",
        )

    def _launch_once(self, container: Any, layout: SpoolLayout, request: ProcessStartRequest) -> None:
        """Start the container through a shim unless that already happened (replay-safe)."""
        values, _missing = self._secret_values(layout)
        # ``container`` was inspected just now (``_container``): its status is current.
        if container.status != "created" or layout.started.exists():
            return
        notify_fd: int | None = None
        if res.shim_pid(layout) is None:
            layout.shim_error.unlink(missing_ok=True)
            spec = request.environment.spec
            timeout_ms = min(request.process.timeout_ms, spec.resources.timeout_ms)
            stdin = bool(container.attrs.get("Config", {}).get("OpenStdin"))
            arguments = proc.shim_arguments(
                container.name,
                layout,
                timeout_ms,
                request.process.grace_ms,
                proc.SIGNALS[request.process.timeout_signal],
                stdin,
            )
            with proc.docker_errors(Operation.start_process, values):
                notify_fd = self._shim_template.spawn(arguments, layout.shim_log, layout.root)
                if notify_fd is None:
                    notify_fd = proc.spawn_detached(
                        proc.shim_command(arguments), layout.shim_log, layout.root, notify=True
                    )
        proc.wait_started(layout, values, notify_fd=notify_fd)

    def supervise_io(self) -> int:
        """Give every running sandbox of this host whose I/O shim died a supervisor
        (``process.revive_shim``), so its timeout still holds and its exit is recorded with what
        output was lost. Cheap when nothing died: one container listing and a ``/proc`` read per
        running sandbox. The worker's exit watch calls it every heartbeat (``Reconciler.record_exits``)."""
        revived = 0
        flt = {"label": [f"{res.LABEL_HOST}={self.host_id}"], "status": "running"}
        for container in self.client.api.containers(filters=flt):  # no inspect each: see res.list_labeled
            s = (container.get("Labels") or {}).get(res.LABEL_SLUG)
            if s and proc.revive_shim(res.session_paths(self.host, s).spool, res.container_name_of(container)):
                revived += 1
        return revived

    @proc.contract_errors
    def stream_io(self, request: ProcessIoRequest) -> ProcessIoFrame:
        _s, layout = self._layout_of(request.process_ref)
        if not layout.root.is_dir():
            self._session_secrets.drop(str(layout.root))  # cleaned up by another worker process
            raise NotFound("unknown process", context={"process_ref": request.process_ref})
        if request.stream.value == "stdin":
            return proc.write_stdin(layout, request.process_ref, request.data_b64, request.close_stdin)
        held = self._held_reads
        if request.wait_ms and held is not None and held.acquire(blocking=False):
            try:
                proc.await_output(layout, request.stream.value, request.cursor, request.wait_ms / 1000)
            finally:
                held.release()
        return proc.read_output_frame(
            layout,
            request.process_ref,
            request.stream,
            request.cursor,
            request.max_bytes,
            self._secret_values(layout),
            self.host.allow_raw_output,
        )

    @proc.contract_errors
    def signal_process(self, request: ProcessSignalRequest) -> ProcessSignalResult:
        s, layout = self._layout_of(request.process_ref)
        container = self._container(s, request.process_ref)
        with proc.docker_errors(Operation.signal_process):
            delivered, summary = proc.deliver(container, layout, request.signal, request.grace_ms, self._now_ms())
        return ProcessSignalResult(
            process_ref=request.process_ref,
            signal=request.signal,
            delivered=delivered,
            redacted_summary=summary,
        )

    @proc.contract_errors
    def collect_stats(self, request: ProcessStatsRequest) -> ProcessStatsSnapshot:
        s, layout = self._layout_of(request.process_ref)
        ran = proc.running_snapshot(layout, request.process_ref, f"stats-{s}-{self._now_ms()}")
        if ran is not None:
            return ran
        container = self._container(s, request.process_ref)
        with proc.docker_errors(Operation.collect_stats):
            snapshot = proc.snapshot(container, layout, request.process_ref, f"stats-{s}-{self._now_ms()}")
            if snapshot.state is ProcessState.running:  # like cpu and memory: counted while it runs
                filesystem, network = usage.usage(container, self.client.api)
                snapshot = snapshot.model_copy(update={"filesystem_bytes": filesystem, "network_bytes": network})
            return snapshot

    # ------------------------------------------------------------------ 14-16 teardown

    @proc.contract_errors
    def cleanup(self, request: CleanupRequest) -> CleanupResult:
        self._forget_secrets(request.environment.environment_id)
        failures = res.remove_session(
            self.client_or_none(), self.host, self.host_id, request.environment.environment_id
        )
        return CleanupResult(
            cleanup_plan_ref=request.cleanup_plan_ref,
            status=CleanupStatus.repair_needed if failures else CleanupStatus.completed,
            redacted_summary=("failed: " + "; ".join(failures))
            if failures
            else "removed container, network, pinned mounts, secrets, spool",
        )

    def _forget_secrets(self, environment_id: str) -> None:
        """Teardown drops the session's secret values from this process's memory."""
        self._session_secrets.drop(str(self.paths_of(environment_id).spool.root))

    def client_or_none(self) -> Any:
        """For cleanup, which must report rather than raise when the engine is unreachable."""
        try:
            return self.client
        except Exception:
            return None

    @proc.contract_errors
    def detach(self, request: DetachTransferRequest) -> DetachTransferResult:
        env = request.environment
        if not env.spec.ownership.detach_policy.allowed:
            raise PolicyDenial("the ownership policy does not allow detaching this environment")
        if request.ticket_ref is None:
            raise InvalidRequest("detach needs a reclaim ticket_ref")
        deadline_ms = self._now_ms() + request.ttl_ms
        ack = {
            "ticket_ref": request.ticket_ref,
            "environment_id": env.environment_id,
            "slug": slug(env.environment_id),
            "deadline_ms": deadline_ms,
            "host_id": self.host_id,
        }
        path = res.ticket_path(self.host, request.ticket_ref)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_json(path, ack)
        return DetachTransferResult(
            host_ack_ref=f"ack-{slug(request.ticket_ref)}",
            ticket_ref=request.ticket_ref,
            deadline_ms=deadline_ms,
            redacted_summary="live resources left running under the ticket; the host acknowledged",
        )

    @proc.contract_errors
    def reclaim(self, request: ReclaimRequest) -> ReclaimResult:
        path = res.ticket_path(self.host, request.ticket_ref)
        ack = read_json(path)
        environment_id = request.environment_id or (ack.get("environment_id") if isinstance(ack, dict) else None)
        if not environment_id:
            raise NotFound("unknown reclaim ticket on this host", context={"ticket_ref": request.ticket_ref})
        self._forget_secrets(str(environment_id))
        failures = res.remove_session(self.client_or_none(), self.host, self.host_id, str(environment_id))
        if not failures:
            path.unlink(missing_ok=True)
        return ReclaimResult(
            ticket_ref=request.ticket_ref,
            status=CleanupStatus.repair_needed if failures else CleanupStatus.completed,
            redacted_summary=("failed: " + "; ".join(failures)) if failures else "reclaimed and removed",
        )

    # ------------------------------------------------------------------ reconciliation

    @proc.contract_errors
    def list_labeled(self) -> dict[str, list[dict[str, str]]]:
        """Everything this host's runtime created (see ``docker_resources.list_labeled``)."""
        with proc.docker_errors("list_labeled"):
            return res.list_labeled(self.client, self.host_id, self.host)
