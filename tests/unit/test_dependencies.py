"""The package declares what it imports, and only the Flower host pulls Flower: every third-party
module that corral, tasks or workers import comes from a distribution pyproject.toml names (the base
dependencies; an optional extra only for the module that needs it), read from the source's imports."""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("corral", "tasks", "workers")
EXTRA_MODULES = {"corral/airflow.py": "airflow"}
"""Modules that may import what an optional extra installs (their own extra, not the base)."""


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}


def _with_requirements(names: set[str]) -> set[str]:
    """An extra's distributions and what they require directly (``apache-airflow`` is a meta-package;
    the ``airflow`` module comes from ``apache-airflow-core``). Never used for the base dependencies,
    where it would let a transitive import (``requests`` through ``docker``) pass as declared."""
    out = set(names)
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out |= _names([r for r in importlib.metadata.requires(name) or [] if "extra ==" not in r])
    return out


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_third_party_import_is_declared() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    base = _names(project["dependencies"])
    extras = {name: _names(reqs) for name, reqs in project["optional-dependencies"].items()}
    owners = importlib.metadata.packages_distributions()
    undeclared: list[str] = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            allowed = base | _with_requirements(extras.get(EXTRA_MODULES.get(rel, ""), set()))
            for module in sorted(_imports(path)):
                if module in sys.stdlib_module_names or module in PACKAGES or module == "__future__":
                    continue
                dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
                if not dists & allowed:
                    undeclared.append(f"{rel}: {module} ({', '.join(sorted(dists)) or 'not installed'})")
    assert undeclared == []


def test_flower_is_an_extra_that_dev_pulls_and_kombu_stays_declared() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    assert "flower" not in _names(project["dependencies"])
    extras = project["optional-dependencies"]
    assert "flower" in _names(extras["flower"])
    assert "corral[flower]" in extras["dev"]  # setup-host installs .[dev,airflow]: the Flower tests keep it
    # kombu is imported directly (the signing serializer, the worker's guard), so it stays a declared dependency
    assert "kombu" in _names(project["dependencies"])
    assert "kombu" in _imports(REPO / "corral/trust/signing.py")


def test_the_images_that_run_flower_install_the_extra() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.count("'.[flower]'") == 2  # the offline (wheelhouse) and the online install
    assert "-w wheelhouse '.[flower]'" in (REPO / "scripts/build-images").read_text()
