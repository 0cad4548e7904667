"""corral's errors on the wire: upstream's ``AgentError`` (``tests/wire_corpus/SPEC.md`` §5).

- every ``AgentError`` document of the upstream corpus validates in ``AgentErrorDocument`` and dumps back
  identically, also after a trip through the ``AgentError`` exception; the invalid ones are refused;
- every corral exception class dumps to a document of upstream's exact structure (where the upstream
  decoder ``wirecheck`` is built on this machine, it decodes it and re-encodes it identically but for
  corral's ``context.corral`` extension, which it ignores) and rebuilds to the same class, kind, retry
  class, message and context;
- upstream's kind and retry class survive a round trip (an upstream ``HostConfigurationNeeded`` is not
  rebuilt as retryable), through a real Redis result backend too;
- a worker's error reaches the client through a real Celery task of a real worker process, and what the
  result backend holds for it is the upstream document.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from corral.contract import errors
from corral.contract.domain import EntityRef, PolicyRef
from corral.contract.errors import (
    CORRAL_KINDS,
    AgentError,
    AgentErrorDocument,
    CausalIds,
    ErrorContext,
    ErrorKind,
    HostConfigurationNeeded,
    InvalidRequest,
    InvalidStateTransition,
    IsolationFailure,
    NotFound,
    PolicyDenial,
    RepairNeeded,
    RetryClass,
    class_for,
    upstream_kind,
    upstream_retry,
)
from corral.contract.vocabulary import AgentErrorKind, EntityKind, RetryClassification
from tests.harness import corral_env
from tests.unit.wire_corpus import CORPUS, INDEX, wirecheck, wirecheck_binary

__all__ = ["corral_env"]  # the fixture, for the real worker test

VALID = sorted(f for f, m in INDEX.items() if m["rust_type"] == "AgentError" and m.get("expect") != "decode_error")
INVALID = sorted(f for f, m in INDEX.items() if m["rust_type"] == "AgentError" and m.get("expect") == "decode_error")
CLASSES = sorted(
    (c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, AgentError)), key=lambda c: c.__name__
)

CONTEXT_KEYS = {"message", "policy_refs", "source", "destination", "subject", "privacy", "redacted_summary"}
CAUSAL_KEYS = {"run_id", "turn_id", "attempt_id", "event_id", "tool_call_id", "span_id", "related"}


def _load(name: str) -> Any:
    return json.loads((CORPUS / name).read_text())


def _ids(value: Any) -> str:
    return value.__name__ if isinstance(value, type) else str(value)


def upstream_decode(document: Any) -> Any:
    """Decode ``document`` as upstream's ``AgentError`` and return the crate's re-encoding; skips without
    the decoder (fails under CI)."""
    done = wirecheck("AgentError", document)
    assert done.returncode == 0, f"upstream refused the AgentError: {done.stderr.strip()} {json.dumps(document)}"
    return json.loads(done.stdout)


def without_extension(document: dict[str, Any]) -> dict[str, Any]:
    """The document as upstream re-encodes it: corral's ``context.corral`` key dropped."""
    copy: dict[str, Any] = json.loads(json.dumps(document))
    for body in copy.values():
        if isinstance(body, dict) and isinstance(body.get("context"), dict):
            body["context"].pop("corral", None)
    return copy


def check_structure(document: Any) -> None:
    """SPEC §5, key by key, for what corral sends (always ``Classified``)."""
    assert isinstance(document, dict) and list(document) == ["Classified"]
    body = document["Classified"]
    assert set(body) == {"kind", "retry", "context", "causal_ids"}
    assert body["kind"] in {k.value for k in AgentErrorKind}
    assert body["retry"] in {r.value for r in RetryClassification}
    assert set(body["context"]) - {"corral"} == CONTEXT_KEYS
    assert isinstance(body["context"]["policy_refs"], list)
    assert set(body["causal_ids"]) == CAUSAL_KEYS
    assert isinstance(body["causal_ids"]["related"], list)


# -- the corpus ------------------------------------------------------------------------------------


def test_the_corpus_has_every_kind_and_every_short_variant() -> None:
    docs = [_load(f) for f in VALID]
    kinds = {d["Classified"]["kind"] for d in docs if "Classified" in d}
    assert kinds == {k.value for k in AgentErrorKind}
    assert {next(iter(d)) for d in docs} == {
        "MissingRequiredField",
        "ContractViolation",
        "HostConfigurationNeeded",
        "Classified",
    }
    assert {"invalid.agent_error_flat_payload.json", "invalid.agent_error_snake_kind.json"} <= set(INVALID)


