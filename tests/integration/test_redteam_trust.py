"""Red-team pass over the broker's trust boundary (issue 7, items 6-8): variations nobody had tried,
performed for real by a hostile tenant (``other-client`` of tenant globex, its own signing key and the
client Redis password) against a sandbox of tenant acme (``tester``) on a real worker and Docker.

Each attack either is refused (a passing regression test) or is an open finding (a strict xfail whose
reason names it). The worker stamps a client message's ``caller`` with its signer's identity; the
attacks here look for places a signature can hide from the stamper, request fields the signature does
not cover, fleet tasks that act with the worker's own authority, and what the client Redis role can
still reach.
"""

from __future__ import annotations

import base64
import gc
import json
import pickle
import re
import uuid
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from celery import chain, chord, group
from celery.canvas import xmap as celery_xmap
from celery.result import AsyncResult

from corral.celeryconf import FLEET_QUEUE, queue_for_host
from corral.client.client import Client, JobHandle
from corral.contract.errors import InvalidRequest, PolicyDenial
from corral.contract.models import ProcessSignalRequest, ProcessState, dump
from corral.contract.vocabulary import ProcessSignal
from corral.fleet.job import JobSpec
from corral.host.tenancy import resolve_caller
from corral.trust import signing
from corral.trust.identity import Caller
from corral.trust.signing import (
    BIND_KEY,
    CONTENT_TYPE,
    MAGIC,
    MessageSigner,
    _identity_of_cert,
    create_identity,
    load_key,
    load_trust,
    stamp,
)
from tests import conftest
from tests.conftest import TEST_CLIENT
from tests.harness import wait_until
from tests.integration.test_tenancy import ATTACKER, as_, client_as, sleeper, tenant_worker
from tests.unit.policy_helpers import policy_with

pytestmark = [pytest.mark.docker, pytest.mark.redis, pytest.mark.worker]

SEP = "\x06\x16"  # kombu's Redis binding member separator: routing key, pattern, queue


@dataclass
class Rig:
    worker: Any
    acme: Client
    globex: Client
    victim: JobHandle
    signer: MessageSigner  # globex's own key: a tenant signs anything it likes

    @property
    def host(self) -> str:
        return str(self.worker.host_id)

    @property
    def queue(self) -> str:
        return queue_for_host(self.host)

    def kill(self, task_id: str | None = None, caller: str = TEST_CLIENT) -> dict[str, Any]:
        """A signature that kills acme's sandbox, claiming acme's identity as its caller."""
        request = dump(ProcessSignalRequest(process_ref=self.victim.process_ref, signal=ProcessSignal.kill, grace_ms=0))
        sig = self.globex.app.signature(
            "corral.signal_process", args=[request], kwargs={"host": self.host, "caller": caller}, immutable=True
        ).set(queue=self.queue)
        if task_id:
            sig.set(task_id=task_id)
        return dict(json.loads(json.dumps(sig)))

    def harmless(self, task_id: str | None = None) -> Any:
        sig = self.globex.app.signature(
            "corral.runtime_ref", kwargs={"host": self.host, "caller": ATTACKER}, immutable=True
        ).set(queue=self.queue)
        return sig.set(task_id=task_id) if task_id else sig

    def redis_as(self, role: str, db: int) -> redis.Redis:
        port = urlsplit(self.globex.settings.redis.url).port
        return redis.Redis(port=port, username=role, password=conftest.suite_fleet().password(role), db=db)

    def sign_raw(self, raw: bytes) -> bytes:
        """globex's signature over JSON text it wrote itself (the serializer's own dumps cannot nest
        100k deep)."""
        security = self.globex.settings.security
        key, fingerprint = load_key(str(security.key_file)), _identity_of_cert(str(security.cert_file))[1]
        return MAGIC + fingerprint + key.sign(raw) + raw

    def rejections(self) -> dict[str, int]:
        return self.acme.services.store.rejections(self.host)

    def untouched(self) -> None:
        """acme's sandbox still runs and its session was not cleaned up."""
        assert as_(self.acme).stats(self.victim).state is ProcessState.running
        assert self.acme.services.store.session(self.victim.environment_id)["state"] not in ("cleaned", "cleaning")


