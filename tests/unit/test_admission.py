"""corral.fleet.admission: the Lua admission script against a real Redis (db 3), with fake host records.

Filter (down, full, CPU, memory, too small), score (spread, binpack), the atomic reservation under
concurrent callers, leases that return a dead client's capacity, confirmation by the session,
release on cleanup, the reconciler's release of allocations whose session is gone, and the queued
reason a person reads."""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

from corral.contract.models import CleanupRequest, ProcessState, ProcessStatsRequest
from corral.contract.refs import process_ref_for
from corral.fleet.admission import Admission, Capacity, Demand, Placed, Queued, host_capacity, queued_reason
from corral.state.store import session_key
from tests.unit.helpers import HOST, ManualClock, client_for, job, make_rig

pytestmark = pytest.mark.redis

NOW = ManualClock().now_ms()
ONE = Demand.of(1.0, 512)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = client_for(redis_url)
    yield c
    c.close()


@pytest.fixture
def adm(client: redis.Redis) -> Admission:
    return Admission(client, lease_ms=10_000)


def hosts(adm: Admission, n: int, slots: int = 4, cpus: float = 4, mem: int = 8192, prefix: str = "h") -> list[str]:
    names = [f"{prefix}{i}" for i in range(n)]
    for name in names:
        adm.publish_capacity(name, Capacity(slots, round(cpus * 1000), mem), 3_600_000)
    return names


def placed(decision: Placed | Queued) -> str:
    assert isinstance(decision, Placed), decision
    return decision.host


def test_spread_puts_each_job_on_the_least_allocated_host(adm: Admission) -> None:
    names = hosts(adm, 3)
    got = Counter(placed(adm.reserve(f"e{i}", ONE, names, NOW)) for i in range(6))
    assert got == {"h0": 2, "h1": 2, "h2": 2}
    assert adm.used("h1") == Capacity(2, 2000, 1024)


def test_binpack_fills_one_host_before_the_next(adm: Admission) -> None:
    names = hosts(adm, 3)
    got = [placed(adm.reserve(f"e{i}", ONE, names, NOW, mode="binpack")) for i in range(6)]
    assert got == ["h0"] * 4 + ["h1"] * 2


def test_a_job_that_fits_nowhere_is_queued_with_a_reason(adm: Admission) -> None:
    names = hosts(adm, 3, slots=1)
    for i in range(3):
        placed(adm.reserve(f"e{i}", ONE, names, NOW))
    decision = adm.reserve("late", ONE, names, NOW)
    assert decision == Queued("3 hosts full")
    assert adm.used("h0").slots == 1  # nothing was piled onto a full host


def test_the_reason_names_the_scarce_resource_and_down_hosts(adm: Admission) -> None:
    names = hosts(adm, 2, slots=8, cpus=2)
    big = Demand.of(2.0, 512)
    placed(adm.reserve("a", big, names, NOW))
    placed(adm.reserve("b", ONE, names, NOW))
    decision = adm.reserve("c", big, [*names, "gone"], NOW)
    assert isinstance(decision, Queued)
    assert decision.reason == "no host has 2 free CPUs (2 hosts short); 1 host down"
    assert not decision.unplaceable


def test_a_job_larger_than_every_host_is_unplaceable(adm: Admission) -> None:
    names = hosts(adm, 2, cpus=2)
    decision = adm.reserve("huge", Demand.of(3.0, 512), names, NOW)
    assert isinstance(decision, Queued) and decision.unplaceable
    assert "2 hosts too small for 3 CPUs" in decision.reason


def test_a_repeated_reservation_returns_the_same_host_and_counts_once(adm: Admission) -> None:
    names = hosts(adm, 3)
    first = placed(adm.reserve("e", ONE, names, NOW))
    assert placed(adm.reserve("e", ONE, list(reversed(names)), NOW)) == first
    assert sum(adm.used(h).slots for h in names) == 1


