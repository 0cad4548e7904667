"""Routing: which queue each corral task lands in, decided from its name and payload alone."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from corral.celeryconf import FLEET_QUEUE, fleet_queue, lane_of, queue_for, queue_for_host, route_task
from corral.contract.operations import CHAIN, READS, Operation


def test_queue_names_are_formatted_in_one_place() -> None:
    assert queue_for_host("h1") == "corral.host.h1"
    assert queue_for_host("h1", "reads") == "corral.host.h1.reads"
    assert (fleet_queue(), fleet_queue("reads")) == (FLEET_QUEUE, "corral.fleet.reads")


@pytest.mark.parametrize(
    ("operation", "request_doc", "lane"),
    [
        (Operation.collect_stats, {"process_ref": "proc-a"}, "reads"),
        (Operation.stream_io, {"process_ref": "proc-a", "stream": "stdout", "cursor": 0}, "reads"),
        (Operation.stream_io, {"process_ref": "proc-a", "stream": "stderr", "cursor": 9}, "reads"),
        (Operation.stream_io, {"process_ref": "proc-a", "stream": "stdin", "data_b64": "eA=="}, "lifecycle"),
        (Operation.stream_io, {"process_ref": "proc-a"}, "lifecycle"),  # cannot tell: the effects' lane
        (Operation.stream_io, "garbage", "lifecycle"),
        (Operation.capability_report, None, "reads"),
        (Operation.runtime_ref, None, "reads"),
        (Operation.signal_process, {"process_ref": "proc-a", "signal": "kill"}, "lifecycle"),
        (Operation.cleanup, {}, "lifecycle"),
    ],
)
def test_lane_of_each_operation(operation: Operation, request_doc: Any, lane: str) -> None:
    args = [request_doc] if request_doc is not None else []
    assert lane_of(f"corral.{operation.value}", args) == lane


def test_every_chain_step_is_lifecycle_work_and_every_read_has_a_reads_route() -> None:
    assert all(lane_of(f"corral.{op.value}", [{}]) == "lifecycle" for op in CHAIN)
    reads = {op for op in READS if op is not Operation.stream_io}
    assert all(lane_of(f"corral.{op.value}", [{}]) == "reads" for op in reads)


def test_the_router_sends_a_task_without_an_explicit_queue_to_its_lane() -> None:
    """The safety net behind ``.set(queue=...)``: Celery's router, as configured, reads the payload."""
    app = Celery("routing-test", set_as_current=False)
    app.conf.task_routes = (route_task,)
    router = app.amqp.router

    def routed(name: str, args: list[Any], kwargs: dict[str, Any]) -> str:
        return str(router.route({}, name, args, kwargs)["queue"].name)

    read = [{"process_ref": "proc-a", "stream": "stdout", "cursor": 0}]
    assert routed("corral.stream_io", read, {"host": "h1"}) == "corral.host.h1.reads"
    assert routed("corral.stream_io", [{**read[0], "stream": "stdin"}], {"host": "h1"}) == "corral.host.h1"
    assert routed("corral.prepare_session", [{}], {"host": "h1"}) == "corral.host.h1"
    assert routed("corral.sweep_tickets", [], {}) == FLEET_QUEUE
    assert routed("corral.place", [{}], {}) == FLEET_QUEUE  # a reservation, not a read
    assert routed("corral.list_sessions", [{}], {}) == "corral.fleet.reads"
    assert routed("corral.read_journal", [{}], {}) == "corral.fleet.reads"
    assert queue_for("corral.collect_stats", [{}], "h2") == "corral.host.h2.reads"
