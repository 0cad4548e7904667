"""Tenants, attacked for real: two clients with their own signing identities (``tester`` of tenant acme,
``other-client`` of tenant globex) against a real worker and Docker. The worker stamps each message's
caller from its signature, so the attacker is who its key says, whatever it puts in the message.

globex cannot stream, signal, stat, clean up, detach or reclaim acme's sandbox, and every answer is the
answer for a sandbox that does not exist; it cannot re-submit acme's environment id as a replay, use a
secret or mount alias only acme may use, or see acme's sandboxes in ``corral ps`` / ``journal`` /
``tickets``. acme's sandbox keeps running through all of it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from corral.client.client import Client, JobHandle, cleanup_plan_ref
from corral.contract.errors import AgentError, PolicyDenial
from corral.contract.models import (
    CleanupRequest,
    CleanupResult,
    DetachTransferRequest,
    DetachTransferResult,
    IsolationSessionRef,
    ProcessIoFrame,
    ProcessIoRequest,
    ProcessSignalRequest,
    ProcessSignalResult,
    ProcessState,
    ProcessStatsRequest,
    ProcessStatsSnapshot,
    ReclaimRequest,
    ReclaimResult,
    SessionPrepareRequest,
)
from corral.contract.vocabulary import ProcessIoStream, ProcessSignal
from corral.fleet.job import JobSpec
from corral.settings import Settings
from corral.trust import signing
from tests import conftest
from tests.conftest import TEST_CLIENT
from tests.harness import REPO, count_labeled, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]

ATTACKER = "other-client"
SECRET_VALUE = "acme-only-secret-value"
POLICY = f"""
version = 1

[tenants.acme]
identities = ["{TEST_CLIENT}"]
secrets = ["acme-*"]
mounts = ["data"]

