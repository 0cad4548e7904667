"""Every Redis key corral uses, named once, and the atomic transitions on them.

Keys (all prefixed ``corral:``, all with a TTL as a backstop)::

    session:<environment_id>   HASH  host, state, owner, tenant + identity of its creator (``corral.host.tenancy``),
                                     environment/process JSON, step results
    sessions                   ZSET  environment_id by creation time (for ``corral ps``)
    live:<host_id>             SET   environment_ids of the host's sessions not yet cleaned (the
                                     ``limits.max_sandboxes`` count; pruned as it is counted)
    process:<process_ref>      STR   environment_id
    idem:<key>                 HASH  digest, state (pending|done|failed), result, token, lease_until
    journal:<environment_id>   STREAM intent/result/recovery records (see ``corral.state.journal``)
    ticket:<ticket_ref>        HASH  environment_id, host, tenant, deadline_ms, state
    tickets:due                ZSET  ticket_ref by next action time (deadline, then re-send time)
    host:<host_id>             STR   JSON heartbeat: capability report, load; expires on silence
    hosts                      SET   every host ever seen (so a silent one shows as down)
    rejected:<host_id>         HASH  refused messages by reason (``workers.guard``), and ``total``
    hostjournal:<host_id>      STREAM host-level journal records (a refused message: kind ``denial``)
    capacity, used, load, capmax, alloc:<host_id>, allocs, leases, cands:<digest>
                               admission state (``corral.fleet.admission``, ``admission.lua``)

Multi-key transitions are Lua scripts run atomically by Redis. Time is always a parameter.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from corral.contract.lifecycle import Transition
from corral.contract.operations import Operation

PREFIX = "corral:"


def session_key(environment_id: str) -> str:
    return f"{PREFIX}session:{environment_id}"


SESSIONS_KEY = f"{PREFIX}sessions"


def live_key(host_id: str) -> str:
    return f"{PREFIX}live:{host_id}"


def process_key(process_ref: str) -> str:
    return f"{PREFIX}process:{process_ref}"


def idem_key(key: str) -> str:
    return f"{PREFIX}idem:{key}"


def journal_key(environment_id: str) -> str:
    return f"{PREFIX}journal:{environment_id}"


def ticket_key(ticket_ref: str) -> str:
    return f"{PREFIX}ticket:{ticket_ref}"


TICKETS_DUE_KEY = f"{PREFIX}tickets:due"


def host_key(host_id: str) -> str:
    return f"{PREFIX}host:{host_id}"


HOSTS_KEY = f"{PREFIX}hosts"


def rejected_key(host_id: str) -> str:
    """HASH reason -> count of messages the host's worker refused (unsigned, bad signature, ...)."""
    return f"{PREFIX}rejected:{host_id}"


def host_journal_key(host_id: str) -> str:
    """STREAM of host-level records (refused messages), beside the per-environment journals."""
    return f"{PREFIX}hostjournal:{host_id}"


# Begin an idempotent operation. Returns {status, ...}:
#   new       the caller owns the key with its token and must finish it
#   takeover  an earlier holder's lease expired; the caller owns it now (the effect may be half-done)
#   done      recorded result follows
#   failed    recorded (non-retryable) error follows
#   pending   another delivery holds a live lease (its holder id follows)
#   conflict  same key, different request digest
_IDEM_BEGIN = """
local k = KEYS[1]
local digest, token, now, lease, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local holder, dead_holder = ARGV[6], ARGV[7]
if redis.call('EXISTS', k) == 0 then
  redis.call('HSET', k, 'digest', digest, 'state', 'pending', 'token', token, 'lease_until', now + lease,
             'holder', holder)
  redis.call('PEXPIRE', k, ttl)
  return {'new', ''}
end
if redis.call('HGET', k, 'digest') ~= digest then return {'conflict', ''} end
local state = redis.call('HGET', k, 'state')
if state == 'done' then return {'done', redis.call('HGET', k, 'result')} end
if state == 'failed' then return {'failed', redis.call('HGET', k, 'result')} end
local current = redis.call('HGET', k, 'holder') or ''
if tonumber(redis.call('HGET', k, 'lease_until')) < now or (dead_holder ~= '' and current == dead_holder) then
  redis.call('HSET', k, 'token', token, 'lease_until', now + lease, 'holder', holder)
  return {'takeover', current}
end
return {'pending', current}
"""

# Finish an operation only if the caller still holds the key (fencing): ARGV state, result, token.
_FINISH_FUNCTION = """
local function finish(k, state, result, token, ttl)
  if redis.call('HGET', k, 'token') ~= token then return 0 end
  if state == 'forget' then redis.call('DEL', k) return 1 end
  redis.call('HSET', k, 'state', state, 'result', result)
  redis.call('PEXPIRE', k, ttl)
  return 1
end
"""
_IDEM_FINISH = _FINISH_FUNCTION + "return finish(KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))"

