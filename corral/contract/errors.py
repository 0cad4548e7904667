"""One error tree for the whole contract, split by retry classification, spoken on the wire as the
seed's ``AgentError`` (``domain/error.rs``; ``tests/wire_corpus/SPEC.md`` §5).

Every failure that crosses a boundary (adapter -> coordinator -> Celery -> client) is an
``AgentError`` exception: a corral *kind* (what went wrong), a *retry* classification (what the caller
may do about it), a message and a flat string context. The retry classification alone decides whether
a task is retried::

    AgentError                                   (kind, retry, message, context)
    ├── NotRetryable            retry=not_retryable      a bad request: never retried
    │   ├── InvalidRequest          kind=invalid_request     malformed or absurd input
    │   ├── NotFound                kind=not_found           unknown session, process, ticket, host, image
    │   ├── Conflict                kind=conflict            idempotency key reused with another body
    │   ├── InvalidStateTransition  kind=invalid_state_transition
    │   ├── PolicyDenial            kind=policy_denial       host policy or capability matching said no
    │   └── Unsupported             kind=unsupported_capability
    ├── Retryable               retry=retryable          transient: the same request may succeed later
    │   ├── IsolationFailure        kind=isolation_failure   the backend failed (Docker API error, ...)
    │   ├── JournalFailure          kind=journal_failure     intent could not be recorded: no effect ran
    │   ├── InProgress              kind=in_progress         another delivery holds the idempotency lease
    │   └── TimeoutFailure          kind=timeout
    ├── RepairNeeded            retry=repair_needed      an effect may be half-done: an operator looks
    └── HostConfigurationNeeded retry=host_configuration_needed  the host lacks a prerequisite

**On the wire** an error is upstream's ``AgentError`` document (``AgentErrorDocument``): the externally
tagged enum ``MissingRequiredField{field}`` | ``ContractViolation{message}`` |
``HostConfigurationNeeded{message}`` | ``Classified{kind, retry, context: ErrorContext, causal_ids:
CausalIds}``, kinds and retry classes in upstream's PascalCase. corral always sends ``Classified``.
``retry`` maps one to one (``not_retryable`` <-> ``NotRetryable``, ...). ``ErrorKind`` holds upstream's
20 kinds in snake_case (one to one as well) plus five of corral's own, which upstream lacks and which go
on the wire as the upstream kind below, the retry class being kept as it is:

    corral kind             upstream AgentErrorKind   why
    invalid_request         InvalidPackage            upstream refuses malformed input so (MissingRequiredField)
    not_found               InvalidStateTransition    the operation names a session/process/ticket not in a state
                                                      (or no longer in existence) where it applies
    conflict                InvalidStateTransition    the request contradicts what is recorded (idempotency key
                                                      reused with another body, a session owned by another)
    in_progress             InvalidStateTransition    the same operation is mid-transition elsewhere (Retryable)
    unsupported_capability  IsolationFailure          the isolation backend cannot provide it; upstream's own
                                                      ``isolation_host_configuration_needed`` is IsolationFailure

What upstream cannot say travels in one optional extension key of the ``ErrorContext``, which upstream's
decoder ignores: ``context.corral = {"type": "NotFound", "kind": "not_found", "detail": {...}}`` (the
exception class, corral's kind, its context dict; ``detail`` omitted when empty). It is omitted entirely
when upstream's fields already say everything (an upstream kind, no detail, the class ``class_for``
derives). Decoding trusts the extension only where it agrees with upstream's fields: corral's kind is
taken only if it maps to the document's upstream kind, and the retry class always comes from upstream.

A document without the extension (one the upstream crate produced) is rebuilt as ``class_for(kind,
retry)``: the class of that kind when its default retry class matches, else the class of the retry
branch (``Retryable``, ``NotRetryable``, ``RepairNeeded``, ``HostConfigurationNeeded``), else the class of
the kind, else ``AgentError``. So upstream's ``HostConfigurationNeeded{message}`` becomes a
``HostConfigurationNeeded`` that is not retryable, and ``Classified{PolicyDenial, UserActionNeeded}`` a
``PolicyDenial`` whose retry class is ``user_action_needed``. An exception decoded from a document keeps
that document and dumps it back unchanged (short variants included).

Celery's JSON result backend stores an exception as its class name, module and ``args`` and rebuilds
it with ``cls(*args)``. An ``AgentError``'s ``args`` are ``(document,)``, the upstream JSON, and the
constructor accepts that document: what the result backend holds for a failed task is the upstream
error, and the client gets the same typed exception back with its details intact.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, model_validator

from corral.contract.domain import DestinationRef, EntityRef, PolicyRef, SourceRef
from corral.contract.vocabulary import AgentErrorKind, PrivacyClass, RetryClassification
from corral.contract.wire import Id, Model, omit_none


class ErrorKind(StrEnum):
    # upstream's AgentErrorKind, snake_case, in its declaration order
    invalid_package = "invalid_package"
    invalid_state_transition = "invalid_state_transition"
    provider_failure = "provider_failure"
    projection_failure = "projection_failure"
    tool_failure = "tool_failure"
    approval_failure = "approval_failure"
    policy_denial = "policy_denial"
    journal_failure = "journal_failure"
    telemetry_failure = "telemetry_failure"
    isolation_failure = "isolation_failure"
    structured_output_failure = "structured_output_failure"
    stream_rule_failure = "stream_rule_failure"
    subagent_failure = "subagent_failure"
    extension_failure = "extension_failure"
    cancellation = "cancellation"
    child_lifecycle_failure = "child_lifecycle_failure"
    hook_failure = "hook_failure"
    timeout = "timeout"
    recovery_repair_needed = "recovery_repair_needed"
    host_configuration_needed = "host_configuration_needed"
    # corral's own: on the wire as CORRAL_KINDS[kind], the name kept in context.corral
    invalid_request = "invalid_request"
    not_found = "not_found"
    conflict = "conflict"
    in_progress = "in_progress"
    unsupported_capability = "unsupported_capability"


class RetryClass(StrEnum):
    retryable = "retryable"
    not_retryable = "not_retryable"
    repair_needed = "repair_needed"
    user_action_needed = "user_action_needed"
    host_configuration_needed = "host_configuration_needed"


def _snake(name: str) -> str:
    return "".join(f"_{ch.lower()}" if ch.isupper() and i else ch.lower() for i, ch in enumerate(name))


CORRAL_KINDS: Mapping[ErrorKind, AgentErrorKind] = {
    ErrorKind.invalid_request: AgentErrorKind.InvalidPackage,
    ErrorKind.not_found: AgentErrorKind.InvalidStateTransition,
    ErrorKind.conflict: AgentErrorKind.InvalidStateTransition,
    ErrorKind.in_progress: AgentErrorKind.InvalidStateTransition,
    ErrorKind.unsupported_capability: AgentErrorKind.IsolationFailure,
}
"""corral's kinds that upstream lacks -> the upstream kind they are sent as (module docstring)."""

