"""Request guards read the names in a conversation's history, on every API.

A client writes its own history: the tool calls it says the model made. Their arguments
were read, their names were not, so a refused term or an ID spelled as a call's name
(``lookup_project_falcon``) reached the provider past every guard. Now each name is read
as the definitions' names are: a ``REJECT`` guard refuses, a ``MASK`` guard refuses too
(renamed, the call would name no tool), and names with nothing to find pass unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.runtime import Services
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.guard_helpers import config_with
from tests.unit.test_bedrock_invoke_review import AUTH, signing_processor
from tests.unit.test_gemini_guard_flow import GENERATE, gateway, refusal, upstream
from tests.unit.test_guard_flow import Gateway, upstream_body
from tests.unit.test_guard_tool_definitions import (
    CONVERSE,
    POLICIES,
    converse,
    gemini,
    refused,
    vertex,  # noqa: F401 (the fixture the Gemini test takes)
)

# The shared policy, and a guard refusing AWS access keys, which fit a tool name's
# alphabet (letters, digits, ``_`` and ``-``).
KEYS = {"name": "aws-keys", "patterns": [{"pattern": r"AKIA[0-9A-Z]{16}", "name": "AWS_KEY"}]}
GUARDS = {"policies": [{**POLICIES["policies"][0],
                        "request": [KEYS, *POLICIES["policies"][0]["request"]]}]}  # fmt: skip
FALCON = "AKIAIOSFODNN7EXAMPLE"  # an access key, as a call's name
MESSAGE = "Rejected by guardrail 'aws-keys': it contains AWS_KEY"
EMPLOYEE = "get_EMP-123456"  # the policy's masked pattern, in a name
MASKED = (
    "Rejected by guardrail 'ids': a tool call's name contains EMPLOYEE_ID, which cannot be masked"
)


def gateway_for(route: str) -> Gateway:
    return Gateway(config_with(GUARDS, {route: {"guardrails": "p"}}))


def chat_history(name: str, *, message_name: str = "alice") -> bytes:
    call = {"id": "c1", "type": "function", "function": {"name": name, "arguments": "{}"}}
    return orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "user", "name": message_name, "content": "Hi"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "done"},
            ],
        }
    )


def anthropic_history(name: str) -> bytes:
    return orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 100,
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": name, "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "done"}]},
            ],
        }
    )  # fmt: skip


def responses_history(name: str) -> bytes:
    return orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "input": [
                {"role": "user", "content": "Hi"},
                {"type": "function_call", "call_id": "c1", "name": name, "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "done"},
            ],
        }
    )


CASES = [
    ("openai-chat", "/v1/chat/completions", chat_history),
    ("anthropic-messages", "/v1/messages", anthropic_history),
    ("openai-responses", "/v1/responses", responses_history),
]


@pytest.mark.parametrize(("route", "path", "body"), CASES, ids=["chat", "anthropic", "responses"])
async def test_a_refused_term_in_a_tool_calls_name_refuses_the_request(
    route: str, path: str, body: Any
) -> None:
    gate = gateway_for(route)
    found = refused(await gate.send(path, body(FALCON)))
    assert found is not None, "the call's name reached the provider unread"
    status, error = found
    assert status == 403
    assert orjson.dumps(error).decode().count(MESSAGE) == 1
    assert FALCON not in orjson.dumps(error).decode()
    assert {"guard": "aws-keys", "phase": "request", "action": "reject"} in gate.log()["guardrails"]


@pytest.mark.parametrize(("route", "path", "body"), CASES, ids=["chat", "anthropic", "responses"])
async def test_a_mask_matching_a_tool_calls_name_refuses_rather_than_rename_it(
    route: str, path: str, body: Any
) -> None:
    gate = gateway_for(route)
    found = refused(await gate.send(path, body(EMPLOYEE)))
    assert found is not None
    assert found[0] == 403
    assert MASKED in orjson.dumps(found[1]).decode()
    assert "123456" not in orjson.dumps(found[1]).decode()
    assert {"guard": "ids", "phase": "request", "action": "reject"} in gate.log()["guardrails"]


@pytest.mark.parametrize(("route", "path", "body"), CASES, ids=["chat", "anthropic", "responses"])
async def test_a_history_with_plain_names_goes_on_unchanged(
    route: str, path: str, body: Any
) -> None:
    answers = await gateway_for(route).send(path, body("send_mail"))
    assert refused(answers) is None
    assert "send_mail" in orjson.dumps(upstream_body(answers[1])).decode()


async def test_a_chat_messages_name_is_read() -> None:
    found = refused(
        await gateway_for("openai-chat").send(
            "/v1/chat/completions", chat_history("send_mail", message_name=FALCON)
        )
    )
    assert found is not None
    assert found[1]["error"]["message"] == MESSAGE
    found = refused(
        await gateway_for("openai-chat").send(
            "/v1/chat/completions", chat_history("send_mail", message_name="EMP-123456")
        )
    )
    assert found is not None
    assert "a message's name contains EMPLOYEE_ID" in found[1]["error"]["message"]


async def test_a_converse_tool_use_name_is_read(services: Services) -> None:
    body = converse()
    body["messages"] += [
        {"role": "assistant", "content": [
            {"toolUse": {"toolUseId": "t1", "name": EMPLOYEE, "input": {}}}]},
        {"role": "user", "content": [
            {"toolResult": {"toolUseId": "t1", "content": [{"text": "done"}]}}]},
    ]  # fmt: skip
    config = config_with(GUARDS, {"bedrock-converse": {"guardrails": "p"}})
    async with signing_processor(config, services) as processor:
        answers = await run_stream(
            processor, [request_headers(CONVERSE, headers=AUTH), request_body(orjson.dumps(body))]
        )
    found = refused(answers)
    assert found is not None
    assert found[0] == 403
    assert MASKED in orjson.dumps(found[1]).decode()


@pytest.mark.parametrize("spelling", ["functionCall", "function_response"])
async def test_a_gemini_function_name_is_read(
    vertex: Any,  # noqa: F811 (the fixture imported above)
    spelling: str,
) -> None:
    body = gemini()
    part = {spelling: {"name": FALCON, ("args" if "Call" in spelling else "response"): {}}}
    body["contents"].append({"role": "model", "parts": [part]})
    async with gateway(vertex, GUARDS, guardrails="p") as gw:
        answers = await gw.send(GENERATE, body)
        status, error = refusal(answers[-1])
        assert status == 403
        assert error["error"]["message"] == MESSAGE
        assert FALCON not in orjson.dumps(error).decode()
        part[spelling]["name"] = "send_mail"
        sent = upstream(await gw.send(GENERATE, body))
    assert sent["contents"][1]["parts"][0][spelling]["name"] == "send_mail"
