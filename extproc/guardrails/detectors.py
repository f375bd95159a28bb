"""What one matcher looks for: RE2 patterns, literal strings and the PII builtins.

A ``Detector`` finds spans in a text and knows two facts streams need: the
longest match it can produce (``max_len``) and which characters a match can
contain (``chars``, None for any). A stream only holds back a trailing run of
such characters, at most ``max_len - 1`` of them, because any match that
continues into the next chunk must begin inside that run.

Every pattern is compiled with RE2, whose matching time is linear in the text:
an operator's pattern cannot make the gateway backtrack for seconds.

The builtins (why each rule):

- ``CREDIT_CARD``: 13 to 19 digits, optionally grouped by single spaces or
  dashes, passing the Luhn check. A run of digit groups is tried window by
  window (whole groups only), so a card next to another number is still found,
  even when that number touches a letter (``order A1 4111 ...``).
- ``SSN``: ``AAA-GG-SSSS`` or ``AAA GG SSSS`` with the SSA's never-issued
  values excluded (area 000, 666, 900-999; group 00; serial 0000). Nine digits
  in a row are not taken for an SSN: too many other numbers look like that.
- ``CA_SIN``: nine digits, optionally ``AAA-BBB-CCC`` or spaced (the same
  separator twice), passing the Luhn check.
- ``EMAIL``: ``local@domain.tld`` with the characters mail systems accept, in
  Latin (accents included), Greek and Cyrillic letters as well as ASCII
  (internationalised addresses, RFC 6531: ``müller@bücher.de``, ``почта@пример.рф``),
  and punycode top-level domains (``xn--p1ai``). Letters of scripts written without
  spaces between words (Chinese, Japanese, Korean, Thai) are not taken: next to an
  address they are the sentence around it (``请联系jane@example.com``), and a pattern
  taking them would mask the sentence with the address.
- ``PHONE_NUMBER``: North American numbers (``(555) 123-4567``,
  ``+1 555.123.4567``, ``5551234567``), whose area code never begins with 0 or 1 (so a
  Unix time, ``1717171717``, is none), and international ``+CC ...`` numbers of
  8 to 15 digits (E.164's limit).

Numbers must stand alone: a match touching another letter or digit is not one.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import re2

from extproc.config.guard_model import Builtin
from extproc.guardrails.card_numbers import card_windows, luhn_valid

# The stdlib's own regex parser (private, untyped): a pattern's width and characters.
sre_parse: Any = importlib.import_module("re._parser")
# Python's parser reads these RE2 spellings differently (or not at all): a
# pattern using them gets no character-set shortcut and the policy's cap.
_RE2_ONLY = ("[:", "\\p", "\\P", "\\C", "\\Q", "\\x{", "(?U")
_ANYTHING_WIDE = 1 << 16


def _options(case_insensitive: bool = False) -> Any:
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not case_insensitive
    return options


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    label: str


class Detector:
    """A compiled pattern with an optional check of each candidate match."""

    __slots__ = ("_check", "_regex", "_stands_alone", "chars", "label", "max_len", "source")

    def __init__(
        self,
        regex: Any,
        label: str,
        max_len: int,
        chars: re.Pattern[str] | None,
        check: Callable[[str, int, int], bool] | None = None,
        *,
        stands_alone: bool = False,
    ) -> None:
        self._regex = regex
        # The check refuses every match right after a letter or digit (a number must
        # stand alone): after a refused match, no match inside the same digit run can pass.
        self._stands_alone = stands_alone
        # The pattern with its case flag inline, for the phase's one-pass prefilter.
        self.source: str = (
            regex.pattern if regex.options.case_sensitive else f"(?i:{regex.pattern})"
        )
        self._check = check
        self.label = label
        self.max_len = max_len
        self.chars = chars

    def find(self, text: str) -> Iterator[Span]:
        check = self._check
        if check is None:
            for match in self._regex.finditer(text):
                start, end = match.span()
                if start != end:
                    yield Span(start, end, self.label)
            return
        # A match the check refuses may hide one it accepts inside it: in "Room 21
        # 555-123-4567" the phone number is matched from the "1" (an optional country
        # code), which touches the "2"; going on after that match never tried the number
        # itself. So the search goes on from the character after the refused match's start.
        # It searches the text's UTF-8 bytes, encoded once: given a str, the RE2 binding
        # encodes all of it, and counts characters from its first, on every search, and a
        # search per refused number made a tool's output of records (a Unix time in each)
        # cost time in the square of its length (300 ms of CPU for 64 KB).
        regex = self._regex
        encoded = text.encode("utf-8")
        offsets = _CharOffsets(text, encoded)
        digits = _DIGIT_RUN if self._stands_alone else None
        position = 0
        length = len(encoded)
        while position <= length:
            match = regex.search(encoded, position)
            if match is None:
                return
            byte_start, byte_end = match.span()
            start = offsets.of(byte_start)
            end = offsets.of(byte_end)
            if start != end and check(text, start, end):
                yield Span(start, end, self.label)
                position = byte_end
            elif digits is not None and byte_start < length and 48 <= encoded[byte_start] <= 57:
                # Every match beginning inside this digit run, or right after it, follows
                # a digit and is refused: a run of 64 KB of digits was 64 K refusals.
                run = digits.match(encoded, byte_start)
                after = run.end() if run is not None else byte_start
                position = after + _utf8_width(encoded, after)
            else:
                position = byte_start + _utf8_width(encoded, byte_start)


class _CharOffsets:
    """The character offset in a text of each byte offset in its UTF-8 encoding, for
    offsets asked mostly in increasing order (counted from the last one asked)."""

    __slots__ = ("_byte", "_char", "_encoded", "_same")

    def __init__(self, text: str, encoded: bytes) -> None:
        self._encoded = encoded
        self._same = len(encoded) == len(text)  # ASCII: a byte is a character
        self._byte = 0
        self._char = 0

    def of(self, byte: int) -> int:
        if self._same:
            return byte
        # Both offsets begin a character (RE2 matches whole UTF-8 characters), so the
        # bytes between them decode.
        if byte >= self._byte:
            self._char += len(self._encoded[self._byte : byte].decode("utf-8"))
        else:
            self._char -= len(self._encoded[byte : self._byte].decode("utf-8"))
        self._byte = byte
        return self._char


def _utf8_width(encoded: bytes, position: int) -> int:
    """How many bytes the character at ``position`` takes (1 past the end)."""
    if position >= len(encoded):
        return 1
    lead = encoded[position]
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


class CardDetector(Detector):
    """Credit cards: runs of digit groups, tried window by window with the Luhn check."""

    __slots__ = ()

    def find(self, text: str) -> Iterator[Span]:
        label = self.label
        for match in self._regex.finditer(text):
            run_start, run_end = match.span()
            for start, end in card_windows(text, run_start, run_end):
                yield Span(start, end, label)


def _alone(text: str, start: int, end: int) -> bool:
    """No letter or digit right before or after: the number is not part of a longer word."""
    return (start == 0 or not text[start - 1].isalnum()) and (
        end == len(text) or not text[end].isalnum()
    )


def _ssn(text: str, start: int, end: int) -> bool:
    if not _alone(text, start, end):
        return False
    digits = "".join(c for c in text[start:end] if c.isdigit())
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _sin(text: str, start: int, end: int) -> bool:
    if not _alone(text, start, end):
        return False
    value = text[start:end]
    separators = [c for c in value if not c.isdigit()]
    if separators and (len(separators) != 2 or separators[0] != separators[1]):
        return False
    digits = "".join(c for c in value if c.isdigit())
    return digits != "000000000" and luhn_valid(digits)


def _phone(text: str, start: int, end: int) -> bool:
    if start > 0 and (text[start - 1].isalnum() or text[start - 1] in "+("):
        return False
    if end < len(text) and text[end].isalnum():
        return False
    digits = [c for c in text[start:end] if c.isdigit()]
    if text[start] == "+":
        return 8 <= len(digits) <= 15
    if len(digits) not in (10, 11):
        return False
    # No North American area code begins with 0 or 1: ten such digits are some other
    # number, a Unix time most often (1717171717), not a phone number.
    return digits[len(digits) - 10] not in "01"


# The letters of scripts written with spaces between words, which an address may hold
# besides ASCII: Latin-1 and Latin Extended (without the multiplication and division
# signs), Greek, Cyrillic, Hebrew, Arabic (with its supplements), Devanagari, Latin
# Extended Additional (Vietnamese). Each script's punctuation is left out (Hebrew's maqaf,
# paseq and sof pasuq, Arabic's comma, semicolon, question mark and full stop, the
# Devanagari danda), so an address ends where the sentence around it goes on. Character
# ranges both RE2 and Python's re read alike, so the pattern, its stream characters and
# its end check agree.
_EMAIL_LETTERS = (
    "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f\u0386\u0388-\u03ff"
    "\u0400-\u0481\u048a-\u052f\u05d0-\u05ea\u05ef-\u05f2"
    "\u0620-\u064a\u066e\u066f\u0671-\u06d3\u06d5\u06e5\u06e6\u06ee\u06ef"
    "\u06fa-\u06fc\u06ff\u0750-\u077f\u08a0-\u08c9"
    "\u0904-\u0939\u093d\u0950\u0958-\u0961\u0971-\u097f\u1e00-\u1eff"
)
# The marks written on those letters: combining accents, Cyrillic titlo, Hebrew points,
# Arabic vowel signs, Devanagari vowel signs, viramas and nukta, and the zero-width
# (non-)joiners Persian and Indic words are spelt with (IDNA allows them there).
_EMAIL_MARKS = (
    "\u0300-\u036f\u0483-\u0487\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4\u05c5\u05c7"
    "\u064b-\u065f\u0670\u06d6-\u06dc\u06df-\u06e4\u06e7\u06e8\u06ea-\u06ed"
    "\u08ca-\u08e1\u08e3-\u08ff\u0900-\u0903\u093a-\u093c\u093e-\u094f"
    "\u0951-\u0957\u0962\u0963\u200c\u200d"
)
# Digits: ASCII, Arabic-Indic (both forms) and Devanagari.
_EMAIL_DIGITS = "0-9\u0660-\u0669\u06f0-\u06f9\u0966-\u096f"
_EMAIL_WORD = _EMAIL_LETTERS + _EMAIL_MARKS + _EMAIL_DIGITS
# Scripts written without spaces between words (Chinese and Japanese: Han, kana, the
# iteration and prolonged sound marks; Thai with its marks), and Korean Hangul, whose
# particles are written on the word before them (x@y.com으로). Next to an address of
# another script, their letters are the sentence around it (请联系jane@example.com), so
# each is a script of its own: a local part, a label or a top-level domain is letters of
# one of them only. A run of one cannot be cut into words without a dictionary, so an
# address written in one takes the whole run before the "@" and after the last dot.
_EMAIL_HAN_KANA = (
    "\u3005\u3041-\u3096\u3099-\u309f\u30a1-\u30fa\u30fc-\u30ff\u3400-\u4dbf"
    "\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
)
_EMAIL_THAI = "\u0e01-\u0e3a\u0e40-\u0e4e"
_EMAIL_HANGUL = "\u1100-\u11ff\u3131-\u318e\uac00-\ud7a3"
_EMAIL_UNSPACED = (_EMAIL_HAN_KANA, _EMAIL_THAI, _EMAIL_HANGUL)
_EMAIL_UNSPACED_LETTERS = "".join(_EMAIL_UNSPACED)


def _label(word: str) -> str:
    # A label's 63-character limit is checked on the match (``email_accepted``): written as a
    # counted repetition of these letters, eight times over, it made a program RE2's
    # automaton ran out of memory on, and a 64 KB prompt cost 10 ms instead of 0.1.
    return f"[{word}](?:[{word}\\-]*[{word}])?"


# A local part of the spaced scripts may hold digits and the signs mail systems accept; one
# in Chinese/Japanese or Thai holds its letters, dots and dashes only, so the Chinese before
# a numeric address (我的邮箱是123456@qq.com) is not taken for part of it. Korean, written
# with spaces between words, may have digits after its first letter (사용자12@예시.한국).
_EMAIL_LOCAL = "|".join(
    [
        f"[{_EMAIL_WORD}._%+\\-]{{1,64}}",
        f"[{_EMAIL_HAN_KANA}][{_EMAIL_HAN_KANA}._\\-]{{0,63}}",
        f"[{_EMAIL_THAI}][{_EMAIL_THAI}._\\-]{{0,63}}",
        f"[{_EMAIL_HANGUL}][{_EMAIL_HANGUL}0-9._\\-]{{0,63}}",
    ]
)
_EMAIL_DOMAIN_LABEL = "|".join(
    [_label(_EMAIL_WORD)] + [_label(letters + _EMAIL_DIGITS) for letters in _EMAIL_UNSPACED]
)
_EMAIL_TOP_LEVEL = "|".join(
    ["xn--[A-Za-z0-9\\-]{1,59}", f"[{_EMAIL_LETTERS}][{_EMAIL_LETTERS}{_EMAIL_MARKS}]{{1,23}}"]
    + [f"[{letters}]{{2,24}}" for letters in _EMAIL_UNSPACED]
)
EMAIL_PATTERN = (
    f"(?:{_EMAIL_LOCAL})@(?:{_EMAIL_DOMAIN_LABEL})(?:\\.(?:{_EMAIL_DOMAIN_LABEL})){{0,8}}"
    f"\\.(?:{_EMAIL_TOP_LEVEL})"
)
# A match ending in a spaced script's letter and followed by a character the pattern
# could have taken was cut by a length limit (a 25-letter top-level domain, a
# 65-character local part): no address. One ending in an unspaced script's letters is
# kept even then: the text there is the sentence going on, not more of the address.
EMAIL_GOES_ON = re.compile(f"[{_EMAIL_LETTERS}{_EMAIL_MARKS}][{_EMAIL_WORD}_\\-]")
EMAIL_CHARS = re.compile(f"[{_EMAIL_WORD}{_EMAIL_UNSPACED_LETTERS}._%+@\\-]")


def email_accepted(text: str, start: int, end: int) -> bool:
    """Whether a match of ``EMAIL_PATTERN`` is an address: within SMTP's and DNS's
    lengths, and not cut short of more letters by one."""
    if end - start > 254:  # the longest address SMTP carries
        return False
    if any(len(label) > 63 for label in text[text.index("@", start, end) + 1 : end].split(".")):
        return False
    return end == len(text) or EMAIL_GOES_ON.match(text, end - 1) is None


_DIGITS_AND_SEPARATORS = re.compile(r"[0-9 \-]")
_DIGIT_RUN = re.compile(rb"[0-9]+")
_BUILTINS: dict[Builtin, Callable[[], Detector]] = {
    # Only runs of 13 digits or more reach Python: a shorter run holds no card (every
    # window is whole groups of the run), and JSON is full of short ones (ids, prices,
    # times, each "\u00e9"). What matches is still a whole run: a match cannot begin
    # inside a shorter run (what follows there is shorter still), nor inside a longer one
    # (the last match took all of it).
    Builtin.CREDIT_CARD: lambda: CardDetector(
        re2.compile(r"\d(?:[ -]?\d){12,}", _options()),
        Builtin.CREDIT_CARD,
        37,  # 19 digits and 18 separators
        _DIGITS_AND_SEPARATORS,
    ),
    Builtin.SSN: lambda: Detector(
        re2.compile(r"\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4}", _options()),
        Builtin.SSN,
        11,
        _DIGITS_AND_SEPARATORS,
        _ssn,
        stands_alone=True,
    ),
    Builtin.CA_SIN: lambda: Detector(
        re2.compile(r"\d{3}[ -]?\d{3}[ -]?\d{3}", _options()),
        Builtin.CA_SIN,
        11,
        _DIGITS_AND_SEPARATORS,
        _sin,
        stands_alone=True,
    ),
    Builtin.EMAIL: lambda: Detector(
        re2.compile(EMAIL_PATTERN, _options()),
        Builtin.EMAIL,
        254,  # the longest address SMTP carries
        EMAIL_CHARS,
        email_accepted,
    ),
    Builtin.PHONE_NUMBER: lambda: Detector(
        re2.compile(
            r"\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?)(?:[ .\-]?\d{2,4}){1,5}"
            r"|(?:1[ .\-]?)?(?:\(\d{3}\) ?|\d{3}[ .\-]?)\d{3}[ .\-]?\d{4}",
            _options(),
        ),
        Builtin.PHONE_NUMBER,
        32,
        re.compile(r"[0-9 .()+\-]"),
        _phone,
        stands_alone=True,
    ),
}


def builtin(kind: Builtin) -> Detector:
    return _BUILTINS[kind]()


def pattern(source: str, label: str, *, case_insensitive: bool, unbounded_cap: int) -> Detector:
    """An operator's RE2 pattern, with its stream extent read from its syntax."""
    regex = re2.compile(source, _options(case_insensitive))
    max_len, chars = extent(source, case_insensitive=case_insensitive, cap=unbounded_cap)
    return Detector(regex, label, max_len, chars)


