"""The seed's isolation journal records (``records/isolation.rs``), exactly as upstream serializes them,
and the package-side requirement snapshot with its fingerprint fields (``package/isolation.rs``).

``tests/wire_corpus/SPEC.md`` §7 spells every type out. ``IsolationRecord`` is the one adjacently tagged
enum of the contract: ``{"record_type": "<variant>", "record": <payload>}``, both keys required; each
variant's payload is its own model here. ``event_record`` is upstream's pure mapping from a record and
an event base to the observable ``IsolationEventRecord`` (schema version 1).

Records are evidence, never content: they carry refs, classes, statuses and redacted summaries. A
record built by corral (``corral.host.journal_records``) never holds a request body or a secret value.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, JsonValue, model_validator

from corral.contract.domain import DestinationRef, EffectIntent, EffectResult, EntityRef, PolicyRef, SourceRef
from corral.contract.models import (
    EnvironmentLifecyclePolicy,
    ExecutionEnvironment,
    IsolationFallback,
    IsolationRequirement,
    IsolationTrustRequirement,
    PackageSidecarRef,
    ProcessOwnershipPolicy,
)
from corral.contract.vocabulary import (
    CleanupStatus,
    IsolationCapability,
    IsolationClass,
    IsolationEventKind,
    IsolationTrustField,
    PolicyDecisionScope,
    PrivacyClass,
    ProcessIoStream,
    RetentionClass,
    RetryClassification,
)
from corral.contract.wire import U16, U64, Id, Model, omit_empty, omit_none

ISOLATION_RECORD_SCHEMA_VERSION = 1
"""``records::isolation::ISOLATION_RECORD_SCHEMA_VERSION``: every ``IsolationEventRecord`` carries it."""

ISOLATION_REQUIREMENT_SCHEMA_VERSION = 1
"""``package::isolation::ISOLATION_REQUIREMENT_SCHEMA_VERSION`` of ``IsolationRequirementSnapshot``."""


# -- the payloads of IsolationRecord ------------------------------------------------------------


class IsolationRequestedRecord(Model):
    environment_id: Id
    requirement_ref: Id
    requested_class: IsolationClass
    source: SourceRef
    destination: DestinationRef
    policy_refs: list[PolicyRef] = omit_empty()
    redacted_summary: str


class IsolationCapabilityReportedRecord(Model):
    environment_id: Id
    adapter_ref: Id
    capability_report_ref: str
    """A plain string upstream (not a validated id)."""
    health: str
    """A free string here (not the report's ``IsolationRuntimeHealth``)."""
    redacted_summary: str


class IsolationCapabilityMatchRecord(Model):
    environment_id: Id
    adapter_ref: Id
    requested_class: IsolationClass
    selected_class: IsolationClass
    missing_capabilities: list[IsolationCapability] = omit_empty()
    trust_gaps: list[IsolationTrustField] = omit_empty()
    redacted_summary: str


class IsolationDowngradeDecisionRecord(Model):
    environment_id: Id
    adapter_ref: Id
    requested_class: IsolationClass
    selected_class: IsolationClass
    capability_gaps: list[IsolationCapability] = omit_empty()
    trust_gaps: list[IsolationTrustField] = omit_empty()
    approved: bool
    policy_decision_scope: PolicyDecisionScope | None = None
    """A plain ``Option``: emitted as ``null`` when None (but required by neither side)."""
    policy_decision_refs: list[Id] = omit_empty()
    redacted_summary: str


class IsolationEnvironmentPrepareIntentRecord(Model):
    environment_id: Id
    effect_intent: EffectIntent
    redacted_summary: str


class IsolationEnvironmentPrepareResultRecord(Model):
    environment_id: Id
    prepared_environment_ref: Id
    effect_result: EffectResult
    redacted_summary: str


class IsolationProcessStartIntentRecord(Model):
    environment_id: Id
    process_ref: Id
    effect_intent: EffectIntent
    redacted_summary: str


class IsolationProcessStartResultRecord(Model):
    environment_id: Id
    process_ref: Id
    effect_result: EffectResult
    content_refs: list[Id] = omit_empty()
    redacted_summary: str


class IsolationProcessIoFrameRecord(Model):
    """The ``process_io_frame`` payload: upstream's port type ``ProcessIoFrame`` itself, field for field.

    Kept here (upstream's fields only, no corral extension) so a record never depends on what corral's
    ``models.ProcessIoFrame`` adds beside the contract (cursors of its own, ``content_b64``, ...):
    ``IsolationRecord.process_io_frame`` builds one from such a frame and drops every byte of content."""

    stream_ref: Id
    stream: ProcessIoStream
    cursor: U64
    byte_count: U64
    content_hash: str
    content_refs: list[Id] = omit_empty()
    raw_content_present: bool
    truncated: bool
    redacted_summary: str


class IsolationProcessStatsRecord(Model):
    environment_id: Id
    snapshot_ref: Id
    redacted_summary: str


class IsolationCleanupIntentRecord(Model):
    environment_id: Id
    cleanup_plan_ref: Id
    effect_intent: EffectIntent
    redacted_summary: str


class IsolationCleanupResultRecord(Model):
    environment_id: Id
    cleanup_plan_ref: Id
    status: CleanupStatus
    effect_result: EffectResult
    redacted_summary: str


class IsolationFailureRecord(Model):
    environment_id: Id
    adapter_ref: Id | None = None
    """A plain ``Option``: ``null`` when no adapter was chosen."""
    reason: str
    retry_classification: RetryClassification


class IsolationNetworkPreparedRecord(Model):
    """Not an ``IsolationRecord`` variant upstream: a record of its own."""

    environment_id: Id
    network_namespace_ref: Id
    redacted_summary: str


# -- IsolationRecord: adjacently tagged ----------------------------------------------------------


class IsolationRecordType(StrEnum):
    requested = "requested"
    adapter_capability_reported = "adapter_capability_reported"
    capability_match = "capability_match"
    downgrade_decision = "downgrade_decision"
    environment_prepare_intent = "environment_prepare_intent"
    environment_prepare_result = "environment_prepare_result"
    process_start_intent = "process_start_intent"
    process_start_result = "process_start_result"
    process_io_frame = "process_io_frame"
    process_stats_snapshot = "process_stats_snapshot"
    cleanup_intent = "cleanup_intent"
    cleanup_result = "cleanup_result"
    failed = "failed"


IsolationRecordPayload = (
    IsolationRequestedRecord
    | IsolationCapabilityReportedRecord
    | IsolationCapabilityMatchRecord
    | IsolationDowngradeDecisionRecord
    | IsolationEnvironmentPrepareIntentRecord
    | IsolationEnvironmentPrepareResultRecord
    | IsolationProcessStartIntentRecord
    | IsolationProcessStartResultRecord
    | IsolationProcessIoFrameRecord
    | IsolationProcessStatsRecord
    | IsolationCleanupIntentRecord
    | IsolationCleanupResultRecord
    | IsolationFailureRecord
)

PAYLOAD_OF: dict[IsolationRecordType, type[Model]] = {
    IsolationRecordType.requested: IsolationRequestedRecord,
    IsolationRecordType.adapter_capability_reported: IsolationCapabilityReportedRecord,
    IsolationRecordType.capability_match: IsolationCapabilityMatchRecord,
    IsolationRecordType.downgrade_decision: IsolationDowngradeDecisionRecord,
    IsolationRecordType.environment_prepare_intent: IsolationEnvironmentPrepareIntentRecord,
    IsolationRecordType.environment_prepare_result: IsolationEnvironmentPrepareResultRecord,
    IsolationRecordType.process_start_intent: IsolationProcessStartIntentRecord,
    IsolationRecordType.process_start_result: IsolationProcessStartResultRecord,
    IsolationRecordType.process_io_frame: IsolationProcessIoFrameRecord,
    IsolationRecordType.process_stats_snapshot: IsolationProcessStatsRecord,
    IsolationRecordType.cleanup_intent: IsolationCleanupIntentRecord,
    IsolationRecordType.cleanup_result: IsolationCleanupResultRecord,
    IsolationRecordType.failed: IsolationFailureRecord,
}
"""Variant name → payload model (``#[serde(tag = "record_type", content = "record")]``)."""

_TYPE_OF: dict[type[Model], IsolationRecordType] = {payload: tag for tag, payload in PAYLOAD_OF.items()}
_PAYLOAD_BY_NAME: dict[str, type[Model]] = {tag.value: payload for tag, payload in PAYLOAD_OF.items()}


class IsolationRecord(Model):
    """``{"record_type": ..., "record": ...}``. Build one with ``IsolationRecord.of(payload)``."""

    record_type: IsolationRecordType
    record: IsolationRecordPayload

    @model_validator(mode="before")
    @classmethod
    def _payload_of_its_type(cls, data: Any) -> Any:
        """Validate ``record`` as the payload its ``record_type`` names (not as whichever fits)."""
        if isinstance(data, dict) and isinstance(data.get("record"), dict):
            payload = _PAYLOAD_BY_NAME.get(str(data.get("record_type")))
            if payload is not None:
                return {**data, "record": payload.model_validate(data["record"])}
        return data

    @model_validator(mode="after")
    def _tag_matches_payload(self) -> IsolationRecord:
        if not isinstance(self.record, PAYLOAD_OF[self.record_type]):
            raise ValueError(f"record_type {self.record_type} does not carry a {type(self.record).__name__}")
        return self

    @classmethod
    def of(cls, payload: IsolationRecordPayload) -> IsolationRecord:
        return cls(record_type=_TYPE_OF[type(payload)], record=payload)

    @classmethod
    def process_io_frame(cls, frame: BaseModel) -> IsolationRecord:
        """A ``process_io_frame`` record from any frame model with upstream's fields (corral's
        ``ProcessIoFrame`` included): only those fields are kept, so no content byte reaches a record."""
        data = frame.model_dump(mode="json")
        fields = IsolationProcessIoFrameRecord.model_fields
        return cls.of(IsolationProcessIoFrameRecord.model_validate({k: v for k, v in data.items() if k in fields}))

    def event_record(self, base: IsolationEventBase) -> IsolationEventRecord:
        return event_record(self, base)


# -- events ----------------------------------------------------------------------------------------


class IsolationEventBase(Model):
    run_id: Id
    agent_id: Id
    subject_ref: EntityRef
    related_refs: list[EntityRef] = omit_empty()
    source: SourceRef
    destination: DestinationRef
    policy_refs: list[PolicyRef] = omit_empty()
    privacy: PrivacyClass
    retention: RetentionClass
    runtime_package_fingerprint: str
    """``RuntimePackageFingerprint``: a bare, unvalidated string (``""`` accepted)."""


class IsolationEventRecord(Model):
    schema_version: U16
    run_id: Id
    agent_id: Id
    event_kind: IsolationEventKind
    subject_ref: EntityRef
    related_refs: list[EntityRef] = omit_empty()
    source: SourceRef
    destination: DestinationRef
    policy_refs: list[PolicyRef] = omit_empty()
    privacy: PrivacyClass
    retention: RetentionClass
    runtime_package_fingerprint: str
    redacted_summary: str


_KIND_OF: dict[IsolationRecordType, IsolationEventKind] = {
    IsolationRecordType.requested: IsolationEventKind.isolation_requested,
    IsolationRecordType.adapter_capability_reported: IsolationEventKind.isolation_adapter_health_checked,
    IsolationRecordType.capability_match: IsolationEventKind.isolation_capability_matched,
    IsolationRecordType.environment_prepare_intent: IsolationEventKind.isolation_environment_prepared,
    IsolationRecordType.environment_prepare_result: IsolationEventKind.isolation_environment_prepared,
    IsolationRecordType.process_start_intent: IsolationEventKind.isolation_process_started,
    IsolationRecordType.process_start_result: IsolationEventKind.isolation_process_started,
    IsolationRecordType.process_io_frame: IsolationEventKind.isolation_process_io_captured,
    IsolationRecordType.process_stats_snapshot: IsolationEventKind.isolation_process_stats_recorded,
    IsolationRecordType.cleanup_intent: IsolationEventKind.isolation_cleanup_started,
    IsolationRecordType.failed: IsolationEventKind.isolation_failed,
}


def event_kind(record: IsolationRecord) -> IsolationEventKind:
    """Upstream's ``event_record`` match: the event kind a record produces."""
    payload = record.record
    if isinstance(payload, IsolationDowngradeDecisionRecord):
        return (
            IsolationEventKind.isolation_downgrade_approved
            if payload.approved
            else IsolationEventKind.isolation_downgrade_denied
        )
    if isinstance(payload, IsolationCleanupResultRecord):
        return (
            IsolationEventKind.isolation_cleanup_completed
            if payload.status is CleanupStatus.completed
            else IsolationEventKind.isolation_cleanup_failed
        )
    return _KIND_OF[record.record_type]


def event_summary(record: IsolationRecord) -> str:
    """The event's summary: the payload's ``redacted_summary`` (a failure's ``reason``)."""
    payload = record.record
    return payload.reason if isinstance(payload, IsolationFailureRecord) else payload.redacted_summary


def event_record(record: IsolationRecord, base: IsolationEventBase) -> IsolationEventRecord:
    """``IsolationRecord::event_record``: pure; schema version 1, the base copied, kind and summary
    from the record."""
    return IsolationEventRecord(
        schema_version=ISOLATION_RECORD_SCHEMA_VERSION,
        event_kind=event_kind(record),
        redacted_summary=event_summary(record),
        **{name: getattr(base, name) for name in IsolationEventBase.model_fields},
    )


# -- the package side: requirement snapshot and fingerprint fields ---------------------------------


class IsolationFingerprintFields(Model):
    """Deterministic evidence of an environment's requirement, for stale checks and replay comparisons
    (each ``*_hash`` is ``stable_hash`` of the environment's part it names)."""

    minimum_class: IsolationClass
    trust: IsolationTrustRequirement
    required_capabilities_hash: str
    preferred_adapter_refs: list[Id] = omit_empty()
    fallback_policy: IsolationFallback
    image_policy_hash: str | None = omit_none()
    rootfs_policy_hash: str | None = omit_none()
    mount_policy_hash: str
    network_policy_hash: str
    secret_policy_hash: str
    resource_policy_hash: str
    cleanup_policy_ref: PolicyRef
    child_lifecycle_policy_ref: Id
    redaction_policy_ref: PolicyRef

    @classmethod
    def from_environment(
        cls,
        environment: ExecutionEnvironment,
        cleanup_policy_ref: PolicyRef,
        child_lifecycle_policy_ref: str,
        redaction_policy_ref: PolicyRef,
    ) -> IsolationFingerprintFields:
        """Upstream's ``IsolationFingerprintFields::from_environment``: the requirement's class, trust,
        adapters and fallback as they are, every other part of the spec as its ``stable_hash``."""
        spec = environment.spec
        requirement = spec.requirement
        return cls(
            minimum_class=requirement.minimum_class,
            trust=requirement.trust,
            required_capabilities_hash=stable_hash(requirement.required_capabilities),
            preferred_adapter_refs=requirement.preferred_adapters,
            fallback_policy=requirement.fallback,
            image_policy_hash=None if spec.image is None else stable_hash(spec.image),
            rootfs_policy_hash=None if spec.rootfs is None else stable_hash(spec.rootfs),
            mount_policy_hash=stable_hash(spec.filesystem),
            network_policy_hash=stable_hash(spec.network),
            secret_policy_hash=stable_hash(spec.secrets),
            resource_policy_hash=stable_hash(spec.resources),
            cleanup_policy_ref=cleanup_policy_ref,
            child_lifecycle_policy_ref=child_lifecycle_policy_ref,
            redaction_policy_ref=redaction_policy_ref,
        )


class IsolationRequirementSnapshot(Model):
    """The isolation sidecar of a runtime package snapshot (``package::isolation``)."""

    requirement_ref: Id
    sidecar_ref: PackageSidecarRef
    schema_version: U16
    requirement: IsolationRequirement
    lifecycle_defaults: EnvironmentLifecyclePolicy
    process_defaults: ProcessOwnershipPolicy
    redaction_policy_ref: PolicyRef
    allowed_downgrade_policy_refs: list[PolicyRef] = omit_empty()
    cleanup_policy_ref: PolicyRef
    child_lifecycle_policy_ref: Id
    fingerprint_fields: IsolationFingerprintFields

    @classmethod
    def from_environment(
        cls,
        sidecar_id: str,
        environment: ExecutionEnvironment,
        redaction_policy_ref: PolicyRef,
        cleanup_policy_ref: PolicyRef,
        child_lifecycle_policy_ref: PolicyRef,
    ) -> IsolationRequirementSnapshot:
        """Upstream's ``IsolationRequirementSnapshot::from_environment`` (the child lifecycle policy is
        kept by its id, as upstream's ``RunChildLifecyclePolicyRef::new(policy.as_str())``)."""
        child = child_lifecycle_policy_ref.id
        spec = environment.spec
        return cls(
            requirement_ref=environment.requirement_ref,
            sidecar_ref=PackageSidecarRef(sidecar_id=sidecar_id, kind="isolation_requirement", version="v1"),
            schema_version=ISOLATION_REQUIREMENT_SCHEMA_VERSION,
            requirement=spec.requirement,
            lifecycle_defaults=spec.lifecycle,
            process_defaults=spec.ownership,
            redaction_policy_ref=redaction_policy_ref,
            allowed_downgrade_policy_refs=spec.requirement.fallback.required_policy_refs,
            cleanup_policy_ref=cleanup_policy_ref,
            child_lifecycle_policy_ref=child,
            fingerprint_fields=IsolationFingerprintFields.from_environment(
                environment, cleanup_policy_ref, child, redaction_policy_ref
            ),
        )


def stable_hash(value: BaseModel | JsonValue) -> str:
    """Upstream's ``stable_hash``: ``sha256:`` + hex of SHA-256 over ``serde_json::to_vec(value)``,
    the compact JSON with keys in declaration order (a model dumps its fields in that order) and
    non-ASCII characters written as UTF-8, as serde_json writes them."""
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()