[tenants.globex]
identities = ["{ATTACKER}"]
mounts = []
"""


def client_as(env: dict[str, str], identity: str) -> Client:
    fleet = conftest.suite_fleet()
    settings = Settings(
        redis={"url": env["CORRAL_REDIS__URL"]},
        celery={"task_timeout_s": 60},
        security={"key_file": str(fleet.key(identity)), "cert_file": str(fleet.cert(identity))},
    )
    return Client(settings)


def tenant_worker(worker_factory: Any, tmp_path: Path, *extra: str) -> Any:
    policy = tmp_path / "policy" / "tenants.toml"  # its own directory: no alias may expose it
    policy.parent.mkdir(exist_ok=True)
    policy.write_text(POLICY)
    return worker_factory(None, *extra, env={"CORRAL_HOST__POLICY_FILE": str(policy)})


@pytest.fixture
def rig(worker_factory, corral_env, tmp_path: Path) -> Iterator[tuple[Any, Client, Client]]:  # type: ignore[no-untyped-def]
    (Path(corral_env["CORRAL_HOST__SECRETS_DIR"]) / "acme-token").write_text(SECRET_VALUE)
    worker = tenant_worker(worker_factory, tmp_path)
    acme, globex = client_as(corral_env, TEST_CLIENT), client_as(corral_env, ATTACKER)
    assert (acme.identity, globex.identity) == (TEST_CLIENT, ATTACKER), "two real signing identities"
    yield worker, acme, globex
    acme.close()
    globex.close()


def as_(client: Client) -> Client:
    """Sign as this client from now on: kombu's serializer registry is per process, so two clients in
    one process sign with whichever registered last (``corral.trust.signing.register``)."""
    signing.register(client.settings)
    return client


def error_of(call: Any) -> AgentError:
    with pytest.raises(AgentError) as info:
        call()
    return info.value


def seen(error: AgentError, ref: str) -> tuple[str, str, str, str, dict[str, str]]:
    """Everything the caller gets back, with the ref it sent itself masked."""
    context = {k: v.replace(ref, "REF") for k, v in error.context.items()}
    return type(error).__name__, error.kind, error.retry, error.message.replace(ref, "REF"), context


def sleeper(client: Client, host: str, image: str) -> JobHandle:
    handle = as_(client).submit(
        JobSpec(image=image, argv=["sleep", "120"], memory_mb=64, stdin=True, allow_detach=True), host=host
    )
    as_(client).wait(handle)
    return handle


def test_another_tenant_cannot_touch_a_sandbox_and_learns_nothing(rig, busybox_image, docker_client) -> None:  # type: ignore[no-untyped-def]
    worker, acme, globex = rig
    host = worker.host_id
    victim = sleeper(acme, host, busybox_image)
    env = as_(acme).environment_of(victim.environment_id)
    record = acme.services.store.session(victim.environment_id)
    assert (record["tenant"], record["identity"]) == ("acme", TEST_CLIENT)
    ghost = JobSpec(image=busybox_image, argv=["true"], allow_detach=True).environment()
    ghost_proc = "proc-0000000000000000"

    attacks: list[tuple[str, str, str, Any]] = []

    def attack(name: str, ref: str, missing: str, send: Any) -> None:
        attacks.append((name, ref, missing, send))

    def op(operation: str, result: type[BaseModel], build: Any) -> Any:
        return lambda ref: as_(globex).call(operation, build(ref), host, result)

    attack(
        "stdout",
        victim.process_ref,
        ghost_proc,
        op("stream_io", ProcessIoFrame, lambda r: ProcessIoRequest(process_ref=r, stream=ProcessIoStream.stdout)),
    )
    attack(
        "stdin",
        victim.process_ref,
        ghost_proc,
        op(
            "stream_io",
            ProcessIoFrame,
            lambda r: ProcessIoRequest(
                process_ref=r, stream=ProcessIoStream.stdin, data_b64=base64.b64encode(b"pwned\n").decode()
            ),
        ),
    )
    attack(
        "kill",
        victim.process_ref,
        ghost_proc,
        op(
            "signal_process",
            ProcessSignalResult,
            lambda r: ProcessSignalRequest(process_ref=r, signal=ProcessSignal.kill, grace_ms=5_000),
        ),
    )
    attack(
        "stats",
        victim.process_ref,
        ghost_proc,
        op("collect_stats", ProcessStatsSnapshot, lambda r: ProcessStatsRequest(process_ref=r)),
    )
    envs = {victim.environment_id: env, ghost.environment_id: ghost}
    attack(
        "cleanup",
        victim.environment_id,
        ghost.environment_id,
        op(
            "cleanup",
            CleanupResult,
            lambda r: CleanupRequest(environment=envs[r], cleanup_plan_ref=cleanup_plan_ref(r)),
        ),
    )
    attack(
        "detach",
        victim.environment_id,
        ghost.environment_id,
        op("detach", DetachTransferResult, lambda r: DetachTransferRequest(environment=envs[r], ttl_ms=60_000)),
    )
    attack(
        "replay",
        victim.environment_id,
        ghost.environment_id,
        op(
            "prepare_session",
            IsolationSessionRef,
            lambda r: SessionPrepareRequest(environment=envs[r] if r == victim.environment_id else env, host_ref=host),
        ),
    )

    for name, ref, missing, send in attacks:
        foreign = error_of(lambda send=send, ref=ref: send(ref))
        assert isinstance(foreign, PolicyDenial), (name, foreign)
        assert foreign.context["rule"] == "tenants.sessions", name
        if name != "replay":  # the replay is answered below: the id is taken, nothing else is said
            assert seen(foreign, ref) == seen(error_of(lambda send=send, missing=missing: send(missing)), missing), name
        assert "acme" not in foreign.message and TEST_CLIENT not in foreign.message, name

    # reclaim: acme detaches, globex tries its ticket (and a ticket that does not exist)
    ticket = as_(acme).detach(victim, ttl_ms=120_000).ticket_ref
    reclaim = op("reclaim", ReclaimResult, lambda r: ReclaimRequest(ticket_ref=r))
    foreign = error_of(lambda: reclaim(ticket))
    assert seen(foreign, ticket) == seen(error_of(lambda: reclaim("tkt-nothing")), "tkt-nothing")

    # the sandbox never noticed: still running, still one container, its journal has no trace of globex
    assert as_(acme).stats(victim).state is ProcessState.running
    assert count_labeled(docker_client, host)["containers"] == 1
    assert ATTACKER not in json.dumps([r.fields for r in as_(acme).view_journal(victim.environment_id)])
    # the host's denial stream names the attacker for the operator
    host_denials = acme.services.journal.read_host(host)
    assert {r.fields.get("identity") for r in host_denials if r.fields.get("rule") == "tenants.sessions"} == {ATTACKER}
    assert as_(acme).reclaim(ticket).status.value == "completed"


def test_a_secret_or_alias_only_another_tenant_may_use_is_denied(rig, busybox_image, docker_client) -> None:  # type: ignore[no-untyped-def]
    worker, acme, globex = rig
    host = worker.host_id
    check = f'test "$(cat /run/secrets/acme-token)" = {SECRET_VALUE} && cat /data/hello.txt'
    out: list[bytes] = []
    outcome = as_(acme).run(
        JobSpec(image=busybox_image, argv=["sh", "-c", check], secrets=["acme-token"], mounts=["data:/data"]),
        host=host,
        on_output=lambda stream, data: out.append(data),
    )
    assert outcome.exit_code == 0 and b"hello from the host" in b"".join(out)

    for job, rule in (
        (JobSpec(image=busybox_image, argv=["cat", "/run/secrets/acme-token"], secrets=["acme-token"]), "secrets"),
        (JobSpec(image=busybox_image, argv=["true"], env_secrets={"T": "acme-token"}), "secrets"),
        (JobSpec(image=busybox_image, argv=["cat", "/data/hello.txt"], mounts=["data:/data"]), "mounts"),
    ):
        denial = error_of(lambda job=job: as_(globex).run(job, host=host))  # type: ignore[misc]
        assert isinstance(denial, PolicyDenial)
        assert denial.context["rule"] == f"tenants.globex.{rule}"
        assert SECRET_VALUE not in denial.message
    assert count_labeled(docker_client, host)["containers"] == 0


def test_ps_tickets_and_journal_show_only_the_callers_tenant(rig, busybox_image, corral_env) -> None:  # type: ignore[no-untyped-def]
    worker, acme, globex = rig
    host = worker.host_id
    victim = sleeper(acme, host, busybox_image)
    as_(acme).detach(victim, ttl_ms=120_000)
    own = sleeper(globex, host, busybox_image)

    assert {s["environment_id"] for s in as_(acme).view_sessions()} == {victim.environment_id}
    assert {s["environment_id"] for s in as_(globex).view_sessions()} == {own.environment_id}
    assert [t["environment_id"] for t in as_(acme).view_tickets()] == [victim.environment_id]
    assert as_(globex).view_tickets() == []
    foreign = error_of(lambda: as_(globex).view_journal(victim.environment_id))
    assert seen(foreign, victim.environment_id) == seen(error_of(lambda: as_(globex).view_journal("job-x")), "job-x")
    assert as_(globex).view_journal(own.environment_id)
    # the reconciler's report would list every tenant's sandboxes: operators only
    denial = error_of(lambda: as_(globex).reconcile(host, dry_run=True))
    assert isinstance(denial, PolicyDenial) and denial.context["rule"] == "tenants.operator"

    # the CLI of the other tenant, as a user runs it
    cli_env = {**corral_env, **conftest.suite_fleet().role_env("client", ATTACKER)}
    for args in (["ps", "--all", "--json"], ["tickets", "--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "corral", *args],
            env=cli_env,
            cwd=REPO,
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert victim.environment_id not in done.stdout.decode()
    assert (
        own.environment_id
        in subprocess.run(
            [sys.executable, "-m", "corral", "ps", "--json"],
            env=cli_env,
            cwd=REPO,
            capture_output=True,
            timeout=120,
            check=True,
        ).stdout.decode()
    )
    for client, handle in ((globex, own), (acme, victim)):
        as_(client).cleanup(handle)


def test_the_sweeper_still_reclaims_a_tenants_expired_ticket(  # type: ignore[no-untyped-def]
    worker_factory, corral_env, tmp_path, busybox_image, docker_client
) -> None:
    """Fleet components act for every tenant: the sweeper's reclaim carries the worker's identity."""
    worker = tenant_worker(worker_factory, tmp_path, "--beat")
    acme = client_as(corral_env, TEST_CLIENT)
    try:
        handle = sleeper(acme, worker.host_id, busybox_image)
        ticket = as_(acme).detach(handle, ttl_ms=1000).ticket_ref
        store = acme.services.store
        assert wait_until(lambda: store.ticket(ticket).get("state") == "reclaimed", 30), worker.log()
        assert store.session(handle.environment_id)["state"] == "cleaned"
        assert count_labeled(docker_client, worker.host_id)["containers"] == 0
    finally:
        acme.close()
