"""One error tree for the whole contract, split by retry classification.

Every failure that crosses a boundary (adapter -> coordinator -> Celery -> client) is an
``AgentError``: a *kind* (what went wrong), a *retry* classification (what the caller may do about
it), a message and a flat string context. The retry classification alone decides whether a task
is retried::

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

Celery's JSON result backend stores an exception as its class name, module and ``args`` and
rebuilds it with ``cls(*args)``. ``AgentError`` therefore keeps ``(message, kind, retry, context)``
as its args, so the client gets the same typed error back with its details intact.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar


class ErrorKind(StrEnum):
    invalid_request = "invalid_request"
    invalid_package = "invalid_package"
    invalid_state_transition = "invalid_state_transition"
    policy_denial = "policy_denial"
    journal_failure = "journal_failure"
    isolation_failure = "isolation_failure"
    timeout = "timeout"
    cancellation = "cancellation"
    child_lifecycle_failure = "child_lifecycle_failure"
    recovery_repair_needed = "recovery_repair_needed"
    host_configuration_needed = "host_configuration_needed"
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


class AgentError(Exception):
    """The contract's error: typed, JSON-safe, and never carrying a secret value."""

    default_kind: ClassVar[ErrorKind] = ErrorKind.isolation_failure
    default_retry: ClassVar[RetryClass] = RetryClass.retryable

    def __init__(
        self,
        message: str,
        kind: ErrorKind | str | None = None,
        retry: RetryClass | str | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        self.message = str(message)
        self.kind = ErrorKind(kind) if kind is not None else self.default_kind
        self.retry = RetryClass(retry) if retry is not None else self.default_retry
        self.context: dict[str, str] = {str(k): str(v) for k, v in (context or {}).items()}
        super().__init__(self.message, self.kind.value, self.retry.value, self.context)

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, kind={self.kind.value!r}, retry={self.retry.value!r})"

    @property
    def retryable(self) -> bool:
        return self.retry is RetryClass.retryable

    def to_payload(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "kind": self.kind.value,
            "retry": self.retry.value,
            "message": self.message,
            "context": dict(self.context),
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> AgentError:
        """Rebuild the most specific known class for a payload (unknown types become AgentError)."""
        target = _BY_NAME.get(str(payload.get("type", "")), AgentError)
        kind = payload.get("kind")
        retry = payload.get("retry")
        # A newer peer may know kinds/classes this one doesn't: keep the message, fall back safely.
        return target(
            str(payload.get("message", "")),
            kind if kind in ErrorKind.__members__ else None,
            retry if retry is None or retry in RetryClass.__members__ else RetryClass.not_retryable,
            payload.get("context") or {},
        )


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
