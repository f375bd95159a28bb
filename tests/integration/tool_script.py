"""A scripted tool-calling turn, shared by the translated providers' tool-call tests.

The mocks answer it (``x-mock-reply`` and ``x-mock-tool-calls``, docs/mock-llm.md)
the way Anthropic and Bedrock stream text and tool input: the client must see two
calls whose arguments join into exactly these pieces. The ``assert_*`` helpers check
what the client reads of that turn, whichever provider answered it (only the form
of the call ids differs), and ``send_the_results`` is the agent's next turn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import orjson
from openai import OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamEvent
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionMessage,
    ChatCompletionMessageFunctionToolCall,
    ParsedChatCompletion,
)

from tests.integration.conftest import GatewayLog

QUESTION: Any = {"role": "user", "content": "Weather in Paris and the time in Lyon?"}
# Strict function tools: what the openai client's stream() helper requires.
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
# What the model says before calling, and each call's arguments as the provider streams them.
SAID = ["Let", " me", " check", "."]
WEATHER_PIECES = ['{"city": "Pa', 'ris", "un', 'it": "°C"}']
TIME_PIECES = ['{"city"', ': "Lyon"}']
# Headers are ASCII: json.dumps escapes the degree sign, which the mock sends as UTF-8.
SCRIPT = {
    "x-mock-reply": json.dumps(SAID),
    "x-mock-tool-calls": json.dumps(
        [
            {"name": "get_weather", "arguments": WEATHER_PIECES},
            {"name": "get_time", "arguments": TIME_PIECES},
        ]
    ),
}
# Output tokens the mock reports: the text pieces and the calls' input pieces.
OUTPUT_TOKENS = len(SAID) + len(WEATHER_PIECES) + len(TIME_PIECES)
# What the client must read back as each call's arguments, in order.
ARGUMENTS = [{"city": "Paris", "unit": "°C"}, {"city": "Lyon"}]


def function_calls(message: ChatCompletionMessage) -> list[ChatCompletionMessageFunctionToolCall]:
    """The message's function calls, in order (the SDK's union also holds custom tools)."""
    return [
        call
        for call in message.tool_calls or []
        if isinstance(call, ChatCompletionMessageFunctionToolCall)
    ]


def assert_distinct_ids(ids: list[str], id_prefix: str) -> None:
    """Two calls, two ids in the provider's own form (an agent answers each by its id)."""
    assert len(set(ids)) == 2 and all(i.startswith(id_prefix) for i in ids)


def ask_the_turn(client: OpenAI, model: str) -> tuple[ChatCompletion, str]:
    """The scripted turn, answered whole: the completion and its request's id."""
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[QUESTION], tools=[WEATHER, TIME], extra_headers=SCRIPT
    )
    return raw.parse(), raw.headers["x-request-id"]


def stream_the_turn(
    client: OpenAI, model: str
) -> tuple[list[ChatCompletionStreamEvent[None]], ParsedChatCompletion[None], str]:
    """The scripted turn, streamed and read with the SDK's ``stream()`` helper: its
    events, the completion they add up to, and the request's id."""
    with client.chat.completions.stream(
        model=model,
        messages=[QUESTION],
        tools=[WEATHER, TIME],
        stream_options={"include_usage": True},
        extra_headers=SCRIPT,
    ) as stream:
        events = list(stream)
        final = stream.get_final_completion()
    # The gateway names each chunk after the request, as its log line does.
    return events, final, final.id.removeprefix("chatcmpl-")


def assert_whole_answer_calls(
    completion: ChatCompletion, id_prefix: str
) -> list[ChatCompletionMessageFunctionToolCall]:
    """The scripted turn, read whole: the text said first, then both calls with their
    arguments as OpenAI sends them (a JSON string holding the provider's input)."""
    choice = completion.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("Let me check.", "tool_calls")
    calls = function_calls(choice.message)
    assert [(call.type, call.function.name) for call in calls] == [
        ("function", "get_weather"),
        ("function", "get_time"),
    ]
    assert [orjson.loads(call.function.arguments) for call in calls] == ARGUMENTS
    assert_distinct_ids([call.id for call in calls], id_prefix)
    return calls


def assert_streamed_calls(
    events: Sequence[ChatCompletionStreamEvent[Any]],
    final: ParsedChatCompletion[Any],
    id_prefix: str,
) -> None:
    """The scripted turn, streamed and read with the SDK's ``stream()`` helper."""
    choice = final.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("Let me check.", "tool_calls")
    calls = choice.message.tool_calls or []
    # The arguments are exactly the provider's pieces, joined.
    assert [(call.function.name, call.function.arguments) for call in calls] == [
        ("get_weather", "".join(WEATHER_PIECES)),
        ("get_time", "".join(TIME_PIECES)),
    ]
    assert [call.function.parsed_arguments for call in calls] == ARGUMENTS
    # Each call is announced once (id, type and name on its first delta only) at its place
    # among the calls, so the client's accumulation keeps two calls with distinct ids, not
    # ids glued together.
    ids = [call.id for call in calls]
    assert_distinct_ids(ids, id_prefix)
    deltas = [
        delta
        for event in events
        if event.type == "chunk"
        for c in event.chunk.choices
        for delta in c.delta.tool_calls or []
    ]
    firsts = [
        (delta.index, delta.id, delta.type, delta.function.name if delta.function else None)
        for delta in deltas
        if delta.id or delta.type or (delta.function and delta.function.name)
    ]
    assert firsts == [
        (0, ids[0], "function", "get_weather"),
        (1, ids[1], "function", "get_time"),
    ]
    pieces = [
        (delta.index, delta.function.arguments)
        for delta in deltas
        if delta.function and delta.function.arguments
    ]
    assert pieces == [(0, p) for p in WEATHER_PIECES] + [(1, p) for p in TIME_PIECES]
    done = [(e.index, e.name) for e in events if e.type == "tool_calls.function.arguments.done"]
    assert done == [(0, "get_weather"), (1, "get_time")]


def assert_billed_as_reported(
    completion: ChatCompletion, gateway_log: GatewayLog, request_id: str
) -> None:
    """The client is told the mock's output tokens, and the log bills what it was told."""
    assert completion.usage is not None
    assert completion.usage.completion_tokens == OUTPUT_TOKENS
    [line] = gateway_log.for_request(request_id)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (
        completion.usage.prompt_tokens,
        OUTPUT_TOKENS,
    )


def send_the_results(
    client: OpenAI,
    model: str,
    message: ChatCompletionMessage,
    calls: list[ChatCompletionMessageFunctionToolCall],
) -> ChatCompletion:
    """The agent's next turn: it ran both tools and answers with two tool messages (the
    second as content parts), after the assistant message that made the calls."""
    return client.chat.completions.create(
        model=model,
        messages=[
            QUESTION,
            message.model_dump(exclude_none=True),  # type: ignore[list-item]
            {"role": "tool", "tool_call_id": calls[0].id, "content": "18 °C"},
            {
                "role": "tool",
                "tool_call_id": calls[1].id,
                "content": [{"type": "text", "text": "12:00"}],
            },
        ],
        tools=[WEATHER, TIME],
    )
