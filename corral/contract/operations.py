"""The 16 operations of the isolation contract: one name each, everywhere.

``Operation``'s values are the contract's method names (``IsolationRuntime.prepare_rootfs``), so one
member names the adapter method, the Celery task (``corral.celeryconf.task_name(Operation.prepare_rootfs)``
is ``corral.prepare_rootfs``), the journal's ``op`` field, the idempotency-key prefix, the session
record's ``result:<op>`` field and a row of the state machine (``corral.contract.lifecycle``). Code
passes members, never string literals, so mypy checks every use.

The groups below are the facts about operations that more than one module needs; each is stated once.
"""

from __future__ import annotations

from enum import StrEnum


class Operation(StrEnum):
    """The contract's operations, in contract order (``CONTRACT.md``, ``IsolationRuntime``)."""

    runtime_ref = "runtime_ref"
    capability_report = "capability_report"
    prepare_session = "prepare_session"
    resolve_image = "resolve_image"
    prepare_rootfs = "prepare_rootfs"
    resolve_mounts = "resolve_mounts"
    configure_network = "configure_network"
    prepare_secrets = "prepare_secrets"
    prepare_environment = "prepare_environment"
    start_process = "start_process"
    stream_io = "stream_io"
    signal_process = "signal_process"
    collect_stats = "collect_stats"
    cleanup = "cleanup"
    detach = "detach"
    reclaim = "reclaim"


OPERATIONS: tuple[Operation, ...] = tuple(Operation)
"""All 16, in contract order."""

CHAIN: tuple[Operation, ...] = (
    Operation.prepare_session,
    Operation.resolve_image,
    Operation.prepare_rootfs,
    Operation.resolve_mounts,
    Operation.configure_network,
    Operation.prepare_secrets,
    Operation.prepare_environment,
    Operation.start_process,
)
"""The prepare-to-start pipeline, one Celery chain in this order (DESIGN.md, Data flow)."""

PREPARE_STEPS: tuple[Operation, ...] = CHAIN[1:6]
"""The chain steps between the session and the environment: each runs on a ``preparing`` session, once
per environment, and records its result in the session for ``prepare_environment`` to combine."""

ACCESSORS: frozenset[Operation] = frozenset({Operation.runtime_ref, Operation.capability_report})
"""Read-only accessors of the runtime itself: no request, no session, no effect."""

PROCESS_OPERATIONS: frozenset[Operation] = frozenset(
    {Operation.stream_io, Operation.signal_process, Operation.collect_stats}
)
"""Addressed by a process ref (not an environment): they need a session whose process started."""

READS: frozenset[Operation] = ACCESSORS | {Operation.collect_stats, Operation.stream_io}
"""Cheap reads that must never wait behind slow lifecycle work (their own per-host queue). A
``stream_io`` that writes stdin is the one effect among them: it is journaled and keyed like any other."""

WITH_REQUEST: frozenset[Operation] = frozenset(OPERATIONS) - ACCESSORS
"""Operations that take a request model (every one but the accessors)."""

TEARDOWN: frozenset[Operation] = frozenset({Operation.cleanup, Operation.reclaim})
"""Never refused by policy and allowed in every state: the policy narrows what may be created, not
what may be removed."""
