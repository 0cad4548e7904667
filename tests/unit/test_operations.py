"""corral.contract.operations: the one list of operation names, checked against the Protocol and an
independent statement of CONTRACT.md's table, and used by tasks, lifecycle and the chain builder."""

from __future__ import annotations

import inspect

from corral.celeryconf import task_name
from corral.contract import lifecycle
from corral.contract.operations import (
    ACCESSORS,
    CHAIN,
    OPERATIONS,
    PREPARE_STEPS,
    PROCESS_OPERATIONS,
    READS,
    TEARDOWN,
    WITH_REQUEST,
    Operation,
)
from corral.contract.runtime import IsolationRuntime
from corral.fleet.job import JobSpec

# CONTRACT.md's table, in its order, written out by hand.
CONTRACT_TABLE = [
    "runtime_ref",
    "capability_report",
    "prepare_session",
    "resolve_image",
    "prepare_rootfs",
    "resolve_mounts",
    "configure_network",
    "prepare_secrets",
    "prepare_environment",
    "start_process",
    "stream_io",
    "signal_process",
    "collect_stats",
    "cleanup",
    "detach",
    "reclaim",
]


def test_the_enum_is_the_contract_table_in_order() -> None:
    assert [op.value for op in OPERATIONS] == CONTRACT_TABLE
    assert len(set(OPERATIONS)) == 16


def test_every_operation_names_a_protocol_method_and_nothing_else_does() -> None:
    methods = [name for name, _ in inspect.getmembers(IsolationRuntime, inspect.isfunction) if not name.startswith("_")]
    assert sorted(methods) == sorted(op.value for op in Operation)


def test_the_chain_is_prepare_session_to_start_process_in_contract_order() -> None:
    assert [op.value for op in CHAIN] == CONTRACT_TABLE[2:10]
    assert CHAIN[1:6] == PREPARE_STEPS
    assert CHAIN[0] is Operation.prepare_session and CHAIN[-1] is Operation.start_process


def test_groups_are_consistent() -> None:
    assert {Operation.runtime_ref, Operation.capability_report} == ACCESSORS
    assert set(Operation) - ACCESSORS == WITH_REQUEST
    assert {Operation.stream_io, Operation.signal_process, Operation.collect_stats} == PROCESS_OPERATIONS
    assert ACCESSORS | {Operation.stream_io, Operation.collect_stats} == READS
    assert not READS & set(CHAIN) and not READS & TEARDOWN
    # the state machine knows every operation that takes a request, and teardown runs in every state
    assert set(lifecycle.ALLOWED) == WITH_REQUEST
    for op in TEARDOWN:
        assert lifecycle.NO_SESSION in lifecycle.ALLOWED[op]
    for op in PROCESS_OPERATIONS:
        assert set(lifecycle.ALLOWED[op]) == set(lifecycle.WITH_PROCESS)


def test_task_names_and_string_forms_are_the_values() -> None:
    assert task_name(Operation.prepare_rootfs) == "corral.prepare_rootfs"
    assert f"{Operation.cleanup}:env-1" == "cleanup:env-1"
    assert str(Operation.detach) == "detach" and Operation("detach") is Operation.detach


def test_a_job_builds_its_chain_in_chain_order() -> None:
    job = JobSpec(image="corral/busybox:latest", argv=["true"])
    assert [op for op, _ in job.requests("host-a")] == list(CHAIN)
