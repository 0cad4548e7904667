"""Upstream's isolation records (``corral.contract.records``) for the entries corral journals.

A journal entry stays a flat string map (``corral.state.journal``); for the operations upstream has a
record for, the entry also carries that record's JSON in its ``record`` field (an ``IsolationRecord``
document: ``{"record_type": ..., "record": ...}``), which upstream's crate decodes as is::

    prepare_session      intent: requested               result: capability_match, or downgrade_decision
                                                                 (approved) when approvals covered gaps
                         denial (matching): downgrade_decision (not approved) with the gaps
    prepare_environment  intent: environment_prepare_intent   result: environment_prepare_result
    start_process        intent: process_start_intent         result: process_start_result
    stream_io (stdin)                                         result: process_io_frame (no bytes)
    collect_stats        the process's exit, once: process_stats_snapshot
    cleanup              intent: cleanup_intent                result: cleanup_result
    any operation        result failed: failed (reason = the error's message, its retry class)

``configure_network``'s result carries upstream's ``IsolationNetworkPreparedRecord`` (not an
``IsolationRecord`` variant) in ``network_record``. Operations upstream has no record for (image, rootfs,
mounts, secrets, signals, detach, reclaim) keep their flat fields only.

Every record here is built from refs, classes, statuses, counts and summaries corral composes; the
environment's ``source``, ``destination`` and ``policy_refs`` are refs the caller chose, copied as
upstream's own ``effect_intent`` copies them. No request body, argv, env value or secret reaches a record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel

from corral.contract.domain import EffectIntent, EffectResult, EntityRef
from corral.contract.models import (
    CLASS_STRENGTH,
    CleanupResult,
    ExecutionEnvironment,
    IsolationCapabilityReport,
    ProcessStartResult,
    ProcessStatsSnapshot,
)
from corral.contract.records import (
    IsolationCapabilityMatchRecord,
    IsolationCleanupIntentRecord,
    IsolationCleanupResultRecord,
    IsolationDowngradeDecisionRecord,
    IsolationEnvironmentPrepareIntentRecord,
    IsolationEnvironmentPrepareResultRecord,
    IsolationEventBase,
    IsolationFailureRecord,
    IsolationNetworkPreparedRecord,
    IsolationProcessStartIntentRecord,
    IsolationProcessStartResultRecord,
    IsolationProcessStatsRecord,
    IsolationRecord,
    IsolationRequestedRecord,
)
from corral.contract.vocabulary import (
    CleanupStatus,
    EffectKind,
    EffectTerminalStatus,
    EntityKind,
    IsolationCapability,
    IsolationClass,
    IsolationTrustField,
    PolicyDecisionScope,
    PrivacyClass,
    RetentionClass,
    RetryClassification,
)

M = TypeVar("M", bound=BaseModel | str)

RECORD_FIELD = "record"
"""The journal field holding an ``IsolationRecord`` document."""
NETWORK_RECORD_FIELD = "network_record"
"""The journal field holding an ``IsolationNetworkPreparedRecord`` document (``configure_network``)."""

_SUMMARY_MAX = 500


@dataclass(frozen=True)
class EffectRecords(Generic[M]):
    """What ``Effects.run`` journals beside its flat fields: the record of the intent (given the
    effect id) and of the successful result (given the effect id and the result), each as the
    journal fields that hold it. A failure is a ``failed`` record for every operation (``failure``)."""

    intent: Callable[[str], dict[str, str]] | None = None
    result: Callable[[str, M], dict[str, str]] | None = None


def field(record: IsolationRecord | None) -> dict[str, str]:
    """The journal field(s) of a record: ``{"record": <json>}``, or nothing."""
    return {} if record is None else {RECORD_FIELD: record.model_dump_json()}


def _summary(text: str) -> str:
    return text[:_SUMMARY_MAX]


def subject(environment_id: str) -> EntityRef:
    return EntityRef.of(EntityKind.execution_environment, environment_id)


def effect_intent(env: ExecutionEnvironment, effect_id: str, kind: EffectKind, key: str, summary: str) -> EffectIntent:
    """The effect as upstream's ``EffectIntent``: corral's effect id and idempotency key, the environment
    as its subject, and the environment's source, destination and policy refs (as upstream's
    ``IsolatedProcessSpec::effect_intent`` copies them)."""
    return EffectIntent(
        effect_id=effect_id,
        kind=kind,
        subject_ref=subject(env.environment_id),
        source=env.source,
        destination=env.destination,
        policy_refs=env.policy_refs,
        idempotency_key=key,
        redacted_summary=_summary(summary),
    )


def completed(effect_id: str, summary: str, external_operation_id: str | None = None) -> EffectResult:
    return EffectResult(
        effect_id=effect_id,
        terminal_status=EffectTerminalStatus.completed,
        external_operation_id=external_operation_id,
        redacted_summary=_summary(summary),
    )


# -- prepare_session: requested, capability match, downgrade decisions ---------------------------------


def requested(env: ExecutionEnvironment) -> IsolationRecord:
    minimum = env.spec.requirement.minimum_class
    return IsolationRecord.of(
        IsolationRequestedRecord(
            environment_id=env.environment_id,
            requirement_ref=env.requirement_ref or f"isolation.requirement.{env.environment_id}",
            requested_class=minimum,
            source=env.source,
            destination=env.destination,
            policy_refs=env.policy_refs,
            redacted_summary=f"isolation requested: {minimum.value} or stronger",
        )
    )


def _gaps(gaps: Iterable[str]) -> tuple[list[IsolationCapability], list[IsolationTrustField], bool]:
    """corral's gap strings (``capability:x``, ``trust:y``, ``class:z``) as upstream's vocabularies."""
    capabilities: list[IsolationCapability] = []
    trust: list[IsolationTrustField] = []
    class_gap = False
    for gap in gaps:
        prefix, _, name = gap.partition(":")
        if prefix == "capability" and name in IsolationCapability.__members__:
            capabilities.append(IsolationCapability(name))
        elif prefix == "trust" and name in IsolationTrustField.__members__:
            trust.append(IsolationTrustField(name))
        elif prefix == "class":
            class_gap = True
    return capabilities, trust, class_gap


def selected_class(requested_class: IsolationClass, supported: Iterable[IsolationClass]) -> IsolationClass:
    """The class the host gives: the weakest supported class at least as strong as the one asked for,
    else (a class downgrade) the strongest it supports, else (nothing reported) the one asked for."""
    classes = sorted(set(supported), key=CLASS_STRENGTH.__getitem__)
    enough = [c for c in classes if CLASS_STRENGTH[c] >= CLASS_STRENGTH[requested_class]]
    if enough:
        return enough[0]
    return classes[-1] if classes else requested_class


def capability_decision(
    env: ExecutionEnvironment,
    report: IsolationCapabilityReport,
    *,
    gaps: Iterable[str],
    accepted: Iterable[str],
    denied: Iterable[str],
    approvals: Iterable[str],
) -> IsolationRecord:
    """Matching's outcome: a ``capability_match`` when nothing was missing; a ``downgrade_decision``
    when gaps were found, approved when approvals covered every one (``denied`` empty), denied otherwise."""
    requested_class = env.spec.requirement.minimum_class
    selected = selected_class(requested_class, report.supported_classes)
    gaps, accepted, denied = list(gaps), list(accepted), list(denied)
    if not gaps:
        return IsolationRecord.of(
            IsolationCapabilityMatchRecord(
                environment_id=env.environment_id,
                adapter_ref=report.adapter_ref,
                requested_class=requested_class,
                selected_class=selected,
                redacted_summary=f"{report.adapter_ref} matches {requested_class.value} as {selected.value}",
            )
        )
    capabilities, trust, _ = _gaps(gaps)
    approved = not denied
    listed = accepted if approved else denied
    return IsolationRecord.of(
        IsolationDowngradeDecisionRecord(
            environment_id=env.environment_id,
            adapter_ref=report.adapter_ref,
            requested_class=requested_class,
            selected_class=selected,
            capability_gaps=capabilities,
            trust_gaps=trust,
            approved=approved,
            policy_decision_scope=PolicyDecisionScope.IsolationDowngrade if approved else None,
            policy_decision_refs=list(dict.fromkeys(approvals)) if approved else [],
            redacted_summary=_summary(
                ("downgrade approved: " if approved else "downgrade denied: ") + ", ".join(listed)
            ),
        )
    )


# -- prepare_environment, start_process, stats, cleanup ----------------------------------------------


def environment_prepare(env: ExecutionEnvironment, key: str, process_id: str | None) -> EffectRecords[str]:
    what = f"environment for process {process_id}" if process_id else "environment"

    def intent(effect_id: str) -> dict[str, str]:
        intent = effect_intent(env, effect_id, EffectKind.isolated_process_start, key, f"prepare the {what}")
        return field(
            IsolationRecord.of(
                IsolationEnvironmentPrepareIntentRecord(
                    environment_id=env.environment_id, effect_intent=intent, redacted_summary=f"preparing the {what}"
                )
            )
        )

    def result(effect_id: str, prepared: str) -> dict[str, str]:
        return field(
            IsolationRecord.of(
                IsolationEnvironmentPrepareResultRecord(
                    environment_id=env.environment_id,
                    prepared_environment_ref=prepared,
                    effect_result=completed(effect_id, f"prepared {prepared}"),
                    redacted_summary=f"prepared the {what}",
                )
            )
        )

    return EffectRecords(intent, result)


def process_start(
    env: ExecutionEnvironment, key: str, process_ref: str, argv_count: int
) -> EffectRecords[ProcessStartResult]:
    def intent(effect_id: str) -> dict[str, str]:
        summary = f"start isolated process with redacted argv ({argv_count}) and environment"
        return field(
            IsolationRecord.of(
                IsolationProcessStartIntentRecord(
                    environment_id=env.environment_id,
                    process_ref=process_ref,
                    effect_intent=effect_intent(env, effect_id, EffectKind.isolated_process_start, key, summary),
                    redacted_summary=f"starting {process_ref}",
                )
            )
        )

    def result(effect_id: str, started: ProcessStartResult) -> dict[str, str]:
        effect = EffectResult(
            effect_id=effect_id,
            terminal_status=started.terminal_status,
            external_operation_id=started.external_operation_id,
            redacted_summary=f"process {started.process_ref} {started.terminal_status.value}",
        )
        return field(
            IsolationRecord.of(
                IsolationProcessStartResultRecord(
                    environment_id=env.environment_id,
                    process_ref=started.process_ref,
                    effect_result=effect,
                    redacted_summary=f"started {started.process_ref}",
                )
            )
        )

    return EffectRecords(intent, result)


def stats_snapshot(environment_id: str, snapshot: ProcessStatsSnapshot) -> IsolationRecord:
    """The snapshot that saw the process end (journaled once, when its exit is recorded)."""
    code = "" if snapshot.exit_code is None else f" exit {snapshot.exit_code}"
    reason = f" ({snapshot.reason.value})" if snapshot.reason is not None else ""
    return IsolationRecord.of(
        IsolationProcessStatsRecord(
            environment_id=environment_id,
            snapshot_ref=snapshot.snapshot_ref,
            redacted_summary=f"process {snapshot.process_ref} ended{code}{reason}",
        )
    )


def cleanup(env: ExecutionEnvironment, key: str, plan_ref: str) -> EffectRecords[CleanupResult]:
    def intent(effect_id: str) -> dict[str, str]:
        intent = effect_intent(env, effect_id, EffectKind.child_artifact_shutdown, key, f"clean up plan {plan_ref}")
        return field(
            IsolationRecord.of(
                IsolationCleanupIntentRecord(
                    environment_id=env.environment_id,
                    cleanup_plan_ref=plan_ref,
                    effect_intent=intent,
                    redacted_summary="cleanup started",
                )
            )
        )

    def result(effect_id: str, done: CleanupResult) -> dict[str, str]:
        ok = done.status is CleanupStatus.completed
        effect = EffectResult(
            effect_id=effect_id,
            terminal_status=EffectTerminalStatus.completed if ok else EffectTerminalStatus.failed,
            external_operation_id=done.external_operation_id,
            redacted_summary=_summary(done.redacted_summary or f"cleanup {done.status.value}"),
        )
        return field(
            IsolationRecord.of(
                IsolationCleanupResultRecord(
                    environment_id=env.environment_id,
                    cleanup_plan_ref=done.cleanup_plan_ref,
                    status=done.status,
                    effect_result=effect,
                    redacted_summary="cleanup completed" if ok else "cleanup needs repair",
                )
            )
        )

    return EffectRecords(intent, result)


def network_prepared(environment_id: str, network_ref: str) -> dict[str, str]:
    """``configure_network``'s result field: upstream's ``IsolationNetworkPreparedRecord``."""
    record = IsolationNetworkPreparedRecord(
        environment_id=environment_id,
        network_namespace_ref=network_ref,
        redacted_summary=f"network {network_ref} ready",
    )
    return {NETWORK_RECORD_FIELD: record.model_dump_json()}


# -- failures -------------------------------------------------------------------------------------------


def failure(environment_id: str, adapter_ref: str | None, reason: str, retry: RetryClassification) -> IsolationRecord:
    """A failed effect: upstream's ``failed`` record (the reason is the error's message, already safe
    to journal: errors never carry a secret value)."""
    return IsolationRecord.of(
        IsolationFailureRecord(
            environment_id=environment_id,
            adapter_ref=adapter_ref,
            reason=_summary(reason),
            retry_classification=retry,
        )
    )


def event_base(env: ExecutionEnvironment, agent_id: str = "agent.corral") -> IsolationEventBase:
    """The event base of an environment's records, for ``IsolationRecord.event_record``: its owner run,
    the environment as subject, its source, destination and policy refs, content-refs-only privacy."""
    return IsolationEventBase(
        run_id=env.spec.ownership.owner_run_id,
        agent_id=agent_id,
        subject_ref=subject(env.environment_id),
        source=env.source,
        destination=env.destination,
        policy_refs=env.policy_refs,
        privacy=PrivacyClass.content_refs_only,
        retention=RetentionClass.run_scoped,
        runtime_package_fingerprint=env.runtime_package_fingerprint,
    )
