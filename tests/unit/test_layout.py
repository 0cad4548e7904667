"""The layout by process is enforced, not a habit: import-linter's contracts (``pyproject.toml``) fail when
a module reaches across a boundary. Each case copies the three packages to a scratch tree, adds one
forbidden import and runs ``lint-imports`` there: the named contract must break; the tree as it is keeps
every contract."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "400"},  # one line per contract in the report
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("layout")
    for package in ("corral", "tasks", "workers"):
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_tree_keeps_every_contract(pristine: Path) -> None:
    done = lint(pristine)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "BROKEN" not in done.stdout


VIOLATIONS = [
    ("corral/client/render.py", "import corral.host.coordinator", "the client never imports host"),
    ("corral/client/cli.py", "import corral.runtimes.docker.runtime", "the client never imports host"),
    ("corral/fleet/job.py", "import corral.sandbox.policy", "the client never imports host"),
    ("corral/contract/models.py", "import corral.state.store", "the contract imports nothing of corral"),
    ("corral/contract/refs.py", "import redis", "the contract imports nothing of corral"),
    ("corral/io/shim.py", "import pydantic", "the I/O helper is standard library only"),
    ("corral/io/spool.py", "import corral.contract.models", "the I/O helper is standard library only"),
    ("corral/runtimes/docker/mounts.py", "import celery", "runtime adapters know nothing of Celery"),
    ("corral/runtimes/docker/resources.py", "import corral.runtimes.docker.runtime", "no import cycles"),
    ("corral/state/store.py", "import corral.host.effects", "corral by process"),
    ("corral/host/effects.py", "import corral.client.client", "corral by process"),
    ("corral/contract/matching.py", "import tasks.base", "workers -> tasks -> corral"),
]


@pytest.mark.parametrize(("module", "statement", "contract"), VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_a_forbidden_import_breaks_its_contract(
    pristine: Path, tmp_path: Path, module: str, statement: str, contract: str
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    path = tree / module
    path.write_text(path.read_text() + f"\n{statement}  # injected by test_layout\n")
    done = lint(tree)
    assert done.returncode != 0, f"{statement} in {module} broke nothing"
    broken = [line for line in done.stdout.splitlines() if "BROKEN" in line]
    assert any(contract in line for line in broken), broken
