"""The mock's Anthropic Messages API, driven over real sockets by the official anthropic client."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic import AsyncAnthropic

from extproc.mock_llm import MockOptions, count_tokens
from extproc.testing import serve_mock
from tests.unit.mock_helpers import anthropic_message

MODEL = "claude-sonnet-4-5"
PROMPT = "Say hello, mock!"
REPLY = "Mock reply to: Say hello, mock!"
# Say hello , mock ! -> 5 tokens, + 4 per message, + 2 per request (as on the OpenAI side).
INPUT_TOKENS = 11
# Mock reply to : Say hello , mock !
OUTPUT_TOKENS = 9
MESSAGES: list[Any] = [{"role": "user", "content": PROMPT}]
HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}


def sse_events(body: bytes) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of an SSE body, checking each event has exactly both lines."""
    events = []
    for block in body.split(b"\n\n"):
        if not block:
            continue
        name_line, data_line = block.split(b"\n")
        assert name_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        events.append((name_line[7:].decode(), orjson.loads(data_line[6:])))
    return events


async def test_message_replies_deterministically_with_usage(
    anthropic_client: AsyncAnthropic,
) -> None:
    message = await anthropic_client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)

    assert message.id.startswith("msg_mock_")
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert message.usage.input_tokens == INPUT_TOKENS
    assert message.usage.output_tokens == OUTPUT_TOKENS == count_tokens(REPLY)


async def test_system_prompt_counts_as_one_more_message(anthropic_client: AsyncAnthropic) -> None:
    plain = await anthropic_client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    as_string = await anthropic_client.messages.create(
        model=MODEL, max_tokens=100, system="Be brief.", messages=MESSAGES
    )
    as_blocks = await anthropic_client.messages.create(
        model=MODEL,
        max_tokens=100,
        system=[{"type": "text", "text": "Be brief."}],
        messages=MESSAGES,
    )

    # Be brief . -> 3 tokens, + 4 for the message.
    assert as_string.usage.input_tokens == plain.usage.input_tokens + 3 + 4
    assert as_blocks.usage == as_string.usage


async def test_reply_quotes_text_blocks_of_the_last_user_message(
    anthropic_client: AsyncAnthropic,
) -> None:
    message = await anthropic_client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": [{"type": "text", "text": "first answer"}]},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
        ],
    )

    assert message.content[0].type == "text" and message.content[0].text == "Mock reply to: second"
    assert message.usage.input_tokens == (2 + 2 + 1) + 3 * 4 + 2


async def test_stream_helper_rebuilds_the_plain_message(anthropic_client: AsyncAnthropic) -> None:
    plain = await anthropic_client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    async with anthropic_client.messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES
    ) as stream:
        deltas = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    assert "".join(deltas) == REPLY
    # Content arrives token by token, not in one lump.
    assert len(deltas) == OUTPUT_TOKENS
    assert [block.to_dict() for block in final.content] == [{"type": "text", "text": REPLY}]
    assert final.stop_reason == "end_turn"
    assert final.usage == plain.usage


async def test_raw_stream_sends_anthropics_event_sequence(anthropic_client: AsyncAnthropic) -> None:
    stream = await anthropic_client.messages.create(
        model=MODEL, max_tokens=100, messages=MESSAGES, stream=True
    )
    events = [event async for event in stream]

    types = [event.type for event in events]
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * OUTPUT_TOKENS,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and delta.type == "message_delta"
    assert start.message.content == []
    assert start.message.usage.input_tokens == INPUT_TOKENS
    assert start.message.usage.output_tokens == 1
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == OUTPUT_TOKENS


async def test_stream_wire_format_is_one_named_event_per_write(http: httpx.AsyncClient) -> None:
    body = {"model": MODEL, "max_tokens": 100, "messages": MESSAGES, "stream": True}
    async with http.stream("POST", "/v1/messages", json=body, headers=HEADERS) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        writes = [chunk async for chunk in response.aiter_raw()]

    events = sse_events(b"".join(writes))
    # The ping the client hides is on the wire, where the gateway sees it.
    assert [name for name, _ in events[:3]] == ["message_start", "content_block_start", "ping"]
    assert all(name == data["type"] for name, data in events)
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": OUTPUT_TOKENS},
    }
    assert events[-1][1] == {"type": "message_stop"}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_max_tokens_truncates_with_stop_reason_max_tokens(
    anthropic_client: AsyncAnthropic, stream: bool
) -> None:
    message = await anthropic_message(
        anthropic_client, MESSAGES, model=MODEL, max_tokens=3, stream=stream
    )

    assert message.content[0].type == "text" and message.content[0].text == "Mock reply to"
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
    assert message.usage.input_tokens == INPUT_TOKENS


