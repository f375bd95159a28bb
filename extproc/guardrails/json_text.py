"""Tool-call arguments read as the JSON they are: each string decoded, each number as written.

OpenAI carries a tool call's arguments as JSON text inside a string. Whoever uses
them reads them decoded: the gateway's Anthropic and Bedrock translators parse them
into an object, and so does the client's code with an answer's arguments. A guard
must read what they read: ``\\u0073k-...`` is ``sk-...``, and ``"x\\n4111..."``
holds a newline before the number, not the letter ``n``.

``pieces`` cuts a JSON object or array into the texts a guard reads: every string
(keys included) with its escapes decoded, and every number as written. Each
``Piece`` maps a position of its text back to the JSON text (``raw``), so a mask
rewrites exactly the characters a match came from and keeps everything else as
the model wrote it (spacing, other escapes), and ``escape`` writes a replacement
so that the string stays valid JSON.

A lexer, not a second parser: orjson checks the document first (the one parse of
the argument), and on valid JSON one regular expression cuts out every token, whose
texts are decoded all at once (``Pieces``). A stream's arguments are read fragment by
fragment instead (``json_fragments``).

Arguments that are no JSON object or array (a call cut by the token limit, a bare JSON
string, a custom tool's free text, text a client wrote so on purpose) have no strings to
cut them into, yet the model reads an escape in them as the character it stands for: the
provider gets them as they are, or, translated for Claude or Bedrock, as the
``unparsed_arguments`` string (``translators.tool_arguments``). So is every other text a
guard reads (a tool's output is most often JSON a program wrote, ``json.dumps`` writing
``José`` as ``Jos\\u00e9``, Go's encoder ``<`` as ``\\u003c``). ``loose`` reads such text
whole with every JSON escape decoded, wherever it stands; its ``raw`` maps a match back
onto the escapes it came from.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate

import orjson

# On valid JSON, searching from a token's end finds the next string or number: quotes
# only ever open or close strings, and outside strings only numbers hold "-" or digits.
# Captured, so that splitting a text by it also yields the tokens.
_TOKENS = re.compile(r'("[^"\\]*(?:\\.[^"\\]*)*"|-?[0-9][0-9.eE+\-]*)')
# One escape; a surrogate pair (orjson refuses a lone half) is one character.
_ESCAPE = re.compile(
    r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})|\\u([0-9a-f]{4})|\\(.)", re.IGNORECASE
)
# In text that is no JSON: only what JSON escapes (not ``\x`` or ``\q``), and no half of a
# surrogate pair alone (no character: re2 could not even read the text holding it).
_LOOSE_ESCAPE = re.compile(
    r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})|\\u(?!d[89a-f])([0-9a-f]{4})"
    r'|\\(["\\/bfnrt])',
    re.IGNORECASE,
)
SIMPLE_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}


@dataclass(frozen=True, slots=True)
class Piece:
    """One string or number of a JSON text, as a guard reads it."""

    text: str  # a string's decoded content, or a number as written
    start: int  # where the token starts in the JSON text (a string's opening quote)
    end: int  # where it ends (after a string's closing quote)
    number: bool
    # Where runs of text begin: (position in ``text``, position in the JSON text). The
    # first run starts the content; after each escape (several JSON characters for one
    # decoded one) a new run starts.
    _decoded: tuple[int, ...]
    _raw: tuple[int, ...]

    def raw(self, position: int) -> int:
        """Where the character at ``position`` of ``text`` (or its end) is in the JSON text."""
        run = bisect_right(self._decoded, position) - 1
        return self._raw[run] + position - self._decoded[run]

    @property
    def as_written(self) -> bool:
        """Whether ``text`` is the JSON text as written (a number, a string without escapes)."""
        return len(self._raw) == 1

    def decoded(self, raw: int) -> int:
        """The position in ``text`` of the JSON text's ``raw`` (not inside an escape)."""
        run = bisect_right(self._raw, raw) - 1
        return self._decoded[run] + raw - self._raw[run]


def pieces(text: str) -> Pieces | None:
    """The strings and numbers of ``text``, in order; None unless it is a JSON object or array.

    Anything else (broken JSON a model cut short, free text of a custom tool, a bare
    scalar) is for the caller to read as plain text.
    """
    opening = text.lstrip()[:1]
    if opening not in ("{", "["):
        return None
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return Pieces(_TOKENS.split(text))