@pytest.mark.parametrize("name", VALID)
def test_a_corpus_document_validates_and_dumps_back_identically(name: str) -> None:
    raw = _load(name)
    document = AgentErrorDocument.model_validate(raw)
    assert document.model_dump(mode="json") == raw
    assert AgentErrorDocument.model_validate_json((CORPUS / name).read_text()) == document


@pytest.mark.parametrize("name", VALID)
def test_a_corpus_document_survives_the_exception(name: str) -> None:
    """Decoded as an exception (Celery's way, ``cls(*args)``, and ``from_wire``), dumped back: identical."""
    raw = _load(name)
    error = AgentError.from_wire(raw)
    assert error.to_payload() == raw
    assert error.args == (raw,)
    assert type(error)(*json.loads(json.dumps(error.args))).to_payload() == raw
    assert (error.upstream_kind, error.upstream_retry) == (error.document.kind, error.document.retry)
    assert upstream_retry(error.retry) is error.document.retry  # the retry class is never remapped
    assert upstream_kind(error.kind) is error.document.kind


@pytest.mark.parametrize("name", [f for f in VALID if "Classified" in _load(f)])
def test_a_classified_document_is_encoded_again_from_the_exception_fields(name: str) -> None:
    """Not the kept document: the encoder, given the decoded fields, writes the same JSON."""
    raw = _load(name)
    error = AgentError.from_wire(raw)
    rebuilt = type(error)(
        error.message,
        error.kind,
        error.retry,
        error.context,
        error_context=error.error_context,
        causal_ids=error.causal_ids,
    )
    assert rebuilt.to_payload() == raw


@pytest.mark.parametrize("name", INVALID)
def test_invalid_corpus_documents_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        AgentErrorDocument.model_validate(_load(name))
    with pytest.raises(ValueError, match="AgentErrorDocument"):
        AgentError.from_wire(_load(name))


@pytest.mark.parametrize(
    ("name", "variant", "kind", "retry", "message", "cls"),
    [
        (
            "agent_error.missing_required_field.json",
            "MissingRequiredField",
            AgentErrorKind.InvalidPackage,
            RetryClassification.HostConfigurationNeeded,
            "missing required field: isolated_process.argv",
            HostConfigurationNeeded,
        ),
        (
            "agent_error.contract_violation.json",
            "ContractViolation",
            AgentErrorKind.InvalidStateTransition,
            RetryClassification.RepairNeeded,
            "isolated process environment cannot contain raw secret values",
            RepairNeeded,
        ),
        (
            "agent_error.host_configuration_needed.json",
            "HostConfigurationNeeded",
            AgentErrorKind.HostConfigurationNeeded,
            RetryClassification.HostConfigurationNeeded,
            "no isolation runtime registered",
            HostConfigurationNeeded,
        ),
    ],
)
def test_a_short_variant_is_itself_with_upstreams_derived_kind_and_retry(
    name: str,
    variant: str,
    kind: AgentErrorKind,
    retry: RetryClassification,
    message: str,
    cls: type[AgentError],
) -> None:
    raw = _load(name)
    document = AgentErrorDocument.model_validate(raw)
    assert (document.variant, document.kind, document.retry, document.message) == (variant, kind, retry, message)
    assert document.causal_ids == CausalIds.none()
    assert document.context == ErrorContext.of(message)
    error = AgentError.from_wire(raw)
    assert type(error) is cls
    assert (error.upstream_kind, error.upstream_retry, error.message) == (kind, retry, message)
    assert error.retryable is False
    # Re-encoded from its fields, it becomes Classified exactly as upstream's with_* builders convert it.
    again = type(error)(error.message, error.kind, error.retry, error.context).to_payload()
    assert again == AgentErrorDocument.classified(kind, retry, ErrorContext.of(message)).model_dump(mode="json")


