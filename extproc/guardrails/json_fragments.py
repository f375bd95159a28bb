"""Streamed tool-call arguments read as JSON, fragment by fragment.

A stream's arguments leave before their document is whole, so ``lex`` reads them
stretch by stretch, keeping where each stretch left the document (``LexState``: the
open containers, what may come next, inside a string or not) and checking the grammar
itself as it goes. It gives the pieces ``json_text.pieces`` gives a whole document, and
says what must wait for the next fragment: an escape cut in two (``\\u00``), a number
that may still grow, a literal cut short; and whether the text stopped being JSON.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from extproc.guardrails.json_text import SIMPLE_ESCAPES, Piece

# A streamed tool call's arguments arrive in fragments cut anywhere: inside a string, an
# escape, a number or a literal. ``lex`` reads one stretch of them from where the stretch
# before it left the document (a ``LexState``), with the grammar checked as it goes, since
# there is no whole document for orjson to check first: what is read as JSON must be JSON,
# or text outside strings would be let through unread.

# What the grammar allows next. Inside a string, which string it is (after a key comes ":").
_START, _VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _AFTER_VALUE, _END = range(8)
_IN_KEY, _IN_VALUE = 8, 9
_MAX_DEPTH = 1024  # orjson's: deeper arguments are no JSON to the buffered reading either
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_PLAIN = re.compile(r'[^"\\\x00-\x1f]+')
_ONE_ESCAPE = re.compile(r'\\(?:u([0-9a-fA-F]{4})|(["\\/bfnrt]))')
# The start of an escape cut by the end of a fragment; of the low half of a surrogate pair.
_ESCAPE_START = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?\Z")
_LOW_HALF = re.compile(r"\\u[dD][c-fC-F][0-9a-fA-F]{2}")
_LOW_HALF_START = re.compile(r"(?:\\(?:u(?:[dD](?:[c-fC-F][0-9a-fA-F]?)?)?)?)?\Z")
_NUMBER_RUN = re.compile(r"[-+0-9.eE]*")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LITERALS = {"t": "true", "f": "false", "n": "null"}
# A number still growing is held whole (a match in it makes the whole number a string,
# whose quote goes before its first digit), up to this many characters.
_MAX_NUMBER = 1024


@dataclass(frozen=True, slots=True)
class LexState:
    """Where the arguments read so far left the document: between two tokens, or inside a
    string (whose content may be cut between any two characters), never inside another
    token (an escape, a number, a literal: those wait whole)."""

    stack: str = ""  # the open containers, "{" or "[", innermost last
    expect: int = _START
    # In a string: the last character read of it (a builtin's "stands alone" check).
    before: str = ""

    @property
    def in_string(self) -> bool:
        return self.expect >= _IN_KEY


@dataclass(slots=True)
class Lexed:
    """One stretch of fragments, read."""

    # Every string (keys too) and number, in order, with whether it ended in the stretch.
    # A string still open at the end is a piece too; a number still open is not (it waits).
    pieces: list[tuple[Piece, bool]]
    continued: bool  # the first piece goes on with a string begun in an earlier stretch
    # Spans no cut may fall inside: escapes, literals, and numbers up to the character
    # after them (only that one tells a number has ended).
    fixed: list[tuple[int, int]]
    hold: int  # where an unfinished escape, number or literal begins (the length if none)
    broken: bool  # the stretch stopped being JSON
    state: LexState  # at the end of the stretch (or at ``hold``)


def lex(state: LexState, text: str, *, final: bool) -> Lexed:
    """Read ``text`` on from ``state``. With ``final`` (the call closes), nothing waits:
    a number still open is read as it is, and an escape or literal cut short as text."""
    if state.expect >= _IN_KEY and _PLAIN.fullmatch(text):
        # Most fragments are more of a string: the lexer would find just that.
        piece = Piece(text, 0, len(text), False, (0,), (0,))
        after = LexState(state.stack, state.expect, text[-1])
        return Lexed([(piece, False)], True, [], len(text), False, after)
    lexer = _Lexer(state, text, final)
    lexer.run()
    return Lexed(
        lexer.pieces,
        state.in_string,
        lexer.fixed,
        lexer.hold,
        lexer.broken,
        LexState(lexer.stack, lexer.expect, lexer.before),
    )


def state_at(lexed: Lexed, state: LexState, text: str, position: int) -> LexState:
    """Where ``text`` (lexed from ``state``) leaves the document at ``position``: a point
    a stream may cut at (between tokens, or between two characters of a string)."""
    if position == len(text) == lexed.hold:
        return lexed.state
    last = lexed.pieces[-1] if lexed.pieces else None
    if lexed.state.in_string and last is not None and not last[1]:
        piece = last[0]
        if position >= piece.raw(0):
            # Within the string still open at the end: only the character before differs.
            read = piece.decoded(position)
            if read:
                before = piece.text[read - 1]
            else:
                before = state.before if len(lexed.pieces) == 1 and lexed.continued else ""
            return LexState(lexed.state.stack, lexed.state.expect, before)
    return lex(state, text[:position], final=False).state


class _Lexer:
    """The state of one ``lex`` call: a position in the text and the grammar there."""

    __slots__ = (
        "before",
        "broken",
        "expect",
        "final",
        "fixed",
        "hold",
        "i",
        "pieces",
        "stack",
        "text",
    )

    def __init__(self, state: LexState, text: str, final: bool) -> None:
        self.text = text
        self.final = final
        self.i = 0
        self.stack = state.stack
        self.expect = state.expect
        self.before = state.before
        self.pieces: list[tuple[Piece, bool]] = []
        self.fixed: list[tuple[int, int]] = []
        self.hold = len(text)
        self.broken = False

    def run(self) -> None:
        if self.expect >= _IN_KEY and not self._string(-1):
            return
        text, end = self.text, len(self.text)
        while not self.broken:
            self.i = _WHITESPACE.match(text, self.i).end()  # type: ignore[union-attr]
            if self.i >= end or not self._token(text[self.i]):
                return

    def _token(self, char: str) -> bool:
        """Read the token starting with ``char``; False when the stretch ends (or breaks)."""
        expect = self.expect
        if expect in (_VALUE, _VALUE_OR_CLOSE, _START):
            if char in "{[":
                return self._open(char)
            if expect == _START:
                return self._break()
            if char == '"':
                self.expect = _IN_VALUE
                self.i += 1
                return self._string(self.i - 1)
            if char == "-" or "0" <= char <= "9":
                return self._number()
            if char in _LITERALS:
                return self._literal(_LITERALS[char])
            if char == "]" and expect == _VALUE_OR_CLOSE:
                return self._close()
            return self._break()
        if expect in (_KEY, _KEY_OR_CLOSE):
            if char == '"':
                self.expect = _IN_KEY
                self.i += 1
                return self._string(self.i - 1)
            if char == "}" and expect == _KEY_OR_CLOSE:
                return self._close()
            return self._break()
        if expect == _COLON and char == ":":
            self.expect = _VALUE
            self.i += 1
            return True
        if expect == _AFTER_VALUE:
            inner = self.stack[-1]
            if char == ",":
                self.expect = _KEY if inner == "{" else _VALUE
                self.i += 1
                return True
            if char == ("}" if inner == "{" else "]"):
                return self._close()
        return self._break()

    def _open(self, char: str) -> bool:
        if len(self.stack) >= _MAX_DEPTH:
            return self._break()
        self.stack += char
        self.expect = _KEY_OR_CLOSE if char == "{" else _VALUE_OR_CLOSE
        self.i += 1
        return True

    def _close(self) -> bool:
        self.stack = self.stack[:-1]
        self.i += 1
        self._value_read()
        return True

    def _value_read(self) -> None:
        self.expect = _AFTER_VALUE if self.stack else _END

    def _break(self) -> bool:
        self.broken = True
        return False

    def _wait(self) -> bool:
        """An escape, number or literal cut by the end of the stretch: it waits whole."""
        self.hold = self.i
        return False

    def _string(self, quote: int) -> bool:
        """A string's content from ``self.i`` (its opening quote at ``quote``, -1 when it
        began in an earlier stretch); True when it closed."""
        text, i, end = self.text, self.i, len(self.text)
        parts: list[str] = []
        decoded_marks = [0]
        raw_marks = [i]
        length = 0
        closed = False
        while True:
            plain = _PLAIN.match(text, i)
            if plain is not None:
                parts.append(plain.group())
                length += plain.end() - i
                i = plain.end()
            if i >= end:
                break
            char = text[i]
            if char == '"':
                closed = True
                break
            if char != "\\":
                return self._break()  # a control character: no JSON string holds one raw
            escaped = self._escape(i)
            if escaped is None:
                if self.broken:
                    return False
                if not self.final:
                    self.hold = i
                    break
                escaped = (text[i:], end)  # cut short at the close: read as written
            char, after = escaped
            self.fixed.append((i, after))
            parts.append(char)
            length += len(char)
            i = after
            decoded_marks.append(length)
            raw_marks.append(i)
        content = "".join(parts)
        piece = Piece(
            content, max(quote, 0), i + closed, False, tuple(decoded_marks), tuple(raw_marks)
        )
        self.pieces.append((piece, closed))
        if closed:
            self.i = i + 1
            self.before = ""
            if self.expect == _IN_KEY:
                self.expect = _COLON
            else:
                self._value_read()
            return True
        self.i = i
        if content:
            self.before = content[-1]
        elif quote >= 0:
            self.before = ""
        return False

    def _escape(self, i: int) -> tuple[str, int] | None:
        """The character the escape at ``i`` stands for and where it ends; None when it is
        cut by the end of the stretch (or ``broken`` when it is no escape)."""
        text = self.text
        found = _ONE_ESCAPE.match(text, i)
        if found is None:
            if _ESCAPE_START.match(text, i) is None:
                self._break()
            return None
        code, simple = found.groups()
        if simple is not None:
            return SIMPLE_ESCAPES[simple], found.end()
        point = int(code, 16)
        if 0xDC00 <= point < 0xE000:
            self._break()  # a low half alone: orjson refuses it
            return None
        if point < 0xD800 or point >= 0xDC00:
            return chr(point), found.end()
        low = _LOW_HALF.match(text, found.end())
        if low is not None:
            second = int(low.group()[2:], 16)
            return chr(0x10000 + ((point - 0xD800) << 10) + second - 0xDC00), low.end()
        if _LOW_HALF_START.match(text, found.end()) is None:
            self._break()  # a high half alone
        return None

    def _number(self) -> bool:
        text, start = self.text, self.i
        end = _NUMBER_RUN.match(text, start).end()  # type: ignore[union-attr]
        if end >= len(text) and not self.final:
            if end - start > _MAX_NUMBER:
                # No model writes such a number; holding it whole would hold it all.
                return self._break()
            return self._wait()
        written = text[start:end]
        if _NUMBER.fullmatch(written) is None or _infinite(written):
            if end < len(text):
                return self._break()
            # Cut short at the close ("1.", "-"): read as written.
            self.pieces.append((Piece(written, start, end, False, (0,), (start,)), True))
        else:
            self.pieces.append((Piece(written, start, end, True, (0,), (start,)), True))
        self.fixed.append((start, end + 1))
        self.i = end
        self._value_read()
        return True

    def _literal(self, word: str) -> bool:
        text, start = self.text, self.i
        if text.startswith(word, start):
            self.fixed.append((start, start + len(word)))
            self.i = start + len(word)
            self._value_read()
            return True
        rest = text[start : start + len(word)]
        if len(rest) < len(word) and word.startswith(rest):
            if not self.final:
                return self._wait()
            self.pieces.append((Piece(rest, start, len(text), False, (0,), (start,)), True))
            self.i = len(text)
            return False
        return self._break()


def _infinite(number: str) -> bool:
    """Whether a JSON number is past a double's range, which orjson refuses (``1e400``):
    such arguments are no JSON to the buffered reading either."""
    if len(number) < 300 and "e" not in number and "E" not in number:
        return False  # fewer than 300 digits and no exponent: always finite
    return math.isinf(float(number))