class Pieces:
    """The pieces of one JSON document: every text at once, each ``Piece`` when asked.

    A guard searches all the texts together and reads only the few pieces a match may
    touch (``Matchers.candidates``); building a ``Piece`` for each of thousands of
    strings and numbers (their places, their escapes' map) cost more than the search:
    13 ms of 21 for 64 KB of order records. So the texts come from two passes in C (one
    split cuts the tokens out, one decoder reads them all as one JSON array, numbers as
    written) and a piece's place and map are worked out when it is asked for.
    """

    __slots__ = ("_offsets", "_parts", "texts")

    def __init__(self, parts: list[str]) -> None:
        # The split's text between tokens and the tokens, alternating: gap, token, gap, ...
        self._parts = parts
        self._offsets: list[int] | None = None
        tokens = parts[1::2]
        # The document is valid JSON (orjson read it), so each token is a valid string or
        # number, and the array of them is valid JSON the standard decoder reads in C; it
        # hands each number's text as written to ``str`` instead of converting it.
        self.texts: list[str] = json.loads(
            "[" + ",".join(tokens) + "]", parse_int=str, parse_float=str
        )

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> Piece:
        if self._offsets is None:
            # Where each part ends: token ``i`` is part ``2 * i + 1``, and starts where
            # part ``2 * i`` ends.
            self._offsets = list(accumulate(map(len, self._parts)))
        token = self._parts[2 * index + 1]
        start = self._offsets[2 * index]
        end = start + len(token)
        if token[0] == '"':
            return _string(token, start, end)
        return Piece(token, start, end, True, (0,), (start,))

    def __iter__(self) -> Iterator[Piece]:
        return (self[index] for index in range(len(self.texts)))

    def touching(self, start: int, end: int) -> range:
        """The indexes of the pieces whose tokens (a string's quotes included) share a
        character with ``start:end`` of the JSON text."""
        if self._offsets is None:
            self._offsets = list(accumulate(map(len, self._parts)))
        ends = self._offsets[1::2]
        starts = self._offsets[0::2]
        return range(bisect_right(ends, start), bisect_left(starts, end, hi=len(ends)))


@dataclass(slots=True)
class Loose:
    """Text read with every JSON escape in it decoded (``loose``)."""

    text: str  # decoded
    written: str  # as written
    # Where runs of ``text`` are in ``written``: worked out at the first match to map back,
    # since most texts hold none and a tool's output may hold thousands of escapes.
    _piece: Piece | None = None
    # Where each escape starts and ends in ``written``, likewise worked out when needed.
    _escapes: tuple[list[int], list[int]] | None = None

    def raw(self, position: int) -> int:
        """Where the character at ``position`` of ``text`` (or its end) is as written."""
        if self._piece is None:
            self._piece = _decoded(self.written, 0, len(self.written), 0, _LOOSE_ESCAPE)
        return self._piece.raw(position)

    def escape_around(self, position: int) -> tuple[int, int] | None:
        """The escape of ``written`` (its start and end) that ``position`` falls strictly
        inside (``\\n`` at its ``n``), None when it falls inside none."""
        if self._escapes is None:
            found = list(_LOOSE_ESCAPE.finditer(self.written))
            self._escapes = ([m.start() for m in found], [m.end() for m in found])
        starts, ends = self._escapes
        index = bisect_right(starts, position) - 1
        if index < 0 or not starts[index] < position < ends[index]:
            return None
        return starts[index], ends[index]


def loose(text: str) -> Loose | None:
    """``text`` (no JSON document read piece by piece) with every JSON escape in it
    decoded, wherever it stands; None when it holds none, and reading it as written is
    reading it whole. One substitution, in C but for a call per escape."""
    if "\\" not in text:
        return None
    decoded, count = _LOOSE_ESCAPE.subn(_decode, text)
    return Loose(decoded, text) if count else None


def decoded(text: str) -> str:
    """``text`` with every JSON escape in it decoded (``loose``), as a model reads it; the
    text itself when it holds none."""
    found = loose(text)
    return text if found is None else found.text


def _string(token: str, start: int, end: int) -> Piece:
    content = token[1:-1]
    if "\\" not in content:
        return Piece(content, start, end, False, (0,), (start + 1,))
    return _decoded(content, start, end, start + 1, _ESCAPE)


def _decoded(content: str, start: int, end: int, first: int, escapes: re.Pattern[str]) -> Piece:
    """The piece of ``content`` (at ``first`` in the JSON text) with each of ``escapes``
    decoded."""
    parts: list[str] = []
    decoded_marks = [0]
    raw_marks = [first]
    length = 0  # decoded characters so far
    position = 0  # in ``content``
    for escape in escapes.finditer(content):
        literal = content[position : escape.start()]
        parts.append(literal)
        parts.append(_decode(escape))
        length += len(literal) + 1
        position = escape.end()
        decoded_marks.append(length)
        raw_marks.append(first + position)
    parts.append(content[position:])
    return Piece("".join(parts), start, end, False, tuple(decoded_marks), tuple(raw_marks))


def _decode(escape: re.Match[str]) -> str:
    high, low, code, simple = escape.groups()
    if high is not None:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + int(low, 16) - 0xDC00)
    if code is not None:
        return chr(int(code, 16))
    return SIMPLE_ESCAPES[simple]


def escape(text: str) -> str:
    """``text`` as the content of a JSON string: quotes, backslashes and controls escaped.

    The standard library's encoder, not orjson's: it also takes a lone surrogate an
    operator's replacement might hold, rather than raising."""
    return json.dumps(text, ensure_ascii=False)[1:-1]
