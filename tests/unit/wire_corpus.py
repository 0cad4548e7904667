"""The upstream wire corpus and the upstream crate's own decoder, shared by the ``test_wire_*`` suites.

``wirecheck`` is built from the upstream crate's source (``scripts/wirecheck``): a developer tool, not a
service CI has, so a check that needs it skips where it is not built."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

CORPUS = Path(__file__).resolve().parent.parent / "wire_corpus"
INDEX: dict[str, dict[str, str]] = json.loads((CORPUS / "index.json").read_text())["files"]
WIRECHECK_PATHS = ("/tmp/wirecheck-build/target/debug/wirecheck", "/tmp/wire/wirecheck/target/debug/wirecheck")


def wirecheck_binary() -> str | None:
    """The decoder: ``$CORRAL_WIRECHECK``, where ``scripts/wirecheck`` builds it, or on ``PATH``."""
    for path in (os.environ.get("CORRAL_WIRECHECK", ""), *WIRECHECK_PATHS):
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return shutil.which("wirecheck")


def wirecheck(rust_type: str, document: Any, verify: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the upstream decoder on ``document`` as ``rust_type`` (``--verify``: re-encoding must be equal);
    skips the calling test where the decoder is not built."""
    binary = wirecheck_binary()
    if binary is None:
        pytest.skip("the upstream decoder (wirecheck) is not built here: scripts/wirecheck builds it")
    args = [binary, *(["--verify"] if verify else []), rust_type]
    return subprocess.run(args, input=json.dumps(document), capture_output=True, text=True, timeout=30, check=False)