@pytest.fixture
def rig(worker_factory, corral_env, tmp_path: Path, busybox_image: str) -> Iterator[Rig]:  # type: ignore[no-untyped-def]
    worker = tenant_worker(worker_factory, tmp_path)
    acme, globex = client_as(corral_env, TEST_CLIENT), client_as(corral_env, ATTACKER)
    victim = sleeper(acme, worker.host_id, busybox_image)
    yield Rig(worker, acme, globex, victim, signing.build_signer(globex.settings))
    acme.close()
    globex.close()


def push(
    rig: Rig,
    name: str,
    args: list[Any],
    kwargs: dict[str, Any],
    *,
    mutate: Callable[[list[Any]], Any] | None = None,
    headers: dict[str, Any] | None = None,
    encode: Callable[[list[Any]], tuple[bytes, str, str]] | None = None,
) -> str:
    """Push a protocol 2 task message signed with globex's key straight into acme's host queue, with
    globex's Redis credentials, after ``mutate`` edited the body that gets signed and ``headers`` the
    (unsigned) headers."""
    task_id = str(uuid.uuid4())
    message = rig.globex.app.amqp.as_task_v2(task_id, name, args=args, kwargs=kwargs)
    body = list(message.body)
    body[2] = {**body[2], BIND_KEY: [name, task_id]}
    if mutate is not None:
        mutate(body)
    payload, content_type, encoding = encode(body) if encode else (rig.signer.serialize(body), CONTENT_TYPE, "binary")
    with rig.globex.app.connection_for_write() as conn:
        conn.Producer().publish(
            payload,
            exchange="",
            routing_key=rig.queue,
            headers={**message.headers, **(headers or {})},
            content_type=content_type,
            content_encoding=encoding,
            **message.properties,
        )
    return task_id


def outcome(rig: Rig, task_id: str) -> Any:
    result = AsyncResult(task_id, app=rig.globex.app)
    result.get(timeout=60, propagate=False)
    return result.result


def never_ran(rig: Rig, task_id: str) -> bool:
    return AsyncResult(task_id, app=rig.globex.app).state == "PENDING"


# -- the stamper's walk and what Celery reads besides it ---------------------------------------------


def test_a_client_cannot_send_celerys_builtin_tasks(rig: Rig) -> None:
    """``celery.chord_unlock`` and ``celery.chord`` take signatures as *arguments* (where the stamper
    does not look) and have the worker publish them with its own key, so the caller inside them was
    kept: globex killed acme's sandbox as acme. A client may send only corral tasks."""
    unlock = push(rig, "celery.chord_unlock", [str(uuid.uuid4()), rig.kill()], {"result": [], "host": rig.host})
    header = push(rig, "celery.chord", [[rig.kill()], dict(rig.harmless())], {"host": rig.host})
    refused = wait_until(lambda: rig.rejections().get("client may send only corral tasks") == 2, 30)
    rig.untouched()
    assert refused, (rig.rejections(), rig.worker.log())
    assert never_ran(rig, unlock) and never_ran(rig, header)


def test_headers_cannot_smuggle_a_chain_callbacks_or_stamps(rig: Rig) -> None:
    """Celery builds a task's request from the (unsigned) headers, then the signed embed over them: a
    client body without a ``chain`` (or ``callbacks``) key let a header of that name stand, and the
    worker published it with its own key, acme's caller kept. Stamps name request fields a retry
    re-publishes. Headers carrying any of these are refused."""
    smuggled = [str(uuid.uuid4()) for _ in range(3)]
    drop = lambda key: lambda body: body[2].pop(key)  # noqa: E731
    push(
        rig,
        "corral.runtime_ref",
        [],
        {"host": rig.host},
        mutate=drop("chain"),
        headers={"chain": [rig.kill(smuggled[0])]},
    )
    push(
        rig,
        "corral.runtime_ref",
        [],
        {"host": rig.host},
        mutate=drop("callbacks"),
        headers={"callbacks": [rig.kill(smuggled[1])]},
    )
    push(
        rig,
        "corral.runtime_ref",
        [],
        {"host": rig.host},
        headers={"stamped_headers": ["chain"], "stamps": {"chain": [rig.kill(smuggled[2])]}},
    )
    reason = "headers carry request fields the signature does not cover"
    refused = wait_until(lambda: rig.rejections().get(reason) == 3, 30)
    rig.untouched()
    assert refused, (rig.rejections(), rig.worker.log())
    assert all(never_ran(rig, k) for k in smuggled)


