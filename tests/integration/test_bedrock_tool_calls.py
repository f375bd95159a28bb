"""Tool calls through the real Envoy, gateway and mock Bedrock, read by the openai client.

An agent needs each call back exactly as the model made it (its id, its name, its arguments
as the provider's JSON), ``finish_reason`` "tool_calls" and the usage billed; and it sends
the results back, which Converse takes only as one user turn of ``toolResult`` blocks that
answer every call of the turn before. The mock answers the calls a test scripts
(``x-mock-tool-calls``) in Converse's wire format (``toolUse`` blocks; streamed as
``contentBlockStart`` then ``toolUse`` input deltas) and checks the results as Bedrock does.

An agent's last turn often sends its whole history, tool calls and results included, with no
``tools`` (it wants a summary, not another call): OpenAI takes it, Converse refuses tool
blocks without a ``toolConfig``. The gateway sends that history as text, so the answer comes
and the model cannot call a tool the client did not offer.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletion

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests
from tests.integration.tool_script import (
    QUESTION,
    SCRIPT,
    TIME,
    WEATHER,
    ask_the_turn,
    assert_billed_as_reported,
    assert_streamed_calls,
    assert_whole_answer_calls,
    function_calls,
    send_the_results,
    stream_the_turn,
)

KEY = "team1-key"
# A history an agent built with tools: the calls and their results.
CALLS: Any = [
    {
        "id": "call_w",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "°C"}'},
    },
    {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
]
HISTORY: Any = [
    QUESTION,
    {"role": "assistant", "content": "Let me check.", "tool_calls": CALLS},
    {"role": "tool", "tool_call_id": "call_w", "content": "18 °C, sunny"},
    {"role": "tool", "tool_call_id": "call_t", "content": [{"type": "text", "text": "12:00"}]},
    {"role": "user", "content": "Sum it up in one line."},
]


def bedrock_client(stack: LocalStack) -> OpenAI:
    # `/bedrock/haiku` is a route prefix: the SDK posts to /bedrock/haiku/chat/completions.
    return OpenAI(base_url=f"{stack.base_url}/bedrock/haiku", api_key=KEY, max_retries=0)


def test_a_whole_answer_gives_each_call_with_its_id_and_arguments(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    completion, request_id = ask_the_turn(bedrock_client(stack), "haiku")

    assert_whole_answer_calls(completion, id_prefix="tooluse_")
    assert_billed_as_reported(completion, gateway_log, request_id)


def test_a_streamed_answer_gives_the_stream_helper_each_call_exactly(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    events, final, request_id = stream_the_turn(bedrock_client(stack), "haiku")

    assert_streamed_calls(events, final, id_prefix="tooluse_")
    assert_billed_as_reported(final, gateway_log, request_id)


def test_the_results_go_back_as_one_user_turn_of_tool_results_in_order(
    stack: LocalStack,
) -> None:
    client = bedrock_client(stack)
    asked, _ = ask_the_turn(client, "haiku")
    message = asked.choices[0].message
    calls = function_calls(message)

    answer = send_the_results(client, "haiku", message, calls)

    # The mock, as Bedrock, refuses results that do not answer the calls just before.
    assert answer.choices[0].finish_reason == "stop"
    sent = mock_requests(stack)[-1]["json"]["messages"]
    assert [turn["role"] for turn in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"] == [
        {"text": "Let me check."},
        {
            "toolUse": {
                "toolUseId": calls[0].id,
                "name": "get_weather",
                "input": {"city": "Paris", "unit": "°C"},
            }
        },
        {"toolUse": {"toolUseId": calls[1].id, "name": "get_time", "input": {"city": "Lyon"}}},
    ]
    assert sent[2]["content"] == [
        {"toolResult": {"toolUseId": calls[0].id, "content": [{"text": "18 °C"}]}},
        {"toolResult": {"toolUseId": calls[1].id, "content": [{"text": "12:00"}]}},
    ]


def test_a_call_left_unanswered_is_bedrocks_400_naming_it(stack: LocalStack) -> None:
    messages: Any = [*HISTORY[:3], {"role": "user", "content": "and the time?"}]

    with pytest.raises(openai.BadRequestError) as refused:
        bedrock_client(stack).chat.completions.create(
            model="haiku", messages=messages, tools=[WEATHER, TIME]
        )

    assert refused.value.status_code == 400
    assert refused.value.code == "ValidationException"
    assert "Expected toolResult blocks at messages.2.content" in refused.value.message
    assert "call_t" in refused.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_history_with_tool_calls_but_no_tools_is_answered(
    stack: LocalStack, gateway_log: GatewayLog, stream: bool
) -> None:
    # An agent's final summary turn: its history holds calls and results, and no tools.
    client = bedrock_client(stack)
    final: ChatCompletion
    if stream:
        with client.chat.completions.stream(
            model="haiku", messages=HISTORY, stream_options={"include_usage": True}
        ) as events:
            final = events.get_final_completion()
        request_id = final.id.removeprefix("chatcmpl-")
    else:
        raw = client.chat.completions.with_raw_response.create(model="haiku", messages=HISTORY)
        final, request_id = raw.parse(), raw.headers["x-request-id"]

    # Bedrock (and the mock) refused it with a 400: toolConfig must be defined.
    choice = final.choices[0]
    assert choice.finish_reason == "stop"
    assert (choice.message.content or "").startswith("Mock reply to: ")
    assert not choice.message.tool_calls
    [line] = gateway_log.for_request(request_id)
    assert final.usage is not None
    assert line["completion_tokens"] == final.usage.completion_tokens > 0

    # The model still reads what was called, with what, and what came back.
    sent = mock_requests(stack)[-1]["json"]
    assert "toolConfig" not in sent
    assert [turn["role"] for turn in sent["messages"]] == ["user", "assistant", "user"]
    said = json.dumps(sent["messages"][1:], ensure_ascii=False)
    assert "toolUse" not in said and "toolResult" not in said
    assistant = " ".join(block["text"] for block in sent["messages"][1]["content"])
    assert "Let me check." in assistant
    assert "get_weather" in assistant and '"city":"Paris"' in assistant
    assert "get_time" in assistant
    results = " ".join(block["text"] for block in sent["messages"][2]["content"])
    assert "get_weather" in results and "18 °C, sunny" in results
    assert "get_time" in results and "12:00" in results
    assert results.endswith("Sum it up in one line.")


def test_tool_choice_none_with_tool_history_gets_no_tool_call(stack: LocalStack) -> None:
    # The client offers its tools but forbids a call now; the model (scripted) would call one.
    completion = bedrock_client(stack).chat.completions.create(
        model="haiku",
        messages=HISTORY,
        tools=[WEATHER, TIME],
        tool_choice="none",
        extra_headers={"x-mock-tool-calls": SCRIPT["x-mock-tool-calls"]},
    )

    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert not choice.message.tool_calls
    assert (choice.message.content or "").startswith("Mock reply to: ")
    assert "toolConfig" not in mock_requests(stack)[-1]["json"]


# --- a tool call Bedrock stopped as malformed ------------------------------------------------

MALFORMED = {**SCRIPT, "x-mock-stop-reason": "malformed_tool_use"}


def test_a_malformed_tool_call_is_an_error_the_client_retries_not_a_stop(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # Before: finish_reason "tool_calls" or "stop", as if the answer were whole; an
    # agent ran a broken call or none. Now a 502 the SDK retries (max_retries here 0).
    with pytest.raises(openai.InternalServerError) as raised:
        bedrock_client(stack).chat.completions.create(
            model="haiku", messages=[QUESTION], tools=[WEATHER, TIME], extra_headers=MALFORMED
        )
    assert raised.value.status_code == 502
    assert raised.value.code == "malformed_tool_use"
    request_id = raised.value.response.headers["x-request-id"]
    [line] = gateway_log.for_request(request_id)
    assert (line["http_status_code"], line["outcome"]) == (502, "upstream_error")
    assert line["error_code"] == "malformed_tool_use"
    # Bedrock billed the tokens it reported: charged as reported, not estimated.
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    assert line["completion_tokens"] > 0


def test_a_malformed_streamed_tool_call_ends_with_an_error_the_sdk_raises(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = bedrock_client(stack)
    with client.chat.completions.with_streaming_response.create(
        model="haiku",
        messages=[QUESTION],
        tools=[WEATHER, TIME],
        stream=True,
        extra_headers=MALFORMED,
    ) as response:
        request_id = response.headers["x-request-id"]
        reasons: list[str | None] = []
        with pytest.raises(openai.APIError) as raised:
            for chunk in response.parse():
                reasons.extend(choice.finish_reason for choice in chunk.choices)
    assert raised.value.code == "malformed_tool_use"
    assert set(reasons) == {None}  # no finish reason told the agent the answer was whole
    [line] = gateway_log.for_request(request_id)
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    assert line["error_code"] == "malformed_tool_use"
    assert line["completion_tokens"] > 0
