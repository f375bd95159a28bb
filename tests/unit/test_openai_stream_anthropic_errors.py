"""An error event in Anthropic's shape inside an OpenAI-compatible provider's stream.

An OpenAI-compatible endpoint in front of Claude (a proxy, a vendor's edge) may fail a
stream the way Anthropic does: ``event: error`` with ``{"type": "error", "error": {"type":
"overloaded_error", "message": "Overloaded"}}``. Passed on as it came, clients that read
OpenAI's shape found no error in it: go-openai looks for a line starting ``data:
{"error":``, took the event for an empty chunk and the body's end (no ``[DONE]``) for the
answer's, so the text so far passed for the whole answer; the openai SDK raised it with
Anthropic's type and no code. Now the client reads OpenAI's error event, with the type and
code the translation from Anthropic gives the same error, then ``[DONE]``, and the log line
names that error, the request charged as a stream its provider failed.
"""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

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
from tests.unit.test_midstream_errors import (
    AUTH,
    CHAT,
    OPENAI_CHUNK,
    PROMPT_ESTIMATE,
    SSE,
    chat_body,
    only_line,
    token_samples,
)


def anthropic_error_event(kind: str, message: str, *, named: bool = True) -> bytes:
    data = orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})
    return (b"event: error\n" if named else b"") + b"data: " + data + b"\n\n"


OVERLOADED = anthropic_error_event("overloaded_error", "Overloaded")


async def streamed(processor: Processor, chunks: list[bytes], **fields: Any) -> bytes:
    """What the client reads of a gpt-4o-mini stream whose provider sent ``chunks``."""
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat_body("gpt-4o-mini", **fields)),
            response_headers(200, SSE),
            *(
                response_body(chunk, end_of_stream=i == len(chunks) - 1)
                for i, chunk in enumerate(chunks)
            ),
        ],
    )
    return client_body(chunks, answers)


def openai_sdk_reads(stream: bytes) -> tuple[str, openai.APIError]:
    """The text the official openai client streamed, and the error it raised."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=stream, headers={"content-type": "text/event-stream"})

    client = openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.test/v1",
        http_client=httpx.Client(transport=httpx.MockTransport(answer)),
        max_retries=0,
    )
    text = ""
    with client, pytest.raises(openai.APIError) as raised:
        for chunk in client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
        ):
            text += chunk.choices[0].delta.content or ""
    return text, raised.value


@pytest.mark.parametrize("include_usage", [False, True], ids=["usage-hidden", "usage-asked"])
@pytest.mark.parametrize("named", [True, False], ids=["event-error", "data-only"])
async def test_an_anthropic_error_event_reaches_an_openai_client_in_openais_shape(
    processor: Processor, services: Services, include_usage: bool, named: bool
) -> None:
    fields = {"stream_options": {"include_usage": True}} if include_usage else {}
    error = anthropic_error_event("overloaded_error", "Overloaded", named=named)
    stream = await streamed(processor, [OPENAI_CHUNK * 3, error], **fields)

    error_event = (
        b'data: {"error":{"message":"Overloaded","type":"service_unavailable",'
        b'"param":null,"code":"upstream_overloaded"}}\n\n'
    )
    # The line go-openai reads as an error, then the end OpenAI's streams have.
    assert stream == OPENAI_CHUNK * 3 + error_event + b"data: [DONE]\n\n"
    text, raised = openai_sdk_reads(stream)
    assert text == "abcdefgh" * 3
    assert (raised.message, raised.code, raised.type) == (
        "Overloaded",
        "upstream_overloaded",
        "service_unavailable",
    )

    line = only_line(services)
    assert (line["outcome"], line["http_status_code"]) == ("upstream_error", 200)
    assert (line["error_type"], line["error_code"]) == (
        "service_unavailable",
        "upstream_overloaded",
    )
    assert line["error_message"] == "Overloaded"
    # Charged as a stream its provider failed: the prompt estimated, 24 characters as 6.
    assert (line["usage_estimated"], line["completion_tokens"]) == (True, 6)
    assert token_samples(services) == {"prompt": PROMPT_ESTIMATE, "completion": 6.0}


@pytest.mark.parametrize(
    ("kind", "error_type", "code"),
    [
        ("rate_limit_error", "rate_limit_error", "rate_limit_exceeded"),
        ("api_error", "upstream_error", "api_error"),
        ("invalid_request_error", "invalid_request_error", None),
    ],
)
async def test_each_anthropic_error_type_is_named_as_the_anthropic_translation_names_it(
    processor: Processor, services: Services, kind: str, error_type: str, code: str | None
) -> None:
    stream = await streamed(processor, [OPENAI_CHUNK, anthropic_error_event(kind, "Nope")])
    error = orjson.loads(stream.split(b"\n\n")[1].removeprefix(b"data: "))["error"]
    assert (error["type"], error["code"]) == (error_type, code)
    line = only_line(services)
    assert (line["error_type"], line["error_code"]) == (error_type, code)


async def test_a_refusal_of_the_providers_key_does_not_quote_it(
    processor: Processor, services: Services
) -> None:
    # A proxy's authentication_error may quote the key it refused: the gateway's own.
    event = anthropic_error_event("authentication_error", "invalid x-api-key sk-ant-api03-SECRET")
    stream = await streamed(processor, [OPENAI_CHUNK, event])
    assert b"SECRET" not in stream
    assert b"SECRET" not in orjson.dumps(only_line(services))


async def test_an_anthropic_error_before_the_answer_began_is_charged_nothing(
    processor: Processor, services: Services
) -> None:
    # The streamed form of a 529: nothing was generated, and the provider billed nothing.
    stream = await streamed(processor, [OVERLOADED])
    assert stream.startswith(b'data: {"error":') and stream.endswith(b"data: [DONE]\n\n")
    line = only_line(services)
    assert line["outcome"] == "upstream_error"
    assert (line["prompt_tokens"], line["completion_tokens"]) == (0, 0)


async def test_nothing_the_provider_sends_after_its_error_reaches_the_client(
    processor: Processor,
) -> None:
    stream = await streamed(processor, [OPENAI_CHUNK, OVERLOADED + OPENAI_CHUNK, OPENAI_CHUNK])
    assert stream.count(b"abcdefgh") == 1
    assert stream.endswith(b"data: [DONE]\n\n")