async def test_request_without_api_key_raises_authentication_error(
    anthropic_client: AsyncAnthropic,
) -> None:
    # The client sends its key as a bearer token; omitting that leaves no credentials.
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await anthropic_client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=MESSAGES,
            extra_headers={"Authorization": anthropic.omit},
        )

    assert caught.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "x-api-key header is required"},
    }


@pytest.mark.parametrize(
    "credentials",
    [{"x-api-key": "sk-ant-test"}, {"Authorization": "Bearer sk-ant-test"}],
    ids=["x-api-key", "bearer"],
)
async def test_either_credential_header_is_accepted(
    http: httpx.AsyncClient, credentials: dict[str, str]
) -> None:
    response = await http.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 100, "messages": MESSAGES},
        headers={**credentials, "anthropic-version": "2023-06-01"},
    )

    assert response.status_code == 200


async def test_request_without_anthropic_version_is_a_400(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 10, "messages": MESSAGES},
        headers={"x-api-key": "sk-ant-test"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "JSON"),
        (b'{"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}', "max_tokens"),
        (
            b'{"model": "m", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}',
            "max_tokens",
        ),
        (
            b'{"model": "m", "max_tokens": true, "messages": [{"role": "user", "content": "x"}]}',
            "max_tokens",
        ),
        (b'{"model": "m", "max_tokens": 5}', "messages"),
        (b'{"model": "m", "max_tokens": 5, "messages": []}', "messages"),
        (
            b'{"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}',
            "messages.0.role",
        ),
        (
            b'{"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": 7}]}',
            "messages.0.content",
        ),
        (
            b'{"model": "m", "max_tokens": 5,'
            b' "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
            "messages.0.content.0.text",
        ),
        (
            b'{"model": "m", "max_tokens": 5, "system": [{"type": "image"}],'
            b' "messages": [{"role": "user", "content": "hi"}]}',
            "system.0",
        ),
    ],
    ids=[
        "invalid-json",
        "no-model",
        "no-max-tokens",
        "zero-max-tokens",
        "bool-max-tokens",
        "no-messages",
        "empty-messages",
        "bad-role",
        "bad-content",
        "text-block-without-text",
        "non-text-system-block",
    ],
)
async def test_invalid_request_is_a_400_in_anthropic_shape(
    http: httpx.AsyncClient, body: bytes, field: str
) -> None:
    response = await http.post("/v1/messages", content=body, headers=HEADERS)

    assert response.status_code == 400
    document = response.json()
    assert document["type"] == "error"
    assert document["error"]["type"] == "invalid_request_error"
    assert document["error"]["message"].startswith(field) or field in document["error"]["message"]


async def test_invalid_request_raises_bad_request_error(anthropic_client: AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError):
        await anthropic_client.messages.create(model=MODEL, max_tokens=10, messages=[])


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_vertexs_spelling_of_a_model_is_anthropics_404(
    http: httpx.AsyncClient, path: str
) -> None:
    # Vertex names Claude claude-haiku-4-5@20251001; Anthropic knows no name with an @.
    body = {"model": "claude-haiku-4-5@20251001", "max_tokens": 10, "messages": MESSAGES}
    if path.endswith("count_tokens"):
        del body["max_tokens"]
    response = await http.post(path, json=body, headers=HEADERS)

    assert response.status_code == 404
    assert response.json()["error"] == {
        "type": "not_found_error",
        "message": "model: claude-haiku-4-5@20251001",
    }


async def test_gateway_route_prefix_reaches_messages(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/anthropic/v1/messages",
        json={"model": MODEL, "max_tokens": 100, "messages": MESSAGES},
        headers=HEADERS,
    )

    assert response.status_code == 200
    assert response.json()["content"] == [{"type": "text", "text": REPLY}]