_FROM_UPSTREAM_KIND: dict[AgentErrorKind, ErrorKind] = {k: ErrorKind(_snake(k.value)) for k in AgentErrorKind}
_TO_UPSTREAM_KIND: dict[ErrorKind, AgentErrorKind] = {
    **{v: k for k, v in _FROM_UPSTREAM_KIND.items()},
    **CORRAL_KINDS,
}
_FROM_UPSTREAM_RETRY: dict[RetryClassification, RetryClass] = {
    r: RetryClass(_snake(r.value)) for r in RetryClassification
}
_TO_UPSTREAM_RETRY: dict[RetryClass, RetryClassification] = {v: k for k, v in _FROM_UPSTREAM_RETRY.items()}


def upstream_kind(kind: ErrorKind) -> AgentErrorKind:
    return _TO_UPSTREAM_KIND[kind]


def upstream_retry(retry: RetryClass) -> RetryClassification:
    return _TO_UPSTREAM_RETRY[retry]


# -- the wire form ----------------------------------------------------------------------------


def _is_empty(value: object) -> bool:
    return not value


class CorralErrorDetail(Model):
    """``ErrorContext.corral``: corral's extension, ignored by upstream. Unknown keys in it are
    ignored too (a newer corral may say more)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    type: str | None = omit_none()
    """The exception class (``NotFound``), so the client raises the same one."""
    kind: str | None = omit_none()
    """corral's ``ErrorKind`` where it says more than upstream's kind."""
    detail: dict[str, str] = Field(default_factory=dict, exclude_if=_is_empty)
    """The exception's context dict."""