def test_a_tenant_cannot_start_a_fleet_wide_reconcile(rig: Rig) -> None:
    """``corral.reconcile_fleet`` fanned out a real reconcile (``dry_run`` off) to every live host with
    the worker's own identity, whoever asked: an operator-only action any tenant could trigger."""
    reconciles = rig.worker.log_path.read_text().count("corral.reconcile[")  # the worker's own one at start
    for client, identity in ((rig.globex, ATTACKER), (rig.acme, TEST_CLIENT)):
        sent = as_(client).app.send_task("corral.reconcile_fleet", kwargs={"caller": identity}, queue=FLEET_QUEUE)
        with pytest.raises(PolicyDenial) as denied:
            sent.get(timeout=60)
        assert denied.value.context["rule"] == "tenants.operator"
    assert rig.worker.log_path.read_text().count("corral.reconcile[") == reconciles
    rig.untouched()


def test_a_compression_bomb_is_refused_before_it_is_inflated(rig: Rig) -> None:
    """kombu inflates a body whose ``compression`` header names a codec as soon as the message is read,
    before the worker's guard sees it: 256 KiB of zlib became 256 MiB in the worker's main process
    (a few such messages from any holder of the client password and the worker is killed)."""
    pid = rig.worker.proc.pid

    def peak_rss_kib() -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    before = peak_rss_kib()
    squeeze = zlib.compressobj(9)
    chunk = bytes(1 << 20)
    bomb = b"".join(squeeze.compress(chunk) for _ in range(256)) + squeeze.flush()
    assert len(bomb) < 1 << 20
    push(
        rig,
        "corral.runtime_ref",
        [],
        {"host": rig.host},
        headers={"compression": "application/x-gzip"},
        encode=lambda body: (bomb, CONTENT_TYPE, "binary"),
    )
    refused = wait_until(lambda: rig.rejections().get("total") == 1, 30)
    grew_mib = (peak_rss_kib() - before) // 1024
    assert refused, rig.worker.log()
    assert rig.rejections().get("compressed message") == 1, rig.rejections()
    assert grew_mib < 64, f"the worker's peak RSS grew by {grew_mib} MiB"
    rig.untouched()


