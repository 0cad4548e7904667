"""What a Docker failure becomes for the caller: its retry class, and a message without host paths.

Classification. A failure that the same request meets again every time is ``InvalidRequest``
(not retryable): Docker's 400s, and the 500s whose text says the request itself is wrong (a user
or group the image does not have, an rlimit the kernel refuses, an invalid bind or mount, a command
the image lacks; see ``DETERMINISTIC``). Retrying those only started another I/O shim five times.
404 is ``NotFound`` and 409 ``Conflict``; everything else from the engine (an unrecognised 500, a
busy daemon, a refused connection, a timeout) stays ``IsolationFailure``, retryable.

Hygiene. The message of a recognised failure is built from known parts (the operation and what
was wrong); Docker's own text goes only to the worker log (secret values redacted). Any text that
still reaches a caller passes ``HostPaths.scrub``: the host paths of mount aliases (and the roots
their symlinks may resolve within) become ``<alias NAME>`` / ``<root of alias NAME>``; the state dir
(spools, mount pins), the secrets root and the secrets dir become ``<state dir>`` /
``<secrets root>`` / ``<secrets dir>``; Docker's and containerd's own directories and
``/proc/<pid>`` paths become ``<host path>``. ``docker_process.contract_errors`` applies it to
every error leaving the adapter.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

from corral.contract.errors import AgentError, Conflict, InvalidRequest, IsolationFailure, NotFound
from corral.sandbox.redact import redact_text
from corral.settings import HostSettings

log = logging.getLogger(__name__)

DETERMINISTIC: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), reason)
    for pattern, reason in (
        (r"unable to find user|no matching entries in passwd file", "the user does not exist in the image"),
        (r"unable to find group|no matching entries in group file", "the group does not exist in the image"),
        (r"error setting rlimit|setrlimit|invalid ulimit", "the kernel refused a resource limit (rlimits)"),
        (r"invalid volume specification|invalid mount config|invalid mode:", "a mount is invalid"),
        (r"mount path must be absolute|invalid mount path", "a mount destination is invalid"),
        # runc, at start: the image's own tree refuses the destination (a read-only mount over /etc
        # where Docker then mounts resolv.conf; a destination that resolves into /proc)
        (r"cannot be mounted because it is inside /proc", "a mount destination resolves into /proc in the image"),
        (r"error mounting .* to rootfs at .*: read-only file system", "a mount destination is on a read-only mount"),
        (r"json: cannot unmarshal number", "a number is out of the engine's range (rlimits)"),
        (r"executable file not found|exec: \"[^\"]*\": stat [^:]*: no such file", "the command is not in the image"),
        (r"exec: \"[^\"]*\": permission denied", "the command is not executable in the image"),
        (r"chdir to cwd .* (no such file|not a directory)", "the working directory does not exist in the image"),
    )
)
"""(pattern over the engine's text, what was wrong in our words): properties of the request or of
the image it names, so the same request fails the same way every time."""

_ENGINE_PATHS = re.compile(
    r"(?:/var/lib/(?:docker|containerd)|/run/(?:docker|containerd|runc)|/var/run/(?:docker|containerd)"
    r"|/proc/\d+)(?:/[^\s'\"`:,;)]*)?"
)


def deterministic_reason(text: str) -> str | None:
    """What was wrong, when the engine's text says the request itself is at fault."""
    for pattern, reason in DETERMINISTIC:
        if pattern.search(text):
            return reason
    return None


def engine_failure(operation: str, status: int | None, text: str, secret_values: list[bytes] | None) -> AgentError:
    """The contract error for an engine failure (``status`` None: no HTTP status, e.g. the shim's
    own failure). The engine's raw text is logged here and never copied into a recognised error."""
    raw = redact_text(text, secret_values or [])
    log.warning("%s: the engine failed (status %s): %s", operation, status, raw[:2000])
    reason = deterministic_reason(raw)
    context = {"operation": operation, "status": str(status)}
    if reason is not None:
        return InvalidRequest(f"{operation}: {reason} (refused by the engine)", context=context)
    shown = scrub_engine_paths(raw)[:300]
    if status == 400:
        return InvalidRequest(f"{operation}: docker said 400: {shown}", context=context)
    if status == 404:
        return NotFound(f"{operation}: {shown}", context=context)
    if status == 409:
        return Conflict(f"{operation}: docker said 409: {shown}", context=context)
    said = f"docker said {status}: " if status is not None else ""
    return IsolationFailure(f"{operation}: {said}{shown}", context=context)


def scrub_engine_paths(text: str) -> str:
    return _ENGINE_PATHS.sub("<host path>", text)


class HostPaths:
    """Replaces this host's own paths in a text with what they are (longest path first)."""

    def __init__(self, named: Mapping[str, str]) -> None:
        self._pairs = sorted(((p, n) for p, n in named.items() if len(p) > 1), key=lambda pn: -len(pn[0]))

    @classmethod
    def of(cls, host: HostSettings) -> HostPaths:
        named: dict[str, str] = {}

        def add(path: str, name: str) -> None:
            # Docker may report the path it was given or the one it resolved.
            for form in (path.rstrip("/") or path, os.path.realpath(path)):
                named.setdefault(form, name)

        for alias, path in sorted(host.mounts.items()):
            add(path, f"<alias {alias}>")
            root = host.symlink_root(alias)
            if root:
                add(root, f"<root of alias {alias}>")
        add(host.state_dir, "<state dir>")
        add(host.secrets_root, "<secrets root>")
        add(host.secrets_dir, "<secrets dir>")
        return cls(named)

    def scrub(self, text: str) -> str:
        for path, name in self._pairs:
            text = text.replace(path, name)
        return scrub_engine_paths(text)

    def error(self, exc: AgentError) -> AgentError:
        """``exc`` with its message and context scrubbed (the same object when nothing changed)."""
        message = self.scrub(exc.message)
        context = {k: self.scrub(v) for k, v in exc.context.items()}
        if message == exc.message and context == exc.context:
            return exc
        return type(exc)(message, exc.kind, exc.retry, context)
