"""The mock answers and refuses like Anthropic's Messages API, so translator bugs show in tests.

What the real API refuses with a 400, the mock refuses too (empty turns, blank text, a final
assistant turn ending in whitespace, unknown fields, tool results that answer no tool call,
sampling parameters that API version 2026-10-21 removed); what it answers, the mock answers in
the same shape (stop sequences, forced tool use with ``input_json_delta`` streams, JSON
answers for ``output_config.format``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic import AsyncAnthropic

from extproc.mock_llm import count_tokens
from extproc.testing import serve_mock

MODEL = "claude-sonnet-4-5"
OLD_API = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
NEW_API = {"x-api-key": "sk-ant-test", "anthropic-version": "2026-10-21"}
USER: Any = {"role": "user", "content": "What is the weather?"}
WEATHER: Any = {
    "name": "get_weather",
    "description": "Weather of a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city"],
    },
}
TIME: Any = {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}


@pytest.fixture(scope="module")
async def mock_url() -> AsyncIterator[str]:
    async with serve_mock() as url:
        yield url


@pytest.fixture
async def client(mock_url: str) -> AsyncIterator[AsyncAnthropic]:
    async with AsyncAnthropic(base_url=mock_url, api_key="sk-ant-test", max_retries=0) as c:
        yield c


@pytest.fixture
async def http(mock_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mock_url) as c:
        yield c


def request(*messages: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 100, "messages": list(messages), **fields}


async def refusal(http: httpx.AsyncClient, body: dict[str, Any], headers: Any = None) -> str:
    """The message of the 400 the mock answers ``body`` with."""
    response = await http.post("/v1/messages", json=body, headers=headers or OLD_API)
    assert response.status_code == 400, response.text
    document = response.json()
    assert document["type"] == "error"
    assert document["error"]["type"] == "invalid_request_error"
    message: str = document["error"]["message"]
    return message


def tool_use(call_id: str, name: str = "get_weather") -> dict[str, Any]:
    return {"type": "tool_use", "id": call_id, "name": name, "input": {"city": "Paris"}}


def tool_result(call_id: str, text: str = "sunny") -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": call_id, "content": text}


# --- what Anthropic refuses ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            [USER, {"role": "assistant", "content": []}, USER],
            "messages.1: all messages must have non-empty content"
            " except for the optional final assistant message",
        ),
        (
            [{"role": "user", "content": ""}],
            "messages.0: all messages must have non-empty content"
            " except for the optional final assistant message",
        ),
        (
            [{"role": "user", "content": [{"type": "text", "text": ""}]}],
            "messages: text content blocks must be non-empty",
        ),
        (
            [{"role": "user", "content": " \n"}],
            "messages: text content blocks must contain non-whitespace text",
        ),
        (
            [USER, {"role": "assistant", "content": "The weather is "}],
            "messages: final assistant content cannot end with trailing whitespace",
        ),
    ],
    ids=["empty-list", "empty-string", "empty-text-block", "blank-text", "trailing-space-prefill"],
)
async def test_empty_or_blank_turns_are_refused_like_anthropic(
    http: httpx.AsyncClient, messages: list[dict[str, Any]], expected: str
) -> None:
    assert await refusal(http, request(*messages)) == expected


async def test_what_anthropic_accepts_around_blank_text_is_accepted(
    http: httpx.AsyncClient,
) -> None:
    # A blank block beside real text, and an empty final assistant turn, are fine.
    mixed = {
        "role": "user",
        "content": [{"type": "text", "text": " "}, {"type": "text", "text": "Hi"}],
    }
    body = request(mixed, {"role": "assistant", "content": ""})
    response = await http.post("/v1/messages", json=body, headers=OLD_API)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "field", ["n", "response_format", "stream_options", "max_completion_tokens"]
)
async def test_fields_anthropic_does_not_know_are_refused(
    http: httpx.AsyncClient, field: str
) -> None:
    message = await refusal(http, request(USER, **{field: 1}))
    assert message == f"{field}: Extra inputs are not permitted"


@pytest.mark.parametrize("field", ["temperature", "top_p", "top_k"])
async def test_api_version_2026_10_21_refuses_sampling_parameters(
    http: httpx.AsyncClient, field: str
) -> None:
    body = request(USER, **{field: 1})
    assert field in await refusal(http, body, NEW_API)
    # The older version still takes them.
    assert (await http.post("/v1/messages", json=body, headers=OLD_API)).status_code == 200


async def test_temperature_above_one_is_refused(http: httpx.AsyncClient) -> None:
    assert (await refusal(http, request(USER, temperature=1.5))).startswith("temperature")


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        (
            [USER, {"role": "assistant", "content": [tool_use("toolu_1")]}, USER],
            "`tool_use` ids were found without `tool_result` blocks immediately after: toolu_1",
        ),
        (
            [
                USER,
                {"role": "assistant", "content": [tool_use("toolu_1")]},
                {"role": "user", "content": [tool_result("toolu_2")]},
            ],
            "unexpected `tool_use_id` found in `tool_result` blocks: toolu_2",
        ),
        (
            [
                USER,
                {"role": "assistant", "content": [tool_use("toolu_1")]},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "ok"}, tool_result("toolu_1")],
                },
            ],
            "tool_result blocks must come first in the content",
        ),
    ],
    ids=["no-result", "result-for-another-call", "result-after-text"],
)
async def test_tool_results_must_answer_the_tool_calls_just_before(
    http: httpx.AsyncClient, messages: list[dict[str, Any]], expected: str
) -> None:
    assert expected in await refusal(http, request(*messages, tools=[WEATHER]))


async def test_tool_results_that_answer_their_calls_are_accepted(http: httpx.AsyncClient) -> None:
    body = request(
        USER,
        {"role": "assistant", "content": [tool_use("toolu_1"), tool_use("toolu_2", "get_time")]},
        {"role": "user", "content": [tool_result("toolu_2"), tool_result("toolu_1")]},
        tools=[WEATHER, TIME],
    )
    response = await http.post("/v1/messages", json=body, headers=OLD_API)
    assert response.status_code == 200, response.text


# --- what Anthropic answers ---------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_a_stop_sequence_cuts_the_reply(client: AsyncAnthropic, stream: bool) -> None:
    fields: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "count to ten"}],
        "stop_sequences": ["nothing", " to"],
    }
    if stream:
        async with client.messages.stream(**fields) as events:
            message = await events.get_final_message()
    else:
        message = await client.messages.create(**fields)

    assert [block.to_dict() for block in message.content] == [
        {"type": "text", "text": "Mock reply"}
    ]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", " to")
    assert message.usage.output_tokens == count_tokens("Mock reply")


async def test_forced_tool_use_calls_every_tool_in_parallel(client: AsyncAnthropic) -> None:
    message = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[USER],
        tools=[WEATHER, TIME],
        tool_choice={"type": "any"},
    )

    assert message.stop_reason == "tool_use"
    calls: list[Any] = [block.to_dict() for block in message.content]
    assert [(call["type"], call["name"]) for call in calls] == [
        ("tool_use", "get_weather"),
        ("tool_use", "get_time"),
    ]
    # Inputs are built from each tool's schema, like the mock's JSON answers.
    assert calls[0]["input"] == {"city": "Mock reply to: What is the weather?", "days": 1}
    assert calls[1]["input"] == {}
    assert len({call["id"] for call in calls}) == 2
    assert all(call["id"].startswith("toolu_") for call in calls)
    assert message.usage.output_tokens == sum(
        count_tokens(orjson.dumps(call["input"]).decode()) for call in calls
    )


@pytest.mark.parametrize(
    ("tool_choice", "names"),
    [
        ({"type": "any", "disable_parallel_tool_use": True}, ["get_weather"]),
        ({"type": "tool", "name": "get_time"}, ["get_time"]),
        ({"type": "auto"}, []),
        ({"type": "none"}, []),
    ],
    ids=["any-one-at-a-time", "named", "auto", "none"],
)
async def test_tool_choice_decides_which_tools_are_called(
    client: AsyncAnthropic, tool_choice: Any, names: list[str]
) -> None:
    message = await client.messages.create(
        model=MODEL, max_tokens=100, messages=[USER], tools=[WEATHER, TIME], tool_choice=tool_choice
    )

    assert [block.name for block in message.content if block.type == "tool_use"] == names
    assert message.stop_reason == ("tool_use" if names else "end_turn")


async def test_streamed_tool_use_sends_input_json_deltas(client: AsyncAnthropic) -> None:
    fields: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 100,
        "messages": [USER],
        "tools": [WEATHER, TIME],
        "tool_choice": {"type": "any"},
    }
    plain = await client.messages.create(**fields)
    raw = await client.messages.create(**fields, stream=True)
    events = [event.to_dict() async for event in raw]
    async with client.messages.stream(**fields) as stream:
        final = await stream.get_final_message()

    starts = [event for event in events if event["type"] == "content_block_start"]
    assert [(e["index"], e["content_block"]["name"]) for e in starts] == [
        (0, "get_weather"),
        (1, "get_time"),
    ]
    assert all(e["content_block"]["input"] == {} for e in starts)
    deltas = [event for event in events if event["type"] == "content_block_delta"]
    assert {delta["delta"]["type"] for delta in deltas} == {"input_json_delta"}
    # Anthropic opens each tool's input with an empty piece.
    assert deltas[0]["delta"]["partial_json"] == ""

    # The stream rebuilds the same calls (ids are unique per answer).
    def calls(blocks: Any) -> list[tuple[str, Any]]:
        return [(block.name, block.input) for block in blocks]

    assert calls(final.content) == calls(plain.content)
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == plain.usage.output_tokens


async def test_output_config_format_answers_json_of_the_schema(client: AsyncAnthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confident": {"type": "boolean"}},
        "required": ["answer", "confident"],
        "additionalProperties": False,
    }
    message = await client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": "Is it raining?"}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )

    block = message.content[0]
    assert block.type == "text"
    assert orjson.loads(block.text) == {
        "answer": "Mock reply to: Is it raining?",
        "confident": True,
    }
    assert message.usage.output_tokens == count_tokens(block.text)


async def test_the_official_client_reads_a_refusal_as_bad_request(client: AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="non-empty content"):
        await client.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": []}]
        )
