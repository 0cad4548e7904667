"""Spool layout, atomic writes, bounded reads and the attach-stream demultiplexer (no Docker)."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest

from corral.runtimes.spool import (
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


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxL", kind, len(payload)) + payload


STREAM = frame(STREAM_STDOUT, b"hello \xff\xfe") + frame(STREAM_STDERR, b"oops\n") + frame(STREAM_STDOUT, b"") \
    + frame(STREAM_STDOUT, bytes(range(256)) * 3)


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
