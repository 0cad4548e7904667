"""corral.contract.errors: the AgentError tree, its JSON payload and its Celery-style reconstruction."""

from __future__ import annotations

import json
from typing import Any

import pytest

from corral.contract import errors
from corral.contract.errors import (
    AgentError,
    Conflict,
    ErrorKind,
    HostConfigurationNeeded,
    InProgress,
    InvalidRequest,
    InvalidStateTransition,
    IsolationFailure,
    JournalFailure,
    NotFound,
    NotRetryable,
    PolicyDenial,
    RepairNeeded,
    Retryable,
    RetryClass,
    TimeoutFailure,
    Unsupported,
    upstream_kind,
    upstream_retry,
)

# class, default kind, default retry class, direct branch of the tree
TREE: list[tuple[type[AgentError], ErrorKind, RetryClass, type[AgentError]]] = [
    (AgentError, ErrorKind.isolation_failure, RetryClass.retryable, AgentError),
    (NotRetryable, ErrorKind.invalid_request, RetryClass.not_retryable, NotRetryable),
    (InvalidRequest, ErrorKind.invalid_request, RetryClass.not_retryable, NotRetryable),
    (NotFound, ErrorKind.not_found, RetryClass.not_retryable, NotRetryable),
    (Conflict, ErrorKind.conflict, RetryClass.not_retryable, NotRetryable),
    (InvalidStateTransition, ErrorKind.invalid_state_transition, RetryClass.not_retryable, NotRetryable),
    (PolicyDenial, ErrorKind.policy_denial, RetryClass.not_retryable, NotRetryable),
    (Unsupported, ErrorKind.unsupported_capability, RetryClass.not_retryable, NotRetryable),
    (Retryable, ErrorKind.isolation_failure, RetryClass.retryable, Retryable),
    (IsolationFailure, ErrorKind.isolation_failure, RetryClass.retryable, Retryable),
    (JournalFailure, ErrorKind.journal_failure, RetryClass.retryable, Retryable),
    (InProgress, ErrorKind.in_progress, RetryClass.retryable, Retryable),
    (TimeoutFailure, ErrorKind.timeout, RetryClass.retryable, Retryable),
    (RepairNeeded, ErrorKind.recovery_repair_needed, RetryClass.repair_needed, RepairNeeded),
    (
        HostConfigurationNeeded,
        ErrorKind.host_configuration_needed,
        RetryClass.host_configuration_needed,
        HostConfigurationNeeded,
    ),
]
CLASSES = [row[0] for row in TREE]


def _ids(row: Any) -> str:
    return row.__name__ if isinstance(row, type) else ""


def test_the_table_covers_every_error_class_in_the_module() -> None:
    defined = {obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, AgentError)}
    assert defined == set(CLASSES)


@pytest.mark.parametrize(("cls", "kind", "retry", "branch"), TREE, ids=_ids)
def test_defaults_follow_the_tree(
    cls: type[AgentError], kind: ErrorKind, retry: RetryClass, branch: type[AgentError]
) -> None:
    err = cls("boom")
    assert err.kind is kind
    assert err.retry is retry
    assert isinstance(err, branch)
    assert isinstance(err, AgentError)
    assert isinstance(err, Exception)
    # Only the retryable branch says "retry me".
    assert err.retryable is (retry is RetryClass.retryable)


@pytest.mark.parametrize("cls", [c for c in CLASSES if issubclass(c, NotRetryable)], ids=_ids)
def test_not_retryable_branch_is_never_retryable(cls: type[AgentError]) -> None:
    assert not isinstance(cls("x"), Retryable)
    assert cls("x").retryable is False


@pytest.mark.parametrize("cls", [RepairNeeded, HostConfigurationNeeded], ids=_ids)
def test_repair_and_host_configuration_are_neither_retryable_nor_plain_rejections(
    cls: type[AgentError],
) -> None:
    err = cls("x")
    assert not isinstance(err, Retryable | NotRetryable)
    assert err.retryable is False


def test_explicit_kind_and_retry_override_the_defaults() -> None:
    err = NotFound("gone", kind="conflict", retry=RetryClass.retryable)
    assert err.kind is ErrorKind.conflict
    assert err.retry is RetryClass.retryable
    assert err.retryable is True


@pytest.mark.parametrize(("field", "value"), [("kind", "no_such_kind"), ("retry", "maybe")])
def test_unknown_kind_or_retry_is_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=value):
        AgentError("x", **{field: value})


def test_context_is_flattened_to_strings_and_copied() -> None:
    source: dict[str, Any] = {"attempt": 3, "ratio": 0.5, "none": None, 7: "seven"}
    err = PolicyDenial("denied", context=source)
    assert err.context == {"attempt": "3", "ratio": "0.5", "none": "None", "7": "seven"}
    source["attempt"] = 4
    assert err.context["attempt"] == "3"


def test_str_and_repr_name_the_kind() -> None:
    err = NotFound("no such session", context={"environment_id": "env-1"})
    assert str(err) == "not_found: no such session"
    assert repr(err) == "NotFound('no such session', kind='not_found', retry='not_retryable')"


