"""Redaction of known secret values from bytes: process-output frames and error text.

What is redacted
----------------
For every non-empty secret value, and for the value with surrounding ASCII whitespace stripped (a
secret file usually ends in a newline that programs drop), the *exact* bytes are always redacted,
however short (case-sensitive, byte for byte). Forms of at least ``MIN_ENCODED_LEN`` bytes are also
redacted in these encodings; shorter ones are not, because two or three bytes' worth of hex or
base64 turn up by chance in ordinary output:

- base64, standard and URL-safe alphabets, with and without ``=`` padding (the value encoded on its
  own: every character, the last partial one included);
- base64 *inside a longer base64 text*: for each of the three byte alignments the value can have in
  the encoded input, the run of characters whose six bits all come from the value. What stays
  visible is the one character on each edge that mixes the value's bits with a neighbour's: at
  most the top 4 bits of the value's first byte and the low 4 bits of its last byte;
- URL encoding: ``quote`` with ``safe`` of ``""``, ``"/"`` and JavaScript's ``encodeURIComponent``
  set (``!*'()``), each also as ``quote_plus`` (space as ``+``), each with upper- and lower-case
  ``%xx``;
- hex, lower and upper case, no separators;
- JSON string escapes without the quotes, for values that are valid UTF-8: ``json.dumps`` with
  ``ensure_ascii`` on and off, both also with ``/`` written as ``\\/``, and every character as
  ``\\uXXXX`` (lower- and upper-case hex digits, surrogate pairs beyond the BMP).

Not caught: base64 or hex that is line-wrapped (``base64`` and MIME wrap at 76 columns, ``xxd -p``
at 60) with a break inside the value's characters; any other encoding (base32/85, ``\\x``, octal
or HTML escapes, quoted-printable, hex with separators such as ``xxd``'s default or ``od``'s
spaces); any other transformation (case changes, reversal, bytes interleaved with the value such as
ANSI codes or ``\\r``, double encodings such as base64 of hex, compression); a value split between
stdout and stderr (each stream is redacted on its own); a fragment of a value on its own (a value
merely *begun* where the process's output ends is shown as is; one begun where the host's spool
cap cut the output is redacted).

How
---
Every occurrence of every variant, overlapping ones included, masks the bytes it covers; each
maximal run of masked bytes (overlapping or adjacent occurrences) becomes one ``MARKER`` and counts
as one redaction. Whether a byte is masked depends only on the bytes within ``longest`` of it, so
any stretch of a stream can be redacted from a bounded window around it: that is what lets
``Redactor.cut`` serve frames from a byte cursor with the same result as redacting the whole
stream at once. Cost: one C regex search per occurrence plus O(holdback) per variant per frame;
output made of nothing but back-to-back secrets is the worst case (about 1 s per MB).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass

MARKER = b"[REDACTED]"
MIN_ENCODED_LEN = 4
"""Values shorter than this are redacted only as their exact bytes, never as encodings."""

_URL_SAFE_SETS = ("", "/", "!*'()")
_PERCENT_ESCAPE = re.compile(rb"%[0-9A-F]{2}")


# ---------------------------------------------------------------------------------------------
# variants


def _base64_core(encode: Callable[[bytes], bytes], value: bytes, align: int) -> bytes:
    """The base64 characters fully determined by ``value`` when it starts ``align`` bytes into a
    3-byte group of a longer input: characters whose 6 bits lie entirely inside the value."""
    encoded = encode(b"\0" * align + value)
    first = (8 * align + 5) // 6
    last = (8 * (align + len(value))) // 6
    return encoded[first:last]


def base64_forms(value: bytes) -> set[bytes]:
    forms: set[bytes] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(value)
        forms |= {whole, whole.rstrip(b"=")}
        forms |= {_base64_core(encode, value, align) for align in range(3)}
    return forms


def url_forms(value: bytes) -> set[bytes]:
    forms: set[bytes] = set()
    for safe in _URL_SAFE_SETS:
        for quote in (urllib.parse.quote_from_bytes, urllib.parse.quote_plus):
            upper = quote(value, safe).encode("ascii")
            forms |= {upper, _PERCENT_ESCAPE.sub(lambda m: m.group().lower(), upper)}
    return forms


def hex_forms(value: bytes) -> set[bytes]:
    return {value.hex().encode("ascii"), value.hex().upper().encode("ascii")}


def json_forms(value: bytes) -> set[bytes]:
    """JSON string-body escapes of ``value`` read as UTF-8 (none when it is not valid UTF-8: JSON
    text cannot carry such bytes except through one of these escapes of a decoded string)."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return set()
    ascii_form = json.dumps(text)[1:-1].encode("ascii")
    utf8_form = json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8")
    forms = {ascii_form, utf8_form, ascii_form.replace(b"/", b"\\/"), utf8_form.replace(b"/", b"\\/")}
    units = text.encode("utf-16-be", "surrogatepass")
    codes = [int.from_bytes(units[i : i + 2], "big") for i in range(0, len(units), 2)]
    lower = "".join(f"\\u{code:04x}" for code in codes).encode("ascii")
    return forms | {lower, lower.upper().replace(b"\\U", b"\\u")}


