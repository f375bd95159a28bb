"""The byte scans around a request body's parse answer as the plain byte counts did.

``may_repeat_a_key_read`` decides whether a body goes to the provider as the client wrote
it or as the gateway parsed it. It finds its needles with ``re`` (a byte count over a
12 KB prompt cost five times the body's parse); on any body that parses as JSON it must
answer exactly as ``bytes.count`` and ``in`` did. ``openers_over`` spares most bodies
the nesting walk; it looks through a large body with ``bytes.find`` (a count of a
100 KB prompt's brackets took 60 to 80 us), and must answer as the count did.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.errors import BadRequestError
from extproc.stages.chat_request import may_repeat_a_key_read, openers_over, parse_json_object


def by_byte_counts(body: bytes) -> bool:
    """The formula the scans replaced."""
    return body.count(b'"model"') > 1 or body.count(b'"stream"') > 1 or b"\\u" in body


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}',
        b'{"model":"gpt-4o","model":"gpt-4o-mini"}',
        b'{"stream":true,"model":"m","stream":false}',
        b'{"model":"m","stream":true}',
        # Spelt with an escape: a second key a byte count cannot see.
        b'{"mod\\u0065l":"gpt-4o","model":"gpt-4o-mini"}',
        # An escaped backslash before a u is no escape, yet the old test took it for one.
        b'{"model":"m","messages":[{"role":"user","content":"C:\\\\users"}]}',
        # The names as text, quoted inside a string: escaped quotes, no token.
        b'{"model":"m","messages":[{"role":"user","content":"say \\"model\\" \\"model\\""}]}',
        # The names as values and as nested keys.
        b'{"model":"model","tools":[{"model":1,"stream":"stream"}]}',
        b'{"model":"m","metadata":{"stream":"x"}}',
        b'{"messages":[], "model" : "m" , "stream" : true }',
        b"{}",
    ],
)
def test_each_body_reads_as_the_byte_counts_read_it(body: bytes) -> None:
    orjson.loads(body)  # the stage scans only bodies that parsed
    assert may_repeat_a_key_read(body) is by_byte_counts(body)


def test_a_long_prompt_is_scanned_whole() -> None:
    prompt = "Summarise the following text please, line by line.\n" * 400
    body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}]})
    assert may_repeat_a_key_read(body) is False
    assert may_repeat_a_key_read(body[:-2] + b',"stream":true,"stream":false}') is True
    assert may_repeat_a_key_read(body[:-1] + b',"x":"\\u00e9"}') is True


# Strings made of the needles' pieces: quotes, backslashes, the names, a u.
_TEXT = st.lists(
    st.sampled_from(['"', "\\", "u", "model", "stream", "é", " ", "a"]), max_size=6
).map("".join)
_KEYS = st.sampled_from(["model", "stream", "mod\\u0065l", "messages", "content", "u"])
_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**31), 2**31)
    | _TEXT
    | st.sampled_from(["model", "stream"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS | _TEXT, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(value=_JSON, spaced=st.booleans())
def test_any_json_body_reads_as_the_byte_counts_read_it(value: Any, spaced: bool) -> None:
    body = orjson.dumps(value, option=orjson.OPT_INDENT_2 if spaced else 0)
    assert may_repeat_a_key_read(body) is by_byte_counts(body)


def by_counting(body: bytes, limit: int) -> bool:
    """The count ``openers_over`` replaced."""
    return body.count(b"{") + body.count(b"[") > limit


def padded(openers: bytes, size: int) -> bytes:
    """``openers`` spread through ``size`` bytes of prose (no brackets)."""
    filler = b"The quarterly figures rose. " * (size // 28 + 1)
    step = max(1, size // (len(openers) + 1))
    pieces = [filler[:step] + bytes([opener]) for opener in openers]
    return (b"".join(pieces) + filler)[:size] if openers else filler[:size]


@pytest.mark.parametrize("size", [100, 12_000, 13_000, 100_000])
@pytest.mark.parametrize("count", [0, 1, 63, 64, 65, 66, 500])
@pytest.mark.parametrize("kinds", [b"{", b"[", b"{["])
def test_a_body_holds_more_openers_than_the_limit_as_its_count_says(
    size: int, count: int, kinds: bytes
) -> None:
    body = padded((kinds * count)[:count], max(size, count * 2))
    assert openers_over(body, 64) is by_counting(body, 64)


@pytest.mark.parametrize("limit", [0, 1, 2, 64])
def test_every_limit_reads_as_the_count_reads_it(limit: int) -> None:
    for body in (b"", b"{", b"[]", b"{[{", padded(b"{[" * 40, 50_000)):
        assert openers_over(body, limit) is by_counting(body, limit)


def test_a_large_body_nested_too_deep_is_refused_and_one_flat_is_not() -> None:
    prose = "The quarterly figures rose by 4%. " * 3000  # about 100 KB, past the find's size
    deep: Any = "x"
    for _ in range(70):
        deep = [deep]
    with pytest.raises(BadRequestError, match="nests deeper than 64 levels"):
        parse_json_object(orjson.dumps({"messages": [{"content": prose}], "x": deep}), 64)
    flat = {"messages": [{"content": prose}], "tools": [{"a": {"b": [1]}}] * 100}
    assert parse_json_object(orjson.dumps(flat), 64) == flat
