"""A mask next to a JSON escape keeps the text the JSON it was.

A program writes a multi-line value as ``"Jane Doe\\njane@example.com"``: read as written,
the ``n`` of the escape joins the address (``njane@example.com``), and that match, which
starts before the one the decoded reading finds after the newline, was the one masked.
The ``\\`` was left before the replacement: ``"Jane Doe\\<EMAIL>"`` is no JSON (``\\<`` is
no escape) and the newline was gone. A tool's JSON output reached the model broken, and a
structured output's answer reached the client's code broken: ``json.loads`` of the
content raised, and the SDK's ``parse()`` with it. Now the match as written keeps to the
one the decoded reading found (the escape stays), and a match as written that the decoded
reading does not explain (a path's ``C:\\newsletter``) takes its escape whole.
"""

from __future__ import annotations

import json

import orjson
import pytest

from extproc.guardrails.matching import Matchers, apply
from extproc.testing import response_body, response_headers
from tests.unit.guard_helpers import openai_answer
from tests.unit.test_guard_escaped_text import chat_with_tool_output, gateway_for
from tests.unit.test_guard_flow import upstream_body
from tests.unit.test_guard_unparsed_arguments import PII, matchers

# What a program's json.dumps writes for a contact on two lines.
CONTACT = json.dumps({"contact": "Jane Doe\njane@example.com", "orders": 3})
CONTACT_MASKED = {"contact": "Jane Doe\n<EMAIL>", "orders": 3}


async def test_a_tool_output_with_an_address_after_a_newline_stays_json() -> None:
    body = chat_with_tool_output(CONTACT)
    answers = await gateway_for("openai-chat").send("/v1/chat/completions", body)
    sent = upstream_body(answers[1])["messages"][2]["content"]
    assert sent == '{"contact": "Jane Doe\\n<EMAIL>", "orders": 3}'
    assert orjson.loads(sent) == CONTACT_MASKED


async def test_a_structured_answer_with_an_address_after_a_newline_still_decodes() -> None:
    """The client's code decodes the content (the SDK's ``parse()``): it must stay JSON."""
    answers = await gateway_for("openai-chat").send(
        "/v1/chat/completions",
        chat_with_tool_output("done"),
        response_headers(200, {"content-type": "application/json"}),
        response_body(openai_answer(content=CONTACT)),
    )
    shown = orjson.loads(answers[3].response_body.response.body_mutation.body)
    content = shown["choices"][0]["message"]["content"]
    assert json.loads(content) == CONTACT_MASKED


def masked(found: Matchers, text: str) -> str:
    """``text`` as a mask guard writes it, read as a tool's output is (no JSON arguments)."""
    rejecting, hits, _ = found.scan(text)
    assert rejecting is None
    return apply(text, hits)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The decoded reading's match starts after the escape: the escape stays.
        ('{"a": "x\\njane@example.com"}', '{"a": "x\\n<EMAIL>"}'),
        ('{"a": "x\\tjane@example.com"}', '{"a": "x\\t<EMAIL>"}'),
        ('{"a": "x\\u0020jane@example.com"}', '{"a": "x\\u0020<EMAIL>"}'),
        ('{"a": "x\\r\\njane@example.com"}', '{"a": "x\\r\\n<EMAIL>"}'),
        # An escaped quote before it was fine already, and stays so.
        ('{"a": "\\"jane@example.com\\""}', '{"a": "\\"<EMAIL>\\""}'),
    ],
    ids=["newline", "tab", "unicode-space", "crlf", "quote"],
)
def test_a_mask_after_an_escape_leaves_the_escape_whole(text: str, expected: str) -> None:
    result = masked(matchers(PII), text)
    assert result == expected
    json.loads(result)


def test_a_match_only_the_text_as_written_holds_takes_its_escape_whole() -> None:
    # Decoded, "\n" is a newline and "newsletter" is gone: the match as written is masked
    # with the whole escape it began in, never half of it.
    words = matchers({"name": "words", "literals": ["newsletter"], "action": "mask"})
    assert masked(words, "saved to C:\\newsletter\\draft.txt") == "saved to C:****\\draft.txt"


def test_a_match_as_written_that_ends_inside_an_escape_ends_before_it() -> None:
    found = matchers({"name": "p", "patterns": [{"pattern": r"secret[a-z\\]*"}], "action": "mask"})
    assert masked(found, "secret\\u0041b") == "****\\u0041b"
