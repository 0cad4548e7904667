"""corral.contract.records against the upstream corpus (``tests/wire_corpus``, SPEC §6-§7), and the journal
records a real coordinator run writes (FakeRuntime + real Redis) decoded as upstream's types.

Every corpus document of a record type validates and dumps back to the same JSON, key order included;
the invalid ones are refused. Where the upstream decoder (``wirecheck``, built from the unmodified crate
by ``scripts/wirecheck``) is on this machine, what corral writes into its journal is also decoded and
re-encoded by upstream unchanged; without it those checks skip (a developer tool built from the crate's
source, not a service CI has), and the corpus and the pinned fingerprint hashes still hold corral to
upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from corral.contract.domain import PolicyRef
from corral.contract.errors import IsolationFailure, PolicyDenial
from corral.contract.models import (
    CleanupRequest,
    ExecutionEnvironment,
    IsolationCapabilityReport,
    ProcessIoRequest,
    ProcessStartRequest,
    ProcessStartResult,
    ProcessStatsRequest,
)
from corral.contract.records import (
    ISOLATION_RECORD_SCHEMA_VERSION,
    PAYLOAD_OF,
    IsolationCleanupResultRecord,
    IsolationDowngradeDecisionRecord,
    IsolationEventBase,
    IsolationEventRecord,
    IsolationFailureRecord,
    IsolationFingerprintFields,
    IsolationNetworkPreparedRecord,
    IsolationProcessIoFrameRecord,
    IsolationProcessStatsRecord,
    IsolationRecord,
    IsolationRecordType,
    IsolationRequirementSnapshot,
    event_kind,
    event_record,
    stable_hash,
)
from corral.contract.vocabulary import (
    CleanupStatus,
    EffectTerminalStatus,
    EntityKind,
    IsolationCapability,
    IsolationClass,
    IsolationEventKind,
    IsolationTrustField,
    PolicyDecisionScope,
    PolicyKind,
    ProcessIoStream,
    RetryClassification,
)
from corral.host import journal_records
from corral.host.journal_records import event_base
from corral.runtimes.fake import FakeRuntime
from tests.unit.helpers import HOST, CountingRuntime, Rig, job, make_rig, started
from tests.unit.wire_corpus import CORPUS, INDEX, wirecheck

MODELS: dict[str, type[BaseModel]] = {
    "IsolationRecord": IsolationRecord,
    "IsolationEventRecord": IsolationEventRecord,
    "IsolationEventBase": IsolationEventBase,
    "IsolationNetworkPreparedRecord": IsolationNetworkPreparedRecord,
    "IsolationRequirementSnapshot": IsolationRequirementSnapshot,
    "IsolationFingerprintFields": IsolationFingerprintFields,
}
VALID = sorted(f for f, meta in INDEX.items() if meta["rust_type"] in MODELS and meta.get("expect") != "decode_error")
INVALID = sorted(f for f, meta in INDEX.items() if meta["rust_type"] in MODELS and meta.get("expect") == "decode_error")


def upstream_roundtrip(rust_type: str, document: Any) -> Any:
    """Decode ``document`` with the upstream crate's type and return its re-encoding; skips without the decoder."""
    done = wirecheck(rust_type, document, verify=True)
    assert done.returncode == 0, f"upstream refused the {rust_type}: {done.stderr.strip()} {json.dumps(document)}"
    return json.loads(done.stdout)


def _load(name: str) -> tuple[type[BaseModel], str]:
    return MODELS[INDEX[name]["rust_type"]], (CORPUS / name).read_text()


# -- the corpus ------------------------------------------------------------------------------------


def test_the_corpus_has_every_record_type_and_variant() -> None:
    assert {INDEX[f]["rust_type"] for f in VALID} == set(MODELS)
    variants = {json.loads((CORPUS / f).read_text())["record_type"] for f in VALID if f.startswith("isolation_record.")}
    assert variants == {t.value for t in IsolationRecordType}
    kinds = {json.loads((CORPUS / f).read_text())["event_kind"] for f in VALID if f.startswith("isolation_event_rec")}
    assert kinds == {k.value for k in IsolationEventKind}