# The same finish with the journal record of its outcome appended first, in one atomic call (one round
# trip): KEYS[1] the idempotency key, KEYS[2] the journal stream; ARGV state, result, token, ttl_ms,
# journal maxlen (approximate), journal ttl_s, then the record's field, value, ... The record is
# appended whether or not the caller still holds the key, as a separate append would be.
_JOURNALED_FINISH = (
    _FINISH_FUNCTION
    + """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 7))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[6]))
return finish(KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]))
"""
)

# Claim tickets due at ARGV[1]: each is pushed ARGV[2] ms into the future (re-sent then if its
# reclaim has not completed), so concurrent sweepers never claim the same ticket in one period.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local claimed = {}
for _, ref in ipairs(due) do
  local score = tonumber(redis.call('ZSCORE', KEYS[1], ref))
  if score and score <= tonumber(ARGV[1]) then
    redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ref)
    local tk = ARGV[4] .. ref
    redis.call('HSET', tk, 'state', 'reclaiming', 'claimed_ms', ARGV[1])
    redis.call('HINCRBY', tk, 'attempts', 1)
    table.insert(claimed, ref)
    table.insert(claimed, redis.call('HGET', tk, 'host') or '')
  end
end
return claimed
"""


def _hash(fields: Mapping[str, str]) -> dict[Any, Any]:
    """redis-py's mapping type is invariant in its key type; a plain dict satisfies it."""
    return dict(fields)


# Count the live sessions of a host (KEYS[1], its live set); members whose session record expired
# or reached 'cleaned' are dropped on the way, so the set never needs a separate sweep. ARGV[1]: the
# session key prefix. Shared by the two scripts below.
_COUNT_LIVE = """
local function count_live(live, prefix)
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', live)) do
    local state = redis.call('HGET', prefix .. id, 'state')
    if state and state ~= 'cleaned' then n = n + 1 else redis.call('SREM', live, id) end
  end
  return n
end
"""

_LIVE_SESSIONS = _COUNT_LIVE + "return count_live(KEYS[1], ARGV[1])"

# Create a session hash with its TTL, index entry and live-set entry in one step: 0 (nothing done)
# if it exists, -1 if its host already has ARGV[4] live sessions (ARGV[4] < 0: no cap), else 1.
# ARGV: environment_id, now_ms, ttl_ms, max_live, session key prefix, field, value, ...
_CREATE_SESSION = (
    _COUNT_LIVE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local cap = tonumber(ARGV[4])
if cap >= 0 and count_live(KEYS[3], ARGV[5]) >= cap then return -1 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[3]))
return 1
"""
)


# Compare-and-set a session's state: apply the fields only if the current state is one of ARGV[3..k].
# ARGV: now_ms, ttl_ms, n_states, states..., field, value, ...
_TRANSITION = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return 0 end
local n = tonumber(ARGV[3])
for i = 4, 3 + n do
  if ARGV[i] == cur then
    redis.call('HSET', KEYS[1], 'updated_ms', ARGV[1], unpack(ARGV, 4 + n))
    redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
    return 1
  end
end
return 0
"""


@dataclass(frozen=True)
class IdemBegin:
    status: str
    payload: str


@dataclass(frozen=True)
class DueTicket:
    ticket_ref: str
    host: str


