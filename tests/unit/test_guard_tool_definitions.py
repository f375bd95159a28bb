"""Request guards read tool definitions and structured-output schemas, through the processor.

Providers render a tool's description, its parameters' descriptions and the values a
schema allows into the prompt, and the model reads them as it reads the system prompt.
The guards read none of it: a refused topic written in a tool's ``description``, or an
address in a parameter's, reached the model past every ``REJECT`` and ``MASK`` guard, on
every API. Now each API's definitions are read as the developer's (``system``) text: a
refused word refuses the request, a mask rewrites the free text in place and leaves the
schema the schema it was, and a name something refers to (a tool's, a property's, a
custom tool's grammar) is refused rather than masked.
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.config.guard_model import GuardConfig
from extproc.guardrails.matching import MatcherGuard, Matchers
from extproc.runtime import Services
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.guard_helpers import config_with
from tests.unit.test_bedrock_invoke_review import AUTH, HAIKU, signing_processor
from tests.unit.test_gemini_guard_flow import GENERATE, gateway, refusal, upstream
from tests.unit.test_guard_flow import Gateway, immediate, upstream_body
from tests.unit.test_guardrail_review import Hook, serving

EMAIL = "jane@example.com"
FORBIDDEN = "Project Falcon"
MESSAGE = "Project Falcon is not for an external model."
POLICIES = {
    "policies": [
        {
            "name": "p",
            "request": [
                {"name": "no-falcon", "literals": ["project falcon"],
                 "case_insensitive": True, "message": MESSAGE},
                {"name": "pii", "builtins": ["EMAIL"], "action": "mask"},
                {"name": "ids", "patterns": [{"pattern": r"EMP-\d{6}", "name": "EMPLOYEE_ID"}],
                 "action": "mask"},
            ],
        }
    ]
}  # fmt: skip
CONVERSE = f"/model/{quote(HAIKU, safe='')}/converse"


def schema(description: str, *, enum: list[str] | None = None) -> dict[str, Any]:
    """An object schema with one string property ``to``, described by ``description``."""
    to: dict[str, Any] = {"type": "string", "description": description}
    if enum is not None:
        to["enum"] = enum
    return {
        "type": "object",
        "title": "Recipient",
        "properties": {"to": to},
        "required": ["to"],
        "additionalProperties": False,
    }


def refused(answers: list[Any]) -> tuple[int, dict[str, Any]] | None:
    last = answers[-1]
    return immediate(last) if last.HasField("immediate_response") else None


def gateway_for(route: str) -> Gateway:
    return Gateway(config_with(POLICIES, {route: {"guardrails": "p"}}))


# --- OpenAI chat ----------------------------------------------------------------------------


def chat(**fields: Any) -> bytes:
    return orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], **fields}
    )


def function_tool(description: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    function = {"name": "send_mail", "description": description}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


@pytest.mark.parametrize(
    "fields",
    [
        {"tools": [function_tool(f"Tell the user about {FORBIDDEN}.")]},
        {"tools": [function_tool("Mail.", schema(f"Mention {FORBIDDEN} here"))]},
        {"tools": [function_tool("Mail.", schema("Who", enum=["ops", FORBIDDEN]))]},
        {"functions": [{"name": "f", "description": FORBIDDEN, "parameters": schema("x")}]},
        {"response_format": {"type": "json_schema", "json_schema": {
            "name": "answer", "schema": schema(f"Write about {FORBIDDEN}")}}},
        {"tools": [{"type": "custom", "custom": {"name": "sql", "description": FORBIDDEN}}]},
    ],
    ids=["description", "parameter", "enum", "legacy-functions", "response-format", "custom"],
)  # fmt: skip
async def test_a_refused_word_in_a_chat_definition_is_refused(fields: dict[str, Any]) -> None:
    gate = gateway_for("openai-chat")
    answers = await gate.send("/v1/chat/completions", chat(**fields))
    found = refused(answers)
    assert found is not None, "the definition reached the provider unread"
    status, error = found
    assert status == 403
    assert error["error"]["message"] == MESSAGE
    assert error["error"]["code"] == "guardrail_rejected"
    assert {"guard": "no-falcon", "phase": "request", "action": "reject"} in gate.log()[
        "guardrails"
    ]


async def test_a_chat_definition_is_masked_in_place_and_stays_the_schema_it_was() -> None:
    tool = function_tool(f"Mail {EMAIL} by default.", schema(f"e.g. {EMAIL}", enum=[EMAIL, "ops"]))
    described = {**schema("x"), "description": f"cc {EMAIL}"}
    output = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "strict": True, "schema": described},
    }
    answers = await gateway_for("openai-chat").send(
        "/v1/chat/completions", chat(tools=[tool], response_format=output)
    )
    assert refused(answers) is None
    sent = upstream_body(answers[1])
    function = sent["tools"][0]["function"]
    assert function["description"] == "Mail <EMAIL> by default."
    expected = schema("e.g. <EMAIL>", enum=["<EMAIL>", "ops"])
    assert function["parameters"] == expected
    assert function["name"] == "send_mail"
    assert sent["response_format"]["json_schema"]["schema"] == {
        **schema("x"),
        "description": "cc <EMAIL>",
    }
    assert sent["response_format"]["json_schema"]["strict"] is True


@pytest.mark.parametrize(
    ("tool", "where"),
    [
        (function_tool("Mail.", {"type": "object", "properties": {"EMP-123456": {}}}),
         "a schema's property name"),
        ({"type": "function", "function": {"name": "get_EMP-123456"}}, "a tool's name"),
        ({"type": "custom", "custom": {"name": "ids", "format": {"type": "grammar", "grammar": {
            "syntax": "lark", "definition": 'start: "EMP-123456"'}}}}, "a custom tool's grammar"),
    ],
    ids=["property", "tool-name", "grammar"],
)  # fmt: skip
async def test_a_mask_matching_a_name_refuses_rather_than_break_the_tool(
    tool: dict[str, Any], where: str
) -> None:
    gate = gateway_for("openai-chat")
    found = refused(await gate.send("/v1/chat/completions", chat(tools=[tool])))
    assert found is not None, "a masked name would no longer be the one the tool's calls use"
    status, error = found
    assert status == 403
    assert error["error"]["message"] == (
        f"Rejected by guardrail 'ids': {where} contains EMPLOYEE_ID, which cannot be masked"
    )
    assert "EMP-123456" not in orjson.dumps(gate.log()).decode()
    assert {"guard": "ids", "phase": "request", "action": "reject"} in gate.log()["guardrails"]


async def test_structure_that_looks_like_text_is_left_alone() -> None:
    # Keywords, formats, patterns and $refs are no language: a guard does not read them.
    parameters = {
        "type": "object",
        "properties": {"id": {"type": "string", "pattern": r"^EMP-\d{6}$", "format": "email"}},
        "$defs": {"mail": {"type": "string", "description": f"to {EMAIL}"}},
        "patternProperties": {"^EMP-123456$": {"type": "string"}},
    }
    body = chat(tools=[function_tool("Look up.", parameters)], tool_choice="auto")
    answers = await gateway_for("openai-chat").send("/v1/chat/completions", body)
    assert refused(answers) is None
    sent = upstream_body(answers[1])["tools"][0]["function"]["parameters"]
    assert sent == {
        **parameters,
        "$defs": {"mail": {"type": "string", "description": "to <EMAIL>"}},
    }


# --- Anthropic Messages ---------------------------------------------------------------------


def messages(**fields: Any) -> bytes:
    return orjson.dumps(
        {"model": "claude-3-5-haiku-latest", "max_tokens": 100,
         "messages": [{"role": "user", "content": "Hi"}], **fields}
    )  # fmt: skip


async def test_an_anthropic_tool_description_is_read() -> None:
    tool = {"name": "send_mail", "description": f"About {FORBIDDEN}", "input_schema": schema("x")}
    answers = await gateway_for("anthropic-messages").send("/v1/messages", messages(tools=[tool]))
    found = refused(answers)
    assert found is not None
    assert found == (
        403,
        {"type": "error", "error": {"type": "permission_error", "message": MESSAGE}},
    )


async def test_an_anthropic_input_schema_and_output_format_are_masked_in_place() -> None:
    tool = {"name": "send_mail", "description": "Mail.", "input_schema": schema(f"e.g. {EMAIL}"),
            "input_examples": [{"to": EMAIL}]}  # fmt: skip
    output = {"format": {"type": "json_schema", "schema": schema(f"or {EMAIL}")}}
    server = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    body = messages(tools=[tool, server], output_config=output)
    answers = await gateway_for("anthropic-messages").send("/v1/messages", body)
    assert refused(answers) is None
    sent = upstream_body(answers[1])
    assert sent["tools"][0]["input_schema"] == schema("e.g. <EMAIL>")
    assert sent["tools"][0]["input_examples"] == [{"to": "<EMAIL>"}]
    assert sent["tools"][1] == server
    assert sent["output_config"]["format"]["schema"] == schema("or <EMAIL>")


# --- Responses API --------------------------------------------------------------------------


def responses(**fields: Any) -> bytes:
    return orjson.dumps({"model": "gpt-4o-mini", "input": "Hi", **fields})


async def test_a_responses_function_tool_is_read_and_its_format_masked() -> None:
    gate = gateway_for("openai-responses")
    tool = {"type": "function", "name": "send_mail", "description": FORBIDDEN,
            "parameters": schema("x")}  # fmt: skip
    found = refused(await gate.send("/v1/responses", responses(tools=[tool])))
    assert found is not None and found[0] == 403
    text = {"format": {"type": "json_schema", "name": "answer", "schema": schema(f"cc {EMAIL}")}}
    answers = await gate.send("/v1/responses", responses(text=text))
    assert refused(answers) is None
    assert upstream_body(answers[1])["text"]["format"]["schema"] == schema("cc <EMAIL>")


async def test_a_webhook_gets_definitions_as_system_entries_and_never_an_mcp_servers_secrets() -> (
    None
):
    secret = "Bearer mcp-secret-token"
    mcp = {"type": "mcp", "server_label": "crm", "server_url": "https://mcp.example/sse",
           "server_description": "The CRM of ACME.", "headers": {"Authorization": secret},
           "authorization": secret, "require_approval": "never"}  # fmt: skip
    function = {"type": "function", "name": "send_mail", "description": "Send a mail.",
                "parameters": schema("Who gets it")}  # fmt: skip
    hook = Hook({"action": {"reason": "fine"}})
    async with serving(hook.handle) as port:
        guardrails = {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port}],
            "policies": [
                {"name": "hooked", "request": [{"name": "hook-guard", "webhook": "hook"}]}
            ],
        }
        gate = Gateway(config_with(guardrails, {"openai-responses": {"guardrails": "hooked"}}))
        answers = await gate.send("/v1/responses", responses(tools=[mcp, function]))
    assert refused(answers) is None
    sent = hook.calls[0]["body"]["messages"]
    assert {"role": "system", "content": "The CRM of ACME."} in sent
    assert {"role": "system", "content": "Send a mail."} in sent
    assert {"role": "system", "content": "Who gets it"} in sent
    # The tools come first, where the providers put them; the user's turn stays last.
    assert sent[-1] == {"role": "user", "content": "Hi"}
    assert "mcp-secret-token" not in orjson.dumps(hook.calls).decode()


async def test_a_webhook_mask_of_a_definition_lands_in_place_and_of_a_name_refuses() -> None:
    def mask(call: dict[str, Any]) -> dict[str, Any]:
        entries = [
            {**entry, "content": entry["content"].replace("secret", "****")}
            for entry in call["body"]["messages"]
        ]
        return {"action": {"body": {"messages": entries}}}

    hook = Hook(mask)
    async with serving(hook.handle) as port:
        guardrails = {
            "webhooks": [{"name": "hook", "host": "127.0.0.1", "port": port}],
            "policies": [
                {"name": "hooked", "request": [{"name": "hook-guard", "webhook": "hook"}]}
            ],
        }
        gate = Gateway(config_with(guardrails, {"openai-chat": {"guardrails": "hooked"}}))
        masked = await gate.send(
            "/v1/chat/completions", chat(tools=[function_tool("Keep the secret.", schema("x"))])
        )
        named = await gate.send(
            "/v1/chat/completions",
            chat(tools=[{"type": "function", "function": {"name": "secret_lookup"}}]),
        )
    assert upstream_body(masked[1])["tools"][0]["function"]["description"] == "Keep the ****."
    found = refused(named)
    assert found is not None
    assert found[1]["error"]["message"] == (
        "Rejected by guardrail 'hook-guard': a tool's name cannot be masked"
    )


# --- Bedrock Converse -----------------------------------------------------------------------


def converse(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"text": "Hi"}]}], **fields}


async def through_converse(body: dict[str, Any], services: Services) -> list[Any]:
    config = config_with(POLICIES, {"bedrock-converse": {"guardrails": "p"}})
    async with signing_processor(config, services) as processor:
        return await run_stream(
            processor,
            [request_headers(CONVERSE, headers=AUTH), request_body(orjson.dumps(body))],
        )


def tool_config(description: str, input_schema: dict[str, Any]) -> dict[str, Any]:
    spec = {"name": "send_mail", "description": description, "inputSchema": {"json": input_schema}}
    return {"tools": [{"toolSpec": spec}, {"cachePoint": {"type": "default"}}]}


async def test_a_refused_word_in_a_converse_tool_spec_is_refused(services: Services) -> None:
    body = converse(toolConfig=tool_config("Mail.", schema(f"about {FORBIDDEN}")))
    found = refused(await through_converse(body, services))
    assert found is not None and found[0] == 403


async def test_a_converse_tool_spec_and_output_schema_are_masked_in_place(
    services: Services,
) -> None:
    output = {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {
        "name": "answer", "description": f"For {EMAIL}",
        "schema": orjson.dumps(schema(f"cc {EMAIL}")).decode()}}}}  # fmt: skip
    body = converse(toolConfig=tool_config(f"Mail {EMAIL}.", schema(EMAIL)), outputConfig=output)
    answers = await through_converse(copy.deepcopy(body), services)
    assert refused(answers) is None
    sent = upstream_body(answers[1])
    spec = sent["toolConfig"]["tools"][0]["toolSpec"]
    assert spec["description"] == "Mail <EMAIL>."
    assert spec["inputSchema"]["json"] == schema("<EMAIL>")
    assert sent["toolConfig"]["tools"][1] == {"cachePoint": {"type": "default"}}
    written = sent["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert written["description"] == "For <EMAIL>"
    # Still JSON text, the schema Bedrock parses, masked.
    assert orjson.loads(written["schema"]) == schema("cc <EMAIL>")


# --- Gemini ---------------------------------------------------------------------------------


def gemini(**fields: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}], **fields}


def gemini_schema(description: str) -> dict[str, Any]:
    """Gemini's OpenAPI subset: uppercase types, an ``enum`` format."""
    return {
        "type": "OBJECT",
        "properties": {"to": {"type": "STRING", "description": description,
                              "format": "enum", "enum": ["ops", "sales"]}},
        "propertyOrdering": ["to"],
    }  # fmt: skip