def test_a_dead_clients_lease_expires_and_its_capacity_returns(adm: Admission) -> None:
    names = hosts(adm, 1, slots=1)
    placed(adm.reserve("dead-client", ONE, names, NOW))
    assert isinstance(adm.reserve("next", ONE, names, NOW + 9_999), Queued)
    # The chain never came: once the lease is over, the next reservation gets the slot.
    assert placed(adm.reserve("next", ONE, names, NOW + 10_001)) == "h0"
    assert adm.allocation_host("dead-client") is None
    assert adm.used("h0") == Capacity(1, 1000, 512)


def test_a_confirmed_allocation_outlives_its_lease_until_released(adm: Admission) -> None:
    names = hosts(adm, 1, slots=1)
    placed(adm.reserve("e", ONE, names, NOW))
    assert adm.confirm("e", "h0", ONE)
    assert not adm.leased("e")
    assert isinstance(adm.reserve("next", ONE, names, NOW + 60_000), Queued)
    assert not adm.release("e", only_leased=True)  # a session holds it: not a bare reservation
    assert adm.release("e")
    assert not adm.release("e")  # idempotent
    assert adm.used("h0") == Capacity(0, 0, 0)
    assert placed(adm.reserve("next", ONE, names, NOW + 60_000)) == "h0"


def test_confirm_without_a_reservation_records_what_runs(adm: Admission) -> None:
    hosts(adm, 1)
    assert not adm.confirm("direct", "h0", Demand.of(0.5, 100))
    assert adm.used("h0") == Capacity(1, 500, 100)
    assert adm.allocation_host("direct") == "h0"


def test_a_host_that_stopped_heartbeating_gets_nothing(adm: Admission, client: redis.Redis) -> None:
    names = hosts(adm, 2)
    client.hdel("corral:capacity", "h0")
    assert {placed(adm.reserve(f"e{i}", ONE, names, NOW)) for i in range(3)} == {"h1"}


def test_the_reconciler_releases_allocations_whose_session_is_gone(adm: Admission, client: redis.Redis) -> None:
    names = hosts(adm, 1, slots=8)
    for env in ("live", "cleaned", "gone", "leased"):
        placed(adm.reserve(env, ONE, names, NOW))
    for env in ("live", "cleaned", "gone"):
        adm.confirm(env, "h0", ONE)
    client.hset(session_key("live"), "state", "running")
    client.hset(session_key("cleaned"), "state", "cleaned")
    assert sorted(adm.release_stale("h0", NOW + 1)) == ["cleaned", "gone"]
    assert adm.used("h0").slots == 2  # "live" and the still-leased reservation
    assert adm.allocation_host("leased") == "h0"


def test_concurrent_reservations_never_put_a_host_over_capacity(redis_url: str, adm: Admission) -> None:
    names = hosts(adm, 5, slots=3, cpus=4, mem=4096)
    results: list[Placed | Queued] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        c = client_for(redis_url)
        mine = Admission(c)
        for i in range(40):
            demand = Demand.of((0.5, 1.0, 1.5)[i % 3], 1024)
            got = mine.reserve(f"t{t}-{i}", demand, names, NOW)
            with lock:
                results.append(got)
        c.close()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 320
    per_host = Counter(r.host for r in results if isinstance(r, Placed))
    for name in names:
        used = adm.used(name)
        assert used.slots == per_host[name] <= 3
        assert used.cpus_m <= 4000 and used.mem_mb <= 4096
    assert sum(per_host.values()) == 15  # every slot was used: 5 hosts x 3 (memory allows 4, slots 3)
    # Queued because hosts were full or, before the last slots went, too short of CPUs for a 1.5-CPU job
    # (two 1.5-CPU jobs leave 1 of 4 CPUs on a host with a free slot): never anything else.
    reasons = {r.reason for r in results if isinstance(r, Queued)}
    shape = re.compile(r"(no host has 1\.5 free CPUs \(\d hosts? short\); )?\d hosts? full")
    assert "5 hosts full" in reasons and all(shape.fullmatch(r) for r in reasons), reasons


