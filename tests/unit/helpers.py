"""Shared helpers for the coordinator-level unit tests: a manual clock, a call-counting fake runtime,
a journal that can be told to fail, and a factory wiring them to the test Redis (db 3)."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from pydantic import BaseModel

from corral.contract.errors import JournalFailure
from corral.contract.models import (
    EnvironmentPrepareRequest,
    ExecutionEnvironment,
    IsolatedProcessSpec,
    ProcessStartRequest,
    ProcessStartResult,
)
from corral.contract.operations import CHAIN, WITH_REQUEST
from corral.fleet.job import JobSpec
from corral.host.coordinator import Coordinator
from corral.runtimes.fake import FakeRuntime
from corral.state.journal import Journal, JournalRecord
from corral.state.store import Store

STATE_DB = 3
HOST = "host-a"
OTHER_HOST = "host-b"
IMAGE = "corral/busybox:latest"

CHAIN_OPS = list(CHAIN)


class ManualClock:
    """A clock that only moves when told to. It starts at the wall-clock time, because some keys
    (ticket hashes) expire at absolute times derived from it."""

    def __init__(self, start_ms: int | None = None) -> None:
        self.ms = int(time.time() * 1000) if start_ms is None else start_ms

    def now_ms(self) -> int:
        return self.ms

    def advance(self, ms: int) -> None:
        self.ms += ms


class CountingRuntime(FakeRuntime):
    """A FakeRuntime that also counts every adapter *call* (``effects`` counts only real effects,
    and several fake operations are idempotent on their own, so ``calls`` is what proves that the
    coordinator did not call the adapter at all)."""

    _COUNTED = WITH_REQUEST

    def __init__(self, host_id: str = HOST, output: dict[str, bytes] | None = None) -> None:
        super().__init__(host_id, output)
        self.calls: Counter[str] = Counter()

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in CountingRuntime._COUNTED:
            calls = super().__getattribute__("calls")

            def counted(*args: Any, **kwargs: Any) -> Any:
                calls[name] += 1
                return attr(*args, **kwargs)

            return counted
        return attr


class FlakyJournal(Journal):
    """A journal whose appends of the listed kinds raise ``JournalFailure``."""

    def __init__(self, client: redis.Redis, fail_kinds: set[str] | None = None) -> None:
        super().__init__(client)
        self.fail_kinds: set[str] = set(fail_kinds or ())
        self.refused: list[str] = []

    def append(self, environment_id: str, kind: str, fields: Any) -> str:
        if kind in self.fail_kinds:
            self.refused.append(kind)
            raise JournalFailure("journal append failed: simulated", context={"kind": kind})
        return super().append(environment_id, kind, fields)

    def append_and_finish(self, store: Any, environment_id: str, kind: str, fields: Any, *rest: str) -> bool:
        if kind in self.fail_kinds:  # the record and the key's finish are one call: neither is written
            self.refused.append(kind)
            raise JournalFailure("journal append failed: simulated", context={"kind": kind})
        return super().append_and_finish(store, environment_id, kind, fields, *rest)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client_for(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(f"{redis_url}/{STATE_DB}", decode_responses=True)


@dataclass
class Rig:
    """Everything a coordinator test touches."""

    client: redis.Redis
    store: Store
    journal: Journal
    runtime: CountingRuntime
    clock: ManualClock
    coordinator: Coordinator
    closers: list[Callable[[], None]] = field(default_factory=list)

    def coordinator_for(self, host_id: str, **kwargs: Any) -> Coordinator:
        """Another coordinator (another host) on the same state database and clock."""
        return Coordinator(CountingRuntime(host_id), self.store, self.journal, host_id, clock=self.clock, **kwargs)

    def records(self, environment_id: str) -> list[JournalRecord]:
        return self.journal.read(environment_id)

    def kinds(self, environment_id: str) -> list[tuple[str, str]]:
        """(kind, op) of every journal record, in order."""
        return [(r.kind, r.fields.get("op", "")) for r in self.records(environment_id)]

    def run_chain(self, job: JobSpec, upto: str = "start_process") -> dict[str, BaseModel]:
        """Run the prepare-to-start chain through ``upto`` (inclusive); returns each step's result."""
        results: dict[str, BaseModel] = {}
        for op, request in job.requests(self.coordinator.host_id):
            results[op] = getattr(self.coordinator, op)(request)
            if op == upto:
                break
        return results


@contextmanager
def make_rig(
    redis_url: str, *, journal: Journal | None = None, runtime: CountingRuntime | None = None, **kwargs: Any
) -> Iterator[Rig]:
    client = client_for(redis_url)
    clock = ManualClock()
    store = Store(client)
    jr = journal or Journal(client)
    rt = runtime or CountingRuntime(HOST)
    kwargs.setdefault("pending_wait_s", 0.2)
    coordinator = Coordinator(rt, store, jr, HOST, clock=clock, **kwargs)
    rig = Rig(client, store, jr, rt, clock, coordinator)
    try:
        yield rig
    finally:
        for close in rig.closers:
            close()
        client.close()


def job(**kwargs: Any) -> JobSpec:
    kwargs.setdefault("image", IMAGE)
    kwargs.setdefault("argv", ["echo", "hello"])
    return JobSpec(**kwargs)


def request_of(j: JobSpec, op: str, host: str = HOST) -> Any:
    return dict(j.requests(host))[op]


def start_request(j: JobSpec) -> ProcessStartRequest:
    return cast(ProcessStartRequest, request_of(j, "start_process"))


def prepare_env_request(j: JobSpec) -> EnvironmentPrepareRequest:
    return cast(EnvironmentPrepareRequest, request_of(j, "prepare_environment"))


def env_of(j: JobSpec) -> ExecutionEnvironment:
    return j.environment()


def other_process(j: JobSpec, argv: list[str]) -> IsolatedProcessSpec:
    return j.process().model_copy(update={"argv": argv})


def start_key(result_env_id: str, process_id: str) -> str:
    return f"start_process:{result_env_id}:{process_id}"


def started(results: dict[str, BaseModel]) -> ProcessStartResult:
    return cast(ProcessStartResult, results["start_process"])
