"""Guards read text that JSON escapes spell as the model reads it, on every API.

A tool's output is most often JSON a program wrote: Python's ``json.dumps`` writes
``José`` as ``Jos\\u00e9``, Go's encoder and many JavaScript serialisers write ``<`` as
``\\u003c``, and a client can spell a key ``\\u0073k-...``. The model reads the escape as
the character. Request guards read such text only as written, so a guard with a
non-ASCII name, an HTML tag or an address spelled with escapes let it through. Every text
holding a JSON escape is now read as written and decoded; a mask of a decoded match
replaces the characters it was written with, escapes included, and nothing else.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest

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
from tests.unit.test_gemini_guard_flow import GENERATE, gateway, refusal, upstream
from tests.unit.test_guard_flow import Gateway, immediate, upstream_body
from tests.unit.test_guard_tool_definitions import (
    CONVERSE,
    converse,
    gemini,
    vertex,  # noqa: F401 (a fixture)
)

NAME_MESSAGE = "That customer's records stay in house."
POLICIES = {
    "policies": [
        {"name": "p",
         "request": [
             {"name": "customer", "literals": ["José Álvarez"], "case_insensitive": True,
              "message": NAME_MESSAGE},
             {"name": "markup", "literals": ["<script>"], "status": 400},
             {"name": "keys", "patterns": [{"pattern": r"sk-[A-Za-z0-9]{20,}", "name": "KEY"}]},
             {"name": "words", "literals": ["newsletter"]},
             {"name": "pii", "builtins": ["EMAIL"], "action": "mask"},
         ],
         "response": [{"name": "pii-out", "builtins": ["EMAIL"], "action": "mask"}]},
    ]
}  # fmt: skip
# What a tool returned, as json.dumps writes it (ensure_ascii): "Jos\u00e9 \u00c1lvarez".
CUSTOMER = json.dumps({"customer": "José Álvarez", "orders": 3})
# Go's encoding/json escapes <, > and &.
MARKUP = json.dumps({"html": "<script>alert(1)</script>"}).replace("<", "\\u003c")
KEY = "sk-" + "a1B2c3D4e5" * 3
ESCAPED_KEY = '{"token": "\\u0073' + KEY[1:] + '"}'
# An address spelled with an escape, next to a name written with one that stays.
ADDRESS = '{"name": "Ren\\u00e9e", "email": "jane\\u0040example.com"}'
ADDRESS_MASKED = '{"name": "Ren\\u00e9e", "email": "<EMAIL>"}'
CLAUDE = "claude-3-5-haiku-latest"


def refused(answers: list[Any]) -> tuple[int, dict[str, Any]] | None:
    last = answers[-1]
    return immediate(last) if last.HasField("immediate_response") else None


def gateway_for(route: str) -> Gateway:
    return Gateway(config_with(POLICIES, {route: {"guardrails": "p"}}))


def chat_with_tool_output(output: str, **fields: Any) -> bytes:
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    return orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "user", "content": "Who ordered?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": output},
            ],
            **fields,
        }
    )


# --- OpenAI chat: a tool message's content --------------------------------------------------


@pytest.mark.parametrize(
    ("output", "status", "message"),
    [
        (CUSTOMER, 403, NAME_MESSAGE),
        (MARKUP, 400, "Rejected by guardrail 'markup'"),
        (ESCAPED_KEY, 403, "Rejected by guardrail 'keys': it contains KEY"),
    ],
    ids=["python-accents", "go-markup", "escaped-key"],
)
async def test_a_tool_output_written_with_escapes_is_read_decoded(
    output: str, status: int, message: str
) -> None:
    assert "\\u" in output  # as a program wrote it
    found = refused(await gateway_for("openai-chat").send(
        "/v1/chat/completions", chat_with_tool_output(output)))  # fmt: skip
    assert found is not None, "the model reads the escape as the character: it went by"
    assert found[0] == status
    assert found[1]["error"]["message"] == message
    assert KEY not in orjson.dumps(found[1]).decode()


async def test_an_address_written_with_an_escape_is_masked_in_place() -> None:
    body = chat_with_tool_output(ADDRESS)
    answers = await gateway_for("openai-chat").send("/v1/chat/completions", body)
    sent = upstream_body(answers[1])["messages"][2]["content"]
    # The escapes the match came from are replaced; the other escapes stay as written,
    # and the tool's output is still the JSON it was.
    assert sent == ADDRESS_MASKED
    assert orjson.loads(sent) == {"name": "Renée", "email": "<EMAIL>"}


async def test_text_with_a_literal_backslash_is_still_read_as_written() -> None:
    # Decoded, "\n" is a newline and "newsletter" is gone: the text as written still has it
    # (a path the model reads as a path).
    body = chat_with_tool_output("saved to C:\\newsletter\\draft.txt")
    found = refused(await gateway_for("openai-chat").send("/v1/chat/completions", body))
    assert found is not None and found[1]["error"]["message"] == "Rejected by guardrail 'words'"


async def test_an_escaped_backslash_is_a_backslash_not_an_escape() -> None:
    # JSON's "\\u0040" is the six characters \u0040, not "@": nothing to mask.
    body = chat_with_tool_output('{"raw": "jane\\\\u0040example.com"}')
    answers = await gateway_for("openai-chat").send("/v1/chat/completions", body)
    assert refused(answers) is None
    sent = orjson.loads(body)["messages"][2]["content"]
    assert upstream_body(answers[1])["messages"][2]["content"] == sent


async def test_a_user_message_spelling_a_key_with_escapes_is_refused() -> None:
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [
        {"role": "user", "content": f"Use this config: {ESCAPED_KEY}"}]})  # fmt: skip
    found = refused(await gateway_for("openai-chat").send("/v1/chat/completions", body))
    assert found is not None and found[0] == 403


async def test_a_buffered_answer_written_with_escapes_is_masked() -> None:
    # A structured output's content is JSON the client's code decodes: "\u0040" is "@".
    answers = await gateway_for("openai-chat").send(
        "/v1/chat/completions",
        chat_with_tool_output("done"),
        response_headers(200, {"content-type": "application/json"}),
        response_body(openai_answer(content=ADDRESS)),
    )
    shown = orjson.loads(answers[3].response_body.response.body_mutation.body)
    assert shown["choices"][0]["message"]["content"] == ADDRESS_MASKED


# --- Anthropic: tool_result and mcp_tool_result content ------------------------------------


def messages_with_result(result: dict[str, Any]) -> bytes:
    use = {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}
    return orjson.dumps(
        {
            "model": CLAUDE,
            "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "Who ordered?"},
                {"role": "assistant", "content": [use]},
                {"role": "user", "content": [result]},
            ],
        }
    )


@pytest.mark.parametrize(
    "result",
    [
        {"type": "tool_result", "tool_use_id": "t1", "content": CUSTOMER},
        {"type": "tool_result", "tool_use_id": "t1",
         "content": [{"type": "text", "text": CUSTOMER}]},
        {"type": "mcp_tool_result", "tool_use_id": "t1",
         "content": [{"type": "text", "text": CUSTOMER}]},
    ],
    ids=["string", "text-block", "mcp"],
)  # fmt: skip
async def test_an_anthropic_tool_result_written_with_escapes_is_read_decoded(
    result: dict[str, Any],
) -> None:
    answers = await gateway_for("anthropic-messages").send(
        "/v1/messages", messages_with_result(result)
    )
    found = refused(answers)
    assert found is not None and found[0] == 403
    assert found[1]["type"] == "error" and found[1]["error"]["message"] == NAME_MESSAGE


async def test_an_anthropic_tool_result_is_masked_where_the_escape_stands() -> None:
    result = {"type": "tool_result", "tool_use_id": "t1",
              "content": [{"type": "text", "text": ADDRESS}]}  # fmt: skip
    answers = await gateway_for("anthropic-messages").send(
        "/v1/messages", messages_with_result(result)
    )
    sent = upstream_body(answers[1])["messages"][2]["content"][0]
    assert sent["content"][0]["text"] == ADDRESS_MASKED


async def test_signed_reasoning_an_escape_spells_an_address_in_is_refused_naming_it() -> None:
    # The open turn's thinking cannot be masked: the refusal names what the decoded
    # reading found.
    thinking = {"type": "thinking", "thinking": "Mail jane\\u0040example.com.", "signature": "s"}
    use = {"type": "tool_use", "id": "t1", "name": "lookup", "input": {}}
    body = orjson.dumps({"model": CLAUDE, "max_tokens": 100, "messages": [
        {"role": "user", "content": "Who ordered?"},
        {"role": "assistant", "content": [thinking, use]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "done"}]}]})  # fmt: skip
    found = refused(await gateway_for("anthropic-messages").send("/v1/messages", body))
    assert found is not None
    assert found[1]["error"]["message"] == (
        "Rejected by guardrail 'pii': signed reasoning sent back contains EMAIL, "
        "which cannot be masked"
    )


# --- the Responses API: function_call_output -----------------------------------------------


def responses_with_output(output: str) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "input": [
        {"role": "user", "content": "Who ordered?"},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": output}]})  # fmt: skip


async def test_a_responses_function_output_is_read_decoded_and_masked_in_place() -> None:
    gateway = gateway_for("openai-responses")
    found = refused(await gateway.send("/v1/responses", responses_with_output(CUSTOMER)))
    assert found is not None and found[1]["error"]["message"] == NAME_MESSAGE
    answers = await gateway.send("/v1/responses", responses_with_output(ADDRESS))
    assert upstream_body(answers[1])["input"][2]["output"] == ADDRESS_MASKED


# --- Bedrock Converse: a toolResult's text -------------------------------------------------


async def test_a_converse_tool_result_text_is_read_decoded(services: Services) -> None:
    body = converse()
    body["messages"] += [
        {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {}}}]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "t1", "content": [{"text": ADDRESS}]}}]},
    ]  # fmt: skip
    config = config_with(POLICIES, {"bedrock-converse": {"guardrails": "p"}})
    async with signing_processor(config, services) as processor:
        answers = await run_stream(
            processor, [request_headers(CONVERSE, headers=AUTH), request_body(orjson.dumps(body))]
        )
    sent = upstream_body(answers[1])["messages"][2]["content"][0]["toolResult"]
    assert sent["content"][0]["text"] == ADDRESS_MASKED


# --- Gemini: a functionResponse's text and an inline application/json part ----------------


async def test_a_gemini_function_response_and_inline_json_are_read_decoded(
    vertex: Any,  # noqa: F811 (the fixture imported above)
) -> None:
    # An MCP tool's result handed on as the text it came as.
    response = {"name": "lookup", "response": {"content": [{"type": "text", "text": ADDRESS}]}}
    inline = {"inlineData": {"mimeType": "application/json",
                             "data": base64.b64encode(CUSTOMER.encode()).decode()}}  # fmt: skip
    body = gemini()
    body["contents"] += [
        {"role": "model", "parts": [{"functionCall": {"name": "lookup", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": response}]},
    ]
    async with gateway(vertex, POLICIES, guardrails="p") as gw:
        sent = upstream(await gw.send(GENERATE, body))
        body["contents"].append({"role": "user", "parts": [inline]})
        status, error = refusal((await gw.send(GENERATE, body))[-1])
    written = sent["contents"][2]["parts"][0]["functionResponse"]["response"]
    assert written["content"][0]["text"] == ADDRESS_MASKED
    assert status == 403 and error["error"]["message"] == NAME_MESSAGE
