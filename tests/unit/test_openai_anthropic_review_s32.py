"""Review of the OpenAI-to-Anthropic translation: what an OpenAI SDK user and the bill see.

- A prompt over Claude's context window comes back with OpenAI's ``context_length_exceeded``
  code, which agents read to shorten the conversation and retry.
- A stream whose event cannot be read is a provider failure like an ``event: error``: the
  log line names it, and the output tokens Anthropic had reported are charged, not guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
import openai
import orjson
import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators.base import stream_failure
from extproc.translators.openai_anthropic import StreamTranslator, translate_error

PROMPT_TOO_LONG = "prompt is too long: 208310 tokens > 200000 maximum"
NO_ROOM_FOR_ANSWER = (
    "input length and `max_tokens` exceed context limit: 198000 + 8192 > 200000, "
    "decrease input length or `max_tokens` and try again"
)


def anthropic_error(kind: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


def openai_error_from_the_gateway(status: int, body: bytes) -> openai.APIStatusError:
    """What the OpenAI SDK raises for the gateway's translated error answer."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    http = httpx.Client(transport=httpx.MockTransport(answer))
    client = openai.OpenAI(
        api_key="sk-test", base_url="http://gateway.test/v1", http_client=http, max_retries=0
    )
    with client, pytest.raises(openai.APIStatusError) as raised:
        client.chat.completions.create(
            model="claude-sonnet", messages=[{"role": "user", "content": "Hi"}]
        )
    return raised.value


@pytest.mark.parametrize("message", [PROMPT_TOO_LONG, NO_ROOM_FOR_ANSWER])
def test_a_prompt_over_the_context_window_is_reported_as_openai_reports_it(message: str) -> None:
    status, body = translate_error(400, anthropic_error("invalid_request_error", message))
    error = openai_error_from_the_gateway(status, body)
    assert isinstance(error, openai.BadRequestError)
    assert (error.code, error.param) == ("context_length_exceeded", "messages")
    # Anthropic's own words stay: they say how far over the window the prompt is.
    assert error.message.endswith(message)


def test_other_bad_requests_keep_no_code() -> None:
    status, body = translate_error(
        400, anthropic_error("invalid_request_error", "max_tokens: Field required")
    )
    error = openai_error_from_the_gateway(status, body)
    assert isinstance(error, openai.BadRequestError)
    assert error.code is None


# --- an unreadable event mid-stream -------------------------------------------------------


def sse(name: str, payload: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: ".encode() + orjson.dumps(payload) + b"\n\n"


START = sse(
    "message_start",
    {
        "type": "message_start",
        "message": {
            "model": "claude-3-5-haiku-20241022",
            "usage": {"input_tokens": 25, "cache_read_input_tokens": 75, "output_tokens": 1},
        },
    },
)
TEXT = sse(
    "content_block_delta",
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
)
# Anthropic counted 40 output tokens (thinking included, which the stream does not show).
DELTA = sse(
    "message_delta",
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 40}},
)
GARBLED = b'event: message_stop\ndata: {"type": "message_st\n\n'


def test_an_unreadable_event_fails_the_stream_with_the_counts_anthropic_reported() -> None:
    translator = StreamTranslator(include_usage=True, request_id="r", created=0)
    sent = translator.feed(START + TEXT + DELTA + GARBLED, True)
    error = orjson.loads(sent.split(b"\n\n")[-3].removeprefix(b"data: "))["error"]
    assert error["code"] == "invalid_upstream_response"
    failure = stream_failure(translator)
    assert failure is not None and failure.error is not None
    assert failure.error.code == "invalid_upstream_response"
    assert (failure.prompt_tokens, failure.cached_tokens, failure.completion_tokens) == (
        100,
        75,
        40,
    )


async def test_an_unreadable_event_is_logged_and_charged_as_a_provider_failure(
    processor: Processor, services: Services
) -> None:
    chat = {
        "model": "claude-3-5-haiku-latest",
        "stream": True,
        "messages": [{"role": "user", "content": "x" * 40}],
    }
    await run_stream(
        processor,
        [
            request_headers(
                "/anthropic/chat/completions", headers={"authorization": "Bearer team1-key"}
            ),
            request_body(orjson.dumps(chat)),
            response_headers(200, {"content-type": "text/event-stream"}),
            response_body(START + TEXT + DELTA + GARBLED, end_of_stream=True),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    # The client read an error: the log line says which, not a clean 200.
    assert line["outcome"] == "upstream_error"
    assert line["error_code"] == "invalid_upstream_response"
    # Anthropic's own counts: its 40 output tokens, not a guess from the 2 characters shown.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (100, 40)
