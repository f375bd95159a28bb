"""A provider's error inside a stream that had already started (its 200 had left).

The prompt was processed and some of the answer reached the client, so the request
is charged: what the provider reported before failing is kept (Anthropic's
``message_start`` input tokens), the rest is estimated as for a stream cut short,
and the log line says so and names the provider's error. The client gets the error
in the shape of the API it speaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.aws_eventstream import encode_event, encode_message
from extproc.config import GatewayConfig
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
PROMPT = [{"role": "user", "content": "x" * 40}]
# The gateway's estimate of that prompt: 40 characters / 4, + 4 per message.
PROMPT_ESTIMATE = 40 // 4 + 4
SSE = {"content-type": "text/event-stream"}
# Anthropic's own stream: message_start (25 input tokens), "Once upon", overloaded_error.
ANTHROPIC_STREAM = Path(
    "tests/fixtures/openai_anthropic/streams/overloaded_mid_stream.anthropic.txt"
).read_bytes()


def chat_body(model: str, **fields: Any) -> bytes:
    return orjson.dumps({"model": model, "stream": True, "messages": PROMPT, **fields})


def events_of(sent: bytes) -> list[bytes]:
    return [event for event in sent.split(b"\n\n") if event]


def token_samples(services: Services) -> dict[str, float]:
    return {
        s.labels["token_type"]: s.value
        for family in services.metrics.registry.collect()
        if family.name == "tokens_consumed"
        for s in family.samples
        if s.name == "tokens_consumed_total"
    }


def only_line(services: Services) -> dict[str, Any]:
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line  # type: ignore[no-any-return]


# --- OpenAI client, OpenAI provider: the error event passes through -----------------------

OPENAI_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"abcdefgh"}}]}\n\n'
OPENAI_ERROR = (
    b'data: {"error":{"message":"The server had an error while processing your request.",'
    b'"type":"server_error","param":null,"code":null}}\n\n'
)


async def test_an_openai_error_event_mid_stream_is_charged_with_an_estimate(
    processor: Processor, services: Services
) -> None:
    chunks = [OPENAI_CHUNK * 3, OPENAI_ERROR]
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat_body("gpt-4o-mini")),
            response_headers(200, SSE),
            response_body(chunks[0], end_of_stream=False),
            response_body(chunks[1], end_of_stream=True),
        ],
    )
    # The client gets the provider's own error event (its API's shape already).
    assert client_body(chunks, answers) == OPENAI_CHUNK * 3 + OPENAI_ERROR
    line = only_line(services)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    # 24 characters streamed: 6 tokens; the prompt as the quota estimate counts it.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT_ESTIMATE, 6)
    assert line["outcome"] == "upstream_error"
    assert line["http_status_code"] == 200
    assert (line["error_type"], line["error_code"]) == ("server_error", None)
    assert line["error_message"] == "The server had an error while processing your request."
    assert token_samples(services) == {"prompt": PROMPT_ESTIMATE, "completion": 6.0}
    assert line["cost_usd"] > 0


# --- OpenAI client, Anthropic provider: translated, message_start's count kept ------------


async def test_an_anthropic_error_mid_stream_keeps_the_reported_prompt_tokens(
    processor: Processor, services: Services
) -> None:
    chunks = [ANTHROPIC_STREAM]
    answers = await run_stream(
        processor,
        [
            request_headers("/anthropic/chat/completions", headers=AUTH),
            request_body(chat_body("claude-3-5-haiku-latest")),
            response_headers(200, SSE),
            response_body(chunks[0], end_of_stream=True),
        ],
    )
    events = events_of(client_body(chunks, answers))
    # An OpenAI-style error event, then [DONE]: the OpenAI SDK raises on it.
    assert orjson.loads(events[-2].removeprefix(b"data: "))["error"]["code"] == (
        "upstream_overloaded"
    )
    assert events[-1] == b"data: [DONE]"
    line = only_line(services)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    # message_start reported 25 input tokens; "Once upon" (9 characters) is 3 tokens.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (25, 3)
    assert line["outcome"] == "upstream_error"
    assert (line["error_type"], line["error_code"]) == (
        "service_unavailable",
        "upstream_overloaded",
    )
    assert line["error_message"] == "Overloaded"
    assert token_samples(services) == {"prompt": 25.0, "completion": 3.0}


# --- Anthropic client, Anthropic provider: bytes untouched, usage kept --------------------


async def test_an_anthropic_client_gets_the_error_event_and_the_input_tokens_are_kept(
    processor: Processor, services: Services
) -> None:
    body = orjson.dumps(
        {
            "model": "claude-3-5-haiku-latest",
            "stream": True,
            "max_tokens": 100,
            "messages": PROMPT,
        }
    )
    chunks = [ANTHROPIC_STREAM]
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/messages", headers={"x-api-key": "team1-key"}),
            request_body(body),
            response_headers(200, SSE),
            response_body(chunks[0], end_of_stream=True),
        ],
    )
    # Passed through as the provider sent it: the Anthropic SDK raises on its error event.
    assert client_body(chunks, answers) == chunks[0]
    line = only_line(services)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (25, 3)
    assert line["outcome"] == "upstream_error"
    assert line["error_code"] == "upstream_overloaded"
    assert line["error_message"] == "Overloaded"


# --- OpenAI client, Bedrock provider: an exception frame mid-stream -----------------------


def bedrock_stream_with_exception(name: str) -> bytes:
    def event(kind: str, payload: dict[str, Any]) -> bytes:
        return encode_event(kind, orjson.dumps(payload))

    exception = encode_message(
        {
            ":message-type": "exception",
            ":exception-type": name,
            ":content-type": "application/json",
        },
        orjson.dumps({"message": "The model stream failed. Try again."}),
    )
    return (
        event("messageStart", {"role": "assistant"})
        + event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "abcdefgh"}})
        + event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "ijkl"}})
        + exception
    )


@pytest.fixture
async def signing_processor(config: GatewayConfig, services: Services) -> AsyncIterator[Processor]:
    """A processor whose runtime has loaded its AWS credentials, as the server's does."""
    runtime = Runtime(config, services)
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


