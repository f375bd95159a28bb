"""The characters of generated text read from a provider's bytes (the estimate of a stream
cut before its usage report): every JSON string value of a text field, escapes included,
wherever the bytes hold one whole."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from extproc.translators.generated_text import generated_chars, responses_delta_chars

# The patterns as first written, a string value read one byte or escape at a time: the
# counts must agree with them on any bytes.
FIRST_TEXT_VALUE = re.compile(
    rb'"(?:content|text|arguments|partial_json|input|thinking|generation|outputText'
    rb'|(reasoning(?:_content)?))"'
    rb'\s*:\s*"((?:[^"\\]|\\.)*)"'
)
FIRST_RESPONSES_DELTA = re.compile(rb'"delta"\s*:\s*"((?:[^"\\]|\\.)*)"')
PIECES = [
    b'"content"',
    b'"text"',
    b'"reasoning"',
    b'"reasoning_content"',
    b'"delta"',
    b'"reasoning.text"',
    b":",
    b" ",
    b'"',
    b"\\",
    b'\\"',
    b"\\\\",
    b"\\n",
    b"\n",
    b"ab",
    b"\xc3\xa9",
    b"{",
    b"}",
    b",",
]


NAMES = [b'"content"', b'"text"', b'"reasoning"', b'"reasoning_content"', b'"delta"', b'"id"']
VALUE_PIECES = [b"ab", b" ", b'\\"', b"\\\\", b"\\n", b"\n", b"\\", b"\xc3\xa9", b'"']
# A text field as a provider writes it (or cut, or odd): a name, a colon, a string.
FIELDS = st.builds(
    lambda name, colon, value, end: name + colon + b'"' + b"".join(value) + end,
    st.sampled_from(NAMES),
    st.sampled_from([b":", b" : ", b":\n"]),
    st.lists(st.sampled_from(VALUE_PIECES), max_size=6),
    st.sampled_from([b'"', b"", b'",']),
)


def first_count(chunk: bytes) -> int:
    chars = named = aliased = 0
    for reasoning, value in FIRST_TEXT_VALUE.findall(chunk):
        if not reasoning:
            chars += len(value)
        elif reasoning == b"reasoning":
            named += len(value)
        else:
            aliased += len(value)
    if (named or aliased) and b'"reasoning.text"' not in chunk:
        chars += max(named, aliased)
    return chars


def test_text_values_are_counted_with_their_escapes() -> None:
    chunk = b'data: {"choices":[{"delta":{"content":"say \\"hi\\"\\n"}}]}\n\n'
    assert generated_chars(chunk) == len(b'say \\"hi\\"\\n')
    assert generated_chars(b'{"content":"cut in the midd') == 0
    assert responses_delta_chars(b'{"type":"response.output_text.delta","delta":"a\\\\b"}') == 4


@given(st.lists(st.one_of(FIELDS, st.sampled_from(PIECES)), max_size=12))
def test_counts_agree_with_the_first_patterns(pieces: list[bytes]) -> None:
    chunk = b"".join(pieces)
    assert generated_chars(chunk) == first_count(chunk)
    first_delta = sum(len(found) for found in FIRST_RESPONSES_DELTA.findall(chunk))
    assert responses_delta_chars(chunk) == first_delta


@given(st.binary(max_size=80))
def test_on_any_bytes_too(chunk: bytes) -> None:
    chunk = b'"content":"' + chunk
    assert generated_chars(chunk) == first_count(chunk)