def _post_share(adm: Admission, host: str, demand: Demand) -> float | None:
    """The reference: the host's share in use once ``demand`` is placed, None when it does not fit."""
    cap, used = adm.capacity(host, NOW), adm.used(host)
    if cap is None or used.slots + 1 > cap.slots:
        return None
    if used.cpus_m + demand.cpus_m > cap.cpus_m or used.mem_mb + demand.mem_mb > cap.mem_mb:
        return None
    parts = ((used.slots + 1) / cap.slots, (used.cpus_m + demand.cpus_m) / max(cap.cpus_m, 1))
    return (parts[0] + parts[1] + (used.mem_mb + demand.mem_mb) / max(cap.mem_mb, 1)) / 3


def test_spread_over_the_index_picks_what_reading_every_host_would(adm: Admission, client: redis.Redis) -> None:
    """The walk over the load index stops early; it must never miss a less loaded host that fits:
    mixed host sizes, mixed jobs, jobs ending at random, a down host and hosts that are not candidates."""
    import random

    rng = random.Random(7)
    small = hosts(adm, 12, slots=4, cpus=4, mem=4096, prefix="s")
    big = hosts(adm, 12, slots=16, cpus=32, mem=65536, prefix="b")
    hosts(adm, 4, slots=8, cpus=8, mem=8192, prefix="x")  # not candidates: never chosen
    client.hset("corral:capacity", "s3", f"4,4000,4096,{NOW - 1}")  # its heartbeat stopped
    names = small + big
    held: list[str] = []
    for i in range(400):
        demand = Demand.of(rng.choice((0.25, 0.5, 1, 2, 4)), rng.choice((64, 256, 1024, 2048)))
        shares = {h: _post_share(adm, h, demand) for h in names if h != "s3"}
        fits = {h: v for h, v in shares.items() if v is not None}
        decision = adm.reserve(f"r{i}", demand, names, NOW)
        if not fits:
            assert isinstance(decision, Queued), (i, decision)
        else:
            host = placed(decision)
            assert host in fits and fits[host] <= min(fits.values()) + 1e-6, (i, host, min(fits.values()))
            held.append(f"r{i}")
        if held and rng.random() < 0.45:
            adm.release(held.pop(rng.randrange(len(held))))
    assert all(adm.used(h).slots == 0 for h in ("x0", "x1", "x2", "x3", "s3"))


def test_reserve_many_decides_in_order_and_stops_at_the_first_that_must_wait(adm: Admission) -> None:
    names = hosts(adm, 2, slots=2, cpus=2)
    huge, one = Demand.of(8.0, 64), Demand.of(1.0, 64)
    jobs = [("a", one), ("huge", huge), ("b", one), ("c", one), ("d", one), ("e", one), ("f", one)]
    got = adm.reserve_many(jobs, names, NOW)
    assert [type(d).__name__ for d in got] == ["Placed", "Queued", "Placed", "Placed", "Placed", "Queued"]
    assert isinstance(got[1], Queued) and got[1].unplaceable  # one larger than every host does not stop the rest
    assert isinstance(got[5], Queued) and got[5].reason == "2 hosts full" and not got[5].unplaceable
    assert adm.allocation_host("f") is None  # never decided
    assert Counter(d.host for d in got if isinstance(d, Placed)) == {"h0": 2, "h1": 2}


def test_many_candidates_travel_as_one_key_that_comes_back_when_it_expired(adm: Admission, client: redis.Redis) -> None:
    names = hosts(adm, 20, slots=1)
    assert placed(adm.reserve("k0", ONE, names, NOW)) == "h0"
    keys = client.keys("corral:cands:*")
    assert len(keys) == 1 and client.zrange(keys[0], 0, -1) == names
    client.delete(*keys)  # expired between this process writing it and the next decision
    assert placed(adm.reserve("k1", ONE, names, NOW)) == "h1"
    got = [adm.reserve(f"k{i}", ONE, names[:15], NOW) for i in range(2, 20)]
    assert sorted(d.host for d in got if isinstance(d, Placed)) == sorted(set(names[:15]) - {"h0", "h1"})
    assert got[-1] == Queued("15 hosts full")