async def test_a_gemini_function_declaration_is_read(vertex: tuple[str, Path]) -> None:
    declaration = {"name": "send_mail", "description": f"About {FORBIDDEN}"}
    async with gateway(vertex, POLICIES, guardrails="p") as gw:
        answers = await gw.send(GENERATE, gemini(tools=[{"functionDeclarations": [declaration]}]))
    status, error = refusal(answers[-1])
    assert status == 403
    assert error["error"] == {"code": 403, "message": MESSAGE, "status": "PERMISSION_DENIED"}


async def test_gemini_declarations_and_response_schemas_are_masked_in_place(
    vertex: tuple[str, Path],
) -> None:
    declarations = [
        {"name": "send_mail", "description": f"Mail {EMAIL}.",
         "parameters": gemini_schema(f"e.g. {EMAIL}")},
        {"name": "lookup", "parameters_json_schema": schema(f"cc {EMAIL}")},
    ]  # fmt: skip
    config = {"responseMimeType": "application/json", "responseSchema": gemini_schema(EMAIL)}
    body = gemini(
        tools=[
            {"functionDeclarations": declarations[:1]},
            {"function_declarations": declarations[1:]},
        ],
        generationConfig=config,
    )
    async with gateway(vertex, POLICIES, guardrails="p") as gw:
        sent = upstream(await gw.send(GENERATE, body))
    first = sent["tools"][0]["functionDeclarations"][0]
    assert first["description"] == "Mail <EMAIL>."
    assert first["parameters"] == gemini_schema("e.g. <EMAIL>")
    assert sent["tools"][1]["function_declarations"][0]["parameters_json_schema"] == schema(
        "cc <EMAIL>"
    )
    assert sent["generationConfig"]["responseSchema"] == gemini_schema("<EMAIL>")