def test_upstream_host_configuration_needed_is_not_rebuilt_as_retryable() -> None:
    """The bug of issue 8: upstream's HostConfigurationNeeded came back ``retryable``."""
    for name in ("agent_error.host_configuration_needed.json", "upstream.agent_error.classified.json"):
        error = AgentError.from_wire(_load(name))
        assert isinstance(error, HostConfigurationNeeded), name
        assert error.retry is RetryClass.host_configuration_needed
        assert error.retryable is False
        assert error.upstream_retry is RetryClassification.HostConfigurationNeeded
    assert AgentError.from_wire(_load("upstream.agent_error.classified.json")).kind is ErrorKind.isolation_failure


def test_a_full_upstream_context_is_kept() -> None:
    raw = _load("agent_error.classified_full.json")
    error = AgentError.from_wire(raw)
    assert type(error) is PolicyDenial and error.retry is RetryClass.user_action_needed
    assert [p.id for p in error.error_context.policy_refs] == ["policy.egress", "policy.tenant"]
    assert error.causal_ids.run_id == "run.corral.job-7"
    assert error.context == {}  # no corral extension: no corral detail
    assert str(error) == "policy_denial: egress denied by host policy"
    assert error.document.display() == "PolicyDenial: egress denied by host policy"


# -- corral's exceptions on the wire -------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES, ids=_ids)
def test_every_class_dumps_upstreams_structure_and_rebuilds_the_same(cls: type[AgentError]) -> None:
    error = cls("it failed", context={"environment_id": "env-1", "attempt": 2})
    document = json.loads(json.dumps(error.to_payload()))
    check_structure(document)
    assert document == AgentErrorDocument.model_validate(document).model_dump(mode="json")
    body = document["Classified"]
    assert body["kind"] == upstream_kind(error.kind).value
    assert body["retry"] == upstream_retry(error.retry).value
    assert body["context"]["message"] == "it failed"
    assert body["context"]["corral"] == {
        "type": cls.__name__,
        "kind": error.kind.value,
        "detail": {"environment_id": "env-1", "attempt": "2"},
    }
    for back in (
        AgentError.from_wire(document),
        AgentError.from_payload(document),
        cls(*json.loads(json.dumps(error.args))),
    ):
        assert type(back) is cls
        assert (back.kind, back.retry, back.message, back.context) == (
            error.kind,
            error.retry,
            "it failed",
            error.context,
        )
        assert back.to_payload() == document


@pytest.mark.parametrize("cls", CLASSES, ids=_ids)
def test_every_class_decodes_with_the_upstream_crate(cls: type[AgentError]) -> None:
    document = cls("it failed", context={"environment_id": "env-1"}).to_payload()
    assert upstream_decode(document) == without_extension(document)


@pytest.mark.parametrize("name", VALID)
def test_what_corral_sends_again_for_a_corpus_error_decodes_with_the_upstream_crate(name: str) -> None:
    error = AgentError.from_wire(_load(name))
    document = type(error)(error.message, error.kind, error.retry, error.context).to_payload()
    assert upstream_decode(document) == without_extension(document)


def test_an_error_with_upstream_refs_and_causal_ids_decodes_with_the_upstream_crate() -> None:
    error = PolicyDenial(
        "egress denied",
        retry="user_action_needed",
        context={"rule": "network.egress"},
        error_context=ErrorContext(
            message="replaced by the exception's message", policy_refs=[PolicyRef.host("policy.network")]
        ),
        causal_ids=CausalIds(run_id="run-1", related=[EntityRef.of(EntityKind.execution_environment, "env-1")]),
    )
    document = error.to_payload()
    assert document["Classified"]["context"]["message"] == "egress denied"
    assert upstream_decode(document) == without_extension(document)
    back = AgentError.from_wire(document)
    assert type(back) is PolicyDenial and back.context == {"rule": "network.egress"}
    assert back.causal_ids.related[0].id == "env-1"


# -- the mapping ---------------------------------------------------------------------------------------


def test_every_upstream_kind_and_retry_class_maps_one_to_one() -> None:
    for kind in AgentErrorKind:
        ours = AgentError.from_wire(
            AgentErrorDocument.classified(kind, RetryClassification.NotRetryable, ErrorContext.of("m"))
        )
        assert upstream_kind(ours.kind) is kind
        assert ours.upstream_kind is kind
    for retry in RetryClassification:
        ours = AgentError.from_wire(AgentErrorDocument.classified(AgentErrorKind.Timeout, retry, ErrorContext.of("m")))
        assert upstream_retry(ours.retry) is retry
    assert {k for k in ErrorKind if k not in CORRAL_KINDS} == {
        ErrorKind(k) for k in (errors._snake(u.value) for u in AgentErrorKind)
    }


