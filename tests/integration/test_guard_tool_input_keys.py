"""Guards read the parameter names of Anthropic tool calls, through the real Envoy.

An Anthropic client's history carries the ``tool_use`` blocks the model made; the
keys of their ``input`` (the tool's parameter names) are text the provider reads,
as the keys of OpenAI arguments are. A key written as a parameter name is refused
before the provider, an address there reaches it masked, the member keeping its
place and value; an answer's ``tool_use`` (scripted with the mock's
``x-mock-tool-calls``) reaches the client with its names masked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import (
    GatewayLog,
    guarded_config,
    mock_requests,
    running_stack,
    write_config,
)

KEY = "team1-key"
SECRET = "sk-" + "a1B2c3D4e5" * 4
KEY_MESSAGE = "API keys must not be sent to a model."
CLAUDE = "claude-3-5-haiku-latest"
SEND_EMAIL: Any = {
    "name": "send_email",
    "description": "Send an e-mail.",
    "input_schema": {"type": "object", "properties": {"to": {"type": "string"}}},
}
GUARDS: dict[str, Any] = {
    "name": "tool-input-keys",
    "request": [
        {"name": "api-keys", "patterns": [r"sk-[A-Za-z0-9]{32,64}"], "message": KEY_MESSAGE},
        {"name": "pii", "builtins": ["EMAIL"], "action": "mask"},
    ],
    "response": [{"name": "pii-out", "builtins": ["EMAIL"], "action": "mask"}],
}


@pytest.fixture(scope="module")
def keys_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guard-tool-input-keys")
    raw = guarded_config(GUARDS, "anthropic-messages")
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def claude(stack: LocalStack) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack.base_url, api_key=KEY, max_retries=0, timeout=30.0)


def history(tool_input: dict[str, Any]) -> Any:
    use = {"type": "tool_use", "id": "toolu_1", "name": "send_email", "input": tool_input}
    return [
        {"role": "user", "content": "Email the report to my manager."},
        {"role": "assistant", "content": [use]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sent"}]},
    ]  # fmt: skip


def test_a_key_written_as_a_parameter_name_is_refused_before_the_provider(
    keys_stack: LocalStack,
) -> None:
    calls_before = len(mock_requests(keys_stack))
    with pytest.raises(anthropic.PermissionDeniedError) as refused:
        claude(keys_stack).messages.create(
            model=CLAUDE,
            max_tokens=50,
            tools=[SEND_EMAIL],
            messages=history({"to": "boss", "headers": {SECRET: "bearer"}}),
        )
    assert refused.value.status_code == 403
    assert KEY_MESSAGE in refused.value.message
    assert len(mock_requests(keys_stack)) == calls_before, "the key reached the provider"
    request_id = refused.value.response.headers["x-request-id"]
    [line] = GatewayLog(keys_stack.gateway_log).for_request(request_id)
    assert line["guardrails"] == [{"guard": "api-keys", "phase": "request", "action": "reject"}]
    assert SECRET not in json.dumps(line)


def test_an_address_as_a_parameter_name_reaches_the_provider_masked_in_place(
    keys_stack: LocalStack,
) -> None:
    tool_input = {"to": "boss", "jane@example.com": "cc", "bob@example.com": "bcc", "n": 1}
    claude(keys_stack).messages.create(
        model=CLAUDE, max_tokens=50, tools=[SEND_EMAIL], messages=history(tool_input)
    )
    sent = mock_requests(keys_stack)[-1]["json"]["messages"][1]["content"][0]["input"]
    # In place, the value kept; the second address masked alike is suffixed, not lost.
    assert list(sent.items()) == [("to", "boss"), ("<EMAIL>", "cc"), ("<EMAIL>#2", "bcc"), ("n", 1)]


def test_an_answers_parameter_name_is_masked_before_the_client(keys_stack: LocalStack) -> None:
    call = {"name": "send_email", "arguments": '{"subject": "hi", "jane@example.com": "to"}'}
    answer = claude(keys_stack).messages.create(
        model=CLAUDE,
        max_tokens=50,
        tools=[SEND_EMAIL],
        messages=[{"role": "user", "content": "Email the report to Jane."}],
        extra_headers={"x-mock-tool-calls": json.dumps([call])},
    )
    [use] = [block for block in answer.content if block.type == "tool_use"]
    assert list(use.input.items()) == [("subject", "hi"), ("<EMAIL>", "to")]
    assert answer.stop_reason == "tool_use"