@pytest.mark.parametrize("name", VALID)
def test_corpus_document_validates_and_dumps_back_identically(name: str) -> None:
    model, text = _load(name)
    parsed = model.model_validate_json(text)
    # same JSON value, and the same key order (upstream's declaration order)
    assert json.dumps(parsed.model_dump(mode="json"), indent=2) == json.dumps(json.loads(text), indent=2)
    assert model.model_validate_json(parsed.model_dump_json()) == parsed


@pytest.mark.parametrize("name", INVALID)
def test_invalid_corpus_document_is_refused(name: str) -> None:
    model, text = _load(name)
    with pytest.raises(ValidationError):
        model.model_validate_json(text)


def test_isolation_record_payload_is_the_type_its_tag_names() -> None:
    doc = json.loads((CORPUS / "isolation_record.process_stats_snapshot.json").read_text())
    record = IsolationRecord.model_validate(doc)
    assert isinstance(record.record, IsolationProcessStatsRecord)
    for tag, payload in PAYLOAD_OF.items():
        assert isinstance(IsolationRecord.model_validate(_any_record(tag)).record, payload)
    # a payload under another variant's tag is refused, not matched to whatever fits
    with pytest.raises(ValidationError):
        IsolationRecord.model_validate({"record_type": "cleanup_intent", "record": doc["record"]})
    with pytest.raises(ValidationError):
        IsolationRecord.model_validate({"record_type": "stats", "record": doc["record"]})
    with pytest.raises(ValidationError):  # both keys are required
        IsolationRecord.model_validate({"record": doc["record"]})
    with pytest.raises(ValidationError):  # retry classes are PascalCase
        IsolationRecord.model_validate(
            {
                "record_type": "failed",
                "record": {"environment_id": "e", "reason": "x", "retry_classification": "retryable"},
            }
        )


def test_optional_fields_follow_upstreams_omission_rules() -> None:
    failed = IsolationRecord.of(
        IsolationFailureRecord(
            environment_id="env-1", reason="no runtime", retry_classification=RetryClassification.Retryable
        )
    )
    # a plain Option is written as null; the key is there
    assert failed.model_dump(mode="json")["record"] == {
        "environment_id": "env-1",
        "adapter_ref": None,
        "reason": "no runtime",
        "retry_classification": "Retryable",
    }
    denied = IsolationDowngradeDecisionRecord(
        environment_id="env-1",
        adapter_ref="fake-host-a",
        requested_class="container",
        selected_class="host_process",
        approved=False,
        redacted_summary="denied",
    )
    dumped = denied.model_dump(mode="json")
    assert dumped["policy_decision_scope"] is None
    assert "capability_gaps" not in dumped and "trust_gaps" not in dumped and "policy_decision_refs" not in dumped


def test_a_corral_frame_becomes_a_process_io_frame_record_without_its_bytes() -> None:
    class CorralFrame(BaseModel):  # corral's extensions beside upstream's fields
        stream_ref: str
        stream: str
        cursor: int
        byte_count: int
        content_hash: str
        raw_content_present: bool
        truncated: bool
        redacted_summary: str
        content_b64: str
        start_cursor: int

    frame = CorralFrame(
        stream_ref="stream-1",
        stream="stdin",
        cursor=12,
        byte_count=12,
        content_hash="sha256:x",
        raw_content_present=False,
        truncated=False,
        redacted_summary="stdin write 12 byte(s)",
        content_b64="U0VDUkVULVZBTFVF",
        start_cursor=0,
    )
    record = IsolationRecord.process_io_frame(frame)
    assert isinstance(record.record, IsolationProcessIoFrameRecord)
    assert record.record.stream is ProcessIoStream.stdin and record.record.cursor == 12
    assert "U0VDUkVULVZBTFVF" not in record.model_dump_json()
    assert "start_cursor" not in record.model_dump_json()


# -- event_record ----------------------------------------------------------------------------------