@pytest.mark.parametrize(
    ("kind", "upstream"),
    [
        (ErrorKind.invalid_request, AgentErrorKind.InvalidPackage),
        (ErrorKind.not_found, AgentErrorKind.InvalidStateTransition),
        (ErrorKind.conflict, AgentErrorKind.InvalidStateTransition),
        (ErrorKind.in_progress, AgentErrorKind.InvalidStateTransition),
        (ErrorKind.unsupported_capability, AgentErrorKind.IsolationFailure),
    ],
    ids=_ids,
)
def test_corrals_own_kinds_go_as_the_documented_upstream_kind(kind: ErrorKind, upstream: AgentErrorKind) -> None:
    assert set(CORRAL_KINDS) == {
        ErrorKind.invalid_request,
        ErrorKind.not_found,
        ErrorKind.conflict,
        ErrorKind.in_progress,
        ErrorKind.unsupported_capability,
    }
    assert upstream_kind(kind) is upstream
    assert upstream.value in (errors.__doc__ or "") and kind.value in (errors.__doc__ or "")
    # Without corral's extension (an upstream peer re-sent it), the upstream kind is what remains.
    stripped = without_extension(AgentError("m", kind=kind, retry="not_retryable").to_payload())
    assert AgentError.from_wire(stripped).kind is ErrorKind(errors._snake(upstream.value))


def test_a_plain_upstream_error_carries_no_extension() -> None:
    for error in (
        IsolationFailure("docker said no"),
        HostConfigurationNeeded("no runtime"),
        InvalidStateTransition("not now"),
        InvalidRequest("bad", kind="invalid_package"),
    ):
        assert "corral" not in error.to_payload()["Classified"]["context"], error


def test_an_extension_that_contradicts_upstreams_kind_is_not_trusted() -> None:
    document = NotFound("gone").to_payload()
    document["Classified"]["kind"] = "Timeout"  # rewritten by someone who knows only upstream's fields
    error = AgentError.from_wire(document)
    assert error.kind is ErrorKind.timeout
    assert type(error) is NotFound  # the class it names is still the one the client catches
    document["Classified"]["context"]["corral"] = {"type": "os.system", "kind": "no_such_kind", "future": 1}
    error = AgentError.from_wire(document)
    assert (type(error), error.kind, error.retry) == (
        class_for(ErrorKind.timeout, RetryClass.not_retryable),
        ErrorKind.timeout,
        RetryClass.not_retryable,
    )


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"Classified": None},
        {"MissingRequiredField": None},
        {"MissingRequiredField": {"field": "a"}, "ContractViolation": {"message": "b"}},
        {"Unknown": {"message": "m"}},
        {"ContractViolation": "m"},
        # policy_refs and related are required on decode
        {"Classified": {**_load("agent_error.Timeout.json")["Classified"], "context": {"message": "m"}}},
        {"Classified": {**_load("agent_error.Timeout.json")["Classified"], "causal_ids": {}}},
        {
            "Classified": {
                **_load("agent_error.Timeout.json")["Classified"],
                "causal_ids": {"run_id": "", "related": []},
            }
        },
    ],
)
def test_what_upstream_refuses_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AgentErrorDocument.model_validate(bad)


# -- through Celery --------------------------------------------------------------------------------------


@pytest.fixture
def backend_app(redis_server: str) -> Iterator[Any]:
    from celery import Celery

    app = Celery("corral-wire-errors", set_as_current=False)
    app.conf.update(result_backend=f"{redis_server}/1", result_serializer="json", result_accept_content=["json"])
    yield app
    app.close()


