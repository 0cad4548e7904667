"""The contract's requests, results and capability reports on the wire: upstream's types exactly.

- every document of the upstream corpus (``tests/wire_corpus``, serialized by the unmodified crate or
  built from its serde attributes and checked with it) for the 16 operations validates in corral's
  models and dumps back to the same JSON; the documents upstream refuses, corral refuses too;
- what corral itself puts on the wire (every request of a job's chain, every result of the fake and
  of a capability report) keeps upstream's shape: where the upstream decoder ``wirecheck`` is built
  (``scripts/wirecheck``), the crate decodes each one and re-encodes it identically, corral's
  extension keys aside.

Errors are ``test_wire_errors.py``; journal and effect records ``test_wire_records.py``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from corral.contract import domain, models, vocabulary
from corral.contract.operations import CHAIN, Operation
from corral.contract.wire import Id, to_wire
from corral.fleet.job import JobSpec
from corral.runtimes.fake import FakeRuntime
from tests.unit.wire_corpus import CORPUS, INDEX, wirecheck

ELSEWHERE = {
    "AgentError", "ErrorContext", "Vec<AgentErrorKind>", "Vec<RetryClassification>", "Vec<IsolationEventKind>",
    "Vec<PolicyDecisionScope>", "IsolationRecord", "IsolationEventRecord", "IsolationEventBase",
    "IsolationNetworkPreparedRecord", "IsolationRequirementSnapshot", "IsolationFingerprintFields",
}  # fmt: skip
"""Types the error and record suites cover (``test_wire_errors.py``, ``test_wire_records.py``)."""
TRANSPARENT = {"IsolationRuntimeRef", "IsolationSessionRef", "RootfsRef", "NetworkNamespaceRef"}
TRANSPARENT |= {"PreparedEnvironmentRef", "IsolatedProcessRef"}
EXTENSIONS = {
    "host_ref", "environment", "cursor", "max_bytes", "data_b64", "close_stdin", "start_cursor", "content_b64",
    "dropped_bytes", "eof", "redaction_count", "process_status", "state", "oom_killed", "reason", "ttl_ms",
    "ticket_ref", "deadline_ms", "environment_id", "cpu_millis", "scratch_mb", "path", "posix_rlimits",
    "stdin_open", "timeout_signal", "grace_ms", "accept_degraded_host", "architecture", "env_secret_keys",
    "weaker_features", "hardening", "process", "image", "rootfs", "mounts", "network", "secrets",
}  # fmt: skip
"""corral's extension fields (optional, omitted when unset); upstream ignores them on decode."""


def _type_of(rust: str) -> Any:
    if rust.startswith("Vec<"):
        return list[_type_of(rust[4:-1])]  # type: ignore[misc]
    if rust in TRANSPARENT:
        return Id
    for module in (models, domain, vocabulary):
        if hasattr(module, rust):
            return getattr(module, rust)
    raise LookupError(rust)


def _covered_here(rust: str) -> bool:
    return rust != "()" and rust not in ELSEWHERE


DOCUMENTS = sorted(f for f, m in INDEX.items() if _covered_here(m["rust_type"]))
VALID = [f for f in DOCUMENTS if INDEX[f].get("expect") != "decode_error"]
INVALID = [f for f in DOCUMENTS if INDEX[f].get("expect") == "decode_error"]


def test_the_corpus_covers_every_operation_both_ways() -> None:
    for op in Operation:
        assert any(f.startswith(f"{op.value}.result.") for f in VALID), op
        if op not in (Operation.runtime_ref, Operation.capability_report):
            assert any(f.startswith(f"{op.value}.request.") for f in VALID), op


@pytest.mark.parametrize("name", VALID)
def test_an_upstream_document_validates_and_dumps_back_unchanged(name: str) -> None:
    document = json.loads((CORPUS / name).read_text())
    adapter = TypeAdapter(_type_of(INDEX[name]["rust_type"]))
    value = adapter.validate_python(document)
    assert adapter.dump_python(value, mode="json") == document
    assert json.loads(adapter.dump_json(value)) == document


@pytest.mark.parametrize("name", INVALID)
def test_a_document_upstream_refuses_is_refused(name: str) -> None:
    document = json.loads((CORPUS / name).read_text())
    with pytest.raises(ValidationError):
        TypeAdapter(_type_of(INDEX[name]["rust_type"])).validate_python(document)


# -- what corral sends ---------------------------------------------------------------------------