def encoded_forms(value: bytes) -> set[bytes]:
    """Every encoding of ``value`` listed in the module docstring (not the value itself)."""
    return base64_forms(value) | url_forms(value) | hex_forms(value) | json_forms(value)


def variants_of(value: bytes, min_encoded_len: int = MIN_ENCODED_LEN) -> set[bytes]:
    """The byte strings redacted for one secret value: the exact value and its stripped form,
    always; their encodings when they are at least ``min_encoded_len`` bytes long."""
    out: set[bytes] = set()
    for form in {value, value.strip()}:
        if not form:
            continue
        out.add(form)
        if len(form) >= min_encoded_len:
            out |= encoded_forms(form)
    return out


# ---------------------------------------------------------------------------------------------
# the engine


@dataclass(frozen=True)
class Cut:
    """One redacted frame cut from a window: what to show, how many raw bytes it stands for (the
    cursor's advance) and how many redactions (markers) it contains."""

    content: bytes
    consumed: int
    count: int


class Redactor:
    """Masks every occurrence of every variant of the given values.

    ``variants`` are sorted longest first, so the regular expression's first matching alternative
    at a position is its longest match there. ``holdback`` (``longest - 1``) is how far a match that
    starts at a position can reach beyond it: a frame reader needs that many bytes after a
    position, or the end of the stream, before it knows the position's fate. A reader must also
    look ``longest`` bytes *behind* its cursor to know whether the cursor is inside a run.
    """

    def __init__(self, values: Iterable[bytes], min_encoded_len: int = MIN_ENCODED_LEN) -> None:
        found: set[bytes] = set()
        for value in values:
            if value:
                found |= variants_of(value, min_encoded_len)
        self.variants: tuple[bytes, ...] = tuple(sorted(found, key=lambda v: (-len(v), v)))
        self.longest = len(self.variants[0]) if self.variants else 0
        self._pattern = re.compile(b"|".join(re.escape(v) for v in self.variants)) if self.variants else None

    @property
    def holdback(self) -> int:
        """Bytes after a frame a reader must include to settle the frame's last position."""
        return max(self.longest - 1, 0)

    @property
    def lookbehind(self) -> int:
        """Bytes before a cursor a reader must include: an occurrence that covers ``cursor - 1``
        starts at most ``longest`` bytes back."""
        return self.longest

    # -- whole buffers --------------------------------------------------------------------------

    def redact(self, data: bytes, truncated: bool = False) -> tuple[bytes, int]:
        """Redact a complete stream at once: the reference that frame-wise reads must equal.
        ``truncated``: the stream was cut by a cap, so a variant begun at its end is redacted."""
        cut = self.cut(data, 0, max(len(data), 1), final=True, truncated=truncated)
        return cut.content, cut.count

    # -- frames ---------------------------------------------------------------------------------

    def cut(self, window: bytes, offset: int, max_bytes: int, *, final: bool, truncated: bool = False) -> Cut:
        """Redact the frame that starts ``offset`` bytes into ``window`` (the bytes before are
        lookbehind, ideally ``lookbehind`` of them or the stream's start) and covers at most
        ``max_bytes`` raw bytes.

        ``final``: the window reaches the stream's last byte and nothing will be appended. When it
        is not, the frame stops before the first position where a variant could still begin (the
        window's tail is a proper prefix of it): a cursor never stops where the next read could
        complete a match. The frame may stop inside a run of masked bytes: a frame that starts
        inside a run shows nothing for it (the marker went out with the run's start), so frames
        concatenate to exactly ``redact`` of the whole stream, and a cursor picked at random can
        never show the rest of a secret.

        ``consumed`` is at most ``max_bytes``; the content can be longer than what it stands for
        (a marker replacing a short value), by at most ``len(MARKER)`` per redaction. Nothing is
        consumed only when the bytes at the cursor could still become part of a match (one that
        begins there, or before the cursor), which ends once the writer writes more or finishes.
        """
        if max_bytes < 1 or not 0 <= offset <= len(window):
            raise ValueError("need max_bytes >= 1 and 0 <= offset <= len(window)")
        pending = self.pending_start(window) if truncated or not final else len(window)
        safe = len(window) if final else pending
        end = max(min(offset + max_bytes, safe), offset)
        runs = self.runs(window)
        if final and truncated and pending < len(window):
            runs = _merge([*runs, (pending, len(window))])
        content, count = _render(window, runs, offset, end)
        return Cut(content, end - offset, count)

    def runs(self, window: bytes) -> list[tuple[int, int]]:
        """Maximal runs of masked positions ``[start, end)``: the union of every occurrence of every
        variant, overlapping and adjacent ones merged. One search per occurrence, in C."""
        if self._pattern is None:
            return []
        spans: list[tuple[int, int]] = []
        pos = 0
        while (match := self._pattern.search(window, pos)) is not None:
            start, end = match.span()
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
            pos = start + 1
        return spans

    def pending_start(self, window: bytes) -> int:
        """The first position whose bytes up to the window's end are a *proper* prefix of some
        variant (a match could start there once more bytes arrive); ``len(window)`` if none.
        Only the last ``holdback`` positions can qualify, so this costs O(holdback) per variant."""
        size = len(window)
        best = size
        view = memoryview(window)
        for variant in self.variants:
            pos = max(size - len(variant) + 1, 0)
            while pos < best:
                pos = window.find(variant[:1], pos, best)
                if pos < 0:
                    break
                if variant.startswith(view[pos:]):
                    best = pos
                    break
                pos += 1
        return best


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _render(window: bytes, runs: list[tuple[int, int]], offset: int, end: int) -> tuple[bytes, int]:
    """``window[offset:end]`` with each run that *starts* in it replaced by one marker and the part
    of a run begun before ``offset`` dropped."""
    pieces: list[bytes] = []
    pos = offset
    count = 0
    for start, stop in runs:
        if stop <= offset:
            continue
        if start >= end:
            break
        if start >= offset:
            pieces += [window[pos:start], MARKER]
            count += 1
        pos = max(min(stop, end), offset)
    pieces.append(window[pos:end])
    return b"".join(pieces), count


# ---------------------------------------------------------------------------------------------
# convenience


def redact(data: bytes, values: list[bytes]) -> tuple[bytes, int]:
    """``data`` with every occurrence of any value (or of its encodings, see the module docstring)
    replaced by ``[REDACTED]``, and how many runs were replaced. Empty values are ignored."""
    if not data:
        return data, 0
    return Redactor(values).redact(data)


def redact_text(text: str, values: list[bytes]) -> str:
    """The same for a message: used on Docker error text before it becomes an ``AgentError``."""
    out, _ = redact(text.encode("utf-8", "surrogateescape"), values)
    return out.decode("utf-8", "replace")
