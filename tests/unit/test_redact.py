"""Redaction of secret values and their encodings, across frame boundaries.

Table tests pin what each encoding catches (and what it does not); property tests split streams at
random write boundaries and read them with random frame sizes, as a live spool is read.
"""

from __future__ import annotations

import base64
import json
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.contract.models import ProcessIoFrame
from corral.contract.vocabulary import ProcessIoStream
from corral.io.spool import SpoolLayout, read_window, write_json
from corral.runtimes.docker.process import read_output_frame
from corral.sandbox.redact import MARKER, MIN_ENCODED_LEN, Redactor, redact, variants_of

SECRET = b"p@ss/w rd+\xc3\xa9!*(x)"
PROPS = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


def leaks(output: bytes, redactor: Redactor) -> list[bytes]:
    """Variants visible in ``output`` outside the markers (a variant can only straddle a marker if
    it shares bytes with the marker text itself, which is not a leak)."""
    return [v for v in redactor.variants for part in output.split(MARKER) if v in part]


# ---------------------------------------------------------------------------------------------
# table: each encoding


def _b64(value: bytes) -> list[bytes]:
    std, url = base64.b64encode(value), base64.urlsafe_b64encode(value)
    return [std, std.rstrip(b"="), url, url.rstrip(b"=")]


def _url(value: bytes) -> list[bytes]:
    forms = [
        urllib.parse.quote_from_bytes(value, ""),
        urllib.parse.quote_from_bytes(value),
        urllib.parse.quote_plus(value),
        urllib.parse.quote_plus(value, "/"),
        urllib.parse.quote_from_bytes(value, "!*'()"),
    ]
    return [f.encode() for f in forms] + [f.lower().encode() for f in forms]


def _json(value: bytes) -> list[bytes]:
    text = value.decode()
    ascii_form = json.dumps(text)[1:-1].encode()
    every = "".join(f"\\u{ord(c):04x}" for c in text).encode()
    return [
        ascii_form,
        json.dumps(text, ensure_ascii=False)[1:-1].encode(),
        ascii_form.replace(b"/", b"\\/"),
        every,
        every.upper().replace(b"\\U", b"\\u"),
    ]


ENCODED = {
    "exact": [SECRET],
    "base64": _b64(SECRET),
    "url": _url(SECRET),
    "hex": [SECRET.hex().encode(), SECRET.hex().upper().encode()],
    "json": _json(SECRET),
}


@pytest.mark.parametrize(
    "form", [pytest.param(f, id=f"{kind}-{i}") for kind, forms in ENCODED.items() for i, f in enumerate(forms)]
)
def test_each_encoding_is_redacted(form: bytes) -> None:
    out, count = redact(b"before " + form + b" after", [SECRET])
    assert (out, count) == (b"before [REDACTED] after", 1)


@pytest.mark.parametrize("lead", range(6))
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_inside_a_longer_blob_at_every_alignment(lead: int, encode: Callable[[bytes], bytes]) -> None:
    """Only the characters mixing the secret's first/last bits with a neighbour's may remain."""
    blob = encode(b"L" * lead + SECRET + b"T" * 5)
    out, count = redact(blob, [SECRET])
    assert count == 1
    before, after = out.split(MARKER)
    assert len(before) <= (8 * lead) // 6 + 1  # the neighbour's characters, plus one mixed
    assert len(after) <= len(blob) - (8 * (lead + len(SECRET))) // 6


def test_line_wrapped_base64_is_not_caught() -> None:
    """Documented gap: a line break inside the value's characters hides them."""
    long_secret = b"k" * 60
    wrapped = base64.encodebytes(long_secret)  # MIME: 76 columns
    assert b"\n" in wrapped.rstrip(b"\n")
    assert redact(wrapped, [long_secret])[1] == 0


def test_stripped_value_is_redacted_too() -> None:
    """A secret file ending in a newline usually reaches output without it."""
    assert redact(b"token=hunter2;", [b"hunter2\n"]) == (b"token=[REDACTED];", 1)
    assert redact(b"aHVudGVyMg==", [b"  hunter2\n"]) == (MARKER, 1)


def test_short_values_are_redacted_exactly_but_not_encoded() -> None:
    short = b"a/b"
    assert len(short) < MIN_ENCODED_LEN
    assert variants_of(short) == {short}
    assert redact(b"x a/b " + short.hex().encode() + b" a%2Fb", [short]) == (b"x [REDACTED] 612f62 a%2Fb", 1)