@pytest.mark.redis
@pytest.mark.parametrize(
    ("name", "cls", "retry"),
    [
        ("agent_error.host_configuration_needed.json", HostConfigurationNeeded, RetryClass.host_configuration_needed),
        ("upstream.agent_error.classified.json", HostConfigurationNeeded, RetryClass.host_configuration_needed),
        ("agent_error.classified_full.json", PolicyDenial, RetryClass.user_action_needed),
    ],
)
def test_an_upstream_error_crosses_a_real_redis_result_backend_unchanged(
    backend_app: Any, redis_server: str, name: str, cls: type[AgentError], retry: RetryClass
) -> None:
    import redis
    from celery.result import AsyncResult

    raw = _load(name)
    task_id = str(uuid.uuid4())
    backend_app.backend.mark_as_failure(task_id, AgentError.from_wire(raw))
    stored = json.loads(redis.Redis.from_url(f"{redis_server}/1").get(f"celery-task-meta-{task_id}") or b"{}")
    assert stored["status"] == "FAILURE"
    assert stored["result"]["exc_message"] == [raw]  # the result backend holds upstream's document
    with pytest.raises(cls) as caught:
        AsyncResult(task_id, app=backend_app).get(timeout=5)
    assert caught.value.retry is retry and caught.value.retryable is False
    assert caught.value.to_payload() == raw


@pytest.mark.redis
@pytest.mark.worker
def test_a_worker_error_reaches_the_client_through_a_real_celery_task(
    corral_env: dict[str, str],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """A real worker process (fake runtime, no Docker) fails two tasks; the client raises the same
    classes with kind, retry, message and detail, and the result backend holds upstream documents."""
    import redis

    from corral.client.client import Client
    from corral.contract.operations import Operation
    from corral.settings import Settings
    from tests.conftest import TEST_HOST_IDENTITY, suite_fleet
    from tests.harness import WorkerProc

    host = f"we-{uuid.uuid4().hex[:8]}"
    env = {**corral_env, **suite_fleet().role_env("worker", TEST_HOST_IDENTITY), "CORRAL_HOST__RUNTIME": "fake"}
    worker = WorkerProc(host, env, tmp_path / f"worker-{host}.log")
    worker.start(env["CORRAL_REDIS__URL"])
    try:
        for key, value in corral_env.items():
            if key.startswith("CORRAL_"):
                monkeypatch.setenv(key, value)
        client = Client(Settings())
        request.addfinalizer(client.close)
        results = redis.Redis.from_url(f"{redis_url}/1")

        # an invalid request: refused by the task base class before anything runs
        sent = client.send(Operation.collect_stats, None, host, payload={"process_ref": ""})
        sent.get(timeout=30, propagate=False)
        stored = json.loads(results.get(f"celery-task-meta-{sent.id}") or b"{}")
        (document,) = stored["result"]["exc_message"]
        check_structure(document)
        assert document["Classified"]["kind"] == "InvalidPackage"
        assert document["Classified"]["context"]["corral"]["kind"] == "invalid_request"
        with pytest.raises(InvalidRequest) as invalid:
            client._get(sent, Operation.collect_stats)
        assert (invalid.value.kind, invalid.value.retry) == (ErrorKind.invalid_request, RetryClass.not_retryable)
        assert invalid.value.context["model"] == "ProcessStatsRequest"
        assert invalid.value.to_payload() == document
        if wirecheck_binary() is not None:
            assert upstream_decode(document) == without_extension(document)

        # an unknown process: the same answer as another tenant's (a PolicyDenial, with its rule)
        sent = client.send(Operation.collect_stats, None, host, payload={"process_ref": "proc-unknown"})
        with pytest.raises(PolicyDenial) as denied:
            client._get(sent, Operation.collect_stats)
        assert denied.value.retry is RetryClass.not_retryable
        assert denied.value.upstream_kind is AgentErrorKind.PolicyDenial
        assert "proc-unknown" in denied.value.message and denied.value.context["process_ref"] == "proc-unknown"
    finally:
        worker.stop()


def test_a_class_the_client_lacks_is_still_rebuilt_from_its_document() -> None:
    """A newer worker's subclass: Celery's result backend makes a stand-in exception class with the same
    ``args``; the client decodes the upstream document they hold (class named in ``context.corral``)."""
    from celery.utils.serialization import create_exception_cls

    from corral.client.client import _as_agent_error

    document = NotFound("gone", context={"ticket_ref": "t-1"}).to_payload()
    stand_in = create_exception_cls("NotFoundButNewer", "celery.exceptions")(document)
    error = _as_agent_error("reclaim", stand_in)
    assert type(error) is NotFound and error.context == {"ticket_ref": "t-1"}
    assert error.to_payload() == document
    other = _as_agent_error("reclaim", RuntimeError("boom"))
    assert (type(other), other.retry, other.message) == (
        AgentError,
        RetryClass.not_retryable,
        "reclaim failed: RuntimeError: boom",
    )