# ---------------------------------------------------------------------------------------------
# payload round trip


@pytest.mark.parametrize("cls", CLASSES, ids=_ids)
def test_payload_round_trip_through_json(cls: type[AgentError]) -> None:
    """The payload is upstream's AgentError document; corral's class, kind and context ride in the
    ``context.corral`` extension (tests/unit/test_wire_errors.py checks the wire form in depth)."""
    err = cls("it failed", context={"environment_id": "env-1", "attempt": 2})
    payload = json.loads(json.dumps(err.to_payload()))
    (variant, body), *rest = payload.items()
    assert (variant, rest) == ("Classified", [])
    assert body["kind"] == upstream_kind(err.kind).value
    assert body["retry"] == upstream_retry(err.retry).value
    assert body["context"]["message"] == "it failed"
    assert body["context"]["corral"] == {
        "type": cls.__name__,
        "kind": err.kind.value,
        "detail": {"environment_id": "env-1", "attempt": "2"},
    }
    back = AgentError.from_payload(payload)
    assert type(back) is cls
    assert (back.kind, back.retry, back.message, back.context) == (
        err.kind,
        err.retry,
        err.message,
        err.context,
    )


def test_payload_round_trip_keeps_overridden_kind_and_retry() -> None:
    err = IsolationFailure("docker said no", kind=ErrorKind.child_lifecycle_failure, retry="repair_needed")
    back = AgentError.from_payload(err.to_payload())
    assert type(back) is IsolationFailure
    assert back.kind is ErrorKind.child_lifecycle_failure
    assert back.retry is RetryClass.repair_needed


@pytest.mark.parametrize(
    ("payload", "cls", "kind", "retry"),
    [
        # corral's former flat payload (idempotency records written before the wire change)
        ({"type": "NotFound", "message": "m"}, NotFound, ErrorKind.not_found, RetryClass.not_retryable),
        ({"type": "InProgress", "message": "m"}, InProgress, ErrorKind.in_progress, RetryClass.retryable),
        (
            {"type": "RepairNeeded", "message": "m", "context": None},
            RepairNeeded,
            ErrorKind.recovery_repair_needed,
            RetryClass.repair_needed,
        ),
        # Unknown or hostile type names never resolve to anything but AgentError.
        (
            {"type": "SomethingNew", "kind": "timeout", "retry": "retryable", "message": "m"},
            AgentError,
            ErrorKind.timeout,
            RetryClass.retryable,
        ),
        (
            {"type": "os.system", "kind": "conflict", "retry": "not_retryable", "message": "m"},
            AgentError,
            ErrorKind.conflict,
            RetryClass.not_retryable,
        ),
        (
            {"type": "ErrorKind", "message": "m"},
            AgentError,
            ErrorKind.isolation_failure,
            RetryClass.retryable,
        ),
    ],
)
def test_from_payload_reads_the_former_flat_payload(
    payload: dict[str, Any], cls: type[AgentError], kind: ErrorKind, retry: RetryClass
) -> None:
    err = AgentError.from_payload(payload)
    assert type(err) is cls
    assert err.kind is kind
    assert err.retry is retry
    assert err.context == {}


@pytest.mark.parametrize("payload", [{}, {"kind": "timeout"}, {"Classified": None}, {"Unknown": {"message": "m"}}])
def test_from_payload_refuses_what_is_neither_form(payload: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="AgentErrorDocument"):
        AgentError.from_payload(payload)


# ---------------------------------------------------------------------------------------------
# Celery-style reconstruction


@pytest.mark.parametrize("cls", CLASSES, ids=_ids)
def test_rebuilding_from_args_keeps_everything(cls: type[AgentError]) -> None:
    """Celery's JSON result backend stores ``exc.args`` and rebuilds with ``cls(*args)``."""
    err = cls(
        "half done",
        kind=ErrorKind.cancellation,
        retry=RetryClass.user_action_needed,
        context={"ticket_ref": "t-1"},
    )
    wire_args = json.loads(json.dumps(err.args))
    back = cls(*wire_args)
    assert type(back) is cls
    assert back.message == "half done"
    assert back.kind is ErrorKind.cancellation
    assert back.retry is RetryClass.user_action_needed
    assert back.context == {"ticket_ref": "t-1"}
    assert back.args == err.args


@pytest.mark.parametrize("cls", CLASSES, ids=_ids)
def test_celery_json_result_backend_round_trip(cls: type[AgentError]) -> None:
    from celery import Celery
    from celery.backends.base import BaseBackend

    app = Celery("corral-test", set_as_current=False)
    backend = BaseBackend(app, serializer="json")
    err = cls("stored failure", context={"environment_id": "env-9"})
    stored = json.loads(json.dumps(backend.prepare_exception(err)))
    back = backend.exception_to_python(stored)
    assert type(back) is cls
    assert back.to_payload() == err.to_payload()
