"""The intent/result journal: one Redis Stream per environment.

Records are flat string maps built only from refs, operation names, statuses, error kinds and
redacted summaries composed by the coordinator: a journal record never carries a request body,
so it cannot carry a secret value. Kinds:

    intent    before an effect: op, idempotency key, effect id
    result    after it: status ok|failed (+ error kind/retry) and a redacted summary
    recovery  the result could not be recorded after a possible effect, or a recovery action ran
    replay    a duplicate delivery was answered from the idempotency record (no effect)
    denial    the host policy or capability matching refused a request before any effect: op, rule
              (``images.allowed``, ``matching``, ...), gaps when matching, and the denial's message.
              In the host journal (``append_host``): a refused message, rule ``signature``, its task
              name and id and the reason (``unsigned``, ``unknown signer``, ``bad signature``, ...)
    exit      the process's end, once, when ``collect_stats`` first sees it: op, summary

Beside these flat fields, an entry of an operation the seed has a record for carries that record as
upstream's JSON in ``record`` (an ``IsolationRecord`` document, ``corral.contract.records``; which entry
carries which record: ``corral.host.journal_records``), and ``configure_network``'s result carries an
``IsolationNetworkPreparedRecord`` in ``network_record``. Records are built from the same refs, classes,
statuses and composed summaries as the flat fields, never from a request body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import redis

from corral.contract.errors import JournalFailure
from corral.contract.records import IsolationRecord
from corral.state.store import Store, host_journal_key, journal_key

MAX_RECORDS = 10_000


@dataclass(frozen=True)
class JournalRecord:
    record_id: str
    fields: dict[str, str]

    @property
    def kind(self) -> str:
        return self.fields.get("kind", "")

    @property
    def record(self) -> IsolationRecord | None:
        """The upstream isolation record this entry carries (its ``record`` field), if any."""
        text = self.fields.get("record")
        return IsolationRecord.model_validate_json(text) if text else None


class Journal:
    def __init__(self, client: redis.Redis, ttl_s: int = 7 * 24 * 3600) -> None:
        self.r = client
        self.ttl_s = ttl_s

    def append(self, environment_id: str, kind: str, fields: Mapping[str, str]) -> str:
        """Append a record; raises ``JournalFailure`` (retryable) when Redis cannot take it."""
        return self._append(journal_key(environment_id), kind, fields)

    def append_host(self, host_id: str, kind: str, fields: Mapping[str, str]) -> str:
        """A host-level record (no environment: a message refused before it was decoded)."""
        return self._append(host_journal_key(host_id), kind, fields)

    def read_host(self, host_id: str, count: int = 1000) -> list[JournalRecord]:
        rows = cast(list[tuple[str, dict[str, str]]], self.r.xrange(host_journal_key(host_id), "-", "+", count=count))
        return [JournalRecord(rid, dict(fields)) for rid, fields in rows]

    def append_and_finish(
        self,
        store: Store,
        environment_id: str,
        kind: str,
        fields: Mapping[str, str],
        key: str,
        token: str,
        state: str,
        result: str,
    ) -> bool:
        """Append a record and finish the idempotency ``key`` (``Store.idem_finish``) in one atomic call:
        both or neither. Raises ``JournalFailure`` when Redis cannot take it (then, as after a failed
        ``append``, the key may or may not be finished: finishing it again with its token is harmless)."""
        record = {"kind": kind, **{k: str(v) for k, v in fields.items()}}
        try:
            return store.idem_finish_journaled(
                key,
                token,
                state,
                result,
                journal_key(environment_id),
                record,
                maxlen=MAX_RECORDS,
                journal_ttl_s=self.ttl_s,
            )
        except redis.RedisError as exc:
            raise JournalFailure(f"journal append failed: {exc.__class__.__name__}", context={"kind": kind}) from exc

    def _append(self, key: str, kind: str, fields: Mapping[str, str]) -> str:
        record = {"kind": kind, **{k: str(v) for k, v in fields.items()}}
        try:
            pipe = self.r.pipeline()
            pipe.xadd(key, record, maxlen=MAX_RECORDS, approximate=True)  # type: ignore[arg-type]
            pipe.expire(key, self.ttl_s)
            record_id, _ = pipe.execute()
        except redis.RedisError as exc:
            raise JournalFailure(f"journal append failed: {exc.__class__.__name__}", context={"kind": kind}) from exc
        return str(record_id)

    def read(self, environment_id: str, after: str = "-", count: int = 1000) -> list[JournalRecord]:
        start = after if after == "-" else f"({after}"
        rows = cast(
            list[tuple[str, dict[str, str]]], self.r.xrange(journal_key(environment_id), start, "+", count=count)
        )
        return [JournalRecord(rid, dict(fields)) for rid, fields in rows]