def literals(words: tuple[str, ...], label: str, *, case_insensitive: bool) -> Detector:
    """Literal strings as one alternation (longest first, so a longer word wins)."""
    ordered = sorted(set(words), key=len, reverse=True)
    source = "|".join(re2.escape(word) for word in ordered)
    regex = re2.compile(source, _options(case_insensitive))
    chars = {c for word in ordered for c in word}
    return Detector(
        regex, label, max(len(w) for w in ordered), _char_class(chars, case_insensitive)
    )


def _char_class(chars: set[str], case_insensitive: bool) -> re.Pattern[str]:
    source = "[" + "".join(re.escape(c) for c in sorted(chars)) + "]"
    return re.compile(source, _fold(case_insensitive))


def _fold(case_insensitive: bool) -> re.RegexFlag:
    """The flag a stream's character set needs to hold back what RE2 matches.

    RE2 ignores case by Unicode case folding, so "k" also matches the Kelvin sign and
    "s" the long s; ``str.swapcase`` knows neither, and a stream let such a spelling
    of a masked word out when a chunk ended inside it. Python's ``re.IGNORECASE``
    folds at least as widely as RE2 (checked over every code point).
    """
    return re.IGNORECASE if case_insensitive else re.NOFLAG


def extent(source: str, *, case_insensitive: bool, cap: int) -> tuple[int, re.Pattern[str] | None]:
    """The longest match of a pattern (capped) and the characters its matches can hold.

    Python's own parser reads the pattern (RE2 syntax is nearly a subset of
    Python's); where it cannot, or the pattern uses RE2-only syntax, the answer
    is the safe one: any character, up to ``cap``.
    """
    if any(marker in source for marker in _RE2_ONLY):
        return cap, None
    try:
        parsed = sre_parse.parse(source)
    except (re.error, OverflowError, RecursionError):
        return cap, None
    high = parsed.getwidth()[1]
    max_len = cap if high >= _ANYTHING_WIDE else min(max(high, 1), cap)
    items: list[str] = []
    if not _collect(parsed, items):
        return max_len, None
    if not items:
        return max_len, None
    # An inline (?i) anywhere may fold any part: fold the whole set (holding more is safe).
    flags = _fold(case_insensitive or "(?i" in source)
    try:
        return max_len, re.compile("[" + "".join(items) + "]", flags)
    except re.error:
        return max_len, None


def _collect(parsed: Any, items: list[str]) -> bool:
    """Character-class items of every character a match can contain; False for any."""
    for op, value in parsed:
        name = str(op)
        if name == "LITERAL":
            items.append(re.escape(chr(value)))
        elif name == "IN":
            for item_op, item in value:
                item_name = str(item_op)
                if item_name == "LITERAL":
                    items.append(re.escape(chr(item)))
                elif item_name == "RANGE":
                    items.append(f"{re.escape(chr(item[0]))}-{re.escape(chr(item[1]))}")
                elif item_name == "CATEGORY" and str(item) in _CATEGORIES:
                    items.append(_CATEGORIES[str(item)])
                else:
                    return False  # negated sets and the like: anything
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            if not _collect(value[2], items):
                return False
        elif name in ("SUBPATTERN", "ATOMIC_GROUP"):
            if not _collect(value[-1], items):
                return False
        elif name == "BRANCH":
            for branch in value[1]:
                if not _collect(branch, items):
                    return False
        elif name == "AT":
            continue  # anchors consume nothing
        elif name == "CATEGORY" and str(value) in _CATEGORIES:
            items.append(_CATEGORIES[str(value)])
        else:
            return False
    return True


_CATEGORIES = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_WORD": r"\w",
}
