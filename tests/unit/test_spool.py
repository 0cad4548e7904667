"""Spool layout, atomic writes, bounded reads and the attach-stream demultiplexer (no Docker)."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import struct
from pathlib import Path

import pytest

from corral.contract.errors import InvalidRequest
from corral.contract.models import ProcessIoFrame
from corral.contract.vocabulary import ProcessIoStream
from corral.io.spool import (
    STREAM_STDERR,
    STREAM_STDOUT,
    CappedSink,
    Demuxer,
    SpoolLayout,
    append_bytes,
    atomic_write,
    file_size,
    frame_eof,
    read_int,
    read_json,
    read_span,
    write_json,
)
from corral.runtimes.docker.process import read_output_frame, write_stdin


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload)) + payload


STREAM = (
    frame(STREAM_STDOUT, b"hello \xff\xfe")
    + frame(STREAM_STDERR, b"oops\n")
    + frame(STREAM_STDOUT, b"")
    + frame(STREAM_STDOUT, bytes(range(256)) * 3)
)


def collect(chunks: list[bytes]) -> dict[int, bytes]:
    demux = Demuxer()
    out: dict[int, bytes] = {STREAM_STDOUT: b"", STREAM_STDERR: b""}
    for chunk in chunks:
        for kind, data in demux.feed(chunk):
            out[kind] += data
    assert demux.pending == 0
    return out


EXPECTED = {STREAM_STDOUT: b"hello \xff\xfe" + bytes(range(256)) * 3, STREAM_STDERR: b"oops\n"}


def test_demuxer_whole_stream() -> None:
    assert collect([STREAM]) == EXPECTED


@pytest.mark.parametrize("split", range(1, len(STREAM), 7))
def test_demuxer_any_split_point(split: int) -> None:
    assert collect([STREAM[:split], STREAM[split:]]) == EXPECTED


def test_demuxer_byte_by_byte() -> None:
    assert collect([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


def test_demuxer_holds_a_partial_header() -> None:
    demux = Demuxer()
    assert demux.feed(STREAM[:5]) == []
    assert demux.pending == 5


def test_capped_sink_keeps_the_head_and_counts_the_rest() -> None:
    buffer = io.BytesIO()
    sink = CappedSink(buffer, cap=10)  # type: ignore[arg-type]
    assert sink.write(b"12345") == 0
    assert sink.write(b"6789ABCD") == 3
    assert sink.write(b"more") == 4
    assert buffer.getvalue() == b"123456789A"
    assert (sink.written, sink.dropped) == (10, 7)


def test_capped_sink_resumes_from_existing_size() -> None:
    sink = CappedSink(io.BytesIO(), cap=10, already=8)  # type: ignore[arg-type]
    assert sink.write(b"xyz") == 1


def test_capped_sink_zero_cap_drops_everything() -> None:
    sink = CappedSink(io.BytesIO(), cap=0)  # type: ignore[arg-type]
    assert sink.write(b"abc") == 3


def test_read_span_is_bounded_and_resumable(tmp_path: Path) -> None:
    path = tmp_path / "stdout"
    data = os.urandom(10_000)
    path.write_bytes(data)
    assert read_span(path, 0, 100) == data[:100]
    assert read_span(path, 9_990, 100) == data[9_990:]
    assert read_span(path, 10_000, 100) == b""
    cursor, parts = 0, []
    while chunk := read_span(path, cursor, 333):
        parts.append(chunk)
        cursor += len(chunk)
    assert b"".join(parts) == data


def test_read_span_missing_file_is_empty(tmp_path: Path) -> None:
    assert read_span(tmp_path / "nope", 0, 10) == b""
    with pytest.raises(ValueError, match="negative"):
        read_span(tmp_path / "nope", -1, 10)


def test_atomic_write_replaces_and_sets_mode(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    atomic_write(path, b"one", mode=0o400)
    atomic_write(path, b"two", mode=0o400)  # over a read-only file
    assert path.read_bytes() == b"two"
    assert path.stat().st_mode & 0o777 == 0o400
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temp file left


def test_json_round_trip_and_missing(tmp_path: Path) -> None:
    write_json(tmp_path / "a.json", {"b": [1, 2]})
    assert read_json(tmp_path / "a.json") == {"b": [1, 2]}
    assert read_json(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_bytes(b"{not json")
    assert read_json(tmp_path / "bad.json") is None


def test_append_bytes_returns_offsets(tmp_path: Path) -> None:
    path = tmp_path / "stdin"
    assert append_bytes(path, b"abc") == (0, 3)
    assert append_bytes(path, b"\x00\xff") == (3, 5)
    assert path.read_bytes() == b"abc\x00\xff"
    assert file_size(path) == 5 and file_size(tmp_path / "none") == 0


def test_read_int_tolerates_absence_and_garbage(tmp_path: Path) -> None:
    assert read_int(tmp_path / "x.dropped") == 0
    (tmp_path / "x.dropped").write_text("42")
    assert read_int(tmp_path / "x.dropped") == 42
    (tmp_path / "x.dropped").write_text("4x")
    assert read_int(tmp_path / "x.dropped") == 0


@pytest.mark.parametrize(
    ("exited", "cursor", "size", "eof"),
    [(False, 10, 10, False), (True, 5, 10, False), (True, 10, 10, True), (True, 0, 0, True)],
)
def test_frame_eof_needs_exit_and_the_end(exited: bool, cursor: int, size: int, eof: bool) -> None:
    assert frame_eof(exited, cursor, size) is eof


def test_layout_paths(tmp_path: Path) -> None:
    layout = SpoolLayout(tmp_path)
    assert layout.stream("stdout") == tmp_path / "stdout"
    assert layout.dropped("stderr") == tmp_path / "stderr.dropped"
    assert layout.labels.name == ".corral-labels.json"
    assert layout.exit.name == "exit.json"
    with pytest.raises(ValueError, match="not a stream"):
        layout.stream("../etc/passwd")


# ------------------------------------------------------------------------------------- frames from a spool


def spool(tmp_path: Path, stdout: bytes, *, exited: bool, capture: str = "raw_content_if_policy_allows") -> SpoolLayout:
    layout = SpoolLayout(tmp_path)
    layout.stream("stdout").write_bytes(stdout)
    write_json(layout.io_policy, {"stdout": {"default_capture": capture}, "stderr": {}})
    write_json(layout.process, {"stdin": "open"})
    if exited:
        write_json(layout.exit, {"exit_code": 0, "oom_killed": False, "reason": "exit"})
    return layout


def read(
    layout: SpoolLayout,
    cursor: int = 0,
    max_bytes: int = 1024,
    secrets: list[bytes] | None = None,
    missing: list[str] | None = None,
    allow_raw: bool = True,
) -> ProcessIoFrame:
    return read_output_frame(
        layout,
        "proc-0123456789abcdef",
        ProcessIoStream.stdout,
        cursor,
        max_bytes,
        (secrets or [], missing or []),
        allow_raw,
    )


def test_frame_redacts_before_hashing_and_returning(tmp_path: Path) -> None:
    frame = read(spool(tmp_path, b"token=hunter2\n", exited=True), secrets=[b"hunter2"])
    shown = b"token=[REDACTED]\n"
    assert base64.b64decode(frame.content_b64 or "") == shown
    assert frame.content_hash == "sha256:" + hashlib.sha256(shown).hexdigest()
    assert (frame.byte_count, frame.cursor, frame.redaction_count, frame.eof) == (14, 14, 1, True)


def test_frame_withholds_raw_content_when_a_secret_is_unresolvable(tmp_path: Path) -> None:
    frame = read(spool(tmp_path, b"data", exited=True), missing=["gone"])
    assert frame.raw_content_present is False and frame.content_b64 is None
    assert "withheld" in frame.redacted_summary


@pytest.mark.parametrize(("capture", "allow"), [("metadata_only", True), ("raw_content_if_policy_allows", False)])
def test_frame_raw_content_needs_policy_and_host(tmp_path: Path, capture: str, allow: bool) -> None:
    frame = read(spool(tmp_path, b"data", exited=True, capture=capture), allow_raw=allow)
    assert frame.content_b64 is None and frame.byte_count == 4


def test_frame_is_not_eof_while_the_writer_may_still_write(tmp_path: Path) -> None:
    layout = spool(tmp_path, b"abc", exited=False)
    assert read(layout).eof is False  # never started: no shim, no exit.json
    frame = read(layout, cursor=1, max_bytes=1)
    assert (frame.start_cursor, frame.cursor, frame.eof) == (1, 2, False)


def test_frame_cursor_beyond_the_end_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest):
        read(spool(tmp_path, b"abc", exited=True), cursor=4)


def test_frame_marks_truncation_at_the_cut(tmp_path: Path) -> None:
    layout = spool(tmp_path, b"x" * 10, exited=True)
    layout.dropped("stdout").write_text("90")
    first, last = read(layout, max_bytes=5), read(layout, cursor=5, max_bytes=5)
    assert (first.truncated, first.dropped_bytes) == (False, 0)
    assert (last.truncated, last.dropped_bytes, last.eof) == (True, 90, True)


def test_stdin_appends_and_closes(tmp_path: Path) -> None:
    layout = spool(tmp_path, b"", exited=False)
    first = write_stdin(layout, "proc-0123456789abcdef", base64.b64encode(b"abc").decode(), close=False)
    second = write_stdin(layout, "proc-0123456789abcdef", base64.b64encode(b"de").decode(), close=True)
    assert (first.start_cursor, first.cursor, second.cursor, second.eof) == (0, 3, 5, True)
    assert layout.stream("stdin").read_bytes() == b"abcde"
    with pytest.raises(InvalidRequest, match="closed"):
        write_stdin(layout, "proc-0123456789abcdef", "eA==", close=False)


def test_stdin_refuses_bad_base64_and_closed_stdin_processes(tmp_path: Path) -> None:
    layout = spool(tmp_path, b"", exited=False)
    with pytest.raises(InvalidRequest, match="base64"):
        write_stdin(layout, "proc-0123456789abcdef", "***", close=False)
    write_json(layout.process, {"stdin": "closed"})
    with pytest.raises(InvalidRequest, match="stdin closed"):
        write_stdin(layout, "proc-0123456789abcdef", "eA==", close=False)
