"""The mock's ``error_after`` fault: each provider's own mid-stream error, as its SDK reads it.

A stream that has sent some content and then fails with the provider's error event,
in the provider's real wire format, read by the official openai, anthropic and boto3
clients over real sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import boto3
import botocore.config
import openai
import pytest
from botocore.exceptions import EventStreamError

from extproc.mock_llm.faults import FAULT_HEADER, parse_fault
from extproc.testing import serve_mock

PROMPT = "Say hello, mock!"
FAULT = {FAULT_HEADER: "error_after=2"}


@pytest.fixture(scope="module")
async def mock_url() -> AsyncIterator[str]:
    async with serve_mock() as url:
        yield url


def test_error_after_is_parsed() -> None:
    assert parse_fault("error_after=3").error_after == 3
    assert parse_fault("error_after=0").error_after == 0


async def test_openai_streams_end_with_an_error_event_the_sdk_raises(mock_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=f"{mock_url}/v1", api_key="k", max_retries=0) as c:
        stream = await c.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            extra_headers=FAULT,
        )
        text = ""
        with pytest.raises(openai.APIError, match="The server had an error") as raised:
            async for chunk in stream:
                text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert text == "Mock reply"  # two pieces reached the client first
    assert isinstance(raised.value.body, dict) and raised.value.body["type"] == "server_error"


async def test_anthropic_streams_end_with_an_overloaded_error_event(mock_url: str) -> None:
    async with anthropic.AsyncAnthropic(base_url=mock_url, api_key="k", max_retries=0) as c:
        stream = await c.messages.create(
            model="claude-sonnet-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": PROMPT}],
            stream=True,
            extra_headers=FAULT,
        )
        kinds: list[str] = []
        with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
            async for event in stream:
                kinds.append(event.type)
    # message_start (with the input tokens) and some text came before the error.
    assert kinds[0] == "message_start" and kinds.count("content_block_delta") == 2
    assert "message_delta" not in kinds and "message_stop" not in kinds


async def test_bedrock_streams_end_with_a_model_stream_exception(mock_url: str) -> None:
    client = boto3.client(
        "bedrock-runtime",
        endpoint_url=mock_url,
        region_name="us-east-1",
        aws_access_key_id="AKIDMOCK",
        aws_secret_access_key="mock-secret-key",
        config=botocore.config.Config(retries={"max_attempts": 0}),
    )

    def add_fault(request: Any, **_: Any) -> None:
        request.headers[FAULT_HEADER] = FAULT[FAULT_HEADER]

    client.meta.events.register("before-sign.bedrock-runtime", add_fault)

    def read() -> tuple[list[str], EventStreamError]:
        events: list[str] = []
        response = client.converse_stream(
            modelId="anthropic.claude-3-haiku-20240307-v1:0",
            messages=[{"role": "user", "content": [{"text": PROMPT}]}],
        )
        try:
            for event in response["stream"]:
                events.extend(event)
        except EventStreamError as error:
            return events, error
        raise AssertionError("the stream did not fail")

    events, error = await asyncio.to_thread(read)
    assert events == ["messageStart", "contentBlockDelta", "contentBlockDelta"]
    assert error.response["Error"]["Code"] == "modelStreamErrorException"