def test_variations_the_worker_refuses_or_stamps(rig: Rig) -> None:
    """Signatures hidden in places the stamper must walk (a group inside a chain, ``link`` given as an
    option of a chain step, a chord's header) run as globex and are denied; malformed or oddly encoded
    bodies, embed keys Celery would merge into the request, non-signature chain items, signature types
    that call tasks directly and absurd nesting are refused before anything runs."""
    h = rig.harmless
    in_group, in_link, in_chord = (str(uuid.uuid4()) for _ in range(3))
    kill = lambda k: rig.globex.app.signature(rig.kill(k))  # noqa: E731
    signing.register(rig.globex.settings)  # canvas sends below sign with globex's key
    chain(h(), group([kill(in_group)])).apply_async()
    chain(h(), h().set(link=kill(in_link))).apply_async()
    chain(h(), chord([kill(in_chord)], h())).apply_async()
    for task_id in (in_group, in_link, in_chord):
        denial = outcome(rig, task_id)
        assert isinstance(denial, PolicyDenial) and denial.context["rule"] == "tenants.sessions", (task_id, denial)
    # A signature given as a task's argument is just a malformed request.
    as_args = outcome(rig, push(rig, "corral.cleanup", [rig.kill()], {"host": rig.host}))
    assert isinstance(as_args, InvalidRequest), as_args
    # kombu ignores the content encoding of a registered serializer: the same bytes are verified.
    utf8 = push(
        rig,
        "corral.runtime_ref",
        [],
        {"host": rig.host},
        encode=lambda b: (rig.signer.serialize(b), CONTENT_TYPE, "utf-8"),
    )
    assert not isinstance(outcome(rig, utf8), Exception)

    def set_embed(key: str, value: Any) -> Callable[[list[Any]], None]:
        return lambda body: body[2].__setitem__(key, value)

    xmap = dict(json.loads(json.dumps(celery_xmap(rig.globex.app.signature(rig.kill()), [[1]]))))
    refusals = {
        "kwargs as a list": dict(mutate=lambda body: body.__setitem__(1, [["caller", TEST_CLIENT]])),
        "embed as a list": dict(mutate=lambda body: body.__setitem__(2, [rig.kill()])),
        "embed kwargs (re-sent by a retry)": dict(
            mutate=set_embed("kwargs", {"caller": TEST_CLIENT, "host": rig.host})
        ),
        "embed id": dict(mutate=set_embed("id", str(uuid.uuid4()))),
        "a chain item that is a task name": dict(mutate=set_embed("chain", ["corral.reconcile_fleet"])),
        "an xmap in the chain": dict(mutate=set_embed("chain", [xmap])),
        "a builtin in the chain": dict(
            mutate=set_embed("chain", [{"task": "celery.accumulate", "args": [], "kwargs": {}}])
        ),
        "100k nested lists": dict(
            mutate=set_embed("chain", "NESTED"),
            encode=lambda body: (
                rig.sign_raw(json.dumps(body).replace('"NESTED"', "[" * 100_000 + "]" * 100_000).encode()),
                CONTENT_TYPE,
                "binary",
            ),
        ),
        "pickle": dict(encode=lambda body: (pickle.dumps(body), "application/x-python-serialize", "binary")),
    }
    sent = {push(rig, "corral.runtime_ref", [], {"host": rig.host}, **how): what for what, how in refusals.items()}  # type: ignore[arg-type]
    refused = wait_until(lambda: rig.rejections().get("total") == len(refusals), 30)
    journaled = {
        r.fields["task_id"]
        for r in rig.acme.services.journal.read_host(rig.host)
        if r.fields.get("rule") == "signature"
    }
    assert refused, ([what for task_id, what in sent.items() if task_id not in journaled], rig.worker.log())
    rig.untouched()
    # the worker still serves: a legitimate call of acme's works
    as_(rig.acme).signal(rig.victim, ProcessSignal.kill, grace_ms=0)
    assert wait_until(lambda: as_(rig.acme).stats(rig.victim).state is ProcessState.exited, 30)


def test_lookalike_component_names_are_plain_clients(tmp_path: Path) -> None:
    """Only a certificate in the component store is a fleet component; a client certificate named like
    one (unicode hyphen, upper case, a leading space, a newline) is an ordinary identity that no tenant
    lists, and ``corral-...`` (whatever follows) is never loaded from the client store."""
    names = ["corral\u2010host-test", "CORRAL-host-test", " corral-host-test", "ops\ncorral-host-test"]
    skipped = ["corral-host-test", "corral-host-test\nx"]
    store = tmp_path / "clients"
    for name in names + skipped:
        _, cert = create_identity(name, tmp_path / "ids")
        signing.trust(cert, store)
    loaded = sorted(s.identity for s in load_trust(str(store), component=False).values())
    assert loaded == sorted(names)
    policy = policy_with(tenants={"acme": {"identities": [TEST_CLIENT]}})
    for identity in loaded:
        with pytest.raises(PolicyDenial) as denied:
            resolve_caller(policy, identity)
        assert denied.value.context["rule"] == "tenants.identities"
    assert resolve_caller(policy, "corral-host-test") == Caller("corral-host-test", "", operator=True)
    # and whatever such a client claims inside its message, the stamp is its certificate's name
    body = stamp([[], {"caller": "corral-host-test"}, {BIND_KEY: ["corral.runtime_ref", "x"]}], loaded[0])
    assert body[1]["caller"] == loaded[0]


# -- the client Redis role --------------------------------------------------------------


