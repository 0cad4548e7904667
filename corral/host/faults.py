"""Fault injection for the crash-matrix tests: kill this worker at a named point.

Enabled only by the test settings ``CORRAL_TESTING__FAULTS`` (comma-separated points such as
``start_process:after_adapter``) and ``CORRAL_TESTING__FAULT_DIR``. Each point fires once per
fault dir (an O_EXCL marker file), so the redelivered task survives and recovery can be observed.
A point may end in ``!worker`` to kill the whole worker (the pool's parent too), not only the
pool process running the task, or in ``!sleep=<seconds>`` to stall there instead (to catch a task
mid-flight, e.g. for soft-shutdown tests). Without those settings ``hit`` is a no-op.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from corral.settings import load_settings

POINTS = ("before_intent", "before_adapter", "after_adapter", "after_result", "after_record")
"""Where ``corral.host.effects`` calls ``hit``: ``<operation>:<point>``."""


def hit(point: str) -> None:
    testing = load_settings().testing
    if not testing.faults:
        return
    for spec in testing.faults.split(","):
        name, _, scope = spec.partition("!")
        if name != point or not testing.fault_dir:
            continue
        marker = Path(testing.fault_dir) / name.replace(":", "__")
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            return  # fired before: let the redelivery through
        if scope.startswith("sleep="):
            time.sleep(float(scope.removeprefix("sleep=")))
            return
        if scope == "worker":
            os.kill(os.getppid(), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
