"""Fault suite fixtures, and the table of faults tried and their outcomes.

After a run, ``tests/faults/RESULTS.md`` lists every fault test with its parameters and outcome;
the README's fault table is copied from it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import client_role, corral_env, worker_factory

__all__ = ["client_role", "corral_env", "worker_factory"]

RESULTS = Path(__file__).with_name("RESULTS.md")
_rows: list[tuple[str, str, str, float]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        doc = (getattr(item, "function", None).__doc__ or "").strip().splitlines()  # type: ignore[union-attr]
        name = item.name.split("[")[0].removeprefix("test_").replace("_", " ")
        params = item.name.split("[", 1)[1].rstrip("]") if "[" in item.name else ""
        _rows.append((name if not doc else doc[0], params, report.outcome, report.duration))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _rows:
        return
    lines = ["| fault and expected outcome | injected at | result | seconds |", "|---|---|---|---|"]
    lines += [
        f"| {name} | `{params}` | {outcome} | {secs:.1f} |" if params else f"| {name} | | {outcome} | {secs:.1f} |"
        for name, params, outcome, secs in _rows
    ]
    RESULTS.write_text("\n".join(lines) + "\n")
