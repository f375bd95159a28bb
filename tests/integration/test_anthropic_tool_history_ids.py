"""An agent's history with tool call ids from another provider, translated to Anthropic.

Through the real Envoy and gateway to the mock Anthropic API (which refuses, as Anthropic
does, a tool id outside ``^[a-zA-Z0-9_-]+$``), read by the openai client. An agent that
switched models mid-conversation replays the calls another provider made
(``functions.get_weather:0``): the next turn must be answered, and billed.
"""

from __future__ import annotations

import re
from typing import Any

from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests
from tests.integration.test_bedrock_tool_history_ids import CALLS, HISTORY, KIMI_ID
from tests.integration.tool_script import TIME, WEATHER

KEY = "team1-key"


def test_a_history_with_foreign_tool_call_ids_is_answered_and_billed(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = OpenAI(base_url=f"{stack.base_url}/anthropic", api_key=KEY, max_retries=0)

    raw = client.chat.completions.with_raw_response.create(
        model="claude-3-5-haiku-latest", messages=HISTORY, tools=[WEATHER, TIME]
    )

    # Before: Anthropic's 400 "tool_use.id: String should match pattern".
    completion = raw.parse()
    assert completion.choices[0].finish_reason == "stop"
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert completion.usage is not None
    assert line["prompt_tokens"] == completion.usage.prompt_tokens > 0

    sent: Any = mock_requests(stack)[-1]["json"]["messages"]
    calls = [block["id"] for block in sent[1]["content"] if block["type"] == "tool_use"]
    results = {block["tool_use_id"]: block.get("content") for block in sent[2]["content"]}
    assert len(calls) == len(CALLS)
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]+", call_id) for call_id in calls)
    assert KIMI_ID not in calls
    # Each result still answers its own call (the Kimi call's result is "18 °C").
    assert results[calls[0]] == "18 °C"
    assert set(results) == set(calls)
