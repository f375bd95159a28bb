"""Whether an OpenAI-shaped stream's events say its answer ended (a finish reason, or
``[DONE]`` as an event's data line): what tells a whole stream from one cut short."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from extproc.translators.openai_openai import answer_ends

# The one pattern the check was written as, before it became two searches: their answers
# must agree on any bytes.
ONE_PATTERN = re.compile(rb'"finish_reason"\s*:\s*"|(?:^|[\r\n])data: ?\[DONE\]')
PIECES = [
    b'"finish_reason"',
    b'"finish_reason":null',
    b'"finish_reason": "stop"',
    b'"finish_reason" :\t"',
    b"data: [DONE]",
    b"data:[DONE]",
    b"data:  [DONE]",
    b"[DONE]",
    b'"content":"data: [DONE]"',
    b"\n",
    b"\r",
    b"\r\n",
    b" ",
    b'"',
    b":",
    b"data: ",
    b'{"choices":[{"index":0,"delta":{"content":"hi"}}]}',
]


def test_a_finish_reason_or_the_end_marker_ends_the_answer() -> None:
    assert answer_ends(b'data: {"choices":[{"finish_reason":"stop"}]}\n\n')
    assert answer_ends(b"data: [DONE]\n\n")
    assert answer_ends(b'data: {"choices":[]}\r\rdata:[DONE]\r\r')


def test_a_null_finish_reason_and_done_inside_text_end_nothing() -> None:
    assert not answer_ends(b'data: {"choices":[{"delta":{},"finish_reason":null}]}\n\n')
    assert not answer_ends(b'data: {"choices":[{"delta":{"content":"data: [DONE]"}}]}\n\n')
    assert not answer_ends(b"data: [DON")
    assert not answer_ends(b"")


@given(st.lists(st.sampled_from(PIECES), max_size=12))
def test_the_two_searches_answer_as_the_one_pattern_did(pieces: list[bytes]) -> None:
    events = b"".join(pieces)
    assert answer_ends(events) is (ONE_PATTERN.search(events) is not None)


@given(st.binary(max_size=64))
def test_on_any_bytes_too(events: bytes) -> None:
    assert answer_ends(events) is (ONE_PATTERN.search(events) is not None)