def test_non_utf8_values_have_no_json_forms_but_all_others() -> None:
    value = b"\xff\xfe\x00\x80"
    for form in [*_b64(value), value.hex().encode(), urllib.parse.quote_from_bytes(value).encode()]:
        assert redact(b"=" + form + b"=", [value]) == (b"=[REDACTED]=", 1)


def test_astral_characters_use_surrogate_pairs_in_json() -> None:
    value = "key\U0001f511x".encode()
    assert redact(b"\\u006b\\u0065\\u0079\\ud83d\\udd11\\u0078", [value])[1] == 1
    assert redact(b"key\\ud83d\\udd11x", [value])[1] == 1


# ---------------------------------------------------------------------------------------------
# table: whole-stream semantics


def test_overlapping_and_adjacent_occurrences_form_one_run() -> None:
    assert redact(b"abcabcab", [b"abcab"]) == (MARKER, 1)  # overlapping
    assert redact(b"-hunter2hunter2-", [b"hunter2"]) == (b"-[REDACTED]-", 1)  # adjacent
    assert redact(b"x=sekrit y=sekrit", [b"sekrit"]) == (b"x=[REDACTED] y=[REDACTED]", 2)


def test_longest_variant_wins_and_regex_metacharacters_are_literal() -> None:
    assert redact(b"abcdef abc", [b"abc", b"abcdef"]) == (b"[REDACTED] [REDACTED]", 2)
    assert redact(b"a.*b aXXb", [b"a.*b"]) == (b"[REDACTED] aXXb", 1)


def test_no_values_is_the_identity() -> None:
    redactor = Redactor([b""])
    assert (redactor.variants, redactor.holdback) == ((), 0)
    assert redactor.cut(b"data", 0, 2, final=False).content == b"da"


def test_truncated_stream_redacts_a_value_begun_at_the_cut() -> None:
    redactor = Redactor([b"hunter2"])
    assert redactor.redact(b"log hunt", truncated=True) == (b"log [REDACTED]", 1)
    assert redactor.redact(b"log hunt") == (b"log hunt", 0)  # the process itself stopped there


# ---------------------------------------------------------------------------------------------
# table: frames


def test_a_live_frame_holds_back_a_possible_prefix() -> None:
    redactor = Redactor([b"hunter2"])
    first = redactor.cut(b"hello hun", 0, 64, final=False)
    assert (first.content, first.consumed) == (b"hello ", 6)
    rest = redactor.cut(b"hello hunter2!", 6, 64, final=False)
    assert (rest.content, rest.count) == (b"[REDACTED]!", 1)


def test_a_live_frame_releases_bytes_that_cannot_start_a_match() -> None:
    redactor = Redactor([b"hunter2"])
    assert redactor.holdback > 10
    assert redactor.cut(b"ok\n", 0, 64, final=False).consumed == 3


def test_frames_smaller_than_a_secret_make_progress_inside_it() -> None:
    redactor = Redactor([b"hunter2"])
    data = b"hunter2hunter2 done"
    cursor, out, count = 0, b"", 0
    while cursor < len(data):
        window = data[max(cursor - redactor.lookbehind, 0) :]
        cut = redactor.cut(window, cursor - max(cursor - redactor.lookbehind, 0), 2, final=True)
        assert cut.consumed >= 1
        cursor, out, count = cursor + cut.consumed, out + cut.content, count + cut.count
    assert (out, count) == (b"[REDACTED] done", 1)


def test_a_cursor_inside_a_secret_shows_nothing_of_it() -> None:
    redactor = Redactor([b"hunter2"])
    data = b"x hunter2 y"
    for cursor in range(3, 9):
        cut = redactor.cut(
            data[max(cursor - redactor.lookbehind, 0) :], min(cursor, redactor.lookbehind), 64, final=True
        )
        assert cut.content == b" y" and cut.count == 0


# ---------------------------------------------------------------------------------------------
# properties


