"""A provider's stream cut inside an event ends, for every client, as one cut between events.

A body that ends inside an SSE event (the upstream reset mid-line, a proxy that closes the
connection there) or inside a Bedrock event-stream frame used to reach the client with the
broken event or frame in it: the SDK raised its own parse error (a ``ValueError`` from
JSON, botocore's ``ChecksumMismatch``, which read the gateway's exception frame as the
broken frame's rest) instead of the gateway's error after it, or, with a frame's start and
nothing after, botocore ended the stream quietly. Now the broken event or frame is dropped
and the gateway's error, in the client API's shape, ends the stream, as it ends one cut
between events; the log line names it and charges the text streamed. Each test plays the
answer through the processor (real ext_proc messages) and hands what the client receives
to the official SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import orjson
import pytest
from botocore.exceptions import EventStreamError
from google import genai
from google.genai import errors, types

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
)
from tests.unit.test_gemini_review import BODY, KEY, PREFIX, event, memory_services, play, vertex
from tests.unit.test_stream_ended_early_bedrock import (
    CLAUDE_BEGUN,
    CLAUDE_BODY,
    CONVERSE_BEGUN,
    CONVERSE_BODY,
    CONVERSE_STREAM,
    EVENT_STREAM,
    boto3_reads,
    chunk,
    frame,
    invoke_path,
    log_line,
    signing_processor,
    streamed,
)
from tests.unit.test_stream_ended_early_native import START, TEXT

__all__ = ["signing_processor", "vertex"]

ENDED_EARLY = "the provider's stream ended before it was complete"
OPENAI_KEY = {"authorization": "Bearer team1-key"}
SSE = {"content-type": "text/event-stream", "x-envoy-upstream-service-time": "3"}
PROMPT = [{"role": "user", "content": "Tell me a story."}]


async def received(
    processor: Processor,
    path: str,
    key: dict[str, str],
    body: dict[str, Any],
    kind: dict[str, str],
    chunks: list[bytes],
) -> bytes:
    """What the client receives when the provider answers ``chunks``, then ends the body."""
    return await streamed(processor, path, body, chunks, key, kind)


def openai_client(body: bytes) -> openai.OpenAI:
    def reply(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    http = httpx2.Client(transport=httpx2.MockTransport(reply))
    return openai.OpenAI(base_url="http://gateway/v1", api_key="k", http_client=http, max_retries=0)


def chat_chunk(text: str) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    document = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}
    return b"data: " + orjson.dumps(document) + b"\n\n"


def assert_failed_as_cut(line: dict[str, Any], completion_tokens: int) -> None:
    """Logged as a stream the provider ended early, charged the text it carried."""
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "invalid_upstream_response")
    assert line["error_message"] == ENDED_EARLY
    assert (line["usage_estimated"], line["completion_tokens"]) == (True, completion_tokens)


@pytest.mark.parametrize(
    "cut", [-20, -2], ids=["inside-a-line", "before-its-blank-line-with-its-data-cut"]
)
async def test_an_openai_chat_stream_cut_inside_an_event_is_raised_by_the_sdk(
    processor: Processor, services: Services, cut: int
) -> None:
    first, second = chat_chunk("Hello there"), chat_chunk(" more words")
    body = {"model": "gpt-4o-mini", "stream": True, "messages": PROMPT,
            "stream_options": {"include_usage": True}}  # fmt: skip
    broken = second[:cut] if cut == -20 else second[: second.index(b'"choices"')] + b"\n"
    got = await received(processor, "/v1/chat/completions", OPENAI_KEY, body, SSE, [first, broken])

    assert got.startswith(first) and b"more words" not in got
    stream = openai_client(got).chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, stream=True
    )
    with pytest.raises(openai.APIError) as raised:
        list(stream)
    assert raised.value.message == ENDED_EARLY
    # "Hello there" (11 characters, 3 tokens), and the cut event's text where its value
    # came whole (" more words": 11 more, 6 in all), counted once.
    assert_failed_as_cut(log_line(services), 6 if cut == -20 else 3)


@pytest.mark.parametrize("include_usage", [True, False])
async def test_an_answer_that_writes_done_is_still_raised_when_its_stream_is_cut(
    processor: Processor, services: Services, include_usage: bool
) -> None:
    """'[DONE]' in the model's text (a task list) is no end of the stream: only the
    marker's own data line is. Read anywhere, it made a stream cut after it pass as
    whole: the SDK returned the text so far as the answer, logged completed."""
    body = {"model": "gpt-4o-mini", "stream": True, "messages": PROMPT,
            "stream_options": {"include_usage": include_usage}}  # fmt: skip
    chunks = [chat_chunk("- [DONE] tests pass\n- "), chat_chunk("[TODO] docs")]
    got = await received(processor, "/v1/chat/completions", OPENAI_KEY, body, SSE, chunks)

    stream = openai_client(got).chat.completions.create(
        model="gpt-4o-mini", messages=PROMPT, stream=True
    )
    with pytest.raises(openai.APIError) as raised:
        list(stream)
    assert raised.value.message == ENDED_EARLY
    line = log_line(services)
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "invalid_upstream_response")


async def test_an_openai_client_of_claude_reads_the_same_error_for_a_cut_inside_an_event(
    processor: Processor, services: Services
) -> None:
    body = {"model": "claude-3-5-haiku-latest", "stream": True, "messages": PROMPT}
    got = await received(
        processor, "/v1/chat/completions", OPENAI_KEY, body, SSE, [START, TEXT[:-30]]
    )

    with pytest.raises(openai.APIError) as raised:
        list(openai_client(got).chat.completions.create(model="m", messages=PROMPT, stream=True))
    # Was "the provider's stream is unreadable": the broken event was read as garbage.
    assert raised.value.message == ENDED_EARLY
    assert log_line(services)["prompt_tokens"] == 25  # message_start's, kept


def responses_event(document: dict[str, Any]) -> bytes:
    return f"event: {document['type']}\ndata: ".encode() + orjson.dumps(document) + b"\n\n"


async def test_a_responses_stream_cut_inside_an_event_is_raised_by_the_sdk(
    processor: Processor, services: Services
) -> None:
    created = responses_event({"type": "response.created", "sequence_number": 0, "response": {
        "id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress",
        "model": "gpt-4o-mini", "output": []}})  # fmt: skip
    delta = responses_event({"type": "response.output_text.delta", "sequence_number": 1,
                             "item_id": "msg_1", "output_index": 0, "content_index": 0,
                             "delta": "Hello there", "logprobs": []})  # fmt: skip
    body = {"model": "gpt-4o-mini", "stream": True, "input": "Tell me a story."}
    # Cut right after the delta's value: its text was generated, and is counted once.
    broken = delta[: delta.index(b'"Hello there"') + 13]
    got = await received(processor, "/v1/responses", OPENAI_KEY, body, SSE, [created + broken])

    assert got.startswith(created) and b"Hello there" not in got
    with pytest.raises(openai.APIError) as raised:
        list(openai_client(got).responses.create(model="gpt-4o-mini", input="hi", stream=True))
    assert raised.value.message == ENDED_EARLY
    assert_failed_as_cut(log_line(services), 3)


@pytest.mark.parametrize(
    ("operation", "path", "body", "begun", "more"),
    [
        ("ConverseStream", CONVERSE_STREAM, CONVERSE_BODY, CONVERSE_BEGUN,
         frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": " a time"}})),
        ("InvokeModelWithResponseStream", invoke_path("anthropic.claude-3-haiku-20240307-v1:0"),
         CLAUDE_BODY, CLAUDE_BEGUN,
         chunk({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": " a time"}})),
    ],
    ids=["converse-stream", "invoke-claude"],
)  # fmt: skip
async def test_a_bedrock_stream_cut_inside_a_frame_is_raised_by_boto3(
    signing_processor: Processor,
    services: Services,
    operation: str,
    path: str,
    body: dict[str, Any],
    begun: bytes,
    more: bytes,
) -> None:
    got = await received(
        signing_processor, path, OPENAI_KEY, body, EVENT_STREAM, [begun, more[:-10]]
    )

    # Was botocore's ChecksumMismatch: it read the exception frame as the cut frame's rest.
    with pytest.raises(EventStreamError) as raised:
        boto3_reads(operation, got)
    error = raised.value.response["Error"]
    assert (error["Code"], error["Message"]) == ("internalServerException", ENDED_EARLY)
    # "Once upon" (9 characters, 3 tokens); the cut frame's text cannot be trusted (no
    # checksum came), and is not counted.
    assert_failed_as_cut(log_line(services), 3)


async def test_a_converse_stream_cut_inside_its_first_frame_is_no_quiet_empty_answer(
    signing_processor: Processor, services: Services
) -> None:
    # Only the start of messageStart came: boto3 ended the stream with no event at all,
    # the request logged completed.
    got = await received(
        signing_processor,
        CONVERSE_STREAM,
        OPENAI_KEY,
        CONVERSE_BODY,
        EVENT_STREAM,
        [CONVERSE_BEGUN[:20]],
    )

    with pytest.raises(EventStreamError) as raised:
        boto3_reads("ConverseStream", got)
    assert raised.value.response["Error"]["Message"] == ENDED_EARLY
    assert_failed_as_cut(log_line(services), 0)


async def test_a_gemini_stream_cut_inside_an_event_is_raised_by_google_genai(
    vertex: tuple[str, Path],
) -> None:
    first = event({"candidates": [{"content": {"role": "model", "parts": [{"text": "Once upon"}]}}],
                   "usageMetadata": {"promptTokenCount": 9}})  # fmt: skip
    second = event({"candidates": [{"content": {"role": "model", "parts": [{"text": " a time"}]}}]})
    broken = second[: second.index(b'" a time"') + 9]  # the value whole, the event cut
    services = memory_services()
    answers = await play(
        vertex,
        [
            request_headers(f"{PREFIX}:streamGenerateContent?alt=sse", headers=KEY),
            request_body(orjson.dumps(BODY)),
            response_headers(200, SSE),
            response_body(first + broken, end_of_stream=False),
            response_body(b"", end_of_stream=True),
        ],
        services,
    )
    got = client_body([first + broken, b""], answers[3:])

    def reply(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=got)

    options = types.HttpOptions(
        base_url="http://gateway",
        api_version="v1beta",
        httpx_client=httpx.Client(transport=httpx.MockTransport(reply)),
    )
    client = genai.Client(api_key="k", http_options=options)
    # Was a JSON error of google-genai's own parse, on the cut event's data line.
    with pytest.raises(errors.ServerError) as raised:
        list(client.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))
    assert raised.value.message == ENDED_EARLY
    line = log_line(services)
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "invalid_upstream_response")
    # "Once upon" (9) and the cut event's " a time" (7), whose value came whole: 4 tokens.
    assert (line["prompt_tokens"], line["usage_estimated"], line["completion_tokens"]) == (
        9,
        True,
        4,
    )
