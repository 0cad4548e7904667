"""The seed's domain references that cross the contract: policy, source, destination and entity refs,
and the effect intent and result every side effect is journaled with (``records/effect.rs``).

Shapes are upstream's exactly (``tests/wire_corpus/SPEC.md`` §6, §8); constructors mirror the
upstream builders corral relies on (``PolicyRef.host``, ``SourceRef.with_kind``, ...).
"""

from __future__ import annotations

from corral.contract.vocabulary import (
    DestinationKind,
    EffectKind,
    EffectTerminalStatus,
    EntityKind,
    PolicyKind,
    PrivacyClass,
    RetentionClass,
    SourceKind,
    TrustClass,
)
from corral.contract.wire import Id, Model, omit_empty, omit_none


class PolicyRef(Model):
    kind: PolicyKind
    id: Id
    version: str | None = omit_none()

    @classmethod
    def host(cls, policy_id: str) -> PolicyRef:
        """Upstream ``PolicyRef::new``: a host policy."""
        return cls(kind=PolicyKind.host, id=policy_id)


class CorrelationEntry(Model):
    key: Id
    value: Id


class SourceRef(Model):
    kind: SourceKind
    id: Id
    trust: TrustClass
    privacy: PrivacyClass
    correlation: list[CorrelationEntry] = omit_empty()
    redacted_summary: str | None = omit_none()

    @classmethod
    def with_kind(cls, kind: SourceKind, source_id: str) -> SourceRef:
        return cls(kind=kind, id=source_id, trust=TrustClass.host_provided, privacy=PrivacyClass.content_refs_only)


class DestinationRef(Model):
    kind: DestinationKind
    id: Id
    privacy: PrivacyClass
    retention: RetentionClass
    correlation: list[CorrelationEntry] = omit_empty()
    redacted_summary: str | None = omit_none()

    @classmethod
    def with_kind(cls, kind: DestinationKind, destination_id: str) -> DestinationRef:
        return cls(
            kind=kind, id=destination_id, privacy=PrivacyClass.content_refs_only, retention=RetentionClass.host_policy
        )


class EntityRef(Model):
    kind: EntityKind
    id: Id
    source: SourceRef | None = omit_none()
    privacy: PrivacyClass
    redacted_summary: str | None = omit_none()

    @classmethod
    def of(cls, kind: EntityKind, entity_id: str) -> EntityRef:
        return cls(kind=kind, id=entity_id, privacy=PrivacyClass.content_refs_only)


class EffectIntent(Model):
    effect_id: Id
    kind: EffectKind
    subject_ref: EntityRef
    source: SourceRef
    destination: DestinationRef | None = omit_none()
    policy_refs: list[PolicyRef] = omit_empty()
    idempotency_key: Id | None = omit_none()
    dedupe_key: Id | None = omit_none()
    content_refs: list[Id] = omit_empty()
    redacted_summary: str


class EffectResult(Model):
    effect_id: Id
    terminal_status: EffectTerminalStatus
    external_operation_id: str | None = omit_none()
    reconciliation_ref: str | None = omit_none()
    error_ref: str | None = omit_none()
    content_refs: list[Id] = omit_empty()
    redacted_summary: str
