"""Redaction of known secret values from bytes (process output, error text).

Minimal on purpose: exact occurrences only, one pass, longest value first so that a secret that
contains another is replaced whole. Not yet handled (a later issue): encodings of a value (base64,
hex, URL, JSON escapes) and values split across frame boundaries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MARKER = b"[REDACTED]"


def _pattern(values: Iterable[bytes]) -> re.Pattern[bytes] | None:
    unique = sorted({v for v in values if v}, key=len, reverse=True)
    if not unique:
        return None
    return re.compile(b"|".join(re.escape(v) for v in unique))


def redact(data: bytes, values: list[bytes]) -> tuple[bytes, int]:
    """``data`` with every exact occurrence of any value replaced by ``[REDACTED]``, and how many
    occurrences were replaced. Empty values are ignored (they would match everywhere)."""
    pattern = _pattern(values)
    if pattern is None or not data:
        return data, 0
    return pattern.subn(MARKER, data)


def redact_text(text: str, values: list[bytes]) -> str:
    """The same for a message: used on Docker error text before it becomes an ``AgentError``."""
    out, _ = redact(text.encode("utf-8", "surrogateescape"), values)
    return out.decode("utf-8", "replace")
