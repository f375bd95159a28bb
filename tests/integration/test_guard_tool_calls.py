"""Guards read tool calls, through the real Envoy with the official SDKs.

A client's conversation history carries the tool calls the model made; their
arguments are prompt text the provider reads back. A key there is refused like
anywhere else, an e-mail address is masked before the provider sees it (OpenAI's
``arguments`` string, each string of Anthropic's ``tool_use`` ``input``), and the
tool calls of a buffered answer are masked before the client sees them. The
answers' calls are scripted with the mock's ``x-mock-tool-calls`` header.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    guarded_config,
    mock_requests,
    running_stack,
    write_config,
)

KEY = "team1-key"
SECRET = "sk-live4f9a8b7c6d5e"
KEY_MESSAGE = "API keys must not be sent to a model."
CLAUDE = "claude-3-5-haiku-latest"
SEND_EMAIL: Any = {
    "name": "send_email",
    "description": "Send an e-mail.",
    "input_schema": {"type": "object", "properties": {"to": {"type": "string"}}},
}
# The answer calls send_email with an address in its input.
CALL = {"name": "send_email", "arguments": '{"to": "jane@example.com"}'}
SCRIPT = {"x-mock-tool-calls": json.dumps([CALL])}


TOOL_GUARDS: dict[str, Any] = {
    "name": "tool-guards",
    "request": [
        {"name": "api-keys", "patterns": [r"sk-[A-Za-z0-9]{8,}"], "message": KEY_MESSAGE},
        {"name": "pii", "builtins": ["EMAIL"], "action": "mask"},
    ],
    "response": [{"name": "pii-out", "builtins": ["EMAIL"], "action": "mask"}],
}


@pytest.fixture(scope="module")
def tool_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guard-tool-calls")
    raw = guarded_config(TOOL_GUARDS, "openai-chat", "anthropic-messages", "anthropic")
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def gpt(stack: LocalStack, prefix: str = "") -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{prefix}/v1", api_key=KEY, max_retries=0, timeout=30)


def claude(stack: LocalStack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=KEY, max_retries=0, timeout=30.0)


def openai_history(arguments: str) -> Any:
    return [
        {"role": "user", "content": "Email the report to my manager."},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "send_email", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sent"},
    ]  # fmt: skip


def test_a_key_in_a_tool_calls_arguments_is_refused_before_the_provider(
    tool_stack: LocalStack,
) -> None:
    calls_before = len(mock_requests(tool_stack))
    arguments = json.dumps({"to": "boss", "auth": SECRET})
    with pytest.raises(openai.PermissionDeniedError) as refused:
        gpt(tool_stack).chat.completions.create(
            model="gpt-4o-mini", messages=openai_history(arguments)
        )
    assert refused.value.status_code == 403
    assert refused.value.code == "guardrail_rejected"
    assert KEY_MESSAGE in refused.value.message
    assert len(mock_requests(tool_stack)) == calls_before, "the key reached the provider"
    request_id = refused.value.response.headers["x-request-id"]
    [line] = GatewayLog(tool_stack.gateway_log).for_request(request_id)
    assert line["guardrails"] == [{"guard": "api-keys", "phase": "request", "action": "reject"}]
    assert SECRET not in json.dumps(line)


def test_an_address_in_a_tool_calls_arguments_reaches_the_provider_masked(
    tool_stack: LocalStack,
) -> None:
    arguments = json.dumps({"to": "jane@example.com"})
    gpt(tool_stack).chat.completions.create(model="gpt-4o-mini", messages=openai_history(arguments))
    sent = mock_requests(tool_stack)[-1]["json"]["messages"][1]["tool_calls"][0]["function"]
    assert sent["arguments"] == '{"to": "<EMAIL>"}'


def test_an_address_in_a_tool_use_input_reaches_the_provider_masked(
    tool_stack: LocalStack,
) -> None:
    tool_input = {"to": "jane@example.com", "cc": ["ops@example.com"], "urgent": True}
    use = {"type": "tool_use", "id": "toolu_1", "name": "send_email", "input": tool_input}
    claude(tool_stack).messages.create(
        model=CLAUDE,
        max_tokens=50,
        tools=[SEND_EMAIL],
        messages=[
            {"role": "user", "content": "Email the report to my manager."},
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sent"}]},
        ],
    )  # fmt: skip
    sent = mock_requests(tool_stack)[-1]["json"]["messages"][1]["content"][0]
    assert sent["input"] == {"to": "<EMAIL>", "cc": ["<EMAIL>"], "urgent": True}


def test_an_anthropic_answers_tool_use_input_is_masked_before_the_client(
    tool_stack: LocalStack,
) -> None:
    answer = claude(tool_stack).messages.create(
        model=CLAUDE,
        max_tokens=50,
        tools=[SEND_EMAIL],
        messages=[{"role": "user", "content": "Email the report to Jane."}],
        extra_headers=SCRIPT,
    )
    [call] = [block for block in answer.content if block.type == "tool_use"]
    assert call.input == {"to": "<EMAIL>"}
    assert answer.stop_reason == "tool_use"


def test_an_openai_answers_tool_call_arguments_are_masked_before_the_client(
    tool_stack: LocalStack,
) -> None:
    # An OpenAI client on the /anthropic route: the answer is translated, then guarded.
    tool: Any = {"type": "function", "function": {
        "name": "send_email", "parameters": SEND_EMAIL["input_schema"]}}  # fmt: skip
    answer = gpt(tool_stack, "/anthropic").chat.completions.create(
        model=CLAUDE,
        tools=[tool],
        messages=[{"role": "user", "content": "Email the report to Jane."}],
        extra_headers=SCRIPT,
    )
    choice = answer.choices[0]
    [call] = choice.message.tool_calls or []
    assert call.type == "function"
    assert json.loads(call.function.arguments) == {"to": "<EMAIL>"}
    assert choice.finish_reason == "tool_calls"