@dataclass
class Stream:
    """A stream as a live spool shows it: ``full`` arrives in writes ending at ``writes``."""

    redactor: Redactor
    full: bytes
    writes: list[int]
    capped: bool = False
    frames: list[tuple[int, int, bytes, int]] = field(default_factory=list)  # start, end, content, count

    def window(self, cursor: int, max_bytes: int, available: int) -> tuple[bytes, int]:
        start = max(cursor - self.redactor.lookbehind, 0)
        return self.full[start : min(cursor + max_bytes + self.redactor.holdback, available)], cursor - start

    def read(self, cursor: int, max_bytes: int, available: int) -> tuple[int, bytes, int]:
        window, offset = self.window(cursor, max_bytes, available)
        final = available == len(self.full) and cursor - offset + len(window) >= available
        cut = self.redactor.cut(window, offset, max_bytes, final=final, truncated=final and self.capped)
        return cursor + cut.consumed, cut.content, cut.count

    def read_live(self, sizes: list[int], start: int = 0) -> None:
        """Read frames while writes land: a write lands after every frame that made no progress
        and after every third frame, so readers see windows that end mid-secret."""
        cursor, landed, turn = start, 0, 0
        while cursor < len(self.full):
            available = self.writes[landed] if landed < len(self.writes) else len(self.full)
            end, content, count = self.read(cursor, sizes[turn % len(sizes)], available)
            self.frames.append((cursor, end, content, count))
            if end == cursor or turn % 3 == 2:
                landed += 1
            cursor, turn = end, turn + 1

    def tail(self, cursor: int, max_bytes: int) -> bytes:
        out = b""
        while cursor < len(self.full):
            cursor, content, _ = self.read(cursor, max_bytes, len(self.full))
            out += content
        return out


secrets_st = st.one_of(
    st.binary(min_size=1, max_size=12),
    st.text(alphabet=st.sampled_from(list("ab.*+?()[]{}|^$\\/ %=é🔑")), min_size=1, max_size=8).map(str.encode),
)


@st.composite
def streams(draw: st.DrawFn, values: list[bytes] | None = None) -> Stream:
    """Filler, whole variants, prefixes of variants and base64 blobs embedding a value, in any
    order, with random write boundaries; ``capped``: the spool cap cut the stream at its end."""
    if values is None:
        values = draw(st.lists(secrets_st, min_size=1, max_size=2))
    redactor = Redactor(values)
    variants = list(redactor.variants)
    chunk = st.one_of(
        st.binary(max_size=40),
        st.sampled_from(variants),
        st.builds(lambda v, k: v[:k], st.sampled_from(variants), st.integers(1, 80)),
        st.builds(
            lambda a, v, b: base64.b64encode(a + v + b),
            st.binary(max_size=4),
            st.sampled_from(values),
            st.binary(max_size=4),
        ),
    )
    full = b"".join(draw(st.lists(chunk, min_size=1, max_size=8)))
    writes = sorted(set(draw(st.lists(st.integers(0, len(full)), max_size=10))))
    return Stream(redactor, full, writes, capped=draw(st.booleans()))


@PROPS
@given(stream=streams(), sizes=st.lists(st.integers(1, 48), min_size=1, max_size=6))
def test_frames_equal_the_whole_stream_redaction(stream: Stream, sizes: list[int]) -> None:
    stream.read_live(sizes)
    joined = b"".join(content for _, _, content, _ in stream.frames)
    whole, count = stream.redactor.redact(stream.full, truncated=stream.capped)
    assert not leaks(joined, stream.redactor)  # (a)
    assert joined == whole  # (b)
    assert sum(c for *_, c in stream.frames) == count  # (c)


@PROPS
@given(stream=streams(), sizes=st.lists(st.integers(1, 48), min_size=1, max_size=6), data=st.data())
def test_cursors_are_monotonic_and_resumable(stream: Stream, sizes: list[int], data: st.DataObject) -> None:
    stream.read_live(sizes)
    previous = 0
    for start, end, _, _ in stream.frames:  # (d) monotonic, gapless
        assert start == previous and end >= start
        previous = end
    assert previous == len(stream.full)
    index = data.draw(st.integers(0, len(stream.frames) - 1)) if stream.frames else 0
    if stream.frames:
        resumed = stream.frames[index][1]
        expected = b"".join(content for _, _, content, _ in stream.frames[index + 1 :])
        assert stream.tail(resumed, data.draw(st.integers(1, 64))) == expected


@PROPS
@given(stream=streams(), data=st.data())
def test_any_cursor_never_widens_scope(stream: Stream, data: st.DataObject) -> None:
    """A cursor the reader never returned (inside a secret, say) shows no variant either."""
    cursor = data.draw(st.integers(0, len(stream.full)))
    assert not leaks(stream.tail(cursor, data.draw(st.integers(1, 64))), stream.redactor)


