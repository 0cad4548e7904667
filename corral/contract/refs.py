"""Validated opaque references.

A ref is what a client may see and send: non-empty, at most 512 UTF-8 bytes, no control
characters. Raw adapter handles (container ids, host paths, PIDs) never become refs; they stay on
the host that owns them. ``slug`` turns any ref into a short, stable token that is safe in Docker
names, file names and Redis keys.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import unicodedata
from typing import Annotated

from pydantic import AfterValidator

MAX_REF_BYTES = 512
_IMAGE_RE = re.compile(
    r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?$",
    re.ASCII,
)
_PROCESS_REF = re.compile(r"proc-([0-9a-f]{16})", re.ASCII)


def check_ref(value: str) -> str:
    """Return ``value`` when it is a valid ref; raise ``ValueError`` saying why otherwise."""
    if not value:
        raise ValueError("a ref must not be empty")
    if len(value.encode("utf-8")) > MAX_REF_BYTES:
        raise ValueError(f"a ref must be at most {MAX_REF_BYTES} bytes")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise ValueError(f"a ref must not contain control characters (found U+{ord(ch):04X})")
    return value


Ref = Annotated[str, AfterValidator(check_ref)]


def new_ref(prefix: str) -> str:
    """A fresh random ref such as ``job-1f3a9c02d4e5``."""
    return f"{prefix}-{secrets.token_hex(6)}"


def slug(ref: str) -> str:
    """A stable 16-hex-digit token for a ref: the same ref always gives the same slug."""
    return hashlib.sha256(ref.encode("utf-8")).hexdigest()[:16]


def process_ref_for(environment_id: str) -> str:
    """The process ref of an environment's (single) process: derived, so any host worker can map
    it back to the adapter's resources without shared state."""
    return f"proc-{slug(environment_id)}"


def ticket_ref_for(environment_id: str) -> str:
    """The reclaim ticket of an environment's detach: derived, so a replay names the same ticket."""
    return f"tkt-{slug(environment_id)}"


def slug_of_process_ref(process_ref: str) -> str:
    """Inverse of ``process_ref_for`` down to the slug; raises ``ValueError`` for a foreign ref."""
    match = _PROCESS_REF.fullmatch(process_ref)
    if match is None:
        raise ValueError(f"not a corral process ref: {process_ref[:64]!r}")
    return match.group(1)


def cleanup_plan_ref(environment_id: str) -> str:
    """One plan ref per environment: the chain's error cleanup and the client's share a key."""
    return f"plan-{slug(environment_id)}"


def check_image_ref(value: str) -> str:
    """An image reference in Docker's grammar (``name[:tag][@sha256:digest]``); the wire's
    ``image_ref`` is only an id, so the client and the host each check it before use."""
    if not _IMAGE_RE.fullmatch(value):
        raise ValueError(f"not a valid image reference: {value[:80]!r}")
    return value
