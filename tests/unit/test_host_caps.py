"""Host-side caps a request cannot raise (``limits.max_spool_bytes`` / ``max_argv_bytes`` /
``max_env_bytes`` / ``max_stdin_bytes`` / ``max_sandboxes``) and the absolute bound on a request
document: the pure checks, the policy file's bounds, and the coordinator refusing before any
adapter call and before anything large is stored (FakeRuntime counting calls + real Redis)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from corral.contract.errors import InvalidRequest, PolicyDenial
from corral.contract.models import (
    CleanupRequest,
    ExecutionEnvironment,
    IsolatedProcessSpec,
    ProcessIoCapturePolicy,
    ProcessIoPolicy,
    ProcessIoRequest,
    RedactedEnvVar,
    SessionState,
    dump,
)
from corral.fleet.job import JobSpec
from corral.sandbox.policy import (
    MAX_REQUEST_BYTES,
    HostPolicy,
    PolicyError,
    argv_bytes,
    check_environment,
    check_process,
    check_sandboxes,
    check_stdin,
    env_bytes,
    parse_policy,
)
from corral.state.store import live_key
from tasks.base import CorralTask, chained_processes, document_size_over
from tests.unit.helpers import HOST, Rig, job, make_rig, request_of, started
from tests.unit.policy_helpers import fixed, policy_with

TIB = 1 << 40
ARG = "x" * 131_072  # the largest single argument the model accepts
HUGE_ARGV = ["sh", *[ARG] * 64]  # ~8 MiB, the example


def rule_of(call: Any, *args: Any) -> str:
    with pytest.raises(PolicyDenial) as info:
        call(*args)
    return info.value.context["rule"]


@dataclass(frozen=True)
class SpoolJob(JobSpec):
    """A job whose stdout spool cap is ``spool_bytes`` (JobSpec has no option for it)."""

    spool_bytes: int = 64 << 20

    def environment(self) -> ExecutionEnvironment:
        env = super().environment()
        io = ProcessIoPolicy(stdout=ProcessIoCapturePolicy(max_bytes=self.spool_bytes))
        return env.model_copy(update={"spec": env.spec.model_copy(update={"io_policy": io})})


def process(argv: list[str], env: dict[str, str] | None = None) -> IsolatedProcessSpec:
    return IsolatedProcessSpec(
        process_id="p-1",
        argv=argv,
        env=[RedactedEnvVar(name=k, redacted_value=v) for k, v in (env or {}).items()],
    )


# -- the pure checks -------------------------------------------------------------------------------


def test_a_spool_cap_above_the_host_maximum_is_denied_not_clamped() -> None:
    policy = HostPolicy()
    env = SpoolJob(image="corral/busybox:latest", argv=["true"], spool_bytes=TIB).environment()
    assert rule_of(check_environment, policy, env) == "limits.max_spool_bytes"
    at_cap = SpoolJob(image="corral/busybox:latest", argv=["true"], spool_bytes=policy.limits.max_spool_bytes)
    check_environment(policy, at_cap.environment())
    # stderr is capped on its own
    env = job().environment()
    io = ProcessIoPolicy(stderr=ProcessIoCapturePolicy(max_bytes=policy.limits.max_spool_bytes + 1))
    env = env.model_copy(update={"spec": env.spec.model_copy(update={"io_policy": io})})
    assert rule_of(check_environment, policy, env) == "limits.max_spool_bytes"


def test_argv_and_env_are_counted_like_the_kernel() -> None:
    assert argv_bytes(["sh", "-c", "é"]) == 3 + 3 + 3  # UTF-8 bytes + NUL each
    env = process(["true"], {"A": "1", "LANG": "é"}).env
    assert env_bytes(env) == len("A=1\0") + len("LANG=é\0".encode())


def test_argv_over_the_host_maximum_is_denied_and_at_it_allowed() -> None:
    policy = HostPolicy()
    env = job().environment()
    assert rule_of(check_process, policy, env, process(HUGE_ARGV)) == "limits.max_argv_bytes"
    check_process(policy, env, process(["sh", "-c", ARG]))  # a 128 KiB script is fine by default
    small = policy_with(limits={"max_argv_bytes": 100})
    check_process(small, env, process(["a" * 99]))  # 99 bytes + NUL = the cap
    assert rule_of(check_process, small, env, process(["a" * 100])) == "limits.max_argv_bytes"


def test_environment_over_the_host_maximum_is_denied() -> None:
    small = policy_with(limits={"max_env_bytes": 10})
    env = job().environment()
    check_process(small, env, process(["true"], {"ABCD": "1234"}))  # "ABCD=1234\0" = 10
    assert rule_of(check_process, small, env, process(["true"], {"ABCD": "12345"})) == "limits.max_env_bytes"


def test_free_form_spec_fields_are_bounded_as_a_whole() -> None:
    """8 MiB in a list the runtime refuses anyway (an allowlist's hosts) would stay in the session
    record for its lifetime: the whole spec is bounded, whatever field carries the bytes."""
    from corral.contract.models import NetworkIsolationPolicy, NetworkKind

    env = job().environment()
    padded = NetworkIsolationPolicy(kind=NetworkKind.allowlist, hosts=["h" * (40 << 10)] * 8)
    env = env.model_copy(update={"spec": env.spec.model_copy(update={"network": padded})})
    assert rule_of(check_environment, HostPolicy(), env) == "limits.max_spec_bytes"
    check_environment(policy_with(limits={"max_spec_bytes": 512 << 10}), env)


def test_stdin_lets_exactly_the_cap_through() -> None:
    policy = policy_with(limits={"max_stdin_bytes": 10})
    check_stdin(policy, 6, 4)
    with pytest.raises(PolicyDenial) as info:
        check_stdin(policy, 6, 5)
    assert info.value.context["rule"] == "limits.max_stdin_bytes"
    assert "limits.max_stdin_bytes" in info.value.message


def test_sandboxes_cap_counts_live_sessions() -> None:
    policy = policy_with(limits={"max_sandboxes": 2})
    check_sandboxes(policy, 1)
    assert rule_of(check_sandboxes, policy, 2) == "limits.max_sandboxes"
    assert rule_of(check_sandboxes, policy_with(limits={"max_sandboxes": 0}), 0) == "limits.max_sandboxes"


@pytest.mark.parametrize(
    "line",
    [
        f"max_argv_bytes = {MAX_REQUEST_BYTES}",
        f"max_env_bytes = {MAX_REQUEST_BYTES}",
        f"max_stdin_bytes = {(1 << 30) + 1}",
        f"max_spool_bytes = {TIB + 1}",
        "max_sandboxes = -1",
    ],
)
def test_a_policy_cannot_set_a_cap_beyond_its_absolute_bound(line: str) -> None:
    with pytest.raises(PolicyError):
        parse_policy(f"version = 1\n[limits]\n{line}\n")


# -- the pre-parse bound ---------------------------------------------------------------------------


def test_document_size_is_bounded_before_parsing() -> None:
    small = {"a": ["x" * 100, {"b": 1}]}
    assert not document_size_over(small, 1000)
    assert document_size_over({"argv": ["x" * 600, "y" * 600]}, 1000)
    assert document_size_over([[[[["x" * 2000]]]]], 1000)
    assert document_size_over(list(range(10_000)), 1000)  # many small values count too


def test_an_absurd_request_document_is_invalid_before_pydantic_sees_it() -> None:
    task = CorralTask()
    payload = {"process_ref": "proc-1", "stream": "stdout", "junk": "x" * (MAX_REQUEST_BYTES + 1)}
    with pytest.raises(InvalidRequest) as info:
        task.parse(ProcessIoRequest, payload)
    assert "refused before parsing" in info.value.message
    assert "xxxx" not in info.value.message
    # a normal document still parses (and a bad one is still a validation error)
    assert task.parse(ProcessIoRequest, {"process_ref": "proc-1", "stream": "stdout"}).process_ref == "proc-1"


def test_the_process_specs_a_chain_carries_are_found_in_its_first_message() -> None:
    j = job(argv=["echo", "hi"])
    steps = j.requests(HOST)
    # what Celery embeds: the rest of the chain, reversed, each step's request as its first argument
    chain = [{"task": f"corral.{op}", "args": [dump(r)], "kwargs": {"host": HOST}} for op, r in reversed(steps[1:])]
    found = chained_processes(chain)
    assert [env_id for env_id, _ in found] == [j.environment_id, j.environment_id]  # start + prepare_environment
    assert all(process["argv"] == ["echo", "hi"] for _, process in found)
    junk: list[Any] = [None, "x", {"args": "no"}, {"args": [{"process": "no"}]}, {"args": [{"process": {}}]}]
    junk.append({"args": [{"process": {}, "environment": ["not", "a", "dict"]}]})
    assert chained_processes(junk) == [] and chained_processes(None) == []


# -- through the coordinator -----------------------------------------------------------------------


@pytest.fixture
def rig(redis_url: str) -> Iterator[Rig]:
    with make_rig(redis_url) as r:
        yield r


def capped(redis_url: str, **limits: int) -> Any:
    return make_rig(redis_url, policy=fixed(policy_with(limits=limits)))


@pytest.mark.redis
def test_a_one_tib_spool_request_is_denied_before_any_effect(rig: Rig) -> None:
    j = SpoolJob(image="corral/busybox:latest", argv=["true"], spool_bytes=TIB)
    with pytest.raises(PolicyDenial) as info:
        rig.run_chain(j)
    assert info.value.context["rule"] == "limits.max_spool_bytes"
    assert rig.runtime.calls["prepare_session"] == 0
    assert rig.store.session(j.environment_id) == {}
    assert rig.kinds(j.environment_id) == [("denial", "prepare_session")]


@pytest.mark.redis
def test_eight_mib_argv_is_denied_and_nothing_large_reaches_redis(rig: Rig) -> None:
    j = job(argv=HUGE_ARGV)
    with pytest.raises(PolicyDenial) as info:
        rig.run_chain(j)
    assert info.value.context["rule"] == "limits.max_argv_bytes"
    assert rig.runtime.calls["prepare_environment"] == 0
    assert "process" not in rig.store.session(j.environment_id)
    assert rig.kinds(j.environment_id)[-1] == ("denial", "prepare_environment")
    # start_process (sent after a failed prepare_environment by a broken chain) is denied too
    with pytest.raises(PolicyDenial):
        rig.coordinator.start_process(request_of(j, "start_process"))
    assert rig.runtime.calls["start_process"] == 0
    sizes = {key: rig.client.memory_usage(key, samples=0) or 0 for key in rig.client.scan_iter("*")}
    assert sizes and max(sizes.values()) < 64 * 1024, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


@pytest.mark.redis
def test_a_chained_process_is_judged_at_the_first_step(rig: Rig) -> None:
    j = job(argv=HUGE_ARGV)
    with pytest.raises(PolicyDenial) as info:
        rig.coordinator.admit_chained_process("prepare_session", j.environment_id, j.process())
    assert info.value.context["rule"] == "limits.max_argv_bytes"
    assert rig.kinds(j.environment_id) == [("denial", "prepare_session")]
    rig.coordinator.admit_chained_process("prepare_session", j.environment_id, job().process())  # small: fine
    # an environment that exists (perhaps another tenant's) is refused the same, its journal untouched
    prepared = job()
    rig.run_chain(prepared, upto="prepare_session")
    before = rig.kinds(prepared.environment_id)
    with pytest.raises(PolicyDenial):
        rig.coordinator.admit_chained_process("prepare_session", prepared.environment_id, j.process())
    assert rig.kinds(prepared.environment_id) == before


@pytest.mark.redis
def test_max_sandboxes_refuses_the_next_session_until_one_is_cleaned(redis_url: str) -> None:
    with capped(redis_url, max_sandboxes=2) as rig:
        first, second, third = job(), job(), job()
        rig.run_chain(first)
        rig.run_chain(second, upto="prepare_session")
        with pytest.raises(PolicyDenial) as info:
            rig.run_chain(third, upto="prepare_session")
        assert info.value.context["rule"] == "limits.max_sandboxes"
        assert rig.runtime.calls["prepare_session"] == 2
        assert rig.kinds(third.environment_id) == [("denial", "prepare_session")]
        # a redelivered prepare_session of an admitted session is still answered
        rig.coordinator.prepare_session(request_of(second, "prepare_session"))
        rig.coordinator.cleanup(CleanupRequest(environment=first.environment(), cleanup_plan_ref="cp-1"))
        assert rig.store.session(first.environment_id)["state"] == SessionState.cleaned
        rig.run_chain(third, upto="prepare_session")  # the cleaned session freed its slot
        assert rig.store.live_sessions(HOST) == 2


@pytest.mark.redis
def test_the_session_create_is_the_atomic_check(redis_url: str) -> None:
    """Two prepares that both passed the count: the create lets only one of them have the slot."""
    with capped(redis_url, max_sandboxes=1) as rig:
        store = rig.store
        assert store.create_live_session("env-a", {"host": HOST, "state": "preparing"}, 1, max_live=1) == "created"
        assert store.create_live_session("env-b", {"host": HOST, "state": "preparing"}, 2, max_live=1) == "full"
        assert store.session("env-b") == {}
        assert store.create_live_session("env-a", {"host": HOST, "state": "preparing"}, 3, max_live=1) == "exists"
        assert store.create_live_session("env-c", {"host": "other", "state": "preparing"}, 4, max_live=1) == "created"
        store.r.delete("corral:session:env-a")  # an expired record no longer counts (and is pruned)
        assert store.live_sessions(HOST) == 0
        assert store.r.smembers(live_key(HOST)) == set()
        # the coordinator's effect refuses a prepare that lost the race after its count said yes
        j = job()
        rig.coordinator.policy = fixed(policy_with(limits={"max_sandboxes": 1}))
        real = store.live_sessions
        store.live_sessions = lambda host: 0  # type: ignore[method-assign]
        store.create_live_session("env-d", {"host": HOST, "state": "running"}, 5, max_live=-1)
        try:
            with pytest.raises(PolicyDenial) as info:
                rig.coordinator.prepare_session(request_of(j, "prepare_session"))
        finally:
            store.live_sessions = real  # type: ignore[method-assign]
        assert info.value.context["rule"] == "limits.max_sandboxes"
        assert rig.runtime.calls["prepare_session"] == 0
        assert store.session(j.environment_id) == {}


@pytest.mark.redis
def test_stdin_writes_stop_at_the_policy_cap(redis_url: str) -> None:
    with capped(redis_url, max_stdin_bytes=10) as rig:
        j = job(stdin=True)
        ref = started(rig.run_chain(j)).process_ref

        def write(data: bytes, delivery: str) -> Any:
            request = ProcessIoRequest(process_ref=ref, stream="stdin", data_b64=base64.b64encode(data).decode())
            return rig.coordinator.stream_io(request, delivery)

        assert write(b"123456", "d-1").cursor == 6
        with pytest.raises(PolicyDenial) as info:
            write(b"12345", "d-2")
        assert info.value.context["rule"] == "limits.max_stdin_bytes"
        assert write(b"1234", "d-3").cursor == 10  # exactly the cap gets through
        assert write(b"1234", "d-3").cursor == 10  # a redelivery is answered from its record, not denied
        with pytest.raises(PolicyDenial):
            write(b"1", "d-4")
        assert rig.runtime.calls["stream_io"] == 2
        assert rig.kinds(j.environment_id).count(("denial", "stream_io")) == 2
        close = ProcessIoRequest(process_ref=ref, stream="stdin", close_stdin=True)
        assert rig.coordinator.stream_io(close, "d-5").eof  # closing is never refused
