"""Bedrock's ``malformed_tool_use`` and ``malformed_model_output`` stop reasons, for an
OpenAI client.

Converse stops an answer with ``malformed_tool_use`` when the model's tool call could not
be read as one, and ``malformed_model_output`` when its output could not be parsed.
Before, both read as ``finish_reason: "stop"``: an agent waiting for a tool call got a
text answer (often empty) that said it was finished, and ran no tool. No OpenAI finish
reason says "broken" (the SDK's are stop, length, tool_calls, content_filter and
function_call), so the client now gets an error: a 502 ``upstream_error`` whose code is
the stop reason (which the openai SDK retries), or, in a stream, OpenAI's error event and
``[DONE]`` in place of the finish chunk. Bedrock billed the tokens: the request is
charged its usage, logged ``upstream_error`` with the stop reason as the code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from extproc.aws_eventstream import encode_event
from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.test_bedrock_invoke_review import signing_processor as started_processor
from tests.unit.test_midstream_errors import (
    AUTH,
    PROMPT_ESTIMATE,
    chat_body,
    only_line,
    token_samples,
)

PATH = "/bedrock/haiku/chat/completions"
EVENT_STREAM = {"content-type": "application/vnd.amazon.eventstream"}
JSON = {"content-type": "application/json"}
USAGE = {"inputTokens": 30, "outputTokens": 12, "totalTokens": 42}
CALL = {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {}}}
MALFORMED = ["malformed_tool_use", "malformed_model_output"]


@pytest.fixture
async def signing_processor(config: GatewayConfig, services: Services) -> AsyncIterator[Processor]:
    """The default config's processor, its AWS credentials loaded."""
    async with started_processor(config, services) as processor:
        yield processor


def converse_answer(stop_reason: str, content: list[dict[str, Any]]) -> bytes:
    return orjson.dumps(
        {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop_reason,
            "usage": USAGE,
        }
    )


def converse_stream(stop_reason: str, *, metadata: bool = True) -> bytes:
    def event(kind: str, payload: dict[str, Any]) -> bytes:
        return encode_event(kind, orjson.dumps(payload))

    start = {"contentBlockIndex": 1, "start": {"toolUse": CALL["toolUse"] | {"input": None}}}
    frames = (
        event("messageStart", {"role": "assistant"})
        + event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Checking"}})
        + event("contentBlockStart", start)
        + event(
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"city": "Par'}}},
        )
        + event("messageStop", {"stopReason": stop_reason})
    )
    if metadata:
        frames += event("metadata", {"usage": USAGE, "metrics": {"latencyMs": 100}})
    return frames


async def answered(
    processor: Processor, chunk: bytes, *, stream: bool, **fields: Any
) -> tuple[int, bytes]:
    """The status and body an OpenAI client gets for Bedrock's ``chunk``."""
    answers = await run_stream(
        processor,
        [
            request_headers(PATH, headers=AUTH),
            request_body(chat_body("ignored-by-path", stream=stream, **fields)),
            response_headers(200, EVENT_STREAM if stream else JSON),
            response_body(chunk, end_of_stream=True),
        ],
    )
    status = 200
    for answer in answers:
        phase = answer.WhichOneof("response")
        for header in getattr(answer, phase).response.header_mutation.set_headers:
            if header.header.key == ":status":
                status = int(header.header.raw_value)
    return status, client_body([chunk], answers)


def openai_client(status: int, body: bytes, content_type: str) -> openai.OpenAI:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.test/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(answer)),
        max_retries=0,
    )


@pytest.mark.parametrize("stop_reason", MALFORMED)
@pytest.mark.parametrize("content", [[CALL], [{"text": "Checking the weather."}], []])
async def test_a_malformed_answer_is_a_502_the_client_can_retry_charged_as_billed(
    signing_processor: Processor,
    services: Services,
    stop_reason: str,
    content: list[dict[str, Any]],
) -> None:
    status, body = await answered(
        signing_processor, converse_answer(stop_reason, content), stream=False
    )
    assert status == 502
    error = orjson.loads(body)["error"]
    assert (error["type"], error["code"]) == ("upstream_error", stop_reason)
    # The openai SDK raises it as a server error, which it retries by default.
    with (
        openai_client(status, body, "application/json") as client,
        pytest.raises(openai.InternalServerError) as raised,
    ):
        client.chat.completions.create(model="haiku", messages=[{"role": "user", "content": "Hi"}])
    assert raised.value.code == stop_reason

    line = only_line(services)
    assert (line["http_status_code"], line["outcome"]) == (502, "upstream_error")
    assert (line["error_type"], line["error_code"]) == ("upstream_error", stop_reason)
    # Bedrock billed the tokens it reported.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (30, 12)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    assert token_samples(services) == {"prompt": 30.0, "completion": 12.0}


@pytest.mark.parametrize("stop_reason", MALFORMED)
@pytest.mark.parametrize("include_usage", [False, True], ids=["usage-hidden", "usage-asked"])
async def test_a_malformed_stream_ends_with_an_error_not_a_finish_reason(
    signing_processor: Processor, services: Services, stop_reason: str, include_usage: bool
) -> None:
    fields = {"stream_options": {"include_usage": True}} if include_usage else {}
    status, body = await answered(
        signing_processor, converse_stream(stop_reason), stream=True, **fields
    )
    events = [event for event in body.split(b"\n\n") if event]
    assert events[-1] == b"data: [DONE]"
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert (error["type"], error["code"]) == ("upstream_error", stop_reason)
    assert b'"finish_reason":"stop"' not in body and b'"finish_reason":"tool_calls"' not in body

    with (
        openai_client(status, body, "text/event-stream") as client,
        pytest.raises(openai.APIError) as raised,
    ):
        for _ in client.chat.completions.create(
            model="haiku", messages=[{"role": "user", "content": "Hi"}], stream=True
        ):
            pass
    assert raised.value.code == stop_reason

    line = only_line(services)
    assert (line["http_status_code"], line["outcome"]) == (200, "upstream_error")
    assert (line["error_type"], line["error_code"]) == ("upstream_error", stop_reason)
    # The metadata's counts are the whole answer's: billed as they are.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (30, 12)
    assert token_samples(services) == {"prompt": 30.0, "completion": 12.0}


async def test_a_malformed_stream_without_metadata_is_charged_its_estimate(
    signing_processor: Processor, services: Services
) -> None:
    _, body = await answered(
        signing_processor, converse_stream("malformed_tool_use", metadata=False), stream=True
    )
    assert body.endswith(b"data: [DONE]\n\n")
    assert b'"code":"malformed_tool_use"' in body
    line = only_line(services)
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "malformed_tool_use")
    assert line["usage_estimated"] is True
    assert line["prompt_tokens"] == PROMPT_ESTIMATE


@pytest.mark.parametrize(
    ("stop_reason", "finish"),
    [("end_turn", "tool_calls"), ("tool_use", "tool_calls"), ("max_tokens", "length")],
)
async def test_other_stop_reasons_still_finish_as_before(
    signing_processor: Processor, stop_reason: str, finish: str
) -> None:
    status, body = await answered(
        signing_processor, converse_answer(stop_reason, [CALL]), stream=False
    )
    assert status == 200
    assert orjson.loads(body)["choices"][0]["finish_reason"] == finish