EXPECTED_KIND = {
    "requested": IsolationEventKind.isolation_requested,
    "adapter_capability_reported": IsolationEventKind.isolation_adapter_health_checked,
    "capability_match": IsolationEventKind.isolation_capability_matched,
    "capability_match_minimal": IsolationEventKind.isolation_capability_matched,
    "downgrade_decision": IsolationEventKind.isolation_downgrade_approved,
    "downgrade_decision_denied": IsolationEventKind.isolation_downgrade_denied,
    "environment_prepare_intent": IsolationEventKind.isolation_environment_prepared,
    "environment_prepare_result": IsolationEventKind.isolation_environment_prepared,
    "process_start_intent": IsolationEventKind.isolation_process_started,
    "process_start_result": IsolationEventKind.isolation_process_started,
    "process_start_result_minimal": IsolationEventKind.isolation_process_started,
    "process_io_frame": IsolationEventKind.isolation_process_io_captured,
    "process_stats_snapshot": IsolationEventKind.isolation_process_stats_recorded,
    "cleanup_intent": IsolationEventKind.isolation_cleanup_started,
    "cleanup_result": IsolationEventKind.isolation_cleanup_failed,  # the corpus one is repair_needed
    "failed": IsolationEventKind.isolation_failed,
    "failed_no_adapter": IsolationEventKind.isolation_failed,
}


@pytest.mark.parametrize("variant", sorted(EXPECTED_KIND))
def test_event_record_maps_each_corpus_record_as_upstream_does(variant: str) -> None:
    record = IsolationRecord.model_validate_json((CORPUS / f"isolation_record.{variant}.json").read_text())
    base = IsolationEventBase.model_validate_json((CORPUS / "isolation_event_base.full.json").read_text())
    event = event_record(record, base)
    assert event.event_kind is EXPECTED_KIND[variant] is event_kind(record)
    assert event.schema_version == ISOLATION_RECORD_SCHEMA_VERSION == 1
    payload = record.record
    summary = payload.reason if isinstance(payload, IsolationFailureRecord) else payload.redacted_summary
    assert event.redacted_summary == summary
    dumped = event.model_dump(mode="json")
    # the base is copied field for field, in upstream's order: the event minus kind/version/summary is the base
    assert {k: v for k, v in dumped.items() if k not in ("schema_version", "event_kind", "redacted_summary")} == (
        base.model_dump(mode="json")
    )
    assert list(dumped)[:4] == ["schema_version", "run_id", "agent_id", "event_kind"]
    assert record.event_record(base) == event


def test_event_record_of_a_completed_cleanup_is_completed() -> None:
    doc = json.loads((CORPUS / "isolation_record.cleanup_result.json").read_text())
    doc["record"]["status"] = "completed"
    record = IsolationRecord.model_validate(doc)
    assert isinstance(record.record, IsolationCleanupResultRecord)
    assert record.record.status is CleanupStatus.completed
    assert event_kind(record) is IsolationEventKind.isolation_cleanup_completed


def test_event_record_decodes_upstream() -> None:
    record = IsolationRecord.model_validate_json((CORPUS / "isolation_record.failed.json").read_text())
    base = IsolationEventBase.model_validate_json((CORPUS / "isolation_event_base.minimal.json").read_text())
    document = event_record(record, base).model_dump(mode="json")
    assert upstream_roundtrip("IsolationEventRecord", document) == document


# -- the fingerprint hash ----------------------------------------------------------------------------


def test_stable_hash_is_sha256_of_compact_json_in_declaration_order() -> None:
    import hashlib

    fields = IsolationFingerprintFields.model_validate_json(
        (CORPUS / "isolation_fingerprint_fields.minimal.json").read_text()
    )
    compact = json.dumps(fields.model_dump(mode="json"), separators=(",", ":"), ensure_ascii=False)
    assert compact.startswith('{"minimum_class":"container","trust":{"locality":"remote"')
    assert stable_hash(fields) == "sha256:" + hashlib.sha256(compact.encode()).hexdigest()
    # serde_json writes non-ASCII as UTF-8 and escapes control characters
    assert stable_hash({"a": "é\n"}) == "sha256:" + hashlib.sha256('{"a":"é\\n"}'.encode()).hexdigest()
    assert stable_hash([]) != stable_hash({})


def _any_record(tag: IsolationRecordType) -> dict[str, Any]:
    """A corpus document of the variant ``tag``."""
    for name in VALID:
        if name.startswith("isolation_record."):
            doc = json.loads((CORPUS / name).read_text())
            if doc["record_type"] == tag.value:
                return dict(doc)
    raise AssertionError(f"no corpus document for {tag}")