@pytest.fixture
async def vertex(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    from tests.unit.mock_vertex import mock_vertex

    key_file = tmp_path / "key.json"
    async with mock_vertex(key_file) as mock:
        yield mock, key_file


# --- what stays as it was -------------------------------------------------------------------


async def test_a_route_without_guards_passes_definitions_untouched() -> None:
    body = chat(tools=[function_tool(f"Mail {EMAIL} about {FORBIDDEN}.", schema(EMAIL))])
    answers = await Gateway(config_with(POLICIES, {})).send("/v1/chat/completions", body)
    assert refused(answers) is None
    assert not answers[1].request_body.response.HasField("body_mutation")


# --- one search over many short texts -------------------------------------------------------

WORDS = st.text(alphabet="ab1 -@.\nxyz", max_size=12)


def matchers(*configs: dict[str, Any]) -> Matchers:
    return Matchers(tuple(MatcherGuard(GuardConfig.model_validate(c), 1000) for c in configs))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(WORDS, max_size=8))
def test_the_joined_search_names_every_text_a_search_of_its_own_finds(texts: list[str]) -> None:
    # Hundreds of short definition strings are searched at once: no text holding a match
    # may be left out (a word boundary at a text's edge reads as at the joined newline).
    phase = matchers(
        {"name": "pii", "builtins": ["CREDIT_CARD", "EMAIL", "PHONE_NUMBER"], "action": "mask"},
        {"name": "word", "patterns": [r"\bab\b", "x-1"], "case_insensitive": True},
    )
    maybe = phase.candidates(texts)
    assert maybe is not None
    for index, text in enumerate(texts):
        rejecting, hits, _ = phase.scan(text)
        if rejecting is not None or hits:
            assert index in maybe, (texts, index)


async def test_an_anchored_pattern_still_matches_one_short_string_among_many() -> None:
    # ``^...$`` looks at a text's edges: such a phase searches each text on its own.
    guards = {"policies": [{"name": "p", "request": [
        {"name": "exact", "patterns": ["^falcon$"], "message": "No."}]}]}  # fmt: skip
    enum = [f"value{n}" for n in range(50)] + ["falcon"]
    body = chat(tools=[function_tool("Pick.", schema("x", enum=enum))])
    gate = Gateway(config_with(guards, {"openai-chat": {"guardrails": "p"}}))
    found = refused(await gate.send("/v1/chat/completions", body))
    assert found is not None and found[0] == 403
    assert matchers({"name": "e", "patterns": ["^falcon$"]}).candidates(["falcon"]) is None
