"""Admission: which host a job goes to, decided and reserved atomically in Redis (``admission.lua``).

Placement is filter → score → reservation. The capability filter is the existing fail-closed matching
on each live host's published report (``corral.contract.matching.placement_match``, in Python: it needs the
models); then **one Lua call** re-checks liveness (the host's capacity key exists only while its
heartbeat runs), filters on free slots, CPUs and memory, scores the fitting hosts (``spread``: the
least allocated, Kubernetes' LeastAllocated; ``binpack``: the most allocated that fits) and records the
allocation. Concurrent clients cannot pick the same last slot: Redis runs one script at a time.

A reservation is a *lease* until the host's ``prepare_session`` confirms it (``Coordinator``): a client
that reserved and died never sends its chain, the lease expires and its capacity comes back (returned
by the next reservation). A chain may wait in its host's queue longer than the lease (the host is
busy): while the host has messages queued or tasks running, its heartbeat renews the leases placed
on it (``renew``), so the room stays reserved until the chain's ``prepare_session`` confirms it. The
price: a dead client's reservation on a host that stays busy returns only once that host's queue
drains (then within one lease). When the process exits (seen by ``collect_stats``) its CPUs and memory come
back and its slot stays taken until cleanup. A confirmed allocation is released by ``cleanup`` and
``reclaim`` when the session is cleaned, and by the reconciler for allocations whose session no longer
exists. A job that fits nowhere is not an error: it gets a ``Queued`` answer with a reason a person can
read (``no host has 2 free CPUs; 3 hosts full``), and the caller waits (``corral run``) or the batch
dispatcher keeps it pending.

Capacity: each host publishes ``slots`` (``host.slots``, ``corral worker --slots N``, at most the
policy's ``limits.max_sandboxes``), CPUs (``host.capacity_cpus`` or ``os.cpu_count()``) and memory
(``host.capacity_memory_mb`` or MemTotal) with its heartbeat. A job's ``cpus`` is a limit, so the
detected CPU count is multiplied by ``host.cpu_overcommit`` (default 4; 1 makes limits reservations).
A job's demand is one slot, its ``cpus`` and its ``memory_mb``. The host's own hard cap stays ``limits.max_sandboxes``.

Keys (prefix ``corral:``; TTL backstops; see the head of ``admission.lua``): ``capacity`` and ``used``
(one hash each, a field per host), ``load`` (hosts by share in use: the spread index), ``capmax``,
``alloc:<host>``, ``allocs``, ``leases``. Only fleet workers write them: the client
Redis role is read-only on ``corral:*``, so a client asks a fleet worker to place (``corral.place``).

Cost of a decision: ``spread`` walks the ``load`` index from the least loaded host and stops as soon as
no later host can score better, so on a fleet with room it reads a few hosts whatever the fleet's size;
``binpack`` and a decision that finds nothing (its reason counts every candidate) read every candidate.
``reserve_many`` decides a batch's jobs in one call (the dispatcher): one round trip, not one per job.
Ties under ``spread`` go to a host needing no approved gap, then to the less loaded one, then by id.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

import redis

from corral.state.store import PREFIX, session_key

SCRIPT = Path(__file__).with_name("admission.lua")
Mode = Literal["spread", "binpack"]
MODES: tuple[Mode, ...] = ("spread", "binpack")
DEFAULT_LEASE_MS = 120_000
"""How long a reservation waits for its session (the chain's ``prepare_session``) before it returns."""


CAPACITY_KEY = f"{PREFIX}capacity"
USED_KEY = f"{PREFIX}used"


def alloc_key(host_id: str) -> str:
    return f"{PREFIX}alloc:{host_id}"


ALLOCS_KEY = f"{PREFIX}allocs"
LEASES_KEY = f"{PREFIX}leases"
LOAD_KEY = f"{PREFIX}load"
INLINE_CANDIDATES = 8
"""Up to this many candidates travel with the call; more go in a ``cands:<digest>`` key."""
CANDIDATES_TTL_S = 600


def candidates_key(digest: str) -> str:
    return f"{PREFIX}cands:{digest}"


@dataclass(frozen=True)
class Capacity:
    slots: int
    cpus_m: int
    """CPUs in thousandths (a job may ask for 0.5)."""
    mem_mb: int

    def as_dict(self) -> dict[str, int]:
        return {"slots": self.slots, "cpus_m": self.cpus_m, "mem_mb": self.mem_mb}


@dataclass(frozen=True)
class Demand:
    cpus_m: int
    mem_mb: int

    @classmethod
    def of(cls, cpus: float, memory_mb: int) -> Demand:
        return cls(max(0, round(cpus * 1000)), max(0, int(memory_mb)))


@dataclass(frozen=True)
class Placed:
    host: str


@dataclass(frozen=True)
class Queued:
    """Nothing fits now. ``unplaceable``: no candidate could ever fit it (larger than every host)."""

    reason: str
    unplaceable: bool = False


def memtotal_mb(meminfo: str = "/proc/meminfo") -> int:
    try:
        for line in Path(meminfo).read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def host_capacity(
    max_sandboxes: int, slots: int | None = None, cpus: float | None = None, memory_mb: int | None = None
) -> Capacity:
    """What this host offers: the configured overrides, else the machine's CPUs and memory."""
    return Capacity(
        slots=min(max_sandboxes, slots) if slots is not None else max_sandboxes,
        cpus_m=round((cpus if cpus is not None else float(os.cpu_count() or 1)) * 1000),
        mem_mb=memory_mb if memory_mb is not None else memtotal_mb(),
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def queued_reason(
    demand: Demand, down: int, full: int, cpu_short: int, mem_short: int, too_small: int, unmatched: int = 0
) -> str:
    """One line a person reads: why nothing fits now (``no host has 2 free CPUs; 3 hosts full``)."""
    parts = []
    if cpu_short:
        parts.append(f"no host has {demand.cpus_m / 1000:g} free CPUs ({_plural(cpu_short, 'host')} short)")
    if mem_short:
        parts.append(f"no host has {demand.mem_mb} MB free memory ({_plural(mem_short, 'host')} short)")
    if full:
        parts.append(f"{_plural(full, 'host')} full")
    if too_small:
        parts.append(f"{_plural(too_small, 'host')} too small for {demand.cpus_m / 1000:g} CPUs, {demand.mem_mb} MB")
    if down:
        parts.append(f"{_plural(down, 'host')} down")
    if unmatched:
        parts.append(f"{_plural(unmatched, 'host')} not matching the isolation requirement")
    return "; ".join(parts) or "no live host"


class Admission:
    """The admission script and its keys. One instance per process; cheap to share."""

    def __init__(self, client: redis.Redis, ttl_s: int = 7 * 24 * 3600, lease_ms: int = DEFAULT_LEASE_MS) -> None:
        self.r = client
        self.ttl_ms = ttl_s * 1000
        self.lease_ms = lease_ms
        self._script = client.register_script(SCRIPT.read_text())
        self._written: dict[str, float] = {}
        """Candidate keys this process wrote, and when (monotonic)."""

    # -- hosts -----------------------------------------------------------------------------

    def publish_capacity(self, host_id: str, capacity: Capacity, ttl_ms: int, now_ms: int | None = None) -> None:
        """Written with the heartbeat, expiring with it: past ``ttl_ms`` of silence, no placement there.
        The host (re)enters the spread index."""
        expires = (now_ms if now_ms is not None else int(time.time() * 1000)) + ttl_ms
        args: list[str | int] = [
            "publish", PREFIX, self.ttl_ms, host_id, capacity.slots, capacity.cpus_m, capacity.mem_mb, expires,
        ]  # fmt: skip
        self._script(keys=[CAPACITY_KEY, LOAD_KEY], args=args)

    def capacity(self, host_id: str, now_ms: int | None = None) -> Capacity | None:
        """The host's published capacity, None once its heartbeat stopped."""
        raw = cast(str | None, self.r.hget(CAPACITY_KEY, host_id))
        if not raw:
            return None
        slots, cpus, mem, expires = (int(x) for x in raw.split(","))
        if expires < (now_ms if now_ms is not None else int(time.time() * 1000)):
            return None
        return Capacity(slots, cpus, mem)

    def used(self, host_id: str) -> Capacity:
        raw = cast(str | None, self.r.hget(USED_KEY, host_id))
        slots, cpus, mem = (int(x) for x in raw.split(",")) if raw else (0, 0, 0)
        return Capacity(slots, cpus, mem)

    def allocation_host(self, environment_id: str) -> str | None:
        rec = cast(str | None, self.r.hget(ALLOCS_KEY, environment_id))
        return rec.rsplit(",", 2)[0] if rec else None

    def leased(self, environment_id: str) -> bool:
        return self.r.zscore(LEASES_KEY, environment_id) is not None

    # -- decisions -------------------------------------------------------------------------

    def reserve(
        self,
        environment_id: str,
        demand: Demand,
        candidates: list[str],
        now_ms: int,
        mode: Mode = "spread",
        unmatched: int = 0,
        lease_ms: int | None = None,
        preferred: int | None = None,
    ) -> Placed | Queued:
        """Reserve ``demand`` on the best of ``candidates`` (hosts that passed capability matching, in
        preference order: the first ``preferred`` need no approved gap and win ties). A repeated call
        for the same environment returns the host it already holds."""
        jobs = [(environment_id, demand)]
        return self.reserve_many(jobs, candidates, now_ms, mode, unmatched, lease_ms, preferred)[0]

    def reserve_many(
        self,
        jobs: list[tuple[str, Demand]],
        candidates: list[str],
        now_ms: int,
        mode: Mode = "spread",
        unmatched: int = 0,
        lease_ms: int | None = None,
        preferred: int | None = None,
    ) -> list[Placed | Queued]:
        """Decide ``jobs`` (environment id, demand) in order over the same candidates, in one Redis call.
        It stops after the first job that must wait (later jobs are not decided: fewer answers than
        jobs); one that could never fit (``Queued.unplaceable``) does not stop the others."""
        if not jobs:
            return []
        lease = lease_ms if lease_ms is not None else self.lease_ms
        npref = len(candidates) if preferred is None else preferred
        args: list[str | int] = ["reserve_many", PREFIX, now_ms, lease, self.ttl_ms, mode, len(jobs)]
        for env_id, demand in jobs:
            args += [env_id, demand.cpus_m, demand.mem_mb]
        keys = [ALLOCS_KEY, LEASES_KEY, LOAD_KEY]
        if len(candidates) <= INLINE_CANDIDATES:
            out = cast(list[list[str]], self._script(keys=keys, args=[*args, len(candidates), *candidates, npref]))
        else:
            key = self._candidates_key(candidates, fresh=False)
            out = cast(list[list[str]], self._script(keys=keys, args=[*args, -1, key, npref]))
            if out and out[0][0] == "nocands":  # the candidates' key expired meanwhile: written again
                key = self._candidates_key(candidates, fresh=True)
                out = cast(list[list[str]], self._script(keys=keys, args=[*args, -1, key, npref]))
        return [self._decision(got, demand, candidates, unmatched) for got, (_, demand) in zip(out, jobs, strict=False)]

    def _candidates_key(self, candidates: list[str], fresh: bool) -> str:
        """A ZSET of the candidates by rank, named by their digest and written once for many decisions:
        a decision then carries one key, not a host list (100 hosts as arguments cost more than the
        decision itself). Rewritten when this process last wrote it half a TTL ago, or on demand."""
        digest = hashlib.blake2b("\n".join(candidates).encode(), digest_size=10).hexdigest()
        key = candidates_key(digest)
        now = time.monotonic()
        if fresh or self._written.get(key, 0.0) < now - CANDIDATES_TTL_S / 2:
            pipe = self.r.pipeline()
            pipe.delete(key)
            pipe.zadd(key, {host: rank for rank, host in enumerate(candidates, 1)})
            pipe.expire(key, CANDIDATES_TTL_S)
            pipe.execute()
            if len(self._written) > 1000:
                self._written.clear()
            self._written[key] = now
        return key

    @staticmethod
    def _decision(out: list[str], demand: Demand, candidates: list[str], unmatched: int) -> Placed | Queued:
        if out[0] == "ok":
            return Placed(out[1])
        down, full, cpu_short, mem_short, too_small = (int(x) for x in out[1:6])
        reason = queued_reason(demand, down, full, cpu_short, mem_short, too_small, unmatched)
        # Nothing could ever fit: every live candidate is too small and no other host exists to wait for.
        unplaceable = too_small > 0 and full + cpu_short + mem_short + down == 0
        return Queued(reason, unplaceable=unplaceable or (not candidates and unmatched > 0))

    def confirm(self, environment_id: str, host_id: str, demand: Demand) -> bool:
        """The session exists on ``host_id``: the allocation is held until cleanup. False when there was
        no reservation (expired lease, or a chain sent without one): it is recorded now."""
        args: list[str | int] = [
            "confirm", PREFIX, self.ttl_ms, environment_id, host_id, demand.cpus_m, demand.mem_mb,
        ]  # fmt: skip
        return bool(self._script(keys=[ALLOCS_KEY, LEASES_KEY, LOAD_KEY], args=args))

    def exited(self, environment_id: str) -> bool:
        """The process ended: give its CPUs and memory back, keep its slot until cleanup (idempotent)."""
        return bool(self._script(keys=[ALLOCS_KEY, LEASES_KEY, LOAD_KEY], args=["exited", PREFIX, environment_id]))

    def release(self, environment_id: str, only_leased: bool = False) -> bool:
        """Return the allocation's capacity (idempotent). ``only_leased``: only if no session confirmed it."""
        args = ["release", PREFIX, environment_id, "1" if only_leased else "0"]
        return bool(self._script(keys=[ALLOCS_KEY, LEASES_KEY, LOAD_KEY], args=args))

    def renew(self, host_id: str, now_ms: int, lease_ms: int | None = None) -> int:
        """Extend the unconfirmed reservations on ``host_id`` to ``now_ms + lease_ms`` (never shorten);
        how many. The host's heartbeat calls it while the host has chains queued or running: their
        reservations must not expire before ``prepare_session`` confirms them."""
        lease = lease_ms if lease_ms is not None else self.lease_ms
        args: list[str | int] = ["renew", PREFIX, host_id, now_ms, lease]
        return int(self._script(keys=[ALLOCS_KEY, LEASES_KEY, LOAD_KEY], args=args))

    def release_many(self, environment_ids: list[str]) -> int:
        """Release several allocations in one round trip (a pipeline); how many there were."""
        pipe = self.r.pipeline(transaction=False)
        for env_id in environment_ids:
            self._script(keys=[ALLOCS_KEY, LEASES_KEY, LOAD_KEY], args=["release", PREFIX, env_id, "0"], client=pipe)
        return sum(1 for got in pipe.execute() if got)

    def release_stale(self, host_id: str, now_ms: int) -> list[str]:
        """Release the host's allocations whose session is gone or cleaned (and expired leases)."""
        args: list[str | int] = ["gc", PREFIX, host_id, now_ms, session_key("")]
        return cast(list[str], self._script(keys=[ALLOCS_KEY, LEASES_KEY, LOAD_KEY], args=args))