# -- what a coordinator run journals -------------------------------------------------------------------
# FakeRuntime (counting its calls) + a real Redis, no Celery: tests/unit/helpers.py.

SECRET_MARKERS = ("ARGV-MARKER", "NOT-A-SECRET-MARKER", "PLAIN", "U1RESU4tTUFSS0VS", "STDIN-MARKER")


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url) as r:
        yield r


def _entries(rig: Rig, env_id: str) -> list[tuple[str, str, dict[str, str]]]:
    return [(r.kind, r.fields.get("op", ""), r.fields) for r in rig.records(env_id)]


def _records(rig: Rig, env_id: str) -> list[tuple[str, str, IsolationRecord]]:
    out = []
    for entry in rig.records(env_id):
        record = entry.record
        if record is not None:
            out.append((entry.kind, entry.fields.get("op", ""), record))
    return out


@pytest.mark.redis
def test_a_full_run_journals_upstreams_records_beside_the_flat_fields(rig: Rig) -> None:
    j = job(argv=["sh", "-c", "echo ARGV-MARKER"], env={"PLAIN": "NOT-A-SECRET-MARKER"}, stdin=True)
    env = j.environment()
    result = started(rig.run_chain(j))
    rig.coordinator.stream_io(
        ProcessIoRequest(process_ref=result.process_ref, stream=ProcessIoStream.stdin, data_b64="U1RESU4tTUFSS0VS")
    )
    rig.runtime.processes[result.process_ref].exit_code = 0
    rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=result.process_ref))
    rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=result.process_ref))  # the exit is noted once
    rig.coordinator.cleanup(CleanupRequest(environment=env, cleanup_plan_ref="plan-1"))

    typed = [(kind, op, record.record_type.value) for kind, op, record in _records(rig, j.environment_id)]
    assert typed == [
        ("intent", "prepare_session", "requested"),
        ("result", "prepare_session", "capability_match"),
        ("intent", "prepare_environment", "environment_prepare_intent"),
        ("result", "prepare_environment", "environment_prepare_result"),
        ("intent", "start_process", "process_start_intent"),
        ("result", "start_process", "process_start_result"),
        ("result", "stream_io", "process_io_frame"),
        ("exit", "collect_stats", "process_stats_snapshot"),
        ("intent", "cleanup", "cleanup_intent"),
        ("result", "cleanup", "cleanup_result"),
    ]
    events = [event_kind(record) for _, _, record in _records(rig, j.environment_id)]
    assert events == [
        IsolationEventKind.isolation_requested,
        IsolationEventKind.isolation_capability_matched,
        IsolationEventKind.isolation_environment_prepared,
        IsolationEventKind.isolation_environment_prepared,
        IsolationEventKind.isolation_process_started,
        IsolationEventKind.isolation_process_started,
        IsolationEventKind.isolation_process_io_captured,
        IsolationEventKind.isolation_process_stats_recorded,
        IsolationEventKind.isolation_cleanup_started,
        IsolationEventKind.isolation_cleanup_completed,
    ]
    for kind, op, fields in _entries(rig, j.environment_id):
        text = json.dumps(fields)
        for marker in SECRET_MARKERS:
            assert marker not in text, (kind, op, marker)
        if "record" not in fields:
            continue
        document = json.loads(fields["record"])
        record = IsolationRecord.model_validate(document)
        assert record.model_dump(mode="json") == document  # corral's own records round-trip too
        payload = record.record
        assert getattr(payload, "environment_id", j.environment_id) == j.environment_id
        intent = getattr(payload, "effect_intent", None)
        if intent is not None:  # the record names the same effect and key as the flat fields
            assert intent.effect_id == fields["effect_id"] and intent.idempotency_key == fields["key"]
            assert intent.subject_ref.kind is EntityKind.execution_environment
            assert intent.source == env.source and intent.destination == env.destination
        effect = getattr(payload, "effect_result", None)
        if effect is not None:
            assert effect.effect_id == fields["effect_id"]
            assert effect.terminal_status is EffectTerminalStatus.completed
    # configure_network's result carries upstream's network record, under its own field
    (network,) = [f for k, op, f in _entries(rig, j.environment_id) if op == "configure_network" and k == "result"]
    prepared = IsolationNetworkPreparedRecord.model_validate_json(network["network_record"])
    assert prepared.environment_id == j.environment_id and prepared.network_namespace_ref in network["summary"]
    # the flat fields stay what the CLI shows
    kinds = [(k, op) for k, op, _ in _entries(rig, j.environment_id)]
    assert kinds.count(("exit", "collect_stats")) == 1
    assert ("result", "start_process") in kinds and ("result", "cleanup") in kinds