@PROPS
@given(value=secrets_st, lead=st.binary(max_size=5), trail=st.binary(max_size=5))
def test_base64_embedded_secret_keeps_at_most_one_mixed_char_per_edge(value: bytes, lead: bytes, trail: bytes) -> None:
    if len(value) < MIN_ENCODED_LEN:
        return
    blob = base64.b64encode(lead + value + trail)
    out, _ = redact(blob, [value])
    kept = len(out) - out.count(MARKER) * len(MARKER)
    first, last = (8 * len(lead) + 5) // 6, (8 * (len(lead) + len(value))) // 6
    assert kept <= len(blob) - (last - first)


# ---------------------------------------------------------------------------------------------
# through the spool reader


def _spool_frames(root: Path, stream: Stream, values: list[bytes], sizes: list[int]) -> list[ProcessIoFrame]:
    """Frames read by ``read_output_frame`` from a real spool file that grows write by write; the
    exit record lands with the last write, as the shim does it."""
    layout = SpoolLayout(root)
    write_json(layout.io_policy, {"stdout": {"default_capture": "raw_content_if_policy_allows"}})
    path = layout.stream("stdout")
    path.write_bytes(b"")
    out: list[ProcessIoFrame] = []
    cursor, landed, turn = 0, 0, 0
    while not (out and out[-1].eof):
        target = stream.writes[landed] if landed < len(stream.writes) else len(stream.full)
        with path.open("ab") as handle:
            handle.write(stream.full[path.stat().st_size : target])
        if landed >= len(stream.writes):
            write_json(layout.exit, {"exit_code": 0})
        frame = read_output_frame(
            layout, "proc-0", ProcessIoStream.stdout, cursor, sizes[turn % len(sizes)], (values, []), True
        )
        out.append(frame)
        if frame.cursor == cursor or turn % 3 == 2:
            landed += 1
        cursor, turn = frame.cursor, turn + 1
    return out


@settings(deadline=None, max_examples=60)
@given(values=st.lists(secrets_st, min_size=1, max_size=2), data=st.data())
def test_spool_reader_frames_equal_the_whole_stream_redaction(values: list[bytes], data: st.DataObject) -> None:
    stream = data.draw(streams(values))
    sizes = data.draw(st.lists(st.integers(1, 48), min_size=1, max_size=4))
    with tempfile.TemporaryDirectory() as tmp:
        frames = _spool_frames(Path(tmp), stream, values, sizes)
    joined = b"".join(base64.b64decode(f.content_b64 or "") for f in frames)
    whole, count = stream.redactor.redact(stream.full)
    assert joined == whole and not leaks(joined, stream.redactor)
    assert sum(f.redaction_count for f in frames) == count
    assert [f.start_cursor for f in frames[1:]] == [f.cursor for f in frames[:-1]]
    assert sum(f.byte_count for f in frames) == len(stream.full)


def test_spool_reader_reports_truncation_and_redacts_a_value_cut_by_the_cap(tmp_path: Path) -> None:
    layout = SpoolLayout(tmp_path)
    write_json(layout.io_policy, {"stdout": {"default_capture": "raw_content_if_policy_allows"}})
    layout.stream("stdout").write_bytes(b"token=hunt")
    layout.dropped("stdout").write_text("3")  # still running, but the sink is full: the file is final
    frame = read_output_frame(layout, "proc-0", ProcessIoStream.stdout, 0, 64, ([b"hunter2"], []), True)
    assert base64.b64decode(frame.content_b64 or "") == b"token=[REDACTED]"
    assert (frame.cursor, frame.truncated, frame.dropped_bytes, frame.eof) == (10, True, 3, False)


def test_read_window_clips_to_the_file_and_says_where_the_cursor_is(tmp_path: Path) -> None:
    path = tmp_path / "stdout"
    path.write_bytes(b"0123456789")
    assert read_window(path, 5, 2, 3, 1) == (b"234567", 3)  # [5 - 3, 5 + 2 + 1)
    assert read_window(path, 1, 2, 3, 100) == (b"0123456789", 1)
    assert read_window(tmp_path / "absent", 0, 4, 4, 4) == (b"", 0)