class ErrorContext(Model):
    """Upstream ``ErrorContext``: no skip attributes, all keys emitted (Options as ``null``);
    ``policy_refs`` is required on decode."""

    message: str
    policy_refs: list[PolicyRef]
    source: SourceRef | None = None
    destination: DestinationRef | None = None
    subject: EntityRef | None = None
    privacy: PrivacyClass | None = None
    redacted_summary: str | None = None
    corral: CorralErrorDetail | None = omit_none()
    """corral's extension (not upstream's): omitted when absent."""

    @classmethod
    def of(cls, message: str) -> ErrorContext:
        """Upstream ``ErrorContext::new``."""
        return cls(message=message, policy_refs=[])


class CausalIds(Model):
    """Upstream ``CausalIds``: all keys emitted; ``related`` is required on decode."""

    run_id: Id | None = None
    turn_id: Id | None = None
    attempt_id: Id | None = None
    event_id: Id | None = None
    tool_call_id: Id | None = None
    span_id: Id | None = None
    related: list[EntityRef]

    @classmethod
    def none(cls) -> CausalIds:
        """Upstream ``CausalIds::default()``."""
        return cls(related=[])


class MissingRequiredFieldError(Model):
    field: str


class MessageError(Model):
    message: str


class ClassifiedError(Model):
    kind: AgentErrorKind
    retry: RetryClassification
    context: ErrorContext
    causal_ids: CausalIds