@pytest.mark.redis
def test_what_corral_journals_decodes_with_upstreams_types(rig: Rig) -> None:
    j = job(stdin=True)
    result = started(rig.run_chain(j))
    rig.coordinator.stream_io(
        ProcessIoRequest(process_ref=result.process_ref, stream=ProcessIoStream.stdin, data_b64="aGk=")
    )
    rig.runtime.processes[result.process_ref].exit_code = 3
    rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=result.process_ref))
    rig.coordinator.cleanup(CleanupRequest(environment=j.environment(), cleanup_plan_ref="plan-1"))
    records = _records(rig, j.environment_id)
    assert len(records) == 10
    base = event_base(j.environment())
    for _, _, record in records:
        document = record.model_dump(mode="json")
        assert upstream_roundtrip("IsolationRecord", document) == document
        event = event_record(record, base).model_dump(mode="json")
        assert upstream_roundtrip("IsolationEventRecord", event) == event
    network = next(r.fields["network_record"] for r in rig.records(j.environment_id) if "network_record" in r.fields)
    assert upstream_roundtrip("IsolationNetworkPreparedRecord", json.loads(network)) == json.loads(network)


class FailingStart(CountingRuntime):
    def start_process(self, request: ProcessStartRequest) -> ProcessStartResult:
        raise RuntimeError("engine said no at /var/lib/secret-path")


@pytest.mark.redis
def test_a_failed_effect_journals_a_failed_record(redis_url: str) -> None:
    with make_rig(redis_url, runtime=FailingStart(HOST)) as rig:
        j = job()
        with pytest.raises(IsolationFailure):
            rig.run_chain(j)
        kind, op, record = _records(rig, j.environment_id)[-1]
        assert (kind, op) == ("result", "start_process")
        assert isinstance(record.record, IsolationFailureRecord)
        assert record.record.retry_classification is RetryClassification.Retryable
        assert record.record.adapter_ref == rig.runtime.runtime_ref() == f"fake-{HOST}"
        assert record.record.reason == "start_process failed: RuntimeError"  # the host path stays in the log
        assert event_kind(record) is IsolationEventKind.isolation_failed
        flat = rig.records(j.environment_id)[-1].fields
        assert flat["status"] == "failed" and flat["summary"] == record.record.reason
        document = record.model_dump(mode="json")
        assert upstream_roundtrip("IsolationRecord", document) == document


class HostProcessOnly(CountingRuntime):
    def capability_report(self) -> IsolationCapabilityReport:
        report = super().capability_report()
        return report.model_copy(update={"supported_classes": [IsolationClass.host_process]})


@pytest.mark.redis
def test_a_matching_denial_carries_a_denied_downgrade_decision(redis_url: str) -> None:
    with make_rig(redis_url, runtime=HostProcessOnly(HOST)) as rig:
        j = job()
        with pytest.raises(PolicyDenial):
            rig.run_chain(j)
        ((kind, op, record),) = _records(rig, j.environment_id)
        assert (kind, op) == ("denial", "prepare_session")
        payload = record.record
        assert isinstance(payload, IsolationDowngradeDecisionRecord)
        assert not payload.approved and payload.policy_decision_scope is None
        assert payload.requested_class is IsolationClass.container
        assert payload.selected_class is IsolationClass.host_process
        assert event_kind(record) is IsolationEventKind.isolation_downgrade_denied
        document = record.model_dump(mode="json")
        assert upstream_roundtrip("IsolationRecord", document) == document


