"""cgroup counter reading against fake v1 and v2 trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.io.cgroup import CgroupCounters, OomListener, is_unified, oom_kills, read_counters

CID = "ab" * 32


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v1_cgroupfs_driver(tmp_path: Path) -> None:
    write(tmp_path / f"cpuacct/docker/{CID}/cpuacct.usage", "2500000000\n")
    write(tmp_path / f"memory/docker/{CID}/memory.usage_in_bytes", "1355776\n")
    write(tmp_path / f"pids/docker/{CID}/pids.current", "3\n")
    assert not is_unified(tmp_path)
    assert read_counters(CID, tmp_path) == CgroupCounters(cpu_millis=2500, memory_bytes=1355776, process_count=3)


def test_v1_systemd_driver_and_combined_cpu_controller(tmp_path: Path) -> None:
    write(tmp_path / f"cpu,cpuacct/system.slice/docker-{CID}.scope/cpuacct.usage", "1000000\n")
    write(tmp_path / f"memory/system.slice/docker-{CID}.scope/memory.usage_in_bytes", "4096\n")
    counters = read_counters(CID, tmp_path)
    assert (counters.cpu_millis, counters.memory_bytes, counters.process_count) == (1, 4096, None)


@pytest.mark.parametrize("rel", [f"system.slice/docker-{CID}.scope", f"docker/{CID}"])
def test_v2_layouts(tmp_path: Path, rel: str) -> None:
    write(tmp_path / "cgroup.controllers", "cpu memory pids\n")
    write(tmp_path / rel / "cpu.stat", "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n")
    write(tmp_path / rel / "memory.current", "8192\n")
    write(tmp_path / rel / "pids.current", "2\n")
    assert is_unified(tmp_path)
    assert read_counters(CID, tmp_path) == CgroupCounters(cpu_millis=123, memory_bytes=8192, process_count=2)


def test_gone_container_gives_empty_counters(tmp_path: Path) -> None:
    assert read_counters(CID, tmp_path).empty
    write(tmp_path / "cgroup.controllers", "")
    assert read_counters(CID, tmp_path).empty


def test_short_or_foreign_ids_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="64-hex"):
        read_counters("abc", tmp_path)
    with pytest.raises(ValueError, match="64-hex"):
        read_counters("../" + CID[3:], tmp_path)


def test_oom_kills_v1_and_v2(tmp_path: Path) -> None:
    v1 = tmp_path / "v1"
    write(v1 / f"memory/docker/{CID}/memory.oom_control", "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert oom_kills(CID, v1) == 2
    v2 = tmp_path / "v2"
    write(v2 / "cgroup.controllers", "memory\n")
    write(v2 / f"docker/{CID}/memory.events", "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    assert oom_kills(CID, v2) == 1
    assert oom_kills(CID, tmp_path / "gone") is None


def test_oom_listener_needs_a_v1_memory_cgroup(tmp_path: Path) -> None:
    write(tmp_path / "cgroup.controllers", "memory\n")
    with pytest.raises(ValueError, match="v1"):
        OomListener(CID, tmp_path)
    with pytest.raises(FileNotFoundError):
        OomListener(CID, tmp_path / "v1-without-container")


def test_lowest_pid_is_the_containers_init_or_none(tmp_path: Path) -> None:
    from corral.io.cgroup import lowest_pid

    assert lowest_pid(CID, tmp_path) is None  # no cgroup: not running
    write(tmp_path / f"pids/docker/{CID}/cgroup.procs", "")
    assert lowest_pid(CID, tmp_path) is None  # a cgroup without a process
    write(tmp_path / f"pids/docker/{CID}/cgroup.procs", "4242\n4100\n4300\n")
    assert lowest_pid(CID, tmp_path) == 4100
    write(tmp_path / "v2" / "cgroup.controllers", "cpu memory pids\n")
    write(tmp_path / "v2" / f"system.slice/docker-{CID}.scope/cgroup.procs", "77\n")
    assert lowest_pid(CID, tmp_path / "v2") == 77
    with pytest.raises(ValueError, match="64-hex"):
        lowest_pid("../" + CID[3:], tmp_path)