class AgentErrorDocument(Model):
    """Upstream's ``AgentError`` enum (externally tagged, PascalCase variants): exactly one of the four
    keys is present. ``kind``, ``retry``, ``context`` and ``causal_ids`` are upstream's accessors (derived
    for the three short variants, which carry none of them)."""

    MissingRequiredField: MissingRequiredFieldError | None = omit_none()
    ContractViolation: MessageError | None = omit_none()
    HostConfigurationNeeded: MessageError | None = omit_none()
    Classified: ClassifiedError | None = omit_none()

    @model_validator(mode="after")
    def _exactly_one_variant(self) -> AgentErrorDocument:
        present = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(present) != 1:
            raise ValueError(f"an AgentError names exactly one variant, got {present or 'none'}")
        return self

    @classmethod
    def classified(
        cls,
        kind: AgentErrorKind,
        retry: RetryClassification,
        context: ErrorContext,
        causal_ids: CausalIds | None = None,
    ) -> AgentErrorDocument:
        return cls(
            Classified=ClassifiedError(
                kind=kind, retry=retry, context=context, causal_ids=causal_ids or CausalIds.none()
            )
        )

    @property
    def variant(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    @property
    def kind(self) -> AgentErrorKind:
        if self.Classified is not None:
            return self.Classified.kind
        if self.MissingRequiredField is not None:
            return AgentErrorKind.InvalidPackage
        if self.ContractViolation is not None:
            return AgentErrorKind.InvalidStateTransition
        return AgentErrorKind.HostConfigurationNeeded

    @property
    def retry(self) -> RetryClassification:
        if self.Classified is not None:
            return self.Classified.retry
        if self.ContractViolation is not None:
            return RetryClassification.RepairNeeded
        return RetryClassification.HostConfigurationNeeded

    @property
    def context(self) -> ErrorContext:
        if self.Classified is not None:
            return self.Classified.context
        if self.MissingRequiredField is not None:
            return ErrorContext.of(f"missing required field: {self.MissingRequiredField.field}")
        body = self.ContractViolation or self.HostConfigurationNeeded
        assert body is not None
        return ErrorContext.of(body.message)

    @property
    def causal_ids(self) -> CausalIds:
        return self.Classified.causal_ids if self.Classified is not None else CausalIds.none()

    @property
    def message(self) -> str:
        return self.context.message

    def display(self) -> str:
        """Upstream's ``Display``."""
        if self.MissingRequiredField is not None:
            return f"missing required field: {self.MissingRequiredField.field}"
        if self.ContractViolation is not None:
            return f"contract violation: {self.ContractViolation.message}"
        if self.HostConfigurationNeeded is not None:
            return f"host configuration needed: {self.HostConfigurationNeeded.message}"
        return f"{self.kind.value}: {self.message}"


# -- the exception ------------------------------------------------------------------------------


class AgentError(Exception):
    """The contract's error: typed, JSON-safe, and never carrying a secret value.

    Build one as ``NotFound(message, kind=None, retry=None, context=None)`` (the class's defaults fill
    in kind and retry), or from an upstream document: ``AgentError.from_wire(doc)`` picks the class,
    ``NotFound(doc)`` keeps the one given (Celery's way). Attributes are read-only by convention:
    ``document`` (and ``args``) are computed once."""

    default_kind: ClassVar[ErrorKind] = ErrorKind.isolation_failure
    default_retry: ClassVar[RetryClass] = RetryClass.retryable

    def __init__(
        self,
        message: str | Mapping[str, Any] | AgentErrorDocument,
        kind: ErrorKind | str | None = None,
        retry: RetryClass | str | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        error_context: ErrorContext | None = None,
        causal_ids: CausalIds | None = None,
    ) -> None:
        self.message: str
        self.kind: ErrorKind
        self.retry: RetryClass
        self.context: dict[str, str]
        self.document: AgentErrorDocument
        if isinstance(message, AgentErrorDocument | Mapping):
            document = (
                message if isinstance(message, AgentErrorDocument) else AgentErrorDocument.model_validate(message)
            )
            self.message, self.kind, self.retry, self.context = _decode(document)
            self.document = document
        else:
            self.message = str(message)
            self.kind = ErrorKind(kind) if kind is not None else self.default_kind
            self.retry = RetryClass(retry) if retry is not None else self.default_retry
            self.context = {str(k): str(v) for k, v in (context or {}).items()}
            self.document = self._encode(error_context, causal_ids)
        super().__init__(self.document.model_dump(mode="json"))

    def _encode(self, error_context: ErrorContext | None, causal_ids: CausalIds | None) -> AgentErrorDocument:
        up_kind = upstream_kind(self.kind)
        plain = (
            type(self) is class_for(self.kind, self.retry)
            and _FROM_UPSTREAM_KIND[up_kind] is self.kind
            and not self.context
        )
        extension = (
            None if plain else CorralErrorDetail(type=type(self).__name__, kind=self.kind.value, detail=self.context)
        )
        base = error_context or ErrorContext.of(self.message)
        context = base.model_copy(update={"message": self.message, "corral": extension})
        return AgentErrorDocument.classified(up_kind, upstream_retry(self.retry), context, causal_ids)

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, kind={self.kind.value!r}, retry={self.retry.value!r})"

    @property
    def retryable(self) -> bool:
        return self.retry is RetryClass.retryable

    @property
    def upstream_kind(self) -> AgentErrorKind:
        return self.document.kind

    @property
    def upstream_retry(self) -> RetryClassification:
        return self.document.retry

    @property
    def error_context(self) -> ErrorContext:
        """Upstream's ``ErrorContext`` of this error (with corral's extension, if any)."""
        return self.document.context

    @property
    def causal_ids(self) -> CausalIds:
        return self.document.causal_ids

    def to_payload(self) -> dict[str, Any]:
        """The upstream ``AgentError`` JSON document."""
        return self.document.model_dump(mode="json")

    @classmethod
    def from_wire(cls, document: Mapping[str, Any] | AgentErrorDocument) -> AgentError:
        """Rebuild the most specific class for an upstream document (``context.corral.type`` if it
        names a class of this module, else ``class_for(kind, retry)``)."""
        doc = document if isinstance(document, AgentErrorDocument) else AgentErrorDocument.model_validate(document)
        _, kind, retry, _ = _decode(doc)
        extension = doc.context.corral
        named = _BY_NAME.get(extension.type) if extension is not None and extension.type else None
        return (named or class_for(kind, retry))(doc)

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> AgentError:
        """``from_wire``; also reads corral's former flat payload (``{"type", "kind", "retry", "message",
        "context"}``, still in idempotency records written before the wire change, until their TTL)."""
        if "message" not in payload or any(name in payload for name in AgentErrorDocument.model_fields):
            return cls.from_wire(payload)
        target = _BY_NAME.get(str(payload.get("type", "")), AgentError)
        kind, retry = payload.get("kind"), payload.get("retry")
        return target(
            str(payload.get("message", "")),
            kind if kind in ErrorKind.__members__ else None,
            retry if retry is None or retry in RetryClass.__members__ else RetryClass.not_retryable,
            payload.get("context") or {},
        )


