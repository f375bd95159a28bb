"""An agent's history with tool call ids from another provider, translated to Anthropic
and to Bedrock.

Through the real Envoy and gateway to the mock providers, read by the openai client. The
mocks refuse what the providers refuse: Anthropic a tool id outside ``^[a-zA-Z0-9_-]+$``,
Converse a ``toolUseId`` that is not 1 to 64 of ``[a-zA-Z0-9_-]``. An agent that switched
models mid-conversation replays the calls another provider made
(``functions.get_weather:0``, ids past 64 characters), OpenAI-style empty assistant text
beside the calls and a tool that printed nothing: the next turn must be answered, and
billed, with each result still answering its own call.
"""

from __future__ import annotations

import re
from typing import Any

from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests
from tests.integration.tool_script import QUESTION, TIME, WEATHER

KEY = "team1-key"
KIMI_ID = "functions.get_weather:0"
LONG_ID = "call_" + "7" * 80
CALLS: Any = [
    {
        "id": KIMI_ID,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
    },
    {"id": LONG_ID, "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
]
HISTORY: Any = [
    QUESTION,
    {"role": "assistant", "content": "", "tool_calls": CALLS},
    {"role": "tool", "tool_call_id": LONG_ID, "content": ""},
    {"role": "tool", "tool_call_id": KIMI_ID, "content": "18 °C"},
]
PROVIDER_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")


def answered_and_billed(
    stack: LocalStack, gateway_log: GatewayLog, route: str, model: str
) -> list[dict[str, Any]]:
    """Send HISTORY on ``route``; check it was answered and billed; the messages the
    provider got."""
    client = OpenAI(base_url=f"{stack.base_url}{route}", api_key=KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=HISTORY, tools=[WEATHER, TIME]
    )
    # Before: the provider's 400 ("String should match pattern", "Member must satisfy
    # regular expression pattern").
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "stop"
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert completion.usage is not None
    assert line["prompt_tokens"] == completion.usage.prompt_tokens > 0
    messages: list[dict[str, Any]] = mock_requests(stack)[-1]["json"]["messages"]
    return messages


def test_anthropic_gets_ids_it_takes_for_a_foreign_history(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    sent = answered_and_billed(stack, gateway_log, "/anthropic", "claude-3-5-haiku-latest")
    calls = [block["id"] for block in sent[1]["content"] if block["type"] == "tool_use"]
    results = {block["tool_use_id"]: block.get("content") for block in sent[2]["content"]}
    assert len(calls) == len(CALLS)
    assert all(PROVIDER_ID.fullmatch(call_id) for call_id in calls)
    assert results[calls[0]] == "18 °C"
    assert set(results) == set(calls)


def test_bedrock_gets_ids_it_takes_for_a_foreign_history(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    sent = answered_and_billed(stack, gateway_log, "/bedrock/haiku", "haiku")
    calls = [block["toolUse"]["toolUseId"] for block in sent[1]["content"]]
    results = {
        block["toolResult"]["toolUseId"]: block["toolResult"]["content"]
        for block in sent[2]["content"]
    }
    assert all(PROVIDER_ID.fullmatch(call_id) for call_id in calls)
    # Each result still answers its own call, the empty one as an empty text.
    assert results == {calls[0]: [{"text": "18 °C"}], calls[1]: [{"text": ""}]}
