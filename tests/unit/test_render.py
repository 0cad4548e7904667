"""corral.client.render: what a person reads on stderr (a killed process, progress while waiting). Pure."""

from __future__ import annotations

import io

import pytest

from corral.client.render import Progress, duration, ending, size_mib


@pytest.mark.parametrize(
    ("reason", "oom", "expected"),
    [
        ("oom", True, "corral: killed: out of memory (limit 16 MiB)"),
        ("signal", True, "corral: killed: out of memory (limit 16 MiB)"),  # the engine's flag is enough
        ("timeout", False, "corral: killed: timeout (limit 10s)"),
        ("lost", False, "corral: the process was lost (its host no longer has it)"),
        ("exit", False, None),
        ("signal", False, None),
        (None, False, None),
    ],
)
def test_ending(reason: str | None, oom: bool, expected: str | None) -> None:
    assert ending(reason, oom, 16, 10_000) == expected


@pytest.mark.parametrize(("mb", "text"), [(16, "16 MiB"), (1024, "1 GiB"), (1536, "1536 MiB"), (2048, "2 GiB")])
def test_size_mib(mb: int, text: str) -> None:
    assert size_mib(mb) == text


@pytest.mark.parametrize(("ms", "text"), [(500, "500ms"), (1500, "1.5s"), (10_000, "10s"), (600_000, "10m")])
def test_duration(ms: int, text: str) -> None:
    assert duration(ms) == text


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_one_line_erased_when_done() -> None:
    out = Terminal()
    progress = Progress(enabled=True, stream=out, tick_s=3600)
    progress.update("preparing on edge-1: resolve image")
    progress.update("preparing on edge-1: start process")
    progress.done()
    progress.update("too late")  # nothing is drawn once done
    text = out.getvalue()
    assert "\n" not in text
    assert "corral: preparing on edge-1: resolve image (0s)" in text
    assert text.endswith("start process (0s)\r\x1b[2K")


@pytest.mark.parametrize(("enabled", "stream"), [(True, io.StringIO()), (False, Terminal())], ids=["piped", "json"])
def test_progress_is_silent_when_piped_or_for_json(enabled: bool, stream: io.StringIO) -> None:
    progress = Progress(enabled=enabled, stream=stream)
    progress.update("preparing")
    progress.done()
    assert stream.getvalue() == ""
