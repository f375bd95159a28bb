"""The mock's ``error_first`` fault: a stream whose provider fails it before its answer began.

Each surface sends its own error, in the form of the status asked for, as the stream's
first and only event after the 200 (no role chunk, no ``response.created``, no
``messageStart``, no ``message_start``), in its real wire format, read by the official
openai, anthropic and boto3 clients over real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import boto3
import botocore.config
import openai
import orjson
import pytest
from botocore.client import BaseClient
from botocore.exceptions import EventStreamError

from extproc.mock_llm.faults import FAULT_HEADER, FaultSpecError, parse_fault
from extproc.testing import serve_mock

PROMPT = "Say hello, mock!"
HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
TITAN = "amazon.titan-text-express-v1"


@pytest.fixture(scope="module")
async def mock_url() -> AsyncIterator[str]:
    async with serve_mock() as url:
        yield url


def fault(status: int) -> dict[str, str]:
    return {FAULT_HEADER: f"error_first={status}"}


# --- The instruction -----------------------------------------------------------------------------


def test_error_first_takes_the_statuses_every_stream_can_name() -> None:
    assert parse_fault("error_first=429").error_first == 429
    assert parse_fault("error_first=503").error_first == 503
    with pytest.raises(FaultSpecError, match=r"error_first='404' must be one of 429, 500, 503"):
        parse_fault("error_first=404")


@pytest.mark.parametrize(
    "other", ["status=500", "error_body=openai", "error_after=2", "reset_after=1"]
)
def test_error_first_refuses_what_contradicts_it(other: str) -> None:
    key = other.partition("=")[0]
    with pytest.raises(FaultSpecError, match=f"error_first .* excludes {key}"):
        parse_fault(f"error_first=429;{other}")


# --- OpenAI --------------------------------------------------------------------------------------


async def test_an_openai_chat_stream_is_its_error_alone(mock_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{mock_url}/v1", api_key="k", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            extra_headers=fault(429),
        )
        chunks = []
        with pytest.raises(openai.APIError, match="Rate limit reached") as raised:
            async for chunk in stream:
                chunks.append(chunk)
    assert chunks == []  # not even the role chunk
    assert raised.value.body == {
        "message": "Rate limit reached (injected by x-mock-fault).",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }


async def test_a_legacy_completions_stream_is_its_error_alone(mock_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{mock_url}/v1", api_key="k", max_retries=0) as c:
        stream = await c.completions.create(
            model="gpt-3.5-turbo-instruct", prompt=PROMPT, stream=True, extra_headers=fault(503)
        )
        chunks = []
        with pytest.raises(openai.APIError, match="The server had an error") as raised:
            async for chunk in stream:
                chunks.append(chunk)
    assert chunks == []
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "server_error"


async def test_a_responses_stream_is_an_error_event_before_response_created(mock_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{mock_url}/v1", api_key="k", max_retries=0) as c:
        stream = await c.responses.create(
            model="gpt-4o-mini", input=PROMPT, stream=True, extra_headers=fault(429)
        )
        kinds: list[str] = []
        with pytest.raises(openai.APIError, match="Rate limit reached") as raised:
            async for event in stream:
                kinds.append(event.type)
    assert kinds == []
    assert raised.value.body == {
        "message": "Rate limit reached (injected by x-mock-fault).",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }


async def test_the_responses_error_event_is_numbered_first_and_ends_the_stream(
    mock_url: str,
) -> None:
    async with openai.AsyncOpenAI(base_url=f"{mock_url}/v1", api_key="k", max_retries=0) as c:
        raw = await c.responses.with_raw_response.create(
            model="gpt-4o-mini", input=PROMPT, stream=True, extra_headers=fault(500)
        )
        body = await raw.http_response.aread()
    head, _, data = body.strip().partition(b"\n")
    assert head == b"event: error"
    assert orjson.loads(data.removeprefix(b"data: ")) == {
        "type": "error",
        "sequence_number": 0,
        "error": {
            "message": "The server had an error (injected by x-mock-fault).",
            "type": "server_error",
            "param": None,
            "code": "server_error",
        },
    }


# --- Anthropic -----------------------------------------------------------------------------------


async def test_an_anthropic_stream_is_its_error_before_message_start(mock_url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=mock_url, api_key="k", max_retries=0) as c:
        stream = await c.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            extra_headers=fault(429),
        )
        kinds: list[str] = []
        with pytest.raises(anthropic.APIStatusError, match="rate_limit_error"):
            async for event in stream:
                kinds.append(event.type)
    assert kinds == []


# --- Bedrock -------------------------------------------------------------------------------------


def bedrock(mock_url: str, status: int) -> BaseClient:
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=mock_url,
        region_name="us-east-1",
        aws_access_key_id="AKIDMOCK",
        aws_secret_access_key="mock-secret-key",
        config=botocore.config.Config(retries={"max_attempts": 0}),
    )

    def add_fault(request: Any, **_: Any) -> None:
        request.headers[FAULT_HEADER] = f"error_first={status}"

    client.meta.events.register("before-sign.bedrock-runtime", add_fault)
    return client


async def read_failed(events: Callable[[], Any]) -> tuple[list[Any], EventStreamError]:
    """Every event boto3 yields from the stream ``events()`` opens, and the error it raises."""

    def read() -> tuple[list[Any], EventStreamError]:
        seen: list[Any] = []
        try:
            for event in events():
                seen.append(event)
        except EventStreamError as error:
            return seen, error
        raise AssertionError("the stream did not fail")

    return await asyncio.to_thread(read)


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (429, "throttlingException", "Too many requests"),
        (500, "internalServerException", "internal error"),
        (503, "serviceUnavailableException", "Bedrock is unable to process your request"),
    ],
)
async def test_a_converse_stream_is_its_exception_before_message_start(
    mock_url: str, status: int, code: str, message: str
) -> None:
    client = bedrock(mock_url, status)
    events, error = await read_failed(
        lambda: client.converse_stream(
            modelId=HAIKU, messages=[{"role": "user", "content": [{"text": PROMPT}]}]
        )["stream"]
    )
    assert events == []
    assert error.response["Error"]["Code"] == code
    assert message in error.response["Error"]["Message"]


@pytest.mark.parametrize(
    ("model", "body"),
    [
        (
            HAIKU,
            {
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": PROMPT}],
            },
        ),
        (TITAN, {"inputText": PROMPT}),
    ],
)
async def test_an_invoke_model_stream_is_its_exception_before_the_first_chunk(
    mock_url: str, model: str, body: dict[str, Any]
) -> None:
    client = bedrock(mock_url, 429)
    events, error = await read_failed(
        lambda: client.invoke_model_with_response_stream(modelId=model, body=orjson.dumps(body))[
            "body"
        ]
    )
    assert events == []
    assert error.response["Error"]["Code"] == "throttlingException"


async def test_a_whole_answer_ignores_error_first(mock_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{mock_url}/v1", api_key="k", max_retries=0) as c:
        reply = await c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": PROMPT}],
            extra_headers=fault(429),
        )
    assert reply.choices[0].message.content == f"Mock reply to: {PROMPT}"
