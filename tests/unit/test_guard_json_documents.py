"""A mask in text that is JSON keeps it JSON, on every API a tool's output comes in.

A tool's output is most often JSON held as a string (an OpenAI tool message, an Anthropic
``tool_result``, a Responses ``function_call_output``, a Converse ``toolResult``'s text, an
MCP result's text inside a Gemini ``functionResponse``), and a structured output's answer
is JSON the client's code decodes. Guards read such text whole, and a mask was written in
it as plain text: a ``replacement`` holding a quote or a backslash ended the string
early, a card written as a number became ``<CREDIT_CARD>`` bare (``{"card":
<CREDIT_CARD>}``), and a pattern running over a quote and a colon
(``secret\\W+\\w+`` in ``{"secret": "hunter2"}``) took them with it (``{"****"}``). The
model got broken JSON, and a client's ``json.loads`` of a masked structured answer
raised. Now the masks of a text that is a JSON object or array are kept to its strings and
numbers: each written as its string needs, a number holding one made a string, the syntax
left as it was.

Where the slot is itself JSON the gateway serialises (an Anthropic ``tool_use`` input, a
Converse ``toolResult``'s ``json``, a Gemini ``functionResponse``'s ``response``) or
arguments read piece by piece, the replacement was already written as JSON: pinned here
with the same replacement.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.matching import MatcherGuard, Matchers, apply
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.guard_helpers import config_with, openai_answer
from tests.unit.test_bedrock_invoke_review import AUTH, signing_processor
from tests.unit.test_gemini_guard_flow import GENERATE, gateway, upstream
from tests.unit.test_guard_escaped_text import (
    chat_with_tool_output,
    messages_with_result,
    responses_with_output,
)
from tests.unit.test_guard_flow import Gateway, upstream_body
from tests.unit.test_guard_tool_definitions import (
    CONVERSE,
    converse,
    gemini,
    vertex,  # noqa: F401 (a fixture)
)

# An operator's replacement with every character a JSON string must escape.
REPLACEMENT = '[hidden "pii" \\ by policy]\t'
PII = {"name": "pii", "builtins": ["EMAIL", "CREDIT_CARD"], "action": "mask",
       "replacement": REPLACEMENT}  # fmt: skip
SECRET = {"name": "secret", "patterns": [r"secret\W+\w+"], "action": "mask"}
POLICIES = {"policies": [{"name": "p", "request": [PII, SECRET], "response": [PII, SECRET]}]}
CARD = 4111111111111111
# What a tool returned: an address, a card as a number, a secret a pattern spans.
OUTPUT = json.dumps({"contact": "jane@example.com", "card": CARD, "secret": "hunter2"})
# The address and the card masked; the pattern's match masked in the key and the value
# it ran over, the quotes and the colon between them kept.
MASKED = {"contact": REPLACEMENT, "card": REPLACEMENT, "****": "****"}


def gateway_for(route: str) -> Gateway:
    return Gateway(config_with(POLICIES, {route: {"guardrails": "p"}}))


def decoded(text: str) -> Any:
    """The JSON a masked text still is (``json.loads`` raises on broken JSON)."""
    return json.loads(text)


# --- text holding JSON, request by request ------------------------------------------------


async def test_an_openai_tool_message_stays_json() -> None:
    answers = await gateway_for("openai-chat").send(
        "/v1/chat/completions", chat_with_tool_output(OUTPUT)
    )
    assert decoded(upstream_body(answers[1])["messages"][2]["content"]) == MASKED


async def test_an_openai_tool_message_of_text_parts_stays_json() -> None:
    body = orjson.loads(chat_with_tool_output(OUTPUT))
    body["messages"][2]["content"] = [{"type": "text", "text": OUTPUT}]
    answers = await gateway_for("openai-chat").send("/v1/chat/completions", orjson.dumps(body))
    sent = upstream_body(answers[1])["messages"][2]["content"][0]["text"]
    assert decoded(sent) == MASKED


@pytest.mark.parametrize(
    "result",
    [
        {"type": "tool_result", "tool_use_id": "t1", "content": OUTPUT},
        {"type": "tool_result", "tool_use_id": "t1",
         "content": [{"type": "text", "text": OUTPUT}]},
    ],
    ids=["string", "text-block"],
)  # fmt: skip
async def test_an_anthropic_tool_result_stays_json(result: dict[str, Any]) -> None:
    answers = await gateway_for("anthropic-messages").send(
        "/v1/messages", messages_with_result(result)
    )
    sent = upstream_body(answers[1])["messages"][2]["content"][0]["content"]
    assert decoded(sent if isinstance(sent, str) else sent[0]["text"]) == MASKED


async def test_a_responses_function_call_output_stays_json() -> None:
    answers = await gateway_for("openai-responses").send(
        "/v1/responses", responses_with_output(OUTPUT)
    )
    assert decoded(upstream_body(answers[1])["input"][2]["output"]) == MASKED


async def test_a_converse_tool_result_stays_json_as_text_and_as_json(services: Services) -> None:
    body = converse()
    body["messages"] += [
        {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [
            {"text": OUTPUT}, {"json": {"contact": "jane@example.com", "n": 1}}]}}]},
    ]  # fmt: skip
    config = config_with(POLICIES, {"bedrock-converse": {"guardrails": "p"}})
    async with signing_processor(config, services) as processor:
        answers = await run_stream(
            processor, [request_headers(CONVERSE, headers=AUTH), request_body(orjson.dumps(body))]
        )
    content = upstream_body(answers[1])["messages"][2]["content"][0]["toolResult"]["content"]
    assert decoded(content[0]["text"]) == MASKED
    assert content[1]["json"] == {"contact": REPLACEMENT, "n": 1}


async def test_a_gemini_function_response_stays_json(
    vertex: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    # An MCP tool's result handed on as the text it came as, beside a value of its own.
    response = {"name": "lookup", "response": {
        "content": [{"type": "text", "text": OUTPUT}], "owner": "jane@example.com"}}  # fmt: skip
    body = gemini()
    body["contents"] += [
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": response}]},
    ]
    async with gateway(vertex, POLICIES, guardrails="p") as gw:
        sent = upstream(await gw.send(GENERATE, body))
    written = sent["contents"][2]["parts"][0]["functionResponse"]["response"]
    assert decoded(written["content"][0]["text"]) == MASKED
    assert written["owner"] == REPLACEMENT


# --- slots that were JSON already: the same replacement, pinned ---------------------------


async def test_openai_tool_call_arguments_stay_json() -> None:
    body = orjson.loads(chat_with_tool_output("done"))
    body["messages"][1]["tool_calls"][0]["function"]["arguments"] = OUTPUT
    answers = await gateway_for("openai-chat").send("/v1/chat/completions", orjson.dumps(body))
    sent = upstream_body(answers[1])["messages"][1]["tool_calls"][0]["function"]["arguments"]
    # Arguments are read string by string: the pattern does not run from a key into its
    # value there (docs: a match stays within one string or number).
    assert decoded(sent) == {"contact": REPLACEMENT, "card": REPLACEMENT, "secret": "hunter2"}


async def test_an_anthropic_tool_use_input_stays_json() -> None:
    use = {"type": "tool_use", "id": "t1", "name": "lookup",
           "input": {"to": "jane@example.com", "card": str(CARD)}}  # fmt: skip
    body = orjson.loads(messages_with_result({"type": "tool_result", "tool_use_id": "t1"}))
    body["messages"][1]["content"] = [use]
    answers = await gateway_for("anthropic-messages").send("/v1/messages", orjson.dumps(body))
    sent = upstream_body(answers[1])["messages"][1]["content"][0]["input"]
    assert sent == {"to": REPLACEMENT, "card": REPLACEMENT}


# --- an answer the client decodes -----------------------------------------------------------


async def test_a_structured_answer_stays_json_for_the_clients_code() -> None:
    answers = await gateway_for("openai-chat").send(
        "/v1/chat/completions",
        chat_with_tool_output("done"),
        response_headers(200, {"content-type": "application/json"}),
        response_body(openai_answer(content=OUTPUT)),
    )
    shown = orjson.loads(answers[3].response_body.response.body_mutation.body)
    assert decoded(shown["choices"][0]["message"]["content"]) == MASKED


# --- how a mask is kept to a document's strings and numbers -------------------------------


def masked(text: str, *configs: dict[str, Any]) -> str:
    found = Matchers(tuple(MatcherGuard(GuardConfig(**c), 256) for c in configs))
    rejecting, hits, _ = found.scan(text)
    assert rejecting is None
    return apply(text, hits)


DEFAULT_PII = {"name": "pii", "builtins": ["EMAIL", "CREDIT_CARD"], "action": "mask"}


@pytest.mark.parametrize(
    ("text", "config", "expected"),
    [
        # A card as a number becomes a string, its default replacement quoted.
        ('{"card": 4111111111111111}', DEFAULT_PII, '{"card": "<CREDIT_CARD>"}'),
        ("[4111111111111111, 2]", DEFAULT_PII, '["<CREDIT_CARD>", 2]'),
        # A match over two strings masks each string's part, the syntax between kept.
        ('["jane", "doe"]', {"name": "n", "patterns": [r"jane\W+doe"], "action": "mask"},
         '["****", "****"]'),
        # A match of the quotes around a value masks what is between them.
        ('{"to": "jane@example.com"}',
         {"name": "q", "patterns": ['"[a-z]+@[a-z.]+"'], "action": "mask"},
         '{"to": "****"}'),
        # A match of JSON syntax alone holds no data: nothing to mask, nothing broken.
        ('{"a": [1, 2]}', {"name": "s", "patterns": [r"\]\}"], "action": "mask"},
         '{"a": [1, 2]}'),
        # A match found decoded: its escapes go, the replacement is escaped, others stay.
        ('{"name": "Ren\\u00e9e", "to": "jane\\u0040example.com"}', PII,
         '{"name": "Ren\\u00e9e", "to": "[hidden \\"pii\\" \\\\ by policy]\\t"}'),
    ],
    ids=["number", "number-in-array", "two-strings", "quotes", "syntax-only", "decoded"],
)  # fmt: skip
def test_a_mask_keeps_to_the_strings_and_numbers(
    text: str, config: dict[str, Any], expected: str
) -> None:
    result = masked(text, config)
    assert result == expected
    json.loads(result)


@pytest.mark.parametrize(
    "text",
    [
        "mail jane@example.com today",
        # No JSON document: cut short, or a bare string.
        '{"to": "jane@example.com", "body": "Hi',
        '"jane@example.com"',
    ],
    ids=["prose", "cut-short", "bare-string"],
)
def test_text_that_is_no_json_document_takes_the_replacement_as_it_is(text: str) -> None:
    assert masked(text, PII) == text.replace("jane@example.com", REPLACEMENT)
