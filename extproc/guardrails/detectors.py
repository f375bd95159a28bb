"""What one matcher looks for: RE2 patterns, literal strings and the PII builtins.

A ``Detector`` finds spans in a text and knows two facts streams need: the
longest match it can produce (``max_len``) and which characters a match can
contain (``chars``, None for any). A stream only holds back a trailing run of
such characters, at most ``max_len - 1`` of them, because any match that
continues into the next chunk must begin inside that run (``holdback``; the EMAIL
builtin narrows it to what can still be a local part where no "@" came yet).

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
  ASCII and the letters, marks and digits of internationalised addresses (RFC 6531,
  IDNA) in the scripts ``email_scripts`` lists (``müller@bücher.de``,
  ``ব্যবহারকারী@উদাহরণ.বাংলা``), and punycode top-level domains (``xn--p1ai``). A
  local part is its last 64 octets at most (what SMTP carries); a top-level domain is
  one script. Letters of scripts written without spaces between words (Chinese,
  Japanese, Korean, Thai, Lao, Khmer, Myanmar, Tibetan) are of one script per part:
  next to an address they are the sentence around it (``请联系jane@example.com``), and
  a domain ends after a top-level domain the root zone delegates in them
  (``jane@例子.中国请回复``). A hyphen after a top-level domain goes on into a label
  (``a@b.cc-dd`` is none) unless letters of another script follow it: an Indic case
  suffix (``jane@example.com-এ``), and the address ends before the hyphen.
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
from extproc.guardrails import email_scripts
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

    def holdback(self, text: str, limit: int) -> int:
        """How many trailing characters of ``text`` (at most ``limit``) could begin a
        match that goes on in what follows: the run of the characters a match holds."""
        chars = self.chars
        if chars is None:
            return limit
        count = 0
        position = len(text) - 1
        while count < limit and chars.match(text, position):
            count += 1
            position -= 1
        return count


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


# Where the characters and top-level domains come from, script by script: ``email_scripts``.
_EMAIL_LETTERS = email_scripts.LETTERS
_EMAIL_MARKS = email_scripts.MARKS
_EMAIL_DIGITS = email_scripts.DIGITS
_EMAIL_WORD = _EMAIL_LETTERS + _EMAIL_MARKS + _EMAIL_DIGITS
# A local part SMTP carries is at most 64 octets (RFC 5321, 4.5.3.1.1; RFC 6531 counts
# them in UTF-8): 21 Chinese or Thai letters. What is before them is the sentence.
LOCAL_OCTETS = 64


def _label(word: str) -> str:
    # A label's 63-character limit is checked on the match (``email_accepted``): written as a
    # counted repetition of these letters, eight times over, it made a program RE2's
    # automaton ran out of memory on, and a 64 KB prompt cost 10 ms instead of 0.1.
    return f"[{word}](?:[{word}\\-]*[{word}])?"


def _top_level(letters: str, delegated: list[str]) -> str:
    # A delegated name first (longest first: RE2 takes the first alternative that
    # matches), so the sentence after it is no part of the domain.
    names = [re2.escape(name) for name in sorted(delegated, key=len, reverse=True)]
    return "|".join([*names, f"[{letters}]{{2,24}}"])


# A local part of the spaced scripts may hold digits and the signs mail systems accept; one
# in an unspaced script holds its letters, dots and dashes only, so the Chinese before a
# numeric address (我的邮箱是123456@qq.com) is not taken for part of it. Korean, written
# with spaces between words, may have digits after its first letter (사용자12@예시.한국).
_EMAIL_LOCALS = [f"[{_EMAIL_WORD}._%+\\-]"] + [
    f"[{letters}0-9._\\-]" if letters == email_scripts.HANGUL else f"[{letters}._\\-]"
    for letters, _ in email_scripts.UNSPACED
]
# Their length is no part of the pattern: ``EmailDetector.find`` takes the last 64 octets
# before the "@". Counted here ({1,64}), with the labels' count ({0,8}), they made a program
# RE2's automaton ran out of memory on once these scripts were added, and a 2 KB prompt
# holding one address cost 600 us instead of 6.
_EMAIL_LOCAL = "|".join(
    [f"{_EMAIL_LOCALS[0]}+"]
    + [
        f"[{letters}]{chars}*"
        for (letters, _), chars in zip(email_scripts.UNSPACED, _EMAIL_LOCALS[1:], strict=True)
    ]
)
_EMAIL_DOMAIN_LABEL = "|".join(
    [_label(_EMAIL_WORD)]
    + [_label(letters + _EMAIL_DIGITS) for letters, _ in email_scripts.UNSPACED]
)
_EMAIL_TOP_LEVEL = "|".join(
    ["xn--[A-Za-z0-9\\-]{1,59}"]
    + [f"[{letters}][{letters}{marks}]+" for letters, marks in email_scripts.SCRIPTS]
    + [_top_level(letters, delegated) for letters, delegated in email_scripts.UNSPACED]
)
EMAIL_PATTERN = (
    f"(?:{_EMAIL_LOCAL})@(?:{_EMAIL_DOMAIN_LABEL})(?:\\.(?:{_EMAIL_DOMAIN_LABEL}))*"
    f"\\.(?:{_EMAIL_TOP_LEVEL})"
)
# A top-level domain of a spaced script is at most 24 letters, all of one script (a
# longer run is no domain); one ending in its letter and followed by a digit, "_" or "-"
# is a label going on without its own top-level domain: no address. Letters of another
# script after it are the sentence (``jane@example.comতে``, a Bengali suffix), as are an
# unspaced script's letters after a top-level domain of its own.
TOP_LEVEL_LETTERS = 24
EMAIL_GOES_ON = re.compile(f"[{_EMAIL_LETTERS}{_EMAIL_MARKS}][{_EMAIL_DIGITS}_\\-]")
# Bengali, Hindi, Marathi or Tamil writers join a case suffix to a Latin word with a
# hyphen (``jane@example.com-এ লিখুন``, "write to ..."). A label is written in one script,
# so a hyphen followed by letters of another script than the top-level domain's is the
# sentence, not a label going on: the address ends before the hyphen. After ``a@b.cc-dd``
# the label may go on (``cc-dd`` is one), so that is still no address.
_EMAIL_LETTER = re.compile(f"[{_EMAIL_LETTERS}{email_scripts.UNSPACED_LETTERS}]")
_TOP_LEVEL_SCRIPTS = tuple(
    re.compile(f"[{letters}{marks}]") for letters, marks in email_scripts.SCRIPTS
) + tuple(re.compile(f"[{letters}]") for letters, _ in email_scripts.UNSPACED)


def _suffix_in_another_script(text: str, hyphen: int, top: str) -> bool:
    """Whether ``text[hyphen]`` is a hyphen followed by a letter of a script other than
    the top-level domain ``top``'s (punycode, ``xn--...``, is ASCII)."""
    after = hyphen + 1
    if text[hyphen] != "-" or after >= len(text) or not _EMAIL_LETTER.match(text, after):
        return False
    script = next((kind for kind in _TOP_LEVEL_SCRIPTS if kind.match(top)), None)
    return script is not None and script.match(text, after) is None


