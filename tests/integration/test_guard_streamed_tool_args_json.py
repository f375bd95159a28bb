"""Streamed tool-call arguments are guarded as the JSON the client parses, through the real
Envoy with the official SDKs.

The mock provider's answer calls ``send_email`` (scripted with ``x-mock-tool-calls``), its
input cut into chosen ``input_json_delta`` pieces: an address spelled with a JSON escape
(``jane\\u0040example.com``, the escape itself cut in two) and a card written as a JSON
number cut over three pieces. The Anthropic SDK's stream helper parses the input as it
grows: it gets the address and the card masked, as JSON it can parse. A key spelled with
an escape ends an OpenAI client's stream with the guard's error.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, guarded_config, running_stack, write_config
from tests.integration.test_guard_tool_calls import CLAUDE, SEND_EMAIL, claude, gpt

KEY_MESSAGE = "API keys must not leave in an answer."
KEY = "sk-" + "a1B2c3D4e5" * 4
OPENAI_TOOL: Any = {
    "type": "function",
    "function": {"name": "send_email", "parameters": SEND_EMAIL["input_schema"]},
}
# {"to": "jane@example.com", "card": 4111111111111111} as a model may write and cut it.
ESCAPED_PIECES = ['{"to": "jane', "\\u00", '40example.com", "card": 4111', "1111111111", "11}"]
# The key with its "s" written \u0073, cut in two.
KEY_PIECES = ['{"to": "ops", "token": "\\u0073' + KEY[1:12], KEY[12:] + '"}']

ANSWER_GUARDS: dict[str, Any] = {
    "name": "answer-guards",
    "response": [
        {"name": "api-keys", "patterns": [r"sk-[A-Za-z0-9]{32,64}"], "message": KEY_MESSAGE},
        {"name": "pii-out", "builtins": ["EMAIL", "CREDIT_CARD"], "action": "mask"},
    ],
}


def script(pieces: list[str]) -> dict[str, str]:
    return {"x-mock-tool-calls": json.dumps([{"name": "send_email", "arguments": pieces}])}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("guard-streamed-tool-args-json")
    raw = guarded_config(ANSWER_GUARDS, "anthropic-messages", "anthropic")
    with running_stack(workdir, write_config(workdir, raw)) as running:
        yield running


def decisions(stack: LocalStack, request_id: str) -> list[dict[str, str]]:
    [line] = GatewayLog(stack.gateway_log).for_request(request_id)
    decided: list[dict[str, str]] = line["guardrails"]
    return decided


def test_escaped_and_numeric_values_reach_an_anthropic_client_masked_as_valid_json(
    guarded: LocalStack,
) -> None:
    with claude(guarded).messages.stream(
        model=CLAUDE,
        max_tokens=100,
        tools=[SEND_EMAIL],
        messages=[{"role": "user", "content": "Email the card to Jane."}],
        extra_headers=script(ESCAPED_PIECES),
    ) as stream:
        partials = [
            event.delta.partial_json
            for event in stream
            if event.type == "content_block_delta" and event.delta.type == "input_json_delta"
        ]
        answer = stream.get_final_message()
        request_id = stream.response.headers["x-request-id"]
    [call] = [block for block in answer.content if block.type == "tool_use"]
    assert call.input == {"to": "<EMAIL>", "card": "<CREDIT_CARD>"}
    shown = "".join(partials)
    assert "jane" not in shown and "4111" not in shown
    assert {"guard": "pii-out", "phase": "response", "action": "mask"} in decisions(
        guarded, request_id
    )


def test_an_escaped_key_in_streamed_arguments_ends_an_openai_clients_stream(
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
    assert KEY[3:12] not in "".join(shown)
    request_id = stream.response.headers["x-request-id"]
    assert {"guard": "api-keys", "phase": "response", "action": "reject"} in decisions(
        guarded, request_id
    )
