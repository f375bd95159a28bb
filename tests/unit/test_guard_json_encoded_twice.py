"""JSON encoded twice (a string of a JSON document holding a JSON document) stays JSON at
both levels when a mask changes the inner one.

Tools often return a document whose field is itself JSON text (an MCP result's text, a
queue message's body, a log record's payload): ``{"result": "{\\"email\\": ...}"}``.
The outer document stayed JSON, but the inner one broke: a card written there as a number
became ``<CREDIT_CARD>`` bare (no JSON, whatever the replacement), and a replacement
holding a quote was escaped for the outer string only, so it ended the inner string
early. The tool's caller (the model reading it, a program decoding the field) met broken
JSON. Now a masked string whose text is a JSON object or array is masked as that document
(``matching.onto_document``): the inner replacement escaped for the inner string, a
number holding a match made an inner string, then all of it escaped for the outer one.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from tests.unit.test_guard_escaped_text import chat_with_tool_output
from tests.unit.test_guard_flow import upstream_body
from tests.unit.test_guard_json_documents import DEFAULT_PII, PII, REPLACEMENT, gateway_for

CARD = 4111111111111111
INNER = json.dumps({"email": "jane@example.com", "card": CARD, "n": 2})
OUTPUT = json.dumps({"status": "ok", "result": INNER})


def masked(text: str, config: dict[str, Any]) -> str:
    found = Matchers((MatcherGuard(GuardConfig(**config), 256),))
    rejecting, hits, _ = found.scan(text)
    assert rejecting is None
    return apply(text, hits)


@pytest.mark.parametrize(
    ("config", "replacement"),
    [(PII, REPLACEMENT), (DEFAULT_PII, None)],
    ids=["replacement-with-quotes", "default-replacements"],
)
def test_the_inner_document_stays_json(config: dict[str, Any], replacement: str | None) -> None:
    outer = json.loads(masked(OUTPUT, config))
    assert outer["status"] == "ok"
    assert json.loads(outer["result"]) == {
        "email": replacement or "<EMAIL>",
        "card": replacement or "<CREDIT_CARD>",
        "n": 2,
    }


def test_json_encoded_three_times_stays_json_at_every_level() -> None:
    text = json.dumps({"outer": json.dumps({"middle": INNER})})
    middle = json.loads(json.loads(masked(text, PII))["outer"])
    assert json.loads(middle["middle"])["email"] == REPLACEMENT


def test_a_string_that_is_no_document_takes_the_replacement_as_a_string() -> None:
    # A JSON-looking text cut short is text: the replacement is escaped once, as before.
    text = json.dumps({"result": '{"email": "jane@example.com", "n": '})
    assert json.loads(masked(text, PII))["result"] == '{"email": "' + REPLACEMENT + '", "n": '


async def test_a_tool_message_holding_json_twice_reaches_the_provider_decodable() -> None:
    answers = await gateway_for("openai-chat").send(
        "/v1/chat/completions", chat_with_tool_output(OUTPUT)
    )
    sent = upstream_body(answers[1])["messages"][2]["content"]
    inner = json.loads(json.loads(sent)["result"])
    assert inner == {"email": REPLACEMENT, "card": REPLACEMENT, "n": 2}


async def test_tool_call_arguments_holding_json_twice_stay_json() -> None:
    body = orjson.loads(chat_with_tool_output("done"))
    body["messages"][1]["tool_calls"][0]["function"]["arguments"] = OUTPUT
    answers = await gateway_for("openai-chat").send("/v1/chat/completions", orjson.dumps(body))
    sent = upstream_body(answers[1])["messages"][1]["tool_calls"][0]["function"]["arguments"]
    inner = json.loads(json.loads(sent)["result"])
    assert inner == {"email": REPLACEMENT, "card": REPLACEMENT, "n": 2}
