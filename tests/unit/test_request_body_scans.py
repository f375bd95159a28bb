"""The byte scans around a request body's parse answer as the plain byte counts did.

``may_repeat_a_key_read`` decides whether a body goes to the provider as the client wrote
it or as the gateway parsed it. It finds its needles with ``re`` (a byte count over a
12 KB prompt cost five times the body's parse); on any body that parses as JSON it must
answer exactly as ``bytes.count`` and ``in`` did.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.stages.chat_request import may_repeat_a_key_read


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
