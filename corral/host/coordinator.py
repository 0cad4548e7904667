"""The runtime around the adapter (CONTRACT.md rules 1-7): host checks, the host policy, capability
matching, the session state machine, and every side effect run through ``corral.host.effects`` (journal +
idempotency).

Admission happens before any adapter call and after a replay is answered (a replay causes no effect):
``prepare_session`` checks the whole environment against the host policy (``corral.sandbox.policy``) and matches
its requirement against the runtime's capability report (``corral.contract.matching``, fail closed); every later
step of the chain re-checks the environment (the check is pure and cheap, so a policy reloaded mid-chain
applies at the next step), steps that carry the process spec check it too (user, timeout), and steps
that use the resolved image check its digest. Teardown (cleanup, reclaim, signals) is never refused by
policy rules: the policy narrows what may be created, not what may be removed. A denial is a
``PolicyDenial`` naming its rule, journaled as a ``denial`` record (op, rule, message; never a request
body), with no intent because nothing was attempted.

Host-side caps a request cannot raise (``limits.*`` of the policy) are admission too: the spool cap
and the argv/environment sizes with the rest of the environment and process checks; the number of
live sandboxes at ``prepare_session`` (a count before any effect, then again atomically with the
session's creation, ``Store.create_live_session``); a stdin write against the process's stdin total,
which the session record keeps (``stdin_bytes``, the last write's cursor).

Tenancy (``corral.host.tenancy``): every operation takes the verified ``Caller``. ``prepare_session`` records
the caller's tenant and identity and applies its tenant's rules (re-checked by later steps under the
owning tenant's rules). Every operation on an existing session, checked before any replay is answered,
is for its tenant, operators and fleet components only; anyone else gets the answer a session that does
not exist gets (``_hidden``), whatever the operation, and the attempt goes to the host's journal.

Derived idempotency keys make each chain step happen once per environment; operations that may
legitimately repeat (signals, stdin writes) are keyed by the delivery id (the Celery task id,
which survives redelivery). Read-only operations (stats, output frames) skip all of this.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import TypeVar, cast

from pydantic import BaseModel

from corral.contract import lifecycle
from corral.contract.errors import (
    Conflict,
    InvalidRequest,
    InvalidStateTransition,
    JournalFailure,
    NotFound,
    PolicyDenial,
)
from corral.contract.matching import match
from corral.contract.models import (
    MAX_GRACE_MS,
    CleanupRequest,
    CleanupResult,
    DetachTransferRequest,
    DetachTransferResult,
    EnvironmentPrepareRequest,
    ExecutionEnvironment,
    ImageResolution,
    ImageResolveRequest,
    IsolatedProcessSpec,
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
    ReclaimRequest,
    ReclaimResult,
    RootfsPrepareRequest,
    RootfsRef,
    SecretMaterializationPlan,
    SecretPrepareRequest,
    SessionPrepareRequest,
    SessionState,
    dump,
)
from corral.contract.operations import Operation
from corral.contract.records import IsolationRecord, event_summary
from corral.contract.refs import new_ref, process_ref_for, slug, ticket_ref_for
from corral.contract.runtime import IsolationRuntime
from corral.contract.vocabulary import CleanupStatus, ProcessIoStream
from corral.contract.wire import from_wire, to_wire
from corral.fleet.admission import DEFAULT_LEASE_MS, Admission, Demand
from corral.host import journal_records, metrics
from corral.host.effects import Clock, Effects, SystemClock, digest_of
from corral.host.journal_records import EffectRecords
from corral.host.policy_source import PolicySource
from corral.host.tenancy import (
    DEFAULT_TENANT,
    HIDDEN_RULE,
    check_tenant,
    check_tenant_process,
    may_act,
    owner_of,
    resolve_caller,
    tenant_rules,
)
from corral.host.tenancy import check_sandboxes as check_tenant_sandboxes
from corral.sandbox.policy import (
    HostPolicy,
    check_detach,
    check_environment,
    check_process,
    check_process_size,
    check_resolution,
    check_sandboxes,
    check_stdin,
)
from corral.state.journal import Journal
from corral.state.store import Store
from corral.trust.identity import Caller

M = TypeVar("M", bound=BaseModel | str)
log = logging.getLogger("corral.host.coordinator")

PROCESS_CACHE_SIZE = 4096
"""How many process -> environment bindings a coordinator keeps in memory (``Coordinator._process_session``)."""

LOCAL_CALLER = Caller("corral-local", DEFAULT_TENANT, operator=True)
"""In-process callers (the reconciler, unit tests). Tasks always pass the verified caller instead."""


def chain_environment(
    request: ImageResolveRequest
    | RootfsPrepareRequest
    | MountResolveRequest
    | NetworkPrepareRequest
    | SecretPrepareRequest,
    op: Operation,
) -> ExecutionEnvironment:
    """The environment a chain step belongs to. Upstream's ``resolve_image`` and ``prepare_rootfs``
    carry only the image or root request; corral's chain also sends the environment (an extension
    field), because a step finds its session, owner and policy by it."""
    if request.environment is None:
        raise InvalidRequest(
            f"{op} reached the host without its environment: corral runs it as a step of a session",
            context={"operation": op},
        )
    return request.environment


def step_result(record: dict[str, str], step: Operation) -> dict[str, object] | str | None:
    """A step's recorded result in a session record already read (``Store.step_result`` reads it anew)."""
    raw = record.get(f"result:{step}")
    return cast(dict[str, object] | str, json.loads(raw)) if raw else None


