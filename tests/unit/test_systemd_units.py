"""The shipped systemd units (config/systemd/) pass ``systemd-analyze verify`` with no complaint.

The units name the install prefix of README's roll-out (/opt/corral/venv); systemd refuses an
ExecStart that does not exist, so the test verifies a copy whose prefix is this checkout's .venv
(the same entry points: ``corral`` and ``celery``). Anything verify prints (unknown keys, bad values,
missing executables) is a failure, not only its exit status: it exits 0 on unknown keys. A unit that
starts through ``/usr/bin/env VAR=... PROGRAM`` has PROGRAM checked here (verify checks only env).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import missing

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "config" / "systemd"
PREFIX = "/opt/corral/venv/bin/"


def _exec_start(unit: Path) -> list[str]:
    """ExecStart's argv, continuation lines joined."""
    text = unit.read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, unit.name
    return shlex.split(lines[0].removeprefix("ExecStart="))


def _verify(unit_dir: Path, names: list[str]) -> str:
    """Everything wrong with these units, as text (empty: nothing)."""
    if shutil.which("systemd-analyze") is None:
        missing("systemd-analyze")
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(unit_dir / n) for n in names)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = result.stdout + result.stderr + ("" if result.returncode == 0 else f"exit {result.returncode}\n")
    for name in names:
        template = unit_dir / re.sub(r"@[^.]+\.", "@.", name)
        argv = _exec_start(template)
        if argv[0] == "/usr/bin/env":
            program = next(a for a in argv[1:] if "=" not in a)
            if not os.access(program, os.X_OK):
                problems += f"{name}: {program} is not executable\n"
    return problems


def _copy(tmp_path: Path) -> Path:
    venv_bin = Path(sys.executable).parent
    for tool in ("corral", "celery"):
        assert (venv_bin / tool).exists(), f"{tool} is not installed next to {sys.executable}"
    out = tmp_path / "units"
    out.mkdir()
    for unit in UNITS.iterdir():
        text = unit.read_text()
        assert PREFIX in text, f"{unit.name} does not start from {PREFIX}"
        (out / unit.name).write_text(text.replace(PREFIX, f"{venv_bin}/"))
    return out


# The template is verified through an instance (systemd finds corral-worker@.service next to it).
SHIPPED = ["corral-beat.service", "corral-flower.service", "corral-worker@edge-1.service"]


def test_the_fleet_units_are_shipped() -> None:
    assert sorted(p.name for p in UNITS.iterdir()) == [
        "corral-beat.service",
        "corral-flower.service",
        "corral-worker@.service",
    ]


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert _verify(_copy(tmp_path), SHIPPED) == ""


@pytest.mark.parametrize(
    ("edit", "complaint"),
    [
        (lambda t: t.replace("[Service]\n", "[Service]\nRestartSecs=5\n"), "Unknown key"),
        (lambda t: t.replace("bin/corral beat", "bin/corral-typo beat"), "not executable"),
    ],
    ids=["unknown-key", "missing-executable"],
)
def test_verify_catches_a_broken_unit(tmp_path: Path, edit: object, complaint: str) -> None:
    """The check above can fail: the same verification rejects a unit with a typo."""
    units = _copy(tmp_path)
    beat = units / "corral-beat.service"
    beat.write_text(edit(beat.read_text()))  # type: ignore[operator]
    assert complaint in _verify(units, ["corral-beat.service"])
