"""The mock LLM provider, driven over real sockets by the official openai client and raw httpx."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import AsyncOpenAI

from extproc.mock_llm import MockOptions, count_tokens, create_app
from extproc.testing import serve_mock

PROMPT = "Say hello, mock!"
REPLY = "Mock reply to: Say hello, mock!"
# Say hello , mock ! -> 5 tokens, + 4 per message, + 2 per request.
PROMPT_TOKENS = 11
# Mock reply to : Say hello , mock !
REPLY_TOKENS = 9
MESSAGES: list[Any] = [{"role": "user", "content": PROMPT}]
AUTH = {"Authorization": "Bearer sk-test"}


def test_count_tokens_counts_words_and_punctuation() -> None:
    # Hello , world ! It ' s 42 .
    assert count_tokens("Hello, world! It's 42.") == 9
    assert count_tokens("   ") == 0


async def test_completion_replies_deterministically_with_usage(openai_client: AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert completion.id.startswith("chatcmpl-mock-")
    assert completion.model == "gpt-4o-mini"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content == REPLY
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.completion_tokens == REPLY_TOKENS
    assert completion.usage.total_tokens == PROMPT_TOKENS + REPLY_TOKENS


async def test_reply_quotes_text_parts_of_the_last_user_message(openai_client: AsyncOpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    completion = await openai_client.chat.completions.create(model="gpt-4o", messages=messages)

    assert completion.choices[0].message.content == "Mock reply to: second"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == (3 + 2 + 2 + 1) + 4 * 4 + 2


async def test_stream_with_usage_matches_the_plain_completion(openai_client: AsyncOpenAI) -> None:
    plain = await openai_client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    # Content arrives token by token, not in one lump.
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == REPLY_TOKENS
    assert chunks[-1].choices == []
    assert chunks[-1].usage == plain.usage
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_without_include_usage_has_no_usage_chunk(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    )
    chunks = [chunk async for chunk in stream]

    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_max_tokens_truncates_with_finish_reason_length(openai_client: AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, max_tokens=3
    )

    assert completion.choices[0].message.content == "Mock reply to"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


async def test_request_without_api_key_is_rejected(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES}
    )

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "gpt-4o-mini"}', "messages"),
        (b'{"model": "gpt-4o-mini", "messages": []}', "messages"),
        (
            b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "max_tokens": 0}',
            "max_tokens",
        ),
    ],
    ids=["invalid-json", "no-model", "no-messages", "empty-messages", "zero-max-tokens"],
)
async def test_invalid_request_is_a_400_in_openai_shape(
    http: httpx.AsyncClient, body: bytes, param: str | None
) -> None:
    response = await http.post("/v1/chat/completions", content=body, headers=AUTH)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


async def test_gateway_route_prefix_reaches_chat_completions(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/openai/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers=AUTH,
    )

    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == REPLY


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/v1/fine_tuning/jobs", 404), ("GET", "/v1/chat/completions", 405)],
)
async def test_unknown_path_and_wrong_method_answer_openai_errors(
    http: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await http.request(method, path, headers=AUTH)

    assert response.status_code == status
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_fault_429_raises_rate_limit_error(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        await openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-fault": "status=429"}
        )
    assert caught.value.response.headers["retry-after"] == "1"


async def test_fault_500_raises_internal_server_error(openai_client: AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError):
        await openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-fault": "status=500"}
        )


async def test_fault_reset_after_cuts_the_stream_short(openai_client: AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        extra_headers={"x-mock-fault": "reset_after=2"},
    )
    received = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        async for chunk in stream:
            received.append(chunk)

    contents = [c.choices[0].delta.content for c in received if c.choices[0].delta.content]
    assert len(contents) <= 2 < REPLY_TOKENS
    assert all(c.choices[0].finish_reason is None for c in received)


async def test_fault_end_after_ends_the_stream_cleanly_before_its_answer(
    http: httpx.AsyncClient,
) -> None:
    # What a proxy makes of a cut stream: the body ends whole, the answer does not; the
    # last content chunk carries the running count asked for with x-mock-usage.
    answer = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True,
              "stream_options": {"include_usage": True}},
        headers={**AUTH, "x-mock-fault": "end_after=2", "x-mock-usage": "every-chunk"},
    )  # fmt: skip
    events = [line for line in answer.text.splitlines() if line.startswith("data: ")]
    assert "data: [DONE]" not in events
    chunks = [orjson.loads(line.removeprefix("data: ")) for line in events]
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Mock", " reply"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 2


async def test_fault_reset_after_drops_a_plain_request(http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.TransportError):
        await http.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers={**AUTH, "x-mock-fault": "reset_after=0"},
        )


async def test_fault_chunks_streams_exactly_that_many_content_chunks(
    openai_client: AsyncOpenAI,
) -> None:
    stream = await openai_client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-mock-fault": "chunks=50"},
    )
    chunks = [chunk async for chunk in stream]

    contents = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(contents) == 50
    assert "".join(contents).startswith(REPLY)
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 50


async def test_fault_garbage_returns_a_body_that_is_not_json(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={**AUTH, "x-mock-fault": "garbage=1"},
    )

    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


async def test_fault_delay_holds_the_answer(openai_client: AsyncOpenAI) -> None:
    started = time.monotonic()
    await openai_client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-fault": "delay=0.2"}
    )
    assert time.monotonic() - started >= 0.2


async def test_unknown_fault_key_is_a_400_naming_it(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={**AUTH, "x-mock-fault": "status=500;explode=1"},
    )

    assert response.status_code == 400
    assert "explode" in response.json()["error"]["message"]


async def test_default_fault_applies_unless_the_header_overrides_it() -> None:
    async with (
        serve_mock(MockOptions(default_fault="status=503")) as url,
        AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-test", max_retries=0) as client,
    ):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        completion = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-fault": ""}
        )
        assert completion.choices[0].message.content == REPLY


def test_invalid_default_fault_fails_at_startup() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        create_app(MockOptions(default_fault="stauts=500"))


async def test_recorder_shows_headers_and_json_body_until_cleared(
    http: httpx.AsyncClient,
) -> None:
    await http.delete("/_mock/requests")
    await http.post(
        "/openai/v1/chat/completions?trace=1",
        json={"model": "gpt-4o-mini", "messages": MESSAGES},
        headers={**AUTH, "X-Tenant": "acme"},
    )

    recorded = (await http.get("/_mock/requests")).json()
    assert len(recorded) == 1  # control endpoints are not recorded
    entry = recorded[0]
    assert entry["method"] == "POST"
    assert entry["path"] == "/openai/v1/chat/completions"
    assert entry["query_string"] == "trace=1"
    assert entry["headers"]["authorization"] == "Bearer sk-test"
    assert entry["headers"]["x-tenant"] == "acme"
    assert entry["json"] == {"model": "gpt-4o-mini", "messages": MESSAGES}
    assert '"gpt-4o-mini"' in entry["body"]

    assert (await http.delete("/_mock/requests")).status_code == 200
    assert (await http.get("/_mock/requests")).json() == []


async def test_models_lists_the_configured_models(openai_client: AsyncOpenAI) -> None:
    models = [model async for model in openai_client.models.list()]

    assert [m.id for m in models] == ["gpt-4o-mini", "gpt-4o", "gpt-4.1-nano"]
    assert all(m.owned_by == "mock" for m in models)


async def test_health(http: httpx.AsyncClient) -> None:
    response = await http.get("/_mock/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_run_announces_its_port_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from extproc.mock_llm import run; run('127.0.0.1', 0)",
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    line = (await asyncio.wait_for(process.stderr.readline(), 10)).decode()
    assert line.startswith("mock-llm listening on http://127.0.0.1:")
    url = line.split()[-1]
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{url}/_mock/health")).status_code == 200

    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 10) == 0
    assert await process.stderr.read() == b""


def strict_schema(enum: list[Any], strict: bool = True) -> dict[str, Any]:
    schema = {"type": "object", "properties": {"to": {"type": "string", "enum": enum}},
              "required": ["to"], "additionalProperties": False}  # fmt: skip
    return {"type": "json_schema", "json_schema": {"name": "mail", "strict": strict,
                                                   "schema": schema}}  # fmt: skip


async def test_a_strict_schema_whose_enum_repeats_a_value_is_refused_as_openai_does(
    openai_client: AsyncOpenAI,
) -> None:
    # What the gateway's guards must never produce from a client's distinct values.
    with pytest.raises(openai.BadRequestError) as refused:
        await openai_client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "to whom?"}],
            response_format=strict_schema(["<EMAIL>", "<EMAIL>"]),  # type: ignore[arg-type]
        )
    assert refused.value.body["param"] == "response_format"  # type: ignore[index]
    assert "enum values must be unique" in refused.value.message
    for fmt in (strict_schema(["<EMAIL>", "<EMAIL>#2"]), strict_schema(["a", "a"], False)):
        answer = await openai_client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "to whom?"}],
            response_format=fmt,  # type: ignore[arg-type]
        )
        assert answer.choices[0].message.content is not None