class Coordinator:
    def __init__(
        self,
        runtime: IsolationRuntime,
        store: Store,
        journal: Journal,
        host_id: str,
        *,
        clock: Clock | None = None,
        lease_ms: int = 120_000,
        pending_wait_s: float = 10.0,
        policy: PolicySource | None = None,
        admission_lease_ms: int = DEFAULT_LEASE_MS,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.journal = journal
        self.host_id = host_id
        self.clock = clock or SystemClock()
        self.policy = policy or PolicySource.fixed(HostPolicy())
        """The host policy; without one, the documented defaults (``config/policy.toml``)."""
        self.effects = Effects(
            store,
            journal,
            host_id,
            self.clock,
            lease_ms=lease_ms,
            pending_wait_s=pending_wait_s,
            adapter_ref=runtime.runtime_ref(),
        )
        self.admission = Admission(store.r, store.ttl_ms // 1000, admission_lease_ms)
        """Fleet capacity accounting (``corral.fleet.admission``): a session confirms its reservation and its
        cleanup releases it."""
        self._process_envs: dict[str, str] = {}
        """process ref -> environment id, as ``Store.bind_process`` recorded it. A binding never changes (the
        ref is derived from the environment id, ``process_ref_for``), so a process's reads (stats, output
        frames: several per launch) look it up in Redis once per worker process; the session record, which
        says who may read and in what state, is still read every time."""

    def caller(self, identity: str | None) -> Caller:
        """The verified identity as a caller of this host (``corral.host.tenancy``); ``PolicyDenial`` when
        it belongs to no tenant. ``None`` (a message without a caller) is the anonymous identity."""
        return resolve_caller(self.policy.current(), identity)

    # -- read-only -------------------------------------------------------------------------

    def runtime_ref(self) -> IsolationRuntimeRef:
        return self.runtime.runtime_ref()

    def capability_report(self) -> IsolationCapabilityReport:
        return self.runtime.capability_report()

    # -- the prepare-to-start chain ----------------------------------------------------------

    def prepare_session(self, request: SessionPrepareRequest, caller: Caller = LOCAL_CALLER) -> IsolationSessionRef:
        env = request.environment
        if request.host_ref is not None and request.host_ref != self.host_id:
            raise InvalidRequest(
                f"session requested for host {request.host_ref} reached host {self.host_id}",
                context={"host": request.host_ref},
            )
        key = f"{Operation.prepare_session}:{env.environment_id}"
        # One round trip for the two records every step begins with (the session's, the key's).
        existing, idem = self.store.session_and_idem(env.environment_id, key)
        # Before the replay: an environment id is single-use, and another tenant's is not a replay.
        self._claim_id(env.environment_id, caller, existing)
        replayed = self.effects.recorded(
            Operation.prepare_session,
            env.environment_id,
            key,
            request,
            IsolationSessionRef,
            idem=idem,
            session=existing,
        )
        if replayed is not None:
            self._settle_session(env, replayed, bool(existing))
            return replayed
        matched: dict[str, str] = {}  # matching's record (capability_match or downgrade_decision)
        self._admit(
            Operation.prepare_session,
            env.environment_id,
            lambda policy: self._admit_session(policy, env, caller, matched),
            record=matched,
        )
        if existing and existing.get("env_digest") != digest_of(env):
            raise Conflict(
                "environment id already used for a different environment",
                context={"environment_id": env.environment_id},
            )
        if existing:
            self._require_local(env.environment_id, existing)
        else:  # a cheap count first, so a full host refuses before any effect; the create is the atomic check
            self._admit(
                Operation.prepare_session,
                env.environment_id,
                lambda policy: check_sandboxes(policy, self.store.live_sessions(self.host_id)),
            )
        lifecycle.check(Operation.prepare_session, existing.get("state"))

        def effect() -> IsolationSessionRef:
            cap = self.policy.current().limits.max_sandboxes
            created = self.store.create_live_session(
                env.environment_id,
                {
                    "host": self.host_id,
                    **lifecycle.CREATED.fields(),
                    "owner": env.spec.ownership.owner_run_id or "",
                    "environment": json.dumps(dump(env), sort_keys=True),
                    "env_digest": digest_of(env),
                    "tenant": caller.tenant,
                    "identity": caller.identity,
                },
                self.clock.now_ms(),
                max_live=cap,
            )
            if created == "full":  # another prepare_session won the last slot since the count above
                check_sandboxes(self.policy.current(), cap)
            return self.runtime.prepare_session(request)

        result = self.effects.run(
            Operation.prepare_session,
            env.environment_id,
            key,
            request,
            effect,
            IsolationSessionRef,
            lambda r: f"session {r} on {self.host_id}",
            EffectRecords(lambda _: journal_records.field(journal_records.requested(env)), lambda _, __: matched),
        )
        # The effect created the record (or found it): a recorded outcome means the session exists.
        self._settle_session(env, result, True)
        return result

    def _settle_session(self, env: ExecutionEnvironment, result: IsolationSessionRef, exists: bool) -> None:
        """What follows a recorded prepare_session (again on a replay: idempotent). ``exists``: whether
        the session record was there when this delivery read it."""
        if not exists:
            return  # never written (the effect did not run here) or gone: nothing to settle
        self.store.set_step_result(env.environment_id, Operation.prepare_session, to_wire(result), self.clock.now_ms())
        resources = env.spec.resources
        self.admission.confirm(env.environment_id, self.host_id, Demand.of(resources.cpu_quota, resources.memory_mb))

    def resolve_image(self, request: ImageResolveRequest, caller: Caller = LOCAL_CALLER) -> ImageResolution:
        resolution = self._step(
            Operation.resolve_image,
            request,
            self.runtime.resolve_image,
            ImageResolution,
            lambda r: f"image {r.image_ref} digest {r.digest}",
            caller,
        )
        # Planning only, so the digest is judged once known (replays too); nothing runs it before
        # prepare_environment, which judges the recorded resolution again.
        self._admit_resolution(Operation.resolve_image, chain_environment(request, Operation.resolve_image), resolution)
        return resolution

    def prepare_rootfs(self, request: RootfsPrepareRequest, caller: Caller = LOCAL_CALLER) -> RootfsRef:
        return self._step(
            Operation.prepare_rootfs,
            request,
            self.runtime.prepare_rootfs,
            RootfsRef,
            lambda r: f"rootfs {r} read_only={request.rootfs.read_only}",
            caller,
        )

    def resolve_mounts(self, request: MountResolveRequest, caller: Caller = LOCAL_CALLER) -> MountPlan:
        return self._step(
            Operation.resolve_mounts,
            request,
            self.runtime.resolve_mounts,
            MountPlan,
            lambda r: f"{len(r.mounts)} mount(s)",
            caller,
        )

    def configure_network(self, request: NetworkPrepareRequest, caller: Caller = LOCAL_CALLER) -> NetworkNamespaceRef:
        return self._step(
            Operation.configure_network,
            request,
            self.runtime.configure_network,
            NetworkNamespaceRef,
            lambda r: f"network {r} mode {request.environment.spec.network.kind}",
            caller,
            EffectRecords(
                result=lambda _, ref: journal_records.network_prepared(request.environment.environment_id, ref)
            ),
        )

    def prepare_secrets(
        self, request: SecretPrepareRequest, caller: Caller = LOCAL_CALLER
    ) -> SecretMaterializationPlan:
        return self._step(
            Operation.prepare_secrets,
            request,
            self.runtime.prepare_secrets,
            SecretMaterializationPlan,
            lambda r: f"{len(r.secret_mount_refs)} secret mount(s), {len(r.env_secret_keys)} env secret(s)",
            caller,
        )

    def prepare_environment(
        self, request: EnvironmentPrepareRequest, caller: Caller = LOCAL_CALLER
    ) -> PreparedEnvironmentRef:
        env_id = request.environment.environment_id
        key = f"{Operation.prepare_environment}:{env_id}"
        session, idem = self.store.session_and_idem(env_id, key)
        owner = self._authorize(Operation.prepare_environment, env_id, caller, session)
        replayed = self.effects.recorded(
            Operation.prepare_environment, env_id, key, request, PreparedEnvironmentRef, idem=idem, session=session
        )
        if replayed is not None:
            if request.process is not None:
                self._settle_environment(env_id, request.process, replayed)
            return replayed
        process = request.process
        if process is None:
            raise InvalidRequest(
                "prepare_environment needs the process: corral creates the container for it here",
                context={"environment_id": env_id},
            )
        self._admit_process(Operation.prepare_environment, env_id, request.environment, process, owner)
        record = self._session_for(request.environment, Operation.prepare_environment, session)
        earlier: dict[str, object] = {}
        steps: tuple[tuple[str, Operation, type[BaseModel | str]], ...] = (
            ("image", Operation.resolve_image, ImageResolution),
            ("rootfs", Operation.prepare_rootfs, str),
            ("mounts", Operation.resolve_mounts, MountPlan),
            ("network", Operation.configure_network, str),
            ("secrets", Operation.prepare_secrets, SecretMaterializationPlan),
        )
        for field, step, kind in steps:
            recorded = step_result(record, step)
            if recorded is None:
                raise InvalidStateTransition(f"prepare_environment needs {step} first", context={"missing": step})
            earlier[field] = from_wire(kind, recorded)
        image = earlier["image"]
        assert isinstance(image, ImageResolution)
        self._admit_resolution(Operation.prepare_environment, request.environment, image)
        # The digest covers the caller's request only; the filled-in results are derived from it.
        full = request.model_copy(update=earlier)
        result = self.effects.run(
            Operation.prepare_environment,
            env_id,
            key,
            request,
            lambda: self.runtime.prepare_environment(full),
            PreparedEnvironmentRef,
            lambda r: f"environment {r} for process {process.process_id}",
            journal_records.environment_prepare(request.environment, key, process.process_id),
        )
        self._settle_environment(env_id, process, result)
        return result

    def _settle_environment(self, env_id: str, process: IsolatedProcessSpec, result: PreparedEnvironmentRef) -> None:
        """What follows a recorded prepare_environment; a compare-and-set, so a replay after the session
        moved on changes nothing."""
        self.store.advance(
            env_id,
            lifecycle.ENVIRONMENT_PREPARED,
            self.clock.now_ms(),
            process=json.dumps(dump(process), sort_keys=True),
            **{f"result:{Operation.prepare_environment}": json.dumps(to_wire(result), sort_keys=True)},
        )

    def start_process(self, request: ProcessStartRequest, caller: Caller = LOCAL_CALLER) -> ProcessStartResult:
        env_id = request.environment.environment_id
        key = f"{Operation.start_process}:{env_id}:{request.process.process_id}"
        session, idem = self.store.session_and_idem(env_id, key)
        owner = self._authorize(Operation.start_process, env_id, caller, session)
        replayed = self.effects.recorded(
            Operation.start_process, env_id, key, request, ProcessStartResult, idem=idem, session=session
        )
        if replayed is not None:
            self._settle_start(env_id, request, replayed)
            return replayed
        self._admit_process(Operation.start_process, env_id, request.environment, request.process, owner)
        record = self._session_for(request.environment, Operation.start_process, session)
        recorded_image = step_result(record, Operation.resolve_image)
        if recorded_image is not None:
            self._admit_resolution(
                Operation.start_process, request.environment, ImageResolution.model_validate(recorded_image)
            )
        if record.get("process") and json.loads(record["process"]) != dump(request.process):
            raise Conflict(
                "start_process names a different process than the prepared one",
                context={"process_id": request.process.process_id},
            )
        # The host's own intent (its keys), whatever the caller sent: the host owns idempotency.
        intent = request.process.effect_intent(request.environment).model_copy(
            update={
                "effect_id": f"eff-{slug(key)}",
                "dedupe_key": key,
                "redacted_summary": f"start {request.process.process_id} ({len(request.process.argv)} argv)",
            }
        )
        full = request.model_copy(update={"effect_intent": intent})
        result = self.effects.run(
            Operation.start_process,
            env_id,
            key,
            request,
            lambda: self.runtime.start_process(full),
            ProcessStartResult,
            lambda r: f"process {r.process_ref} started",
            journal_records.process_start(request.environment, key, process_ref_for(env_id), len(request.process.argv)),
        )
        now = self.clock.now_ms()
        if record.get("created_ms"):  # replays returned above: one launch, observed once
            metrics.observe_launch((now - int(record["created_ms"])) / 1000)
        self._settle_start(env_id, request, result)
        return result

    def _settle_start(self, env_id: str, request: ProcessStartRequest, result: ProcessStartResult) -> None:
        """What follows a recorded start: the process bound and the session running. Again on a replay
        (a worker killed between recording the start and these writes left the session ``prepared``
        with its process running); the compare-and-set from ``prepared`` makes it a no-op otherwise."""
        now = self.clock.now_ms()
        self.store.bind_process(result.process_ref, env_id)
        timeout_ms = min(request.process.timeout_ms, request.environment.spec.resources.timeout_ms)
        self.store.advance(
            env_id,
            lifecycle.PROCESS_STARTED,
            now,
            process_ref=result.process_ref,
            started_ms=str(now),
            deadline_ms=str(now + timeout_ms),
        )

    # -- process operations ----------------------------------------------------------------

    def stream_io(
        self, request: ProcessIoRequest, delivery_id: str | None = None, caller: Caller = LOCAL_CALLER
    ) -> ProcessIoFrame:
        env_id, record = self._process_session(request.process_ref, Operation.stream_io, caller)
        if request.stream is not ProcessIoStream.stdin:
            frame = self.runtime.stream_io(request)
            if frame.eof and record.get("state") == SessionState.running:
                self.store.advance(env_id, lifecycle.PROCESS_EXITED, self.clock.now_ms())
            return frame
        key = f"{Operation.stream_io}:{request.process_ref}:{delivery_id or new_ref('delivery')}"
        replayed = self.effects.recorded(Operation.stream_io, env_id, key, request, ProcessIoFrame)
        if replayed is not None:
            if replayed.cursor > int(record.get("stdin_bytes") or 0):  # settle, as after the write itself
                self.store.update_session(env_id, {"stdin_bytes": str(replayed.cursor)}, self.clock.now_ms())
            return replayed
        adding = len(base64.b64decode(request.data_b64 or ""))  # validated base64 of at most one frame
        written = int(record.get("stdin_bytes") or 0)
        if adding:
            self._admit(Operation.stream_io, env_id, lambda policy: check_stdin(policy, written, adding))
        frame = self.effects.run(
            Operation.stream_io,
            env_id,
            key,
            request,
            lambda: self.runtime.stream_io(request),
            ProcessIoFrame,
            lambda r: f"stdin write {r.byte_count} byte(s)",
            EffectRecords(result=lambda _, f: journal_records.field(IsolationRecord.process_io_frame(f))),
        )
        if frame.cursor > written:  # the frame's cursor is the process's stdin total so far
            self.store.update_session(env_id, {"stdin_bytes": str(frame.cursor)}, self.clock.now_ms())
        return frame

    def signal_process(
        self, request: ProcessSignalRequest, delivery_id: str | None = None, caller: Caller = LOCAL_CALLER
    ) -> ProcessSignalResult:
        env_id, _ = self._process_session(request.process_ref, Operation.signal_process, caller)
        if request.grace_ms > MAX_GRACE_MS:  # upstream takes any u64; the escalation must come
            raise InvalidRequest(
                f"grace_ms must be at most {MAX_GRACE_MS} (10 minutes)", context={"grace_ms": str(request.grace_ms)}
            )
        key = f"{Operation.signal_process}:{request.process_ref}:{delivery_id or new_ref('delivery')}"
        return self.effects.run(
            Operation.signal_process,
            env_id,
            key,
            request,
            lambda: self.runtime.signal_process(request),
            ProcessSignalResult,
            lambda r: f"{r.signal} delivered={r.delivered}",
        )

    def collect_stats(self, request: ProcessStatsRequest, caller: Caller = LOCAL_CALLER) -> ProcessStatsSnapshot:
        env_id, record = self._process_session(request.process_ref, Operation.collect_stats, caller)
        snapshot = self.runtime.collect_stats(request)
        if snapshot.state is ProcessState.exited and record.get("state") in lifecycle.WITH_PROCESS:
            self._record_exit(env_id, record, snapshot)
        return snapshot

    def _record_exit(self, env_id: str, record: dict[str, str], snapshot: ProcessStatsSnapshot) -> None:
        """Keep how the process ended in its session, once (a detached session stays detached under
        its ticket, but ``corral ps`` then shows it exited, with its reason)."""
        now = self.clock.now_ms()
        ended = {
            "exit_code": "" if snapshot.exit_code is None else str(snapshot.exit_code),
            "reason": snapshot.reason or "",
            "oom_killed": "1" if snapshot.oom_killed else "",
        }
        if not record.get("exited_ms") and self.store.record_exit(env_id, ended, now):
            metrics.count_exit(ended["reason"])
            self._journal_exit(env_id, snapshot, now)
        self.admission.exited(env_id)  # its CPUs and memory are free now; the slot until cleanup
        if record.get("state") == SessionState.running:
            self.store.advance(env_id, lifecycle.PROCESS_EXITED, now)

    def _journal_exit(self, env_id: str, snapshot: ProcessStatsSnapshot, now: int) -> None:
        """The process's end, once (the exit was just recorded): upstream's ``process_stats_snapshot``
        record. Reading stats journals nothing else; a journal failure loses only this note."""
        record = journal_records.stats_snapshot(env_id, snapshot)
        fields = {
            "op": Operation.collect_stats,
            "host": self.host_id,
            "ts_ms": str(now),
            "summary": event_summary(record),
            **journal_records.field(record),
        }
        try:
            self.journal.append(env_id, "exit", fields)
        except JournalFailure:
            log.warning("could not journal the exit of %s", env_id)

    # -- teardown and hand-over ------------------------------------------------------------

    def cleanup(self, request: CleanupRequest, caller: Caller = LOCAL_CALLER) -> CleanupResult:
        env_id = request.environment.environment_id
        record = self.store.session(env_id)
        if not (may_act(caller, owner_of(record)) if record else caller.operator):
            # Without a record only an operator cleans up (the record was lost; nothing of a tenant's
            # can be proven): everyone else gets the answer of a session that never existed. A reservation
            # no session confirmed (the chain failed before prepare_session created one) returns now.
            if not record:
                self.admission.release(env_id, only_leased=True)
            raise self._hidden(Operation.cleanup, caller, "session", env_id, env_id)
        if record:
            self._require_local(env_id, record)
        lifecycle.check(Operation.cleanup, record.get("state"))

        def effect() -> CleanupResult:
            if record:  # only once the intent is journaled: a refused cleanup leaves the state alone
                # Compare-and-set like every state change: a record that vanished meanwhile is not
                # re-created, and a session another cleanup finished is not moved back to cleaning.
                self.store.advance(env_id, lifecycle.CLEANUP_BEGUN, self.clock.now_ms())
            return self.runtime.cleanup(request)

        result = self.effects.run(
            Operation.cleanup,
            env_id,
            f"{Operation.cleanup}:{env_id}:{request.cleanup_plan_ref}",
            request,
            effect,
            CleanupResult,
            lambda r: f"cleanup {r.status}: {r.redacted_summary}",
            journal_records.cleanup(
                request.environment,
                f"{Operation.cleanup}:{env_id}:{request.cleanup_plan_ref}",
                request.cleanup_plan_ref,
            ),
        )
        end = lifecycle.ended(Operation.cleanup, result.status is CleanupStatus.completed)
        final = end.target
        if record:
            self.store.advance(env_id, end, self.clock.now_ms())
        if final is SessionState.cleaned or not record:
            self.admission.release(env_id)
        ticket_ref = record.get("ticket_ref")
        if ticket_ref:
            self.store.close_ticket(
                ticket_ref, "cleaned" if final is SessionState.cleaned else "repair_needed", self.clock.now_ms()
            )
        return result

    def detach(self, request: DetachTransferRequest, caller: Caller = LOCAL_CALLER) -> DetachTransferResult:
        env = request.environment
        key = f"{Operation.detach}:{env.environment_id}"
        owner = self._authorize(Operation.detach, env.environment_id, caller)
        replayed = self.effects.recorded(Operation.detach, env.environment_id, key, request, DetachTransferResult)
        if replayed is not None:
            self._settle_detach(env.environment_id, replayed)
            return replayed
        self._session_for(env, Operation.detach)
        self._admit(Operation.detach, env.environment_id, lambda policy: self._admit_detach(policy, request))
        ticket_ref = ticket_ref_for(env.environment_id)
        full = request.model_copy(update={"ticket_ref": ticket_ref})
        # The coordinator owns time: the ticket deadline comes from its clock, not the adapter's.
        deadline_ms = self.clock.now_ms() + request.ttl_ms

        def effect() -> DetachTransferResult:
            ack = self.runtime.detach(full).model_copy(update={"ticket_ref": ticket_ref, "deadline_ms": deadline_ms})
            # The ticket is part of the effect: no host ack without a ticket, no ticket without an ack.
            self.store.put_ticket(
                ticket_ref,
                {
                    "environment_id": env.environment_id,
                    "host": self.host_id,
                    "host_ack_ref": ack.host_ack_ref,
                    "tenant": owner.tenant,
                },
                deadline_ms,
            )
            return ack

        result = self.effects.run(
            Operation.detach,
            env.environment_id,
            key,
            request,
            effect,
            DetachTransferResult,
            lambda r: f"ticket {r.ticket_ref} acked {r.host_ack_ref} until {r.deadline_ms}",
        )
        self._settle_detach(env.environment_id, result)
        return result

    def _settle_detach(self, env_id: str, result: DetachTransferResult) -> None:
        """What follows a recorded detach (again on a replay; a compare-and-set)."""
        ticket_ref = result.ticket_ref or ticket_ref_for(env_id)
        self.store.advance(env_id, lifecycle.DETACHED, self.clock.now_ms(), ticket_ref=ticket_ref)

    def reclaim(self, request: ReclaimRequest, caller: Caller = LOCAL_CALLER) -> ReclaimResult:
        ticket = self.store.ticket(request.ticket_ref)
        self._authorize_ticket(request, ticket, caller)
        if ticket:
            # The ticket names what it reclaims; a caller cannot point it at another environment.
            env_id = ticket["environment_id"]
            if request.environment_id is not None and request.environment_id != env_id:
                raise Conflict(
                    f"ticket {request.ticket_ref} does not cover environment {request.environment_id}",
                    context={"ticket_ref": request.ticket_ref},
                )
            if ticket.get("host") != self.host_id:
                raise InvalidRequest(
                    f"ticket belongs to host {ticket.get('host')}, not {self.host_id}",
                    context={"ticket_ref": request.ticket_ref},
                )
        elif request.environment_id is None:
            raise NotFound(f"unknown ticket {request.ticket_ref}", context={"ticket_ref": request.ticket_ref})
        else:  # the state store lost the ticket (flushed Redis): the host's own ack still names it
            env_id = request.environment_id
            record = self.store.session(env_id)
            if record:
                self._require_local(env_id, record)
        full = request.model_copy(update={"environment_id": env_id})
        result = self.effects.run(
            Operation.reclaim,
            env_id,
            f"{Operation.reclaim}:{request.ticket_ref}",
            request,
            lambda: self.runtime.reclaim(full),
            ReclaimResult,
            lambda r: f"reclaim {r.status}: {r.redacted_summary}",
        )
        done = result.status is CleanupStatus.completed
        now = self.clock.now_ms()
        self.store.close_ticket(request.ticket_ref, "reclaimed" if done else "repair_needed", now)
        self.store.advance(env_id, lifecycle.ended(Operation.reclaim, done), now)
        if done:
            self.admission.release(env_id)
        return result

    # -- the effect protocol ---------------------------------------------------------------

    def _step(
        self,
        op: Operation,
        request: ImageResolveRequest
        | RootfsPrepareRequest
        | MountResolveRequest
        | NetworkPrepareRequest
        | SecretPrepareRequest,
        call: Callable[..., M],
        result_type: type[M],
        summary: Callable[[M], str],
        caller: Caller,
        records: EffectRecords[M] | None = None,
    ) -> M:
        env = chain_environment(request, op)
        env_id = env.environment_id
        key = f"{op}:{env_id}"
        session, idem = self.store.session_and_idem(env_id, key)
        owner = self._authorize(op, env_id, caller, session)
        replayed = self.effects.recorded(op, env_id, key, request, result_type, idem=idem, session=session)
        if replayed is not None:
            if session:  # a step's result is part of the session record: settle it
                self.store.set_step_result(env_id, op, to_wire(replayed), self.clock.now_ms())
            return replayed
        self._admit(op, env_id, lambda policy: self._admit_environment(policy, owner, env))
        self._session_for(env, op, session)
        result = self.effects.run(op, env_id, key, request, lambda: call(request), result_type, summary, records)
        self.store.set_step_result(env_id, op, to_wire(result), self.clock.now_ms())
        return result

    # -- admission: host policy and capability matching ---------------------------------------

    def _admit(
        self, op: Operation, env_id: str, check: Callable[[HostPolicy], None], record: dict[str, str] | None = None
    ) -> None:
        """Run a policy check; a denial is journaled (no intent: nothing was attempted) and raised. ``record``
        holds the record fields the check left for its denial entry (matching's downgrade decision)."""
        try:
            check(self.policy.current())
        except PolicyDenial as denial:
            self._journal_denial(op, env_id, denial, record or {})
            raise

    def admit_chained_process(self, op: Operation, env_id: str, process: IsolatedProcessSpec) -> None:
        """A process spec that a later step of the same chain carries, judged early on its size (so an
        8 MiB argv stops the chain at its first step); prepare_environment and start_process judge
        the whole spec again. The denial is journaled only for an environment not yet prepared: this
        runs before any check of who the caller is, so it never writes into another session's journal."""
        try:
            check_process_size(self.policy.current(), process)
        except PolicyDenial as denial:
            if not self.store.session(env_id):
                self._journal_denial(op, env_id, denial)
            raise

    def _admit_session(
        self, policy: HostPolicy, env: ExecutionEnvironment, caller: Caller, matched: dict[str, str]
    ) -> None:
        """The session's admission; ``matched`` receives matching's record (``journal_records.capability_decision``)."""
        check_environment(policy, env)
        check_tenant(policy, caller, env, self.host_id)
        if tenant_rules(policy, caller).limits.max_sandboxes is not None and not self.store.session(env.environment_id):
            # A count, not an atomic claim: concurrent prepares of one tenant may pass it together.
            check_tenant_sandboxes(policy, caller, self._tenant_live(caller.tenant))
        report = self.runtime.capability_report()
        result = match(env.spec.requirement, report, policy.approvals)
        matched.clear()
        matched.update(
            journal_records.field(
                journal_records.capability_decision(
                    env,
                    report,
                    gaps=result.gaps,
                    accepted=result.accepted,
                    denied=result.denied,
                    approvals=result.approvals_used,
                )
            )
        )
        if not result.ok:
            raise PolicyDenial(
                f"host {self.host_id} does not match the isolation requirement: {result.summary()}",
                context={"rule": "matching", "gaps": ",".join(result.denied), "host": self.host_id},
            )
        if result.accepted:
            log.warning(
                "environment %s accepted on %s with approved gaps %s (policy_ref %s)",
                env.environment_id,
                self.host_id,
                ",".join(result.accepted),
                ",".join(result.approvals_used),
            )

    def _admit_process(
        self, op: Operation, env_id: str, env: ExecutionEnvironment, process: IsolatedProcessSpec, owner: Caller
    ) -> None:
        def check(policy: HostPolicy) -> None:
            check_environment(policy, env)
            check_process(policy, env, process)
            check_tenant(policy, owner, env, self.host_id)
            check_tenant_process(policy, owner, process)

        self._admit(op, env_id, check)

    def _admit_environment(self, policy: HostPolicy, owner: Caller, env: ExecutionEnvironment) -> None:
        """A later chain step re-checks the environment under the rules of the tenant that owns it."""
        check_environment(policy, env)
        check_tenant(policy, owner, env, self.host_id)

    def _admit_resolution(self, op: Operation, env: ExecutionEnvironment, resolution: ImageResolution) -> None:
        image = env.spec.image
        if image is not None:
            self._admit(op, env.environment_id, lambda policy: check_resolution(policy, image, resolution))

    def _admit_detach(self, policy: HostPolicy, request: DetachTransferRequest) -> None:
        if not request.environment.spec.ownership.detach_policy.allowed:
            raise PolicyDenial(
                "detach is not allowed by this environment's ownership policy",
                context={"rule": "ownership.detach_policy.allowed"},
            )
        check_detach(policy, request.ttl_ms)

    def _journal_denial(
        self, op: Operation, env_id: str, denial: PolicyDenial, record: dict[str, str] | None = None
    ) -> None:
        fields = {
            "op": op,
            "host": self.host_id,
            "ts_ms": str(self.clock.now_ms()),
            "rule": denial.context.get("rule", ""),
            "summary": denial.message[:500],
        }
        if "gaps" in denial.context:
            fields["gaps"] = denial.context["gaps"]
        fields.update(record or {})
        try:
            self.journal.append(env_id, "denial", fields)
        except JournalFailure:  # the denial stands: refusing needs no record to be safe
            log.warning("could not journal the %s denial of %s (rule %s)", op, env_id, fields["rule"])

    # -- session lookups -------------------------------------------------------------------

    def _require_local(self, env_id: str, record: dict[str, str]) -> None:
        if record.get("host") != self.host_id:
            raise InvalidRequest(
                f"environment {env_id} lives on host {record.get('host')}, not {self.host_id}",
                context={"environment_id": env_id},
            )

    def _session_for(
        self, env: ExecutionEnvironment, op: Operation, record: dict[str, str] | None = None
    ) -> dict[str, str]:
        """The session record of a step (``record`` when the step read it already), checked: local,
        the same environment, in a state that allows ``op``."""
        if record is None:
            record = self.store.session(env.environment_id)
        if not record:
            raise NotFound(
                f"no session for environment {env.environment_id}; prepare_session first",
                context={"environment_id": env.environment_id},
            )
        self._require_local(env.environment_id, record)
        if record.get("env_digest") != digest_of(env):
            raise Conflict(
                "request environment differs from the prepared session's",
                context={"environment_id": env.environment_id},
            )
        lifecycle.check(op, record.get("state"))
        return record

    def _remember_process(self, process_ref: str, env_id: str) -> None:
        if len(self._process_envs) >= PROCESS_CACHE_SIZE:
            self._process_envs.clear()  # bounded: a long-lived worker starts over rather than grow
        self._process_envs[process_ref] = env_id

    def _process_session(self, process_ref: str, op: Operation, caller: Caller) -> tuple[str, dict[str, str]]:
        env_id = self._process_envs.get(process_ref) or self.store.environment_of_process(process_ref)
        record = self.store.session(env_id) if env_id else {}
        if env_id and record:
            self._remember_process(process_ref, env_id)
        if not env_id or not record:
            if not caller.operator:
                raise self._hidden(op, caller, "process", process_ref, None)
            raise NotFound(f"unknown process {process_ref}", context={"process_ref": process_ref})
        if not may_act(caller, owner_of(record)):
            raise self._hidden(op, caller, "process", process_ref, env_id)
        self._require_local(env_id, record)
        lifecycle.check(op, record.get("state"))
        return env_id, record

    # -- tenancy: who may act on which session ---------------------------------------------------

    def _hidden(self, op: Operation, caller: Caller, what: str, ref: str, env_id: str | None) -> PolicyDenial:
        """The one answer for "no such session" and "another tenant's session", so a caller cannot tell
        them apart. An attempt naming an environment is journaled in the host's journal (with the caller's
        identity, for operators), never in the environment's own, which its tenant reads."""
        if env_id is not None:
            log.warning(
                "denied %s of %s by %s (tenant %s): not its session",
                op,
                env_id,
                caller.identity,
                caller.tenant,
            )
            fields = {
                "op": op,
                "host": self.host_id,
                "ts_ms": str(self.clock.now_ms()),
                "rule": HIDDEN_RULE,
                "identity": caller.identity,
                "tenant": caller.tenant,
                "environment_id": env_id,
            }
            try:
                self.journal.append_host(self.host_id, "denial", fields)
            except JournalFailure:
                log.warning("could not journal the %s denial of %s", op, caller.identity)
        return PolicyDenial(f"no {what} {ref} for this caller", context={"rule": HIDDEN_RULE, f"{what}_ref": ref})

    def _authorize(self, op: Operation, env_id: str, caller: Caller, record: dict[str, str] | None = None) -> Caller:
        """The owner of an existing session the caller may act on (before any replay is answered);
        ``record``: the session record when the caller read it already."""
        if record is None:
            record = self.store.session(env_id)
        if record and may_act(caller, owner_of(record)):
            return Caller(record.get("identity", ""), owner_of(record))
        if not record and caller.operator:  # the step's own lookup says what is missing
            return Caller(caller.identity, caller.tenant or DEFAULT_TENANT)
        raise self._hidden(op, caller, "session", env_id, env_id)

    def _claim_id(self, env_id: str, caller: Caller, record: dict[str, str]) -> None:
        """prepare_session: an environment id held by another tenant is refused (ids are one
        namespace, so this says the id is taken, and nothing else)."""
        if record and not may_act(caller, owner_of(record)):
            self._hidden(Operation.prepare_session, caller, "session", env_id, env_id)
            raise PolicyDenial(
                f"environment id {env_id} is not available", context={"rule": HIDDEN_RULE, "environment_id": env_id}
            )

    def _authorize_ticket(self, request: ReclaimRequest, ticket: dict[str, str], caller: Caller) -> None:
        """Reclaim: the ticket's session (or, when that record expired, the ticket) names its tenant."""
        env_id = ticket.get("environment_id") or request.environment_id
        record = self.store.session(env_id) if env_id else {}
        if record:
            owner: str | None = owner_of(record)
        elif ticket:
            owner = ticket.get("tenant", DEFAULT_TENANT)
        else:
            owner = None
        allowed = caller.operator if owner is None else may_act(caller, owner)
        if not allowed:
            raise self._hidden(
                Operation.reclaim, caller, "ticket", request.ticket_ref, env_id if owner is not None else None
            )

    def _tenant_live(self, tenant: str) -> int:
        """The tenant's sandboxes on this host that are not cleaned (nor given up: repair_needed)."""
        return sum(
            1
            for s in self.store.list_sessions(10_000)
            if s.get("host") == self.host_id and owner_of(s) == tenant and s.get("state") in lifecycle.LIVE
        )