def test_a_binding_added_by_a_client_is_never_consulted(rig: Rig, busybox_image: str) -> None:
    """The client role may add kombu bindings (kombu declares queues on publish). Bound to host X's
    exchange, another host's queue or a ``corral:*`` key the client reads would get a copy of every
    message for X (kombu's direct exchange delivers to every bound queue), but Celery publishes to a
    direct queue through the default exchange, which looks no binding up: nothing is copied, and
    nobody's publish fails on a destination its role may not write."""
    client = rig.redis_as("client", 0)
    decoys = [queue_for_host("nobody"), "corral:loot"]
    for decoy in decoys:
        client.sadd(f"_kombu.binding.{rig.queue}", SEP.join([rig.queue, "", decoy]))
    done = as_(rig.acme).run(
        JobSpec(image=busybox_image, argv=["echo", "hi"]), host=rig.host
    )  # client and worker publish
    assert done.exit_code == 0
    assert as_(rig.acme).stats(rig.victim).state is ProcessState.running
    admin = rig.redis_as("admin", 0)
    assert [admin.llen(decoy) for decoy in decoys] == [0, 0]
    assert admin.smembers(f"_kombu.binding.{rig.queue}") >= {SEP.join([rig.queue, "", d]).encode() for d in decoys}


def read_any(spy: redis.Redis, key: bytes) -> bytes:
    kind = spy.type(key)
    if kind == b"string":
        return bytes(spy.get(key) or b"")
    readers = {b"hash": spy.hgetall, b"stream": spy.xrange, b"list": lambda k: spy.lrange(k, 0, -1)}
    return repr(readers[kind](key)).encode() if kind in readers else b""


def test_the_client_role_cannot_list_keys_to_read_another_tenants_output(rig: Rig, busybox_image: str) -> None:
    """While acme's job streams, each output frame sits in a Celery result (``celery-task-meta-<task
    id>``) until acme's client reads and forgets it. With SCAN, a spy with the client password polled
    the result db and read acme's output (9 frames caught in one run). The client role may not list
    keys (SCAN, RANDOMKEY, KEYS), and task ids are random: the spy learns nothing. Afterwards, even
    knowing every key name (listed here as the admin), nothing of the output is left where the client
    role may read."""
    marker = b"acme-private-output-42"  # only in the output: the argv (in the session record) says $((6*7))
    forms = (marker, base64.b64encode(marker)[:24])
    dbs = (rig.globex.settings.redis.result_db, rig.globex.settings.redis.state_db)
    spy = rig.redis_as("client", dbs[0])
    for listing in (lambda: spy.scan(0, count=1000), spy.randomkey, lambda: spy.keys("*")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            listing()
    out: list[bytes] = []
    as_(rig.acme).run(
        JobSpec(image=busybox_image, argv=["sh", "-c", "echo acme-private-output-$((6*7))"]),
        host=rig.host,
        on_output=lambda stream, data: out.append(data),
    )
    assert marker in b"".join(out)
    found = []
    for db in dbs:
        reader = rig.redis_as("client", db)
        for key in rig.redis_as("admin", db).scan_iter(count=1000):
            try:
                value = read_any(reader, key)
            except redis.exceptions.NoPermissionError:
                continue
            if value and any(form in value for form in forms):
                found.append((db, key))
    assert found == []


def test_a_huge_signed_message_is_refused_before_it_is_decoded(rig: Rig) -> None:
    """A 48 MiB signed message (Redis would take 512 MiB) grew the worker's main process by ~320 MiB
    before the task's 16 MiB document cap refused it: kombu decodes the envelope, the base64 and the
    JSON body first. Redis now refuses any value over 32 MiB (``proto-max-bulk-len``, as corral dev,
    compose and config/redis.conf run it), so the message never reaches a queue."""
    pid = rig.worker.proc.pid

    def peak_rss_kib() -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]

    before = peak_rss_kib()
    with warnings.catch_warnings():
        # Redis drops the connection mid-write; kombu leaves that socket to the garbage collector.
        warnings.simplefilter("ignore", ResourceWarning)
        with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.ResponseError, OSError)):
            push(rig, "corral.cleanup", ["x" * (48 << 20)], {"host": rig.host})
        gc.collect()
    assert rig.redis_as("admin", 0).llen(rig.queue) == 0
    grew_mib = (peak_rss_kib() - before) // 1024
    assert grew_mib < 16, f"the worker's peak RSS grew by {grew_mib} MiB"
    assert rig.rejections().get("total", 0) == 0  # it never reached the worker
