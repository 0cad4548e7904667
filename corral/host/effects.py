"""The effect protocol: how every side effect of the contract happens exactly once.

::

    idempotency begin ─ done?  ──► journal "replay", return the recorded result (no effect)
                      ─ busy?  ──► wait briefly for the other delivery, else InProgress (retryable)
                      ─ new    ──► journal "intent" (if that fails: no effect, JournalFailure)
                                   adapter call
                                   journal "result" ok and record the result under the key (fenced
                                   by an execution token), in one atomic call; if that fails: a
                                   recovery marker naming the effect and its key goes on the
                                   session record, and the key is finished alone
                                   (a failure: journal "result" failed, then the key)

A lease whose holder died (a killed worker) is taken over after ``lease_ms``: the new holder
journals a ``recovery`` record and runs the effect again, which adapters make safe by finding
their resources by deterministic names and labels.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from corral.contract import lifecycle
from corral.contract.errors import AgentError, Conflict, InProgress, InvalidRequest, IsolationFailure, JournalFailure
from corral.contract.models import dump
from corral.contract.operations import Operation
from corral.contract.refs import new_ref, slug
from corral.contract.wire import from_json, to_json
from corral.host import faults, journal_records
from corral.host.journal_records import EffectRecords
from corral.host.liveness import holder_dead, holder_id
from corral.state.journal import Journal
from corral.state.store import IdemBegin, Store

M = TypeVar("M", bound=BaseModel | str)
log = logging.getLogger("corral.host.effects")


class Clock(Protocol):
    def now_ms(self) -> int: ...


class SystemClock:
    def now_ms(self) -> int:
        return int(time.time() * 1000)


def digest_of(value: BaseModel | dict[str, object]) -> str:
    """sha256 over the canonical JSON of a request: the fingerprint behind idempotency keys."""
    data = dump(value) if isinstance(value, BaseModel) else value
    return "sha256:" + hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Effects:
    def __init__(
        self,
        store: Store,
        journal: Journal,
        host_id: str,
        clock: Clock,
        *,
        lease_ms: int = 120_000,
        pending_wait_s: float = 10.0,
        adapter_ref: str | None = None,
    ) -> None:
        self.store = store
        self.journal = journal
        self.host_id = host_id
        self.clock = clock
        self.lease_ms = lease_ms
        self.pending_wait_s = pending_wait_s
        self.adapter_ref = adapter_ref
        """The runtime's ref, named in the ``failed`` record of a failed effect (null when unknown)."""

    def recorded(
        self,
        op: Operation,
        env_id: str,
        key: str,
        request: BaseModel,
        result_type: type[M],
        *,
        idem: dict[str, str] | None = None,
        session: dict[str, str] | None = None,
    ) -> M | None:
        """Answer a redelivery from its idempotency record, before any state check: a step may be
        delivered again after the chain has moved on, and must get its recorded outcome (rule 2).
        Once the session is torn down, a recorded success of a step that needs it alive is refused
        (``Conflict``, ``lifecycle.check_replay``): it would answer for resources that are gone.
        ``idem`` and ``session``: the two records when the caller read them already (``Store.session_and_idem``)."""
        record = self.store.idem_get(key) if idem is None else idem
        if record.get("state") not in ("done", "failed") or record.get("digest") != digest_of(request):
            return None
        if session is None:
            session = self.store.session(env_id)
        if session and session.get("host") != self.host_id:
            raise InvalidRequest(
                f"environment {env_id} lives on host {session.get('host')}, not {self.host_id}",
                context={"environment_id": env_id},
            )
        if record["state"] == "done" and session:  # a success names resources: they must still be there
            lifecycle.check_replay(op, session.get("state"), env_id)
        self.journal.append(
            env_id,
            "replay",
            {"op": op, "key": key, "host": self.host_id, "ts_ms": str(self.clock.now_ms()), "status": record["state"]},
        )
        if record["state"] == "failed":
            raise AgentError.from_payload(json.loads(record["result"]))
        return from_json(result_type, record["result"])

    def run(
        self,
        op: Operation,
        env_id: str,
        key: str,
        request: BaseModel,
        call: Callable[[], M],
        result_type: type[M],
        summary: Callable[[M], str],
        records: EffectRecords[M] | None = None,
    ) -> M:
        """Run one effect under the protocol above. ``records`` adds upstream's isolation record of the
        intent and of the result to their journal entries (``corral.host.journal_records``); a failure
        always carries a ``failed`` record."""
        digest = digest_of(request)
        token = new_ref("exe")
        holder = holder_id(self.host_id)
        faults.hit(f"{op}:before_intent")
        begin = self._begin(key, digest, token, holder)
        base = {"op": op, "key": key, "host": self.host_id, "ts_ms": str(self.clock.now_ms())}
        if begin.status == "conflict":
            raise Conflict(f"idempotency key {key} was used with a different request", context={"key": key})
        if begin.status == "pending":
            raise InProgress(f"{op} is already running for this key", context={"key": key})
        if begin.status in ("done", "failed"):
            self.journal.append(env_id, "replay", {**base, "status": begin.status})
            if begin.status == "failed":
                raise AgentError.from_payload(json.loads(begin.payload))
            return from_json(result_type, begin.payload)
        if begin.status == "takeover":
            self._journal_or_release(
                key,
                token,
                env_id,
                "recovery",
                {
                    **base,
                    "action": "takeover",
                    "summary": f"the earlier holder {begin.payload or '?'} died or its lease expired; "
                    "re-running the idempotent effect",
                },
            )
        effect_id = f"eff-{slug(key)}"
        intent = _record_fields(records.intent, effect_id) if records and records.intent else {}
        self._journal_or_release(key, token, env_id, "intent", {**base, "effect_id": effect_id, **intent})
        faults.hit(f"{op}:before_adapter")
        try:
            result = call()
        except Exception as exc:
            if not isinstance(exc, AgentError):  # its text may name a host path or a value: log only
                log.warning("%s failed in the adapter: %s: %s", op, exc.__class__.__name__, str(exc)[:2000])
            error = (
                exc
                if isinstance(exc, AgentError)
                else IsolationFailure(f"{op} failed: {exc.__class__.__name__}", context={"operation": op})
            )
            self._record_failure(env_id, base, effect_id, key, token, error)
            if error is exc:
                raise
            raise error from exc
        faults.hit(f"{op}:after_adapter")
        done = _record_fields(records.result, effect_id, result) if records and records.result else {}
        payload = to_json(result)
        # The result record and the key's "done" in one atomic call (one round trip): no window between
        # them. If Redis refuses it, the recovery marker goes on the session and the key is finished alone.
        try:
            self.journal.append_and_finish(
                self.store,
                env_id,
                "result",
                {**base, "effect_id": effect_id, "status": "ok", "summary": summary(result), **done},
                key,
                token,
                "done",
                payload,
            )
            finished = True
        except JournalFailure:
            self._flag_recovery(env_id, op, key)
            finished = False
        faults.hit(f"{op}:after_result")
        if not finished:
            self.store.idem_finish(key, token, "done", payload)
        # The outcome is recorded; the caller's own state writes (the session's new state) follow. A
        # crash here is answered by a replay, so every caller re-applies those writes on replay too.
        faults.hit(f"{op}:after_record")
        return result

    def _begin(self, key: str, digest: str, token: str, holder: str) -> IdemBegin:
        """Begin the key; while another delivery holds it, wait (bounded) unless that holder is
        provably dead (a killed pool process of this host), in which case take it over now."""
        deadline = time.monotonic() + self.pending_wait_s
        while True:
            begin = self.store.idem_begin(key, digest, token, self.clock.now_ms(), self.lease_ms, holder)
            # A prefork pool process runs one task at a time: a lease held by this very process
            # belongs to an earlier attempt that is over (it raised before finishing the key).
            if begin.status == "pending" and (begin.payload == holder or holder_dead(begin.payload, self.host_id)):
                begin = self.store.idem_begin(
                    key, digest, token, self.clock.now_ms(), self.lease_ms, holder, dead_holder=begin.payload
                )
            if begin.status != "pending" or time.monotonic() >= deadline:
                return begin
            time.sleep(0.05)

    def _journal_or_release(self, key: str, token: str, env_id: str, kind: str, fields: dict[str, str]) -> None:
        """Journal before an effect; if that fails, release the key so a later delivery may run it."""
        try:
            self.journal.append(env_id, kind, fields)
        except JournalFailure:
            self.store.idem_finish(key, token, "forget", "")
            raise

    def _record_failure(
        self, env_id: str, base: dict[str, str], effect_id: str, key: str, token: str, error: AgentError
    ) -> None:
        try:
            self.journal.append(
                env_id,
                "result",
                {
                    **base,
                    "effect_id": effect_id,
                    "status": "failed",
                    "error_kind": error.kind,
                    "retry": error.retry,
                    "summary": error.message,
                    **_record_fields(
                        lambda: journal_records.field(
                            journal_records.failure(env_id, self.adapter_ref, error.message, error.upstream_retry)
                        )
                    ),
                },
            )
        except JournalFailure:
            self._flag_recovery(env_id, base["op"], key)
        # Transient failures may be tried again under the same key; the rest are answered from the record.
        if error.retryable:
            self.store.idem_finish(key, token, "forget", "")
        else:
            self.store.idem_finish(key, token, "failed", json.dumps(error.to_payload()))

    def _flag_recovery(self, env_id: str, op: str, key: str) -> None:
        """The effect may have happened but its result is not journaled: leave a marker for recovery."""
        try:
            self.store.update_session(env_id, {f"recovery:{key}": op, "recovery_needed": "1"}, self.clock.now_ms())
        except Exception:  # Redis is gone too: the idempotency lease will expire and be taken over
            log.exception("could not flag %s for recovery after %s", env_id, op)


def _record_fields(build: Callable[..., dict[str, str]], *args: Any) -> dict[str, str]:
    """The record fields of a journal entry. A record that cannot be built (a bug, never the request's
    fault: its ids were validated) is logged and left out; it never stops the effect or its journaling."""
    try:
        return build(*args)
    except Exception:
        log.exception("could not build the isolation record of a journal entry")
        return {}
