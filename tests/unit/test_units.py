"""corral.client.units: human sizes, durations and NAME=VALUE pairs for the CLI."""

from __future__ import annotations

import pytest

from corral.client.units import parse_duration_ms, parse_env, parse_memory_mb
from corral.contract.errors import InvalidRequest


@pytest.mark.parametrize(
    ("text", "mb"),
    [
        ("512", 512),
        ("512m", 512),
        ("512M", 512),
        ("512mb", 512),
        ("512MiB", 512),
        ("1g", 1024),
        ("1G", 1024),
        ("1GiB", 1024),
        ("1gb", 1024),
        ("1.5g", 1536),
        ("2048k", 2),
        ("1t", 1024 * 1024),
        (" 64 ", 64),
        ("64 m", 64),
        ("0", 0),
    ],
)
def test_parse_memory_mb_accepts(text: str, mb: int) -> None:
    assert parse_memory_mb(text) == mb


@pytest.mark.parametrize(
    "text", ["", " ", "m", "abc", "-1", "-1g", "1x", "1e3", "1.g", "1,5g", "1gg", "1 g b", "0x10", "1p", "1g; rm -rf /"]
)
def test_parse_memory_mb_rejects(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_memory_mb(text)
    assert "not a size" in info.value.message


def test_parse_memory_mb_does_not_read_bytes_as_mebibytes() -> None:
    with pytest.raises(InvalidRequest):
        parse_memory_mb("512b")


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("30", 30_000),
        ("30s", 30_000),
        ("30S", 30_000),
        ("500ms", 500),
        ("500MS", 500),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("1d", 86_400_000),
        ("1.5s", 1_500),
        ("0.5", 500),
        (" 10s ", 10_000),
        ("10 s", 10_000),
        ("0", 0),
    ],
)
def test_parse_duration_ms_accepts(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "s", "ms", "-5s", "5x", "5min", "5 m s", "1e3", "5w", "1.s", "five", "5s;reboot"])
def test_parse_duration_ms_rejects(text: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_duration_ms(text)
    assert "not a duration" in info.value.message


def test_parse_env_pairs() -> None:
    assert parse_env(["A=1", "B=x=y", "C=", "lower_case=ok"]) == {"A": "1", "B": "x=y", "C": "", "lower_case": "ok"}
    assert parse_env(()) == {}
    assert parse_env(("A=1", "A=2")) == {"A": "2"}  # the last one wins, like a shell


@pytest.mark.parametrize("pair", ["NOEQ", "=value", "=", ""])
def test_parse_env_rejects_pairs_without_name_or_separator(pair: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_env([pair])


def test_parse_env_error_never_echoes_the_value() -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_env(["=hunter2-secret"])
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(info.value.args)
