"""Tool calls through the real Envoy, gateway and mock Anthropic, read by the openai client.

An agent needs each call back exactly as the model made it: its id, its name, and its
arguments as the provider's JSON; text said before the calls; ``finish_reason`` "tool_calls";
the usage billed. The mock answers the calls a test scripts (``x-mock-tool-calls``), in
Anthropic's wire format (``tool_use`` blocks; streamed as ``input_json_delta`` fragments).
"""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageFunctionToolCall

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests
from tests.integration.tool_script import (
    OUTPUT_TOKENS,
    QUESTION,
    SCRIPT,
    TIME,
    TIME_PIECES,
    WEATHER,
    WEATHER_PIECES,
)

KEY = "team1-key"
MODEL = "claude-3-5-haiku-latest"


def openai_client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}/anthropic", api_key=KEY, max_retries=0)


def test_a_streamed_answer_gives_the_stream_helper_each_call_exactly(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    with openai_client(stack).chat.completions.stream(
        model=MODEL,
        messages=[QUESTION],
        tools=[WEATHER, TIME],
        stream_options={"include_usage": True},
        extra_headers=SCRIPT,
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    # The gateway names each chunk after the request, as its log line does.
    request_id = final.id.removeprefix("chatcmpl-")

    choice = final.choices[0]
    assert choice.message.content == "Let me check."
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [(call.function.name, call.function.arguments) for call in calls] == [
        ("get_weather", "".join(WEATHER_PIECES)),
        ("get_time", "".join(TIME_PIECES)),
    ]
    assert [call.function.parsed_arguments for call in calls] == [
        {"city": "Paris", "unit": "°C"},
        {"city": "Lyon"},
    ]
    # Each call is announced once (its id, type and name on its first delta only), so the
    # client's accumulation gives two distinct ids, not ids glued together.
    ids = [call.id for call in calls]
    assert len(set(ids)) == 2 and all(i.startswith("toolu_") for i in ids)
    firsts = [
        (delta.index, delta.id, delta.type, delta.function.name if delta.function else None)
        for event in events
        if event.type == "chunk"
        for c in event.chunk.choices
        for delta in c.delta.tool_calls or []
        if delta.id or delta.type or (delta.function and delta.function.name)
    ]
    assert firsts == [
        (0, ids[0], "function", "get_weather"),
        (1, ids[1], "function", "get_time"),
    ]
    done = [(e.index, e.name) for e in events if e.type == "tool_calls.function.arguments.done"]
    assert done == [(0, "get_weather"), (1, "get_time")]

    assert final.usage is not None
    assert final.usage.completion_tokens == OUTPUT_TOKENS
    [line] = gateway_log.for_request(request_id)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        final.usage.prompt_tokens,
        OUTPUT_TOKENS,
    )


def test_a_whole_answer_with_text_and_two_calls_and_its_results_round_trip(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = openai_client(stack)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[QUESTION], tools=[WEATHER, TIME], extra_headers=SCRIPT
    )
    completion = raw.parse()

    choice = completion.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("Let me check.", "tool_calls")
    calls = [
        call
        for call in choice.message.tool_calls or []
        if isinstance(call, ChatCompletionMessageFunctionToolCall)
    ]
    assert [(call.type, call.function.name) for call in calls] == [
        ("function", "get_weather"),
        ("function", "get_time"),
    ]
    assert [orjson.loads(call.function.arguments) for call in calls] == [
        {"city": "Paris", "unit": "°C"},
        {"city": "Lyon"},
    ]
    assert completion.usage is not None
    assert completion.usage.completion_tokens == OUTPUT_TOKENS
    [line] = gateway_log.for_request(raw.headers["x-request-id"])
    assert line["completion_tokens"] == OUTPUT_TOKENS

    # The agent runs both tools and answers with two tool messages (one as content parts);
    # Anthropic takes them only as one user turn of tool_result blocks, ids kept.
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[
            QUESTION,
            choice.message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": calls[0].id, "content": "18 °C"},
            {
                "role": "tool",
                "tool_call_id": calls[1].id,
                "content": [{"type": "text", "text": "12:00"}],
            },
        ],
        tools=[WEATHER, TIME],
    )
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
