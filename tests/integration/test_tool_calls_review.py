"""Tool calls through the real Envoy, gateway and mock Anthropic, read by the openai client.

An agent needs each call back exactly as the model made it: its id, its name, and its
arguments as the provider's JSON; text said before the calls; ``finish_reason`` "tool_calls";
the usage billed. The mock answers the calls a test scripts (``x-mock-tool-calls``), in
Anthropic's wire format (``tool_use`` blocks; streamed as ``input_json_delta`` fragments).
"""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai import OpenAI

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests
from tests.integration.tool_script import (
    QUESTION,
    WEATHER,
    ask_the_turn,
    assert_billed_as_reported,
    assert_streamed_calls,
    assert_whole_answer_calls,
    send_the_results,
    stream_the_turn,
)

KEY = "team1-key"
MODEL = "claude-3-5-haiku-latest"


def openai_client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/anthropic", api_key=KEY, max_retries=0)


def test_a_streamed_answer_gives_the_stream_helper_each_call_exactly(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    events, final, request_id = stream_the_turn(openai_client(stack), MODEL)

    assert_streamed_calls(events, final, id_prefix="toolu_")
    assert_billed_as_reported(final, gateway_log, request_id)


def test_a_whole_answer_with_text_and_two_calls_and_its_results_round_trip(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = openai_client(stack)
    completion, request_id = ask_the_turn(client, MODEL)

    calls = assert_whole_answer_calls(completion, id_prefix="toolu_")
    assert_billed_as_reported(completion, gateway_log, request_id)

    # Anthropic takes the results only as one user turn of tool_result blocks, ids kept.
    answer = send_the_results(client, MODEL, completion.choices[0].message, calls)
    assert answer.choices[0].finish_reason == "stop"
    sent = mock_requests(stack)[-1]["json"]["messages"]
    assert [turn["role"] for turn in sent] == ["user", "assistant", "user"]
    assert [(b["type"], b.get("id"), b.get("input")) for b in sent[1]["content"]] == [
        ("text", None, None),
        ("tool_use", calls[0].id, {"city": "Paris", "unit": "°C"}),
        ("tool_use", calls[1].id, {"city": "Lyon"}),
    ]
    assert [(b["type"], b["tool_use_id"], b["content"]) for b in sent[2]["content"]] == [
        ("tool_result", calls[0].id, "18 °C"),
        ("tool_result", calls[1].id, [{"type": "text", "text": "12:00"}]),
    ]


@pytest.mark.parametrize(
    "legacy",
    [
        {"functions": [WEATHER["function"]]},
        {"functions": [WEATHER["function"]], "function_call": {"name": "get_weather"}},
    ],
    ids=["functions", "function_call"],
)
def test_the_deprecated_functions_are_refused_not_silently_dropped(
    stack: LocalStack, legacy: dict[str, Any]
) -> None:
    # Dropped, they would leave Claude without the function: the client would get a text
    # answer where it waits for a function call, and pay for it.
    before = len(mock_requests(stack))
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client(stack).chat.completions.create(model=MODEL, messages=[QUESTION], **legacy)
    assert refused.value.status_code == 400
    assert refused.value.param == "functions"
    assert "tools" in refused.value.message
    assert len(mock_requests(stack)) == before, "nothing reaches the provider"