@pytest.mark.parametrize(
    ("exception", "error_type"),
    [
        ("modelStreamErrorException", "upstream_error"),
        ("throttlingException", "rate_limit_error"),
    ],
)
async def test_a_bedrock_exception_mid_stream_is_charged_and_named(
    signing_processor: Processor, services: Services, exception: str, error_type: str
) -> None:
    chunks = [bedrock_stream_with_exception(exception)]
    answers = await run_stream(
        signing_processor,
        [
            request_headers("/bedrock/haiku/chat/completions", headers=AUTH),
            request_body(chat_body("ignored-by-path")),
            response_headers(200, {"content-type": "application/vnd.amazon.eventstream"}),
            response_body(chunks[0], end_of_stream=True),
        ],
    )
    events = events_of(client_body(chunks, answers))
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert (error["type"], error["message"]) == (error_type, "The model stream failed. Try again.")
    assert events[-1] == b"data: [DONE]"
    line = only_line(services)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    # 12 characters streamed: 3 tokens; Bedrock reports nothing before its metadata event.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT_ESTIMATE, 3)
    assert line["outcome"] == "upstream_error"
    expected_code = exception[:1].upper() + exception[1:]
    assert (line["error_type"], line["error_code"]) == (error_type, expected_code)
    assert token_samples(services) == {"prompt": PROMPT_ESTIMATE, "completion": 3.0}


async def test_the_chunk_carrying_the_error_event_tells_envoy_the_error(
    processor: Processor,
) -> None:
    # The client stops reading at the error event and may hang up before the end of the
    # stream, whose answer Envoy then drops: the span learns of the error from this one.
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat_body("gpt-4o-mini")),
            response_headers(200, SSE),
            response_body(OPENAI_CHUNK, end_of_stream=False),
            response_body(OPENAI_ERROR, end_of_stream=False),
        ],
    )
    bodies = [a for a in answers if a.WhichOneof("response") == "response_body"]
    metadata = bodies[-1].dynamic_metadata.fields["io.aigw"].struct_value.fields
    assert metadata["error_type"].string_value == "server_error"
    first = bodies[0].dynamic_metadata.fields  # read with ``in``: indexing would add the key
    assert "io.aigw" not in first or "error_type" not in first["io.aigw"].struct_value.fields
