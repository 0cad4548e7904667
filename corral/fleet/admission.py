"""Admission: which host a job goes to, decided and reserved atomically in Redis (``admission.lua``).

Placement is filter → score → reservation. The capability filter is the existing fail-closed matching
on each live host's published report (``corral.contract.matching.placement_match``, in Python: it needs the
models); then **one Lua call** re-checks liveness (the host's capacity key exists only while its
heartbeat runs), filters on free slots, CPUs and memory, scores the fitting hosts (``spread``: the
least allocated, Kubernetes' LeastAllocated; ``binpack``: the most allocated that fits) and records the
allocation. Concurrent clients cannot pick the same last slot: Redis runs one script at a time.

A reservation is a *lease* until the host's ``prepare_session`` confirms it (``Coordinator``): a client
that reserved and died never sends its chain, the lease expires and its capacity comes back (returned
by the next reservation). When the process exits (seen by ``collect_stats``) its CPUs and memory come
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
(one hash each, a field per host: a decision reads all candidates in two calls), ``alloc:<host>``,
``allocs``, ``leases``. Only fleet workers write them: the client
Redis role is read-only on ``corral:*``, so a client asks a fleet worker to place (``corral.place``).
"""

from __future__ import annotations

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

    # -- hosts -----------------------------------------------------------------------------

    def publish_capacity(self, host_id: str, capacity: Capacity, ttl_ms: int, now_ms: int | None = None) -> None:
        """Written with the heartbeat, expiring with it: past ``ttl_ms`` of silence, no placement there."""
        expires = (now_ms if now_ms is not None else int(time.time() * 1000)) + ttl_ms
        pipe = self.r.pipeline()
        pipe.hset(CAPACITY_KEY, host_id, f"{capacity.slots},{capacity.cpus_m},{capacity.mem_mb},{expires}")
        pipe.pexpire(CAPACITY_KEY, self.ttl_ms)
        pipe.execute()

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
    ) -> Placed | Queued:
        """Reserve ``demand`` on the best of ``candidates`` (hosts that passed capability matching, in
        preference order: ties go to the earlier one). A repeated call for the same environment returns
        the host it already holds."""
        args: list[str | int] = [
            "reserve",
            PREFIX,
            now_ms,
            lease_ms if lease_ms is not None else self.lease_ms,
            self.ttl_ms,
            environment_id,
            demand.cpus_m,
            demand.mem_mb,
            mode,
            len(candidates),
            *candidates,
        ]
        out = cast(list[str], self._script(keys=[ALLOCS_KEY, LEASES_KEY], args=args))
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
        return bool(self._script(keys=[ALLOCS_KEY, LEASES_KEY], args=args))

    def exited(self, environment_id: str) -> bool:
        """The process ended: give its CPUs and memory back, keep its slot until cleanup (idempotent)."""
        return bool(self._script(keys=[ALLOCS_KEY, LEASES_KEY], args=["exited", PREFIX, environment_id]))

    def release(self, environment_id: str, only_leased: bool = False) -> bool:
        """Return the allocation's capacity (idempotent). ``only_leased``: only if no session confirmed it."""
        args = ["release", PREFIX, environment_id, "1" if only_leased else "0"]
        return bool(self._script(keys=[ALLOCS_KEY, LEASES_KEY], args=args))

    def release_stale(self, host_id: str, now_ms: int) -> list[str]:
        """Release the host's allocations whose session is gone or cleaned (and expired leases)."""
        args: list[str | int] = ["gc", PREFIX, host_id, now_ms, session_key("")]
        return cast(list[str], self._script(keys=[ALLOCS_KEY, LEASES_KEY], args=args))