class Store:
    """Typed access to corral's state database. One instance per process; cheap to share."""

    def __init__(self, client: redis.Redis, ttl_s: int = 7 * 24 * 3600) -> None:
        self.r = client
        self.ttl_ms = ttl_s * 1000
        self._begin = client.register_script(_IDEM_BEGIN)
        self._finish = client.register_script(_IDEM_FINISH)
        self._journaled_finish = client.register_script(_JOURNALED_FINISH)
        self._claim = client.register_script(_CLAIM_DUE)
        self._create = client.register_script(_CREATE_SESSION)
        self._live = client.register_script(_LIVE_SESSIONS)
        self._transition = client.register_script(_TRANSITION)

    @classmethod
    def from_url(cls, url: str, ttl_s: int = 7 * 24 * 3600) -> Store:
        return cls(redis.Redis.from_url(url, decode_responses=True), ttl_s)

    # -- idempotency -------------------------------------------------------------------------

    def idem_begin(
        self, key: str, digest: str, token: str, now_ms: int, lease_ms: int, holder: str = "", dead_holder: str = ""
    ) -> IdemBegin:
        """Begin (or replay, or take over) an idempotent operation; ``dead_holder`` names a holder
        the caller has proven dead, whose lease may be taken over before it expires."""
        status, payload = cast(
            list[str],
            self._begin(keys=[idem_key(key)], args=[digest, token, now_ms, lease_ms, self.ttl_ms, holder, dead_holder]),
        )
        return IdemBegin(status, payload)

    def idem_finish(self, key: str, token: str, state: str, result: str) -> bool:
        """Record ``done``/``failed`` with its result, or ``forget`` the key; False when fenced out."""
        return bool(self._finish(keys=[idem_key(key)], args=[state, result, token, self.ttl_ms]))

    def idem_finish_journaled(
        self,
        key: str,
        token: str,
        state: str,
        result: str,
        journal: str,
        record: Mapping[str, str],
        *,
        maxlen: int,
        journal_ttl_s: int,
    ) -> bool:
        """``idem_finish`` with ``record`` appended to the journal stream ``journal`` in the same atomic
        call: the outcome's journal record and the idempotency record are written together or not at all."""
        flat = [x for kv in record.items() for x in kv]
        args: list[str | int] = [state, result, token, self.ttl_ms, maxlen, journal_ttl_s, *flat]
        return bool(self._journaled_finish(keys=[idem_key(key), journal], args=args))

    def idem_get(self, key: str) -> dict[str, str]:
        return cast(dict[str, str], self.r.hgetall(idem_key(key)))

    def session_and_idem(self, environment_id: str, key: str) -> tuple[dict[str, str], dict[str, str]]:
        """A session record and an idempotency record, read in one round trip (both reads a step
        begins with: who owns the session, and whether this delivery is a replay). The key is read
        first: an outcome recorded by then was recorded after its effect's writes (a created session),
        so the session read after it sees them, as when the two were read one after the other."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(idem_key(key))
        pipe.hgetall(session_key(environment_id))
        idem, session = pipe.execute()
        return cast(dict[str, str], session), cast(dict[str, str], idem)

    # -- sessions ----------------------------------------------------------------------------

    def create_session(self, environment_id: str, fields: Mapping[str, str], now_ms: int) -> bool:
        """Create the session record atomically; False if it already exists (left alone)."""
        return self.create_live_session(environment_id, fields, now_ms, max_live=-1) == "created"

    def create_live_session(
        self, environment_id: str, fields: Mapping[str, str], now_ms: int, max_live: int
    ) -> Literal["created", "exists", "full"]:
        """Create the session record and count it live on its host (``fields["host"]``), atomically,
        unless that host already has ``max_live`` live sessions (``full``; a negative cap: no cap)."""
        flat = [x for kv in {**fields, "created_ms": str(now_ms)}.items() for x in kv]
        done = int(
            self._create(
                keys=[session_key(environment_id), SESSIONS_KEY, live_key(fields.get("host", ""))],
                args=[environment_id, now_ms, self.ttl_ms, max_live, session_key(""), *flat],
            )
        )
        return "created" if done == 1 else "full" if done == -1 else "exists"

    def live_sessions(self, host_id: str) -> int:
        """How many sessions of ``host_id`` are not cleaned (expired records are not counted)."""
        return int(self._live(keys=[live_key(host_id)], args=[session_key("")]))

    def session(self, environment_id: str) -> dict[str, str]:
        return cast(dict[str, str], self.r.hgetall(session_key(environment_id)))

    def update_session(self, environment_id: str, fields: Mapping[str, str], now_ms: int) -> None:
        key = session_key(environment_id)
        pipe = self.r.pipeline()
        pipe.hset(key, mapping=_hash({**fields, "updated_ms": str(now_ms)}))
        pipe.pexpire(key, self.ttl_ms)
        pipe.execute()

    def transition(
        self, environment_id: str, from_states: Iterable[str], fields: Mapping[str, str], now_ms: int
    ) -> bool:
        """Apply ``fields`` (a state change) only if the session is in one of ``from_states``, atomically:
        a late or stale operation can never move a session back (say, to running after cleanup)."""
        states = [str(s) for s in from_states]
        flat = [x for kv in fields.items() for x in kv]
        args: list[str | int] = [now_ms, self.ttl_ms, len(states), *states, *flat]
        return bool(self._transition(keys=[session_key(environment_id)], args=args))

    def advance(self, environment_id: str, transition: Transition, now_ms: int, **extra: str) -> bool:
        """Apply one of the state machine's transitions (``corral.contract.lifecycle``), with ``extra``
        fields recorded beside the new state: the one way a session's state changes after its creation."""
        return self.transition(environment_id, transition.sources, transition.fields(**extra), now_ms)

    def record_exit(self, environment_id: str, fields: Mapping[str, str], now_ms: int) -> bool:
        """Record a process's end (``fields``: exit code, reason, OOM) with ``exited_ms``, once: True
        for the one caller that recorded it; False when the session is gone or another did (WATCH)."""
        key = session_key(environment_id)
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)  # type: ignore[no-untyped-call]
                if not pipe.exists(key) or pipe.hexists(key, "exited_ms"):
                    return False
                pipe.multi()
                pipe.hset(key, mapping=_hash({**fields, "exited_ms": str(now_ms), "updated_ms": str(now_ms)}))
                pipe.pexpire(key, self.ttl_ms)
                pipe.execute()
            except redis.WatchError:
                return False
        return True

    def set_step_result(
        self, environment_id: str, step: Operation, result: Mapping[str, Any] | str, now_ms: int
    ) -> None:
        self.update_session(environment_id, {f"result:{step}": json.dumps(result, sort_keys=True)}, now_ms)

    def step_result(self, environment_id: str, step: Operation) -> dict[str, Any] | str | None:
        """A step's recorded result: its wire form (a bare string for a transparent ref)."""
        raw = self.r.hget(session_key(environment_id), f"result:{step}")
        return cast(dict[str, Any] | str, json.loads(raw)) if raw else None

    def list_sessions(self, limit: int = 200) -> list[dict[str, str]]:
        ids = cast(list[str], self.r.zrevrange(SESSIONS_KEY, 0, limit - 1))
        pipe = self.r.pipeline()
        for env_id in ids:
            pipe.hgetall(session_key(env_id))
        out = []
        for env_id, record in zip(ids, pipe.execute(), strict=True):
            if record:
                out.append({"environment_id": env_id, **record})
            else:
                # Expired: drop the index entry lazily (a client's Redis user may only read state).
                with contextlib.suppress(redis.exceptions.NoPermissionError):
                    self.r.zrem(SESSIONS_KEY, env_id)
        return out

    def bind_process(self, process_ref: str, environment_id: str) -> None:
        self.r.set(process_key(process_ref), environment_id, px=self.ttl_ms)

    def environment_of_process(self, process_ref: str) -> str | None:
        return cast(str | None, self.r.get(process_key(process_ref)))

    # -- tickets -----------------------------------------------------------------------------

    def put_ticket(self, ticket_ref: str, fields: Mapping[str, str], deadline_ms: int) -> None:
        """Create a ticket and schedule it; a ticket that already exists is left as it is."""
        if self.r.exists(ticket_key(ticket_ref)):
            return
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            ticket_key(ticket_ref), mapping=_hash({**fields, "deadline_ms": str(deadline_ms), "state": "detached"})
        )
        pipe.pexpireat(ticket_key(ticket_ref), deadline_ms + self.ttl_ms)
        pipe.zadd(TICKETS_DUE_KEY, {ticket_ref: deadline_ms})
        pipe.execute()

    def ticket(self, ticket_ref: str) -> dict[str, str]:
        return cast(dict[str, str], self.r.hgetall(ticket_key(ticket_ref)))

    def close_ticket(self, ticket_ref: str, state: str, now_ms: int) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(ticket_key(ticket_ref), mapping={"state": state, "closed_ms": str(now_ms)})
        pipe.zrem(TICKETS_DUE_KEY, ticket_ref)
        pipe.execute()

    def claim_due_tickets(self, now_ms: int, resend_after_ms: int, limit: int = 100) -> list[DueTicket]:
        flat = cast(
            list[str], self._claim(keys=[TICKETS_DUE_KEY], args=[now_ms, resend_after_ms, limit, f"{PREFIX}ticket:"])
        )
        return [DueTicket(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    def list_tickets(self) -> list[dict[str, str]]:
        refs = cast(list[str], self.r.zrange(TICKETS_DUE_KEY, 0, -1))
        pipe = self.r.pipeline()
        for ref in refs:
            pipe.hgetall(ticket_key(ref))
        return [{"ticket_ref": ref, **rec} for ref, rec in zip(refs, pipe.execute(), strict=True)]

    # -- hosts -------------------------------------------------------------------------------

    def publish_host(self, host_id: str, record: Mapping[str, Any], ttl_ms: int) -> None:
        pipe = self.r.pipeline()
        pipe.set(host_key(host_id), json.dumps(record, sort_keys=True), px=ttl_ms)
        pipe.sadd(HOSTS_KEY, host_id)
        pipe.execute()

    def host(self, host_id: str) -> dict[str, Any] | None:
        raw = self.r.get(host_key(host_id))
        return cast(dict[str, Any], json.loads(raw)) if raw else None

    def count_rejection(self, host_id: str, reason: str) -> None:
        pipe = self.r.pipeline()
        pipe.hincrby(rejected_key(host_id), reason, 1)
        pipe.hincrby(rejected_key(host_id), "total", 1)
        pipe.pexpire(rejected_key(host_id), self.ttl_ms)
        pipe.execute()

    def rejections(self, host_id: str) -> dict[str, int]:
        return {k: int(v) for k, v in cast(dict[str, str], self.r.hgetall(rejected_key(host_id))).items()}

    def known_hosts(self) -> list[str]:
        return sorted(cast(set[str], self.r.smembers(HOSTS_KEY)))
