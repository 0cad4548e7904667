"""Parsing of human-friendly sizes and durations for the CLI. Pure."""

from __future__ import annotations

import re

from corral.contract.errors import InvalidRequest

_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?)?$", re.IGNORECASE)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?$", re.IGNORECASE)
_SIZE_MB = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def parse_memory_mb(text: str) -> int:
    """``512`` / ``512m`` / ``1g`` / ``1GiB`` -> MiB (a bare number means MiB)."""
    match = _SIZE.match(text.strip())
    if not match:
        raise InvalidRequest(f"not a size: {text!r} (try 512m or 1g)", context={"value": text[:40]})
    return int(float(match.group(1)) * _SIZE_MB[(match.group(2) or "").lower()])


def parse_duration_ms(text: str) -> int:
    """``30`` / ``30s`` / ``500ms`` / ``5m`` / ``2h`` -> milliseconds (a bare number means seconds)."""
    match = _DURATION.match(text.strip())
    if not match:
        raise InvalidRequest(f"not a duration: {text!r} (try 30s, 5m or 2h)", context={"value": text[:40]})
    unit = match.group(2).lower() if match.group(2) else None
    return int(float(match.group(1)) * _DURATION_MS[unit])


def parse_env(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise InvalidRequest(f"--env expects NAME=VALUE, got {pair.split('=')[0][:40]!r}")
        out[name] = value
    return out