def test_capability_decision_names_the_gaps_in_upstreams_vocabulary() -> None:
    env = job().environment()
    report = FakeRuntime(HOST).capability_report()
    clean = journal_records.capability_decision(env, report, gaps=[], accepted=[], denied=[], approvals=[])
    assert clean.record_type is IsolationRecordType.capability_match
    gaps = ["class:container", "capability:audit_log", "trust:auditability", "health:degraded"]
    approved = journal_records.capability_decision(
        env, report, gaps=gaps, accepted=gaps, denied=[], approvals=["dec-1", "dec-1"]
    )
    payload = approved.record
    assert isinstance(payload, IsolationDowngradeDecisionRecord)
    assert payload.approved and payload.policy_decision_scope is PolicyDecisionScope.IsolationDowngrade
    assert payload.capability_gaps == [IsolationCapability.audit_log]
    assert payload.trust_gaps == [IsolationTrustField.auditability]
    assert payload.policy_decision_refs == ["dec-1"]
    assert event_kind(approved) is IsolationEventKind.isolation_downgrade_approved
    denied = journal_records.capability_decision(env, report, gaps=gaps, accepted=[], denied=gaps, approvals=["dec-1"])
    assert isinstance(denied.record, IsolationDowngradeDecisionRecord)
    assert not denied.record.approved and denied.record.policy_decision_refs == []
    assert event_kind(denied) is IsolationEventKind.isolation_downgrade_denied


# Computed by the unmodified upstream crate (``IsolationRequirementSnapshot::from_environment`` with the
# arguments of the test below) for the corpus environments: corral's hashes must be the same strings.
UPSTREAM_HASHES = {
    "execution_environment.full.json": {
        "required_capabilities_hash": "sha256:ee29a18c41d0be3ac4d3a378a3e182d597ee8eab5ca963fd117dc5356af03b76",
        "image_policy_hash": "sha256:24454f51dbbb2d3b09c80d876e369741019a9a68a0588452e299b0250fa34fac",
        "rootfs_policy_hash": "sha256:33b05bb5c9af55ca15721245750b871508d252799544a9855a407e2de0d801fc",
        "mount_policy_hash": "sha256:0ecce0e8d236fec4d2bedd5799ade917cda36687e9c50a117f9a360b2c7a8423",
        "network_policy_hash": "sha256:51e59484e617b34881d31fba0f46a78d59857aa79c876d66df1aff3ffbe35b46",
        "secret_policy_hash": "sha256:c1de48f38ba7439d311f2be94699f0c654e9c72c82c6ee093529c110d5d20329",
        "resource_policy_hash": "sha256:42b93a56e8a92290eff8b5396b4b9f3587df71ee3fc1b783411d282d3321e078",
    },
    "execution_environment.minimal.json": {
        "required_capabilities_hash": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        "mount_policy_hash": "sha256:2fb3118552ac3803150dc3e3a976c4a7b4914f9719bc15a0bae225c1662a5812",
        "network_policy_hash": "sha256:f693b9deb860600fb93d749df324c55991afe7eba6300113ab381339b23d12d5",
        "secret_policy_hash": "sha256:8ca61b48d49d431a881f8ccf98f459ac82244e6ddcf145b6e2afb2e45823ce9d",
        "resource_policy_hash": "sha256:b8de922612e88f991a956002ec5eb780ffa9bf83f37868c0699725335f9ef598",
    },
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_HASHES))
def test_requirement_snapshot_from_environment_hashes_as_upstream(name: str) -> None:
    environment = ExecutionEnvironment.model_validate_json((CORPUS / name).read_text())
    redaction = PolicyRef(kind=PolicyKind.redaction, id="policy.redaction")
    cleanup, child = PolicyRef.host("policy.cleanup"), PolicyRef.host("policy.child.lifecycle")
    snapshot = IsolationRequirementSnapshot.from_environment(
        "sidecar.isolation.default", environment, redaction, cleanup, child
    )
    hashes = {k: v for k, v in snapshot.fingerprint_fields.model_dump(mode="json").items() if k.endswith("_hash")}
    assert hashes == UPSTREAM_HASHES[name]
    assert snapshot.fingerprint_fields.child_lifecycle_policy_ref == "policy.child.lifecycle"
    assert snapshot.requirement == environment.spec.requirement
    assert snapshot.allowed_downgrade_policy_refs == environment.spec.requirement.fallback.required_policy_refs
    document = snapshot.model_dump(mode="json")
    assert IsolationRequirementSnapshot.model_validate(document) == snapshot
    assert upstream_roundtrip("IsolationRequirementSnapshot", document) == document
