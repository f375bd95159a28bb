"""Request guards read tool definitions and structured-output schemas, through the real Envoy.

The official clients send tool definitions the provider renders into the prompt. A
refused word in a tool's ``description`` is refused before the provider; an address in a
parameter's description or in a ``response_format`` schema reaches the provider masked
(the mock records what it received), the schema otherwise as the client wrote it, also
when the gateway translates the request for Bedrock.
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
MESSAGE = "Project Falcon is not for an external model."
EMAIL = "jane@example.com"
GUARDS: dict[str, Any] = {
    "name": "definitions",
    "request": [
        {"name": "no-falcon", "literals": ["project falcon"], "case_insensitive": True,
         "message": MESSAGE},
        {"name": "pii", "builtins": ["EMAIL"], "action": "mask"},
    ],
}  # fmt: skip


def parameters(description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"to": {"type": "string", "description": description}},
        "required": ["to"],
        "additionalProperties": False,
    }


def send_mail(description: str, parameter: str = "The recipient.") -> Any:
    return {
        "type": "function",
        "function": {"name": "send_mail", "description": description,
                     "parameters": parameters(parameter)},
    }  # fmt: skip


@pytest.fixture(scope="module")
def definitions_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guard-tool-definitions")
    raw = guarded_config(GUARDS, "openai-chat", "anthropic-messages", "bedrock")
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def client(stack: LocalStack, path: str = "/v1") -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{path}", api_key=KEY, max_retries=0, timeout=30)


def test_a_refused_word_in_a_tool_description_is_refused_before_the_provider(
    definitions_stack: LocalStack,
) -> None:
    calls_before = len(mock_requests(definitions_stack))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client(definitions_stack).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Send the weekly report."}],
            tools=[send_mail("Send mail. Always mention Project Falcon's launch date.")],
        )
    assert refused.value.status_code == 403
    assert refused.value.body["message"] == MESSAGE  # type: ignore[index]
    assert refused.value.body["code"] == "guardrail_rejected"  # type: ignore[index]
    assert len(mock_requests(definitions_stack)) == calls_before, "the tool reached the provider"
    request_id = refused.value.response.headers["x-request-id"]
    [line] = GatewayLog(definitions_stack.gateway_log).for_request(request_id)
    assert line["guardrails"] == [{"guard": "no-falcon", "phase": "request", "action": "reject"}]


def test_an_address_in_definitions_reaches_the_provider_masked(
    definitions_stack: LocalStack,
) -> None:
    output = {"type": "json_schema", "json_schema": {
        "name": "receipt", "strict": True,
        "schema": {**parameters("x"), "description": f"Copy {EMAIL} on it."}}}  # fmt: skip
    client(definitions_stack).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Send the weekly report."}],
        tools=[send_mail(f"Send mail from {EMAIL}.", f"Like {EMAIL}.")],
        response_format=output,  # type: ignore[arg-type]
    )
    sent = mock_requests(definitions_stack)[-1]["json"]
    assert EMAIL not in json.dumps(sent)
    function = sent["tools"][0]["function"]
    assert function["description"] == "Send mail from <EMAIL>."
    assert function["parameters"] == parameters("Like <EMAIL>.")
    schema = sent["response_format"]["json_schema"]["schema"]
    assert schema == {**parameters("x"), "description": "Copy <EMAIL> on it."}


def test_an_anthropic_tool_reaches_the_provider_masked(definitions_stack: LocalStack) -> None:
    claude = anthropic.Anthropic(
        base_url=definitions_stack.base_url, api_key=KEY, max_retries=0, timeout=30.0
    )
    claude.messages.create(
        model="claude-3-5-haiku-latest",
        max_tokens=50,
        messages=[{"role": "user", "content": "Send the weekly report."}],
        tools=[
            {
                "name": "send_mail",
                "description": f"Send mail as {EMAIL}.",
                "input_schema": parameters(f"Like {EMAIL}."),
            }
        ],
    )
    sent = mock_requests(definitions_stack)[-1]["json"]
    assert sent["tools"][0]["description"] == "Send mail as <EMAIL>."
    assert sent["tools"][0]["input_schema"] == parameters("Like <EMAIL>.")


def test_a_translated_tool_reaches_bedrock_masked(definitions_stack: LocalStack) -> None:
    # Guards read the client's body before translation: Bedrock's toolSpec is masked too.
    client(definitions_stack, "/bedrock/haiku").chat.completions.create(
        model="haiku",
        messages=[{"role": "user", "content": "Send the weekly report."}],
        tools=[send_mail(f"Send mail as {EMAIL}.", f"Like {EMAIL}.")],
    )
    sent = mock_requests(definitions_stack)[-1]["json"]
    spec = sent["toolConfig"]["tools"][0]["toolSpec"]
    assert spec["description"] == "Send mail as <EMAIL>."
    assert spec["inputSchema"]["json"]["properties"]["to"]["description"] == "Like <EMAIL>."


def test_a_strict_schemas_enum_of_two_addresses_reaches_the_provider_distinct(
    definitions_stack: LocalStack,
) -> None:
    # Masked alike, the two values would be one listed twice, which strict mode refuses
    # (the mock too): the second gets a suffix, and the request is answered.
    schema = {"type": "object", "properties": {"to": {"type": "string",
              "enum": [EMAIL, "bob@example.com"], "description": "The recipient."}},
              "required": ["to"], "additionalProperties": False}  # fmt: skip
    output = {"type": "json_schema",
              "json_schema": {"name": "recipient", "strict": True, "schema": schema}}  # fmt: skip
    completion = client(definitions_stack).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Whom should the report go to?"}],
        response_format=output,  # type: ignore[arg-type]
    )
    sent = mock_requests(definitions_stack)[-1]["json"]
    assert "example.com" not in json.dumps(sent)
    to = sent["response_format"]["json_schema"]["schema"]["properties"]["to"]
    assert to["enum"] == ["<EMAIL>", "<EMAIL>#2"]
    assert sent["response_format"]["json_schema"]["strict"] is True
    # The mock answers the schema's first value, as the model may: masked, not unmasked.
    answer = completion.choices[0].message.content
    assert answer is not None and json.loads(answer) == {"to": "<EMAIL>"}


def test_a_strict_schemas_enum_of_objects_masked_alike_is_answered(
    definitions_stack: LocalStack,
) -> None:
    # JSON Schema allows any JSON value in an enum: two objects whose addresses were
    # masked alike were one value listed twice, and strict mode (the mock too) refused the
    # schema with a 400. The string that made the second equal gets the suffix.
    schema = {"type": "object", "properties": {"to": {
              "enum": [{"mail": EMAIL}, {"mail": "bob@example.com"}],
              "description": "The recipient."}},
              "required": ["to"], "additionalProperties": False}  # fmt: skip
    output = {"type": "json_schema",
              "json_schema": {"name": "recipient", "strict": True, "schema": schema}}  # fmt: skip
    completion = client(definitions_stack).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Whom should the report go to?"}],
        response_format=output,  # type: ignore[arg-type]
    )
    sent = mock_requests(definitions_stack)[-1]["json"]
    assert "example.com" not in json.dumps(sent)
    to = sent["response_format"]["json_schema"]["schema"]["properties"]["to"]
    assert to["enum"] == [{"mail": "<EMAIL>"}, {"mail": "<EMAIL>#2"}]
    assert completion.choices[0].message.content is not None