def corral_documents() -> list[tuple[str, str, Any]]:
    """(name, upstream type, document) for everything corral puts on the wire for one job."""
    job = JobSpec(
        image="corral/busybox:latest",
        argv=["sh", "-c", "echo hi"],
        cpus=0.5,
        env={"A": "1"},
        secrets=["token"],
        env_secrets={"TOKEN": "token"},
        stdin=True,
    )
    requests = dict(job.requests("edge-1"))
    names = {
        Operation.prepare_session: "SessionPrepareRequest",
        Operation.resolve_image: "ImageResolveRequest",
        Operation.prepare_rootfs: "RootfsPrepareRequest",
        Operation.resolve_mounts: "MountResolveRequest",
        Operation.configure_network: "NetworkPrepareRequest",
        Operation.prepare_secrets: "SecretPrepareRequest",
        Operation.prepare_environment: "EnvironmentPrepareRequest",
        Operation.start_process: "ProcessStartRequest",
    }
    docs = [(f"{op.value}.request", names[op], to_wire(requests[op])) for op in CHAIN]
    fake = FakeRuntime("edge-1")
    env = job.environment()
    r = requests
    results: list[tuple[str, str, BaseModel | str]] = [
        ("runtime_ref.result", "IsolationRuntimeRef", fake.runtime_ref()),
        ("capability_report.result", "IsolationCapabilityReport", fake.capability_report()),
        ("prepare_session.result", "IsolationSessionRef", fake.prepare_session(r[Operation.prepare_session])),
        ("prepare_rootfs.result", "RootfsRef", fake.prepare_rootfs(r[Operation.prepare_rootfs])),
        ("resolve_mounts.result", "MountPlan", fake.resolve_mounts(r[Operation.resolve_mounts])),
        ("configure_network.result", "NetworkNamespaceRef", fake.configure_network(r[Operation.configure_network])),
        ("prepare_secrets.result", "SecretMaterializationPlan", fake.prepare_secrets(r[Operation.prepare_secrets])),
    ]  # type: ignore[arg-type]
    prepared = fake.prepare_environment(requests[Operation.prepare_environment])
    started = fake.start_process(requests[Operation.start_process])
    results += [("prepare_environment.result", "PreparedEnvironmentRef", prepared)]
    results += [("start_process.result", "ProcessStartResult", started)]
    ref = started.process_ref
    more: list[tuple[str, str, BaseModel]] = [
        ("stream_io.request", "ProcessIoRequest", models.ProcessIoRequest(process_ref=ref, stream="stdout", cursor=2)),
        ("signal_process.request", "ProcessSignalRequest", models.ProcessSignalRequest(process_ref=ref, signal="kill", grace_ms=0)),  # noqa: E501
        ("collect_stats.request", "ProcessStatsRequest", models.ProcessStatsRequest(process_ref=ref)),
        ("cleanup.request", "CleanupRequest", models.CleanupRequest(environment=env, cleanup_plan_ref="plan-1")),
        ("detach.request", "DetachTransferRequest", models.DetachTransferRequest(environment=env, ttl_ms=60_000)),
        ("reclaim.request", "ReclaimRequest", models.ReclaimRequest(ticket_ref="tkt-1")),
    ]  # fmt: skip
    results += [(n, t, v) for n, t, v in more]
    results += [("stream_io.result", "ProcessIoFrame", fake.stream_io(more[0][2]))]  # type: ignore[arg-type]
    results += [("collect_stats.result", "ProcessStatsSnapshot", fake.collect_stats(more[2][2]))]  # type: ignore[arg-type]
    results += [("signal_process.result", "ProcessSignalResult", fake.signal_process(more[1][2]))]  # type: ignore[arg-type]
    results += [("cleanup.result", "CleanupResult", fake.cleanup(more[3][2]))]  # type: ignore[arg-type]
    return docs + [(name, rust, to_wire(value)) for name, rust, value in results]


CORRAL = corral_documents()


@pytest.mark.parametrize(("name", "rust", "document"), CORRAL, ids=[n for n, _, _ in CORRAL])
def test_what_corral_sends_round_trips_as_the_upstream_type(name: str, rust: str, document: Any) -> None:
    adapter = TypeAdapter(_type_of(rust))
    assert adapter.dump_python(adapter.validate_python(document), mode="json") == document


@pytest.mark.parametrize(("name", "rust", "document"), CORRAL, ids=[n for n, _, _ in CORRAL])
def test_the_upstream_crate_decodes_what_corral_sends(name: str, rust: str, document: Any) -> None:
    """Upstream decodes the document; its re-encoding is ours minus corral's extension keys only."""
    done = wirecheck(rust, document)
    assert done.returncode == 0, f"upstream refused {name} as {rust}: {done.stderr.strip()}"
    dropped = _dropped_keys(json.loads(done.stdout), document)
    assert dropped <= EXTENSIONS, f"upstream lost more than corral's extensions: {sorted(dropped - EXTENSIONS)}"


def _dropped_keys(upstream: Any, ours: Any, path: str = "") -> set[str]:
    """The keys of ``ours`` that upstream's re-encoding lacks; every value upstream kept must equal ours."""
    if isinstance(upstream, dict) and isinstance(ours, dict):
        assert set(upstream) <= set(ours), f"upstream added {sorted(set(upstream) - set(ours))} at {path}"
        dropped = set(ours) - set(upstream)
        for key in upstream:
            dropped |= _dropped_keys(upstream[key], ours[key], f"{path}.{key}")
        return dropped
    if isinstance(upstream, list) and isinstance(ours, list):
        assert len(upstream) == len(ours), path
        return set().union(*(_dropped_keys(u, o, f"{path}[]") for u, o in zip(upstream, ours, strict=True)))
    assert upstream == ours, f"{path}: upstream {upstream!r}, corral {ours!r}"
    return set()