@pytest.mark.parametrize(
    ("status", "error", "error_type"),
    [
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
    ],
)
async def test_fault_status_raises_the_clients_matching_error(
    anthropic_client: AsyncAnthropic,
    status: int,
    error: type[anthropic.APIStatusError],
    error_type: str,
) -> None:
    with pytest.raises(error) as caught:
        await anthropic_client.messages.create(
            model=MODEL,
            max_tokens=10,
            messages=MESSAGES,
            extra_headers={"x-mock-fault": f"status={status}"},
        )

    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == error_type
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "1"


async def test_fault_reset_after_cuts_the_stream_short(anthropic_client: AsyncAnthropic) -> None:
    stream = await anthropic_client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-mock-fault": "reset_after=2"},
    )
    received = []
    # The client does not wrap a mid-stream reset; its transport (httpx2) raises its own error.
    with pytest.raises(Exception, match="peer closed connection"):
        async for event in stream:
            received.append(event)

    types = [event.type for event in received]
    assert types.count("content_block_delta") <= 2 < OUTPUT_TOKENS
    assert "message_delta" not in types and "message_stop" not in types


async def test_fault_end_after_ends_the_stream_cleanly_before_its_answer(
    anthropic_client: AsyncAnthropic,
) -> None:
    # What a proxy makes of a cut stream: the body ends whole, the answer does not. The
    # SDK, reading the mock directly, raises nothing: the gateway is what makes it an error.
    stream = await anthropic_client.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-mock-fault": "end_after=2"},
    )
    types = [event.type async for event in stream]
    assert types.count("content_block_delta") == 2 < OUTPUT_TOKENS
    assert "message_delta" not in types and "message_stop" not in types


async def test_fault_reset_after_drops_a_plain_request(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.TransportError):
        await http.post(
            "/v1/messages",
            json={"model": MODEL, "max_tokens": 100, "messages": MESSAGES},
            headers={**HEADERS, "x-mock-fault": "reset_after=0"},
        )


async def test_fault_chunks_streams_exactly_that_many_deltas(
    anthropic_client: AsyncAnthropic,
) -> None:
    async with anthropic_client.messages.stream(
        model=MODEL,
        max_tokens=1000,
        messages=MESSAGES,
        extra_headers={"x-mock-fault": "chunks=50"},
    ) as stream:
        deltas = [text async for text in stream.text_stream]
        final = await stream.get_final_message()

    assert len(deltas) == 50
    assert "".join(deltas).startswith(REPLY)
    assert final.usage.output_tokens == 50


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
async def test_fault_garbage_answers_200_with_data_that_is_not_json(
    http: httpx.AsyncClient, stream: bool
) -> None:
    response = await http.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 100, "messages": MESSAGES, "stream": stream},
        headers={**HEADERS, "x-mock-fault": "garbage=1"},
    )

    assert response.status_code == 200
    with pytest.raises(ValueError):
        if stream:
            sse_events(response.content)
        else:
            response.json()


async def test_default_fault_applies_to_anthropic_too() -> None:
    async with (
        serve_mock(MockOptions(default_fault="status=529")) as url,
        AsyncAnthropic(base_url=url, api_key="sk-ant-test", max_retries=0) as client,
    ):
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
        message = await client.messages.create(
            model=MODEL, max_tokens=100, messages=MESSAGES, extra_headers={"x-mock-fault": ""}
        )
        assert message.content[0].type == "text" and message.content[0].text == REPLY


async def test_unknown_fault_key_is_a_400_naming_it(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 100, "messages": MESSAGES},
        headers={**HEADERS, "x-mock-fault": "explode=1"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert "explode" in response.json()["error"]["message"]


async def test_recorder_shows_the_anthropic_request(
    anthropic_client: AsyncAnthropic, http: httpx.AsyncClient
) -> None:
    await http.delete("/_mock/requests")
    await anthropic_client.messages.create(
        model=MODEL, max_tokens=100, system="Be brief.", messages=MESSAGES
    )

    (entry,) = (await http.get("/_mock/requests")).json()
    assert entry["method"] == "POST"
    assert entry["path"] == "/v1/messages"
    assert entry["headers"]["authorization"] == "Bearer sk-ant-test"
    assert entry["headers"]["anthropic-version"]
    assert entry["json"] == {
        "model": MODEL,
        "max_tokens": 100,
        "system": "Be brief.",
        "messages": MESSAGES,
    }
