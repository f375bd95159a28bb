"""The builtins find what they found before they were made fast, on digit-heavy text.

Tool results are JSON full of numbers (ids, Unix times, prices, ``\\u00e9`` escapes),
and the builtins were slow on them: a 64 KB tool output of order records cost 0.3 s of
CPU per request, since every number a check refused (a Unix time is no phone number)
searched the text again, and the RE2 binding encodes a str whole on each search; and
every digit run went to Python for the card check. The detectors now search the text's
bytes, encoded once, and only runs of 13 digits or more reach the card check, whose Luhn
sums are taken in C. What they find must not change: the implementation they replaced is
kept here as the reference, and generated text is read by both.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config.guard_model import Builtin
from extproc.guardrails.detectors import EMAIL_PATTERN, builtin, email_accepted
from tests.unit.guard_helpers import config_with
from tests.unit.test_guard_escaped_text import chat_with_tool_output
from tests.unit.test_guard_flow import Gateway, upstream_body

# --- the reference: the builtins as they were --------------------------------------------


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False
    return options


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card_windows(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    groups: list[tuple[int, int]] = []
    position = start
    while position < end:
        group_end = position
        while group_end < end and text[group_end].isdigit():
            group_end += 1
        groups.append((position, group_end))
        position = group_end + 1
    begin = 1 if start > 0 and text[start - 1].isalnum() else 0
    usable = len(groups) - 1 if end < len(text) and text[end].isalnum() else len(groups)
    masked = begin - 1
    for first in range(begin, usable):
        digits = ""
        found = None
        for last in range(first, usable):
            digits += text[groups[last][0] : groups[last][1]]
            if len(digits) > 19:
                break
            if len(digits) >= 13 and _luhn(digits):
                found = last
        if found is None or found <= masked:
            continue
        yield groups[max(first, masked + 1)][0], groups[found][1]
        masked = found


def _alone(text: str, start: int, end: int) -> bool:
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
    return digits != "000000000" and _luhn(digits)


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
    return digits[len(digits) - 10] not in "01"


_CHECKED: dict[Builtin, tuple[str, Callable[[str, int, int], bool]]] = {
    Builtin.SSN: (r"\d{3}-\d{2}-\d{4}|\d{3} \d{2} \d{4}", _ssn),
    Builtin.CA_SIN: (r"\d{3}[ -]?\d{3}[ -]?\d{3}", _sin),
    # The address pattern and its check are the builtin's own since it took letters of
    # other scripts: what is compared here is how the text is searched, not what an
    # address is.
    Builtin.EMAIL: (EMAIL_PATTERN, email_accepted),
    Builtin.PHONE_NUMBER: (
        r"\+\d{1,3}(?:[ .\-]?\(?\d{1,4}\)?)(?:[ .\-]?\d{2,4}){1,5}"
        r"|(?:1[ .\-]?)?(?:\(\d{3}\) ?|\d{3}[ .\-]?)\d{3}[ .\-]?\d{4}",
        _phone,
    ),
}
_RUN = re2.compile(r"\d(?:[ -]?\d)*", _options())
_COMPILED = {
    kind: (re2.compile(source, _options()), check) for kind, (source, check) in _CHECKED.items()
}


def reference(kind: Builtin, text: str) -> list[tuple[int, int]]:
    """The spans the builtin found before: each run one by one, each refused match
    searched again from the character after its start, on the str."""
    if kind is Builtin.CREDIT_CARD:
        return [
            window for match in _RUN.finditer(text) for window in _card_windows(text, *match.span())
        ]
    regex, check = _COMPILED[kind]
    spans = []
    position = 0
    while position <= len(text):
        match = regex.search(text, position)
        if match is None:
            break
        start, end = match.span()
        if start != end and check(text, start, end):
            spans.append((start, end))
            position = end
        else:
            position = start + 1
    return spans


def spans(kind: Builtin, text: str) -> list[tuple[int, int]]:
    return [(span.start, span.end) for span in builtin(kind).find(text)]


# --- generated digit-heavy text ----------------------------------------------------------

# What numbers touch in tool output and prose: separators the builtins accept and some
# they do not, JSON syntax, letters (ASCII or not; "Ⅷ" and "٣" are alphanumeric, "٣" a
# digit to Python but not to RE2), characters of two, three and four UTF-8 bytes.
TOUCHING = [" ", "-", ".", "(", ")", "+", "  ", "--", " -", ", ", "\n", "/", ":", "_",
            '"', '": ', "{", "}", "[", "a", "Z", "x", "T", "é", "Ⅷ", "٣", "€", "😀", "\u00a0",
            "@", "e", "ts"]  # fmt: skip
ESCAPES = ["\\u00e9", "\\u00c1", "\\u0040", "\\u003c", "\\ud83d\\ude00", "\\n", "\\\\", '\\"']
# Things that are found, so the generated text holds matches to agree on too.
FOUND = ["4111 1111 1111 1111", "4111-1111-1111-1111", "5105105105105100", "378282246310005",
         "6011000990139424", "(555) 123-4567", "555.123.4567", "+1 555 123 4567",
         "+44 20 7946 0958", "123-45-6789", "123 45 6789", "046 454 286", "046-454-286",
         "jane.doe@example.com", "a1@b.co"]  # fmt: skip
DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=20)
PIECE = st.one_of(
    DIGITS,
    DIGITS,
    st.sampled_from(TOUCHING),
    st.sampled_from(ESCAPES),
    st.text(alphabet="0123456789abcdef", min_size=4, max_size=4).map(lambda hex4: "\\u" + hex4),
    st.sampled_from(FOUND),
)
TEXTS = st.lists(PIECE, max_size=60).map("".join)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TEXTS)
def test_every_builtin_finds_what_the_reference_found(text: str) -> None:
    for kind in Builtin:
        assert spans(kind, text) == reference(kind, text), kind


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(DIGITS, st.sampled_from([" ", "-"])), min_size=1, max_size=40))
def test_long_runs_of_digit_groups_give_the_reference_cards(groups: list[tuple[str, str]]) -> None:
    # One run of many groups (codes one space apart): every window of it is tried.
    run = "".join(digits + separator for digits, separator in groups)[:-1]
    for text in (run, "A" + run + "b", "x " + run + " y", "é" + run):
        assert spans(Builtin.CREDIT_CARD, text) == reference(Builtin.CREDIT_CARD, text)


def test_large_tool_outputs_give_the_reference_spans() -> None:
    # Beyond what the generator makes: tens of kilobytes of records, with and without
    # escapes and characters of several bytes before the numbers.
    chance = random.Random(7)
    records = [
        {"id": 184467 + i, "ts": 1718098937 + 37 * i, "ms": 1718098937000 + i,
         "price": round(chance.uniform(1, 999), 2), "name": chance.choice(["Renée", "Zoë", "€"]),
         "code": " ".join(str(chance.randint(0, 9999)) for _ in range(chance.randint(1, 6))),
         "card": chance.choice([*FOUND, "", "1 2 3"])}
        for i in range(400)
    ]  # fmt: skip
    for text in (json.dumps(records), json.dumps(records, ensure_ascii=False)):
        assert len(text) > 40_000
        for kind in Builtin:
            assert spans(kind, text) == reference(kind, text), kind


# --- what the work was -------------------------------------------------------------------


class CountingRegex:
    """A compiled pattern that counts the characters the RE2 binding encodes for it:
    given a str, the binding encodes it whole (and counts characters from its start) on
    every call, given bytes it encodes nothing."""

    def __init__(self, regex: Any) -> None:
        self.regex = regex
        self.pattern = regex.pattern
        self.options = regex.options
        self.encoded = 0
        self.searches = 0

    def search(self, text: str | bytes, *position: int) -> Any:
        self.encoded += len(text) if isinstance(text, str) else 0
        self.searches += 1
        return self.regex.search(text, *position)

    def finditer(self, text: str | bytes) -> Any:
        self.encoded += len(text) if isinstance(text, str) else 0
        return self.regex.finditer(text)


def test_a_tool_output_of_refused_numbers_is_encoded_once_per_builtin() -> None:
    # 2 000 Unix times: each looks like a phone number (or a SIN) to the pattern and is
    # refused by the check. The search went on after each from the next character, and
    # each search encoded the whole text again: work in the square of its length.
    text = json.dumps([{"ts": 1718098937 + 37 * i, "who": "Renée"} for i in range(2000)])
    for kind in Builtin:
        detector = builtin(kind)
        counting = CountingRegex(detector._regex)
        detector._regex = counting
        assert list(detector.find(text)) == []
        assert counting.encoded <= len(text), kind


def counted(kind: Builtin, text: str) -> tuple[list[tuple[int, int]], int]:
    """What the builtin finds in ``text``, and how many searches it took."""
    detector = builtin(kind)
    counting = CountingRegex(detector._regex)
    detector._regex = counting
    return [(span.start, span.end) for span in detector.find(text)], counting.searches


def test_a_refused_number_is_not_searched_again_digit_by_digit() -> None:
    # 20 000 digits in a row: every nine digits look like a SIN, every ten like
    # a phone number, and each follows a digit, so the checks refuse them all. The search
    # went on one digit further each time (20 000 searches); no match beginning inside a
    # run of digits can stand alone, so it goes on after the run.
    for kind in (Builtin.CA_SIN, Builtin.PHONE_NUMBER):
        found, searches = counted(kind, "7" * 20_000)
        assert found == []
        assert searches <= 2, kind
    # What the refusals stood for still holds: a number after the run's end is found.
    text = "Room 21 555-123-4567, id 98765432101 (555) 123-4567"
    found, searches = counted(Builtin.PHONE_NUMBER, text)
    assert [text[start:end] for start, end in found] == ["555-123-4567", "(555) 123-4567"]
    assert searches <= 5


# --- through the processor ---------------------------------------------------------------

PII = {"policies": [{"name": "p", "request": [
    {"name": "pii", "action": "mask",
     "builtins": ["CREDIT_CARD", "SSN", "EMAIL", "PHONE_NUMBER", "CA_SIN"]}]}]}  # fmt: skip


async def test_records_full_of_numbers_are_masked_where_the_pii_stands() -> None:
    # Order records after a name of several UTF-8 bytes: the card, the phone number and
    # the address in the last record are masked in place (the detectors count bytes now,
    # and map them back to characters), and no other number is touched.
    records: list[dict[str, Any]] = [
        {"id": 184467 + i, "ts": 1718098937 + 37 * i, "price": 19.99 + i, "who": "Zoë 😀"}
        for i in range(300)
    ]
    records.append({"card": "4111 1111 1111 1111", "phone": "(555) 123-4567",
                    "email": "jane@example.com", "who": "Renée"})  # fmt: skip
    for ensure_ascii in (False, True):
        output = json.dumps(records, ensure_ascii=ensure_ascii)
        gateway = Gateway(config_with(PII, {"openai-chat": {"guardrails": "p"}}))
        answers = await gateway.send("/v1/chat/completions", chat_with_tool_output(output))
        sent = upstream_body(answers[1])["messages"][2]["content"]
        masked = {"card": "<CREDIT_CARD>", "phone": "<PHONE_NUMBER>", "email": "<EMAIL>"}
        expected = [*records[:-1], {**masked, "who": "Renée"}]
        assert orjson.loads(sent) == expected
        unchanged = re.sub(r'"(card|phone|email)": "[^"]*"', "", sent)
        assert unchanged == re.sub(r'"(card|phone|email)": "[^"]*"', "", output)