EMAIL_CHARS = re.compile(f"[{_EMAIL_WORD}{email_scripts.UNSPACED_LETTERS}._%+@\\-]")
# The characters of each kind of local part, one character each: a local part is written
# in one of them only (``EmailDetector.holdback``).
EMAIL_LOCAL_CHARS = tuple(re.compile(chars) for chars in _EMAIL_LOCALS)


def email_accepted(text: str, start: int, end: int) -> bool:
    """Whether a match of ``EMAIL_PATTERN`` is an address: within SMTP's and DNS's
    lengths, and not cut short of more letters by one."""
    if end - start > 254:  # the longest address SMTP carries
        return False
    at = text.index("@", start, end)
    if len(text[start:at].encode("utf-8")) > LOCAL_OCTETS:
        return False
    labels = text[at + 1 : end].split(".")
    if any(len(label) > 63 for label in labels):
        return False
    top = labels[-1]
    if len(top) > TOP_LEVEL_LETTERS and not top.startswith("xn--"):
        return False
    if end == len(text) or EMAIL_GOES_ON.match(text, end - 1) is None:
        return True
    return _suffix_in_another_script(text, end, top)


class EmailDetector(Detector):
    """The EMAIL builtin: a local part is its last 64 octets at most, and a stream holds
    back only what can still be the start of an address."""

    __slots__ = ()

    def find(self, text: str) -> Iterator[Span]:
        regex = self._regex
        encoded = text.encode("utf-8")
        offsets = _CharOffsets(text, encoded)
        position = 0
        length = len(encoded)
        while position <= length:
            match = regex.search(encoded, position)
            if match is None:
                return
            byte_start, byte_end = match.span()
            at = encoded.index(b"@", byte_start, byte_end)
            if at - byte_start > LOCAL_OCTETS:
                # Longer than SMTP carries (Chinese or Indic letters of three bytes each):
                # the address is found from the last 64 octets before the "@" (searched
                # from there at once, not character by character: a run of letters before
                # each "@" cost a search per letter).
                position = at - LOCAL_OCTETS
                while 0x80 <= encoded[position] < 0xC0:  # inside a character
                    position += 1
                continue
            start = offsets.of(byte_start)
            end = offsets.of(byte_end)
            if email_accepted(text, start, end):
                yield Span(start, end, self.label)
                position = byte_end
            else:
                position = byte_start + _utf8_width(encoded, byte_start)

    def holdback(self, text: str, limit: int) -> int:
        run = super().holdback(text, limit)
        length = len(text)
        tail = text[length - run :]
        if run == 0 or "@" in tail:
            return run
        if tail.isascii():  # letters, digits and signs of the first kind, one byte each
            return min(run, LOCAL_OCTETS)
        # No "@" yet: only a local part can be in progress, written in one kind of local
        # part's characters, at most 64 octets long. What is before it cannot be part of
        # an address, so a Chinese or Thai answer is held 21 letters behind at most, not
        # a clause (or 253 characters) at a time.
        kinds = EMAIL_LOCAL_CHARS
        octets = 0
        held = 0
        while held < run:
            char = text[length - 1 - held]
            point = ord(char)
            octets += 1 if point < 0x80 else 2 if point < 0x800 else 3 if point < 0x10000 else 4
            if octets > LOCAL_OCTETS:
                break
            kinds = tuple(kind for kind in kinds if kind.match(char))
            if not kinds:
                break
            held += 1
        return held


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
    Builtin.EMAIL: lambda: EmailDetector(
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
