"""Response guards read streamed tool calls, through the real Envoy with the official SDKs.

The mock provider's answer calls ``send_email`` (scripted with ``x-mock-tool-calls``), its
arguments cut into chosen ``input_json_delta`` pieces: an OpenAI client on ``/anthropic``
gets them as ``tool_calls`` argument deltas, an Anthropic client as they are. An address
cut across pieces reaches either client masked; a key ends the stream with the guard's
error, and no piece of it is shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, guarded_config, running_stack, write_config
from tests.integration.test_guard_tool_calls import CLAUDE, SEND_EMAIL, claude, gpt

KEY_MESSAGE = "API keys must not leave in an answer."
OPENAI_TOOL: Any = {
    "type": "function",
    "function": {"name": "send_email", "parameters": SEND_EMAIL["input_schema"]},
}
ADDRESS_PIECES = ['{"to": "jane.', "doe@exam", 'ple.com"}']
KEY_PIECES = ['{"to": "ops", "token": "sk-live4f', '9a8b7c6d5e"}']


def script(pieces: list[str]) -> dict[str, str]:
    return {"x-mock-tool-calls": json.dumps([{"name": "send_email", "arguments": pieces}])}


ANSWER_GUARDS: dict[str, Any] = {
    "name": "answer-guards",
    "response": [
        {"name": "api-keys", "patterns": [r"sk-[A-Za-z0-9]{8,}"], "message": KEY_MESSAGE},
        {"name": "pii-out", "builtins": ["EMAIL"], "action": "mask"},
    ],
}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guard-streamed-tool-calls")
    raw = guarded_config(ANSWER_GUARDS, "anthropic-messages", "anthropic")
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def decisions(stack: LocalStack, request_id: str) -> list[dict[str, str]]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    decided: list[dict[str, str]] = line["guardrails"]
    return decided


def test_an_address_in_streamed_tool_call_arguments_reaches_an_openai_client_masked(
    guarded: LocalStack,
) -> None:
    stream = gpt(guarded, "/anthropic").chat.completions.create(
        model=CLAUDE,
        tools=[OPENAI_TOOL],
        messages=[{"role": "user", "content": "Email the report to Jane."}],
        stream=True,
        extra_headers=script(ADDRESS_PIECES),
    )
    arguments, fragments, finish = "", [], None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or ():
                piece = call.function.arguments if call.function else None
                fragments.append(piece or "")
                arguments += piece or ""
            finish = choice.finish_reason or finish
    assert json.loads(arguments) == {"to": "<EMAIL>"}
    assert not any("jane" in piece or "@exam" in piece for piece in fragments)
    assert finish == "tool_calls"
    request_id = stream.response.headers["x-request-id"]
    assert {"guard": "pii-out", "phase": "response", "action": "mask"} in decisions(
        guarded, request_id
    )


def test_a_key_in_streamed_tool_call_arguments_ends_an_openai_clients_stream(
    guarded: LocalStack,
) -> None:
    stream = gpt(guarded, "/anthropic").chat.completions.create(
        model=CLAUDE,
        tools=[OPENAI_TOOL],
        messages=[{"role": "user", "content": "Deploy it."}],
        stream=True,
        extra_headers=script(KEY_PIECES),
    )
    shown = []
    with pytest.raises(openai.APIError, match=KEY_MESSAGE):
        for chunk in stream:
            shown.append(chunk.model_dump_json())
    assert "sk-live" not in "".join(shown)
    request_id = stream.response.headers["x-request-id"]
    assert {"guard": "api-keys", "phase": "response", "action": "reject"} in decisions(
        guarded, request_id
    )


def test_an_address_in_a_streamed_tool_use_reaches_an_anthropic_client_masked(
    guarded: LocalStack,
) -> None:
    with claude(guarded).messages.stream(
        model=CLAUDE,
        max_tokens=100,
        tools=[SEND_EMAIL],
        messages=[{"role": "user", "content": "Email the report to Jane."}],
        extra_headers=script(ADDRESS_PIECES),
    ) as stream:
        partials = [
            event.delta.partial_json
            for event in stream
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
        ]
        answer = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    [call] = [block for block in answer.content if block.type == "tool_use"]
    assert call.input == {"to": "<EMAIL>"}
    assert answer.stop_reason == "tool_use"
    assert not any("jane" in piece or "@exam" in piece for piece in partials)
    assert {"guard": "pii-out", "phase": "response", "action": "mask"} in decisions(
        guarded, request_id
    )


def test_a_key_in_a_streamed_tool_use_ends_an_anthropic_clients_stream(
    guarded: LocalStack,
) -> None:
    shown = []
    with (
        pytest.raises(anthropic.APIStatusError, match=KEY_MESSAGE),
        claude(guarded).messages.stream(
            model=CLAUDE,
            max_tokens=100,
            tools=[SEND_EMAIL],
            messages=[{"role": "user", "content": "Deploy it."}],
            extra_headers=script(KEY_PIECES),
        ) as stream,
    ):
        request_id = stream.response.headers["x-request-id"]
        for event in stream:
            shown.append(event.model_dump_json())
    assert "sk-live" not in "".join(shown)
    assert {"guard": "api-keys", "phase": "response", "action": "reject"} in decisions(
        guarded, request_id
    )