def test_queued_reason_wording() -> None:
    demand = Demand.of(2.0, 512)
    assert queued_reason(demand, 0, 3, 1, 0, 0) == "no host has 2 free CPUs (1 host short); 3 hosts full"
    assert queued_reason(demand, 0, 0, 0, 0, 0) == "no live host"


def test_host_capacity_is_capped_by_the_policy_and_overridable() -> None:
    assert host_capacity(256, slots=4, cpus=2, memory_mb=1000) == Capacity(4, 2000, 1000)
    assert host_capacity(2, slots=10, cpus=1, memory_mb=1).slots == 2
    assert host_capacity(16).cpus_m >= 1000 and host_capacity(16).mem_mb > 0


def test_prepare_session_confirms_and_cleanup_releases(redis_url: str) -> None:
    with make_rig(redis_url) as rig:
        adm = rig.coordinator.admission
        adm.publish_capacity(HOST, Capacity(4, 4000, 8192), 60_000)
        j = job(cpus=0.5, memory_mb=256)
        assert placed(adm.reserve(j.environment_id, Demand.of(0.5, 256), [HOST], rig.clock.now_ms())) == HOST
        assert adm.leased(j.environment_id)
        rig.run_chain(j)
        assert not adm.leased(j.environment_id) and adm.used(HOST) == Capacity(1, 500, 256)
        rig.coordinator.cleanup(CleanupRequest(environment=j.environment(), cleanup_plan_ref="p"))
        assert adm.used(HOST) == Capacity(0, 0, 0) and adm.allocation_host(j.environment_id) is None


def test_a_capacity_record_past_its_expiry_is_a_host_down(adm: Admission) -> None:
    adm.publish_capacity("h0", Capacity(4, 4000, 4096), ttl_ms=1_000, now_ms=NOW)
    assert adm.capacity("h0", now_ms=NOW + 999) == Capacity(4, 4000, 4096)
    assert adm.capacity("h0", now_ms=NOW + 1_001) is None
    assert placed(adm.reserve("e", ONE, ["h0"], NOW + 999)) == "h0"
    assert adm.reserve("f", ONE, ["h0"], NOW + 1_001) == Queued("1 host down")


def test_an_exited_process_frees_its_cpus_and_memory_but_keeps_its_slot(adm: Admission) -> None:
    names = hosts(adm, 1, slots=2, cpus=1)
    placed(adm.reserve("done", ONE, names, NOW))
    adm.confirm("done", "h0", ONE)
    assert isinstance(adm.reserve("next", ONE, names, NOW), Queued)  # the CPU is taken
    assert adm.exited("done") and not adm.exited("done")  # once
    assert adm.used("h0") == Capacity(1, 0, 0)
    assert placed(adm.reserve("next", ONE, names, NOW)) == "h0"
    assert adm.reserve("third", Demand.of(0.1, 1), names, NOW) == Queued("1 host full")  # slots: 2 of 2
    assert adm.release("done") and adm.used("h0") == Capacity(1, 1000, 512)  # only the slot went back


def test_collect_stats_of_an_exited_process_frees_its_cpus(redis_url: str) -> None:
    with make_rig(redis_url) as rig:
        adm = rig.coordinator.admission
        adm.publish_capacity(HOST, Capacity(4, 4000, 8192), 3_600_000)
        j = job(cpus=0.5, memory_mb=256)
        rig.run_chain(j)
        assert adm.used(HOST) == Capacity(1, 500, 256)
        # The fake runtime's process has exited already; collect_stats is where the host learns it.
        stats = rig.coordinator.collect_stats(ProcessStatsRequest(process_ref=process_ref_for(j.environment_id)))
        assert stats.state is ProcessState.exited
        assert adm.used(HOST) == Capacity(1, 0, 0)