def _decode(document: AgentErrorDocument) -> tuple[str, ErrorKind, RetryClass, dict[str, str]]:
    """(message, corral kind, retry class, context dict) of an upstream document."""
    up_kind = document.kind
    context = document.context
    extension = context.corral
    kind = _FROM_UPSTREAM_KIND[up_kind]
    claimed = extension.kind if extension is not None else None
    if claimed is not None and claimed in ErrorKind.__members__ and upstream_kind(ErrorKind(claimed)) is up_kind:
        kind = ErrorKind(claimed)
    detail = dict(extension.detail) if extension is not None else {}
    return context.message, kind, _FROM_UPSTREAM_RETRY[document.retry], detail


class NotRetryable(AgentError):
    default_kind = ErrorKind.invalid_request
    default_retry = RetryClass.not_retryable


class InvalidRequest(NotRetryable):
    default_kind = ErrorKind.invalid_request


class NotFound(NotRetryable):
    default_kind = ErrorKind.not_found


class Conflict(NotRetryable):
    default_kind = ErrorKind.conflict


class InvalidStateTransition(NotRetryable):
    default_kind = ErrorKind.invalid_state_transition


class PolicyDenial(NotRetryable):
    default_kind = ErrorKind.policy_denial


class Unsupported(NotRetryable):
    default_kind = ErrorKind.unsupported_capability


class Retryable(AgentError):
    default_kind = ErrorKind.isolation_failure
    default_retry = RetryClass.retryable


class IsolationFailure(Retryable):
    default_kind = ErrorKind.isolation_failure


class JournalFailure(Retryable):
    default_kind = ErrorKind.journal_failure


class InProgress(Retryable):
    default_kind = ErrorKind.in_progress


class TimeoutFailure(Retryable):
    default_kind = ErrorKind.timeout


class RepairNeeded(AgentError):
    default_kind = ErrorKind.recovery_repair_needed
    default_retry = RetryClass.repair_needed


class HostConfigurationNeeded(AgentError):
    default_kind = ErrorKind.host_configuration_needed
    default_retry = RetryClass.host_configuration_needed


_BY_NAME: dict[str, type[AgentError]] = {
    c.__name__: c
    for c in (
        AgentError,
        NotRetryable,
        InvalidRequest,
        NotFound,
        Conflict,
        InvalidStateTransition,
        PolicyDenial,
        Unsupported,
        Retryable,
        IsolationFailure,
        JournalFailure,
        InProgress,
        TimeoutFailure,
        RepairNeeded,
        HostConfigurationNeeded,
    )
}

_BY_KIND: dict[ErrorKind, type[AgentError]] = {
    ErrorKind.invalid_request: InvalidRequest,
    ErrorKind.invalid_package: InvalidRequest,
    ErrorKind.not_found: NotFound,
    ErrorKind.conflict: Conflict,
    ErrorKind.invalid_state_transition: InvalidStateTransition,
    ErrorKind.policy_denial: PolicyDenial,
    ErrorKind.unsupported_capability: Unsupported,
    ErrorKind.isolation_failure: IsolationFailure,
    ErrorKind.journal_failure: JournalFailure,
    ErrorKind.in_progress: InProgress,
    ErrorKind.timeout: TimeoutFailure,
    ErrorKind.recovery_repair_needed: RepairNeeded,
    ErrorKind.host_configuration_needed: HostConfigurationNeeded,
}

_BY_RETRY: dict[RetryClass, type[AgentError]] = {
    RetryClass.retryable: Retryable,
    RetryClass.not_retryable: NotRetryable,
    RetryClass.repair_needed: RepairNeeded,
    RetryClass.host_configuration_needed: HostConfigurationNeeded,
}


def class_for(kind: ErrorKind, retry: RetryClass) -> type[AgentError]:
    """The class a document without corral's extension is rebuilt as (module docstring)."""
    by_kind = _BY_KIND.get(kind)
    if by_kind is not None and by_kind.default_retry is retry:
        return by_kind
    return _BY_RETRY.get(retry) or by_kind or AgentError
