"""A Messages stream its provider ends early, cleanly, reaches the Anthropic SDK as an error.

Anthropic ends every stream with ``message_delta`` and ``message_stop``, or with an
``event: error``. A stream that ends after its message began and before either (a proxy,
or an upstream whose body ends with its connection, closing a cut stream as if whole)
was passed to the client of ``/v1/messages`` as it came: the SDK returned the text so far
as the whole answer (``stop_reason`` None) and the request was logged ``completed``, while
an OpenAI client of the same model, and an Anthropic client of Claude on Bedrock, got an
error. Now the stream ends with an ``event: error`` the SDK raises, charged as after
Anthropic's own error event. Each test plays the stream through the processor and hands
what the client receives to the real SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import httpx2
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
from tests.unit.conftest import MemoryLog
from tests.unit.test_vertex_review import (
    ANTHROPIC_KEY,
    ANTHROPIC_TO_CLAUDE,
    EVENTS,
    SSE,
    answered,
    event_types,
    google,
    serving,
    sse_event,
    vertex_config,
)

__all__ = ["google"]

KEY = {"x-api-key": "team1-key", "anthropic-version": "2023-06-01"}
FROM_ANTHROPIC = {"content-type": "text/event-stream", "x-envoy-upstream-service-time": "3"}
CLAUDE = "claude-3-5-haiku-latest"
ENDED_EARLY = "the provider's stream ended before it was complete"
ERROR_BODY = orjson.dumps({"type": "error", "error": {"type": "api_error", "message": ENDED_EARLY}})


def event(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: ".encode() + orjson.dumps(data) + b"\n\n"


START = event(
    {
        "type": "message_start",
        "message": {"id": "msg_01", "type": "message", "role": "assistant", "model": CLAUDE,
                    "content": [], "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": 25, "output_tokens": 1}},
    }
)  # fmt: skip
TEXT = event(
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
) + event(
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "The"}}
)
END = (
    event({"type": "content_block_stop", "index": 0})
    + event({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
             "usage": {"output_tokens": 12}})
    + event({"type": "message_stop"})
)  # fmt: skip


async def streamed(processor: Processor, chunks: list[bytes]) -> bytes:
    """What the client of a streamed ``/v1/messages`` call receives when Anthropic answers
    with ``chunks`` and then ends the stream."""
    body = {"model": CLAUDE, "max_tokens": 64, "stream": True, "messages": [
        {"role": "user", "content": "Tell me a story."}]}  # fmt: skip
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/messages", headers=KEY),
            request_body(orjson.dumps(body)),
            response_headers(200, FROM_ANTHROPIC),
            *(response_body(chunk, end_of_stream=False) for chunk in chunks),
            response_body(b"", end_of_stream=True),
        ],
    )
    return client_body([*chunks, b""], answers[3:])


def sdk_reads(received: bytes) -> anthropic.types.Message:
    """The message the Anthropic SDK's stream helper makes of ``received``."""

    def reply(_: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=received)

    http = httpx2.Client(transport=httpx2.MockTransport(reply))
    client = anthropic.Anthropic(
        base_url="http://gateway", api_key="team1-key", http_client=http, max_retries=0
    )
    with client.messages.stream(
        model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Tell me a story."}]
    ) as stream:
        return stream.get_final_message()


def log_line(services: Services) -> dict[str, Any]:
    log = services.access_log
    assert isinstance(log, MemoryLog)
    [line] = log.lines()
    return line


async def test_a_stream_ended_before_its_answer_is_raised_by_the_sdk(
    processor: Processor, services: Services
) -> None:
    received = await streamed(processor, [START, TEXT])

    with pytest.raises(anthropic.APIStatusError) as raised:
        sdk_reads(received)
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": ENDED_EARLY},
    }
    line = log_line(services)
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "invalid_upstream_response")
    # Charged as after Anthropic's own error event: its prompt, the text streamed.
    assert (line["prompt_tokens"], line["usage_estimated"]) == (25, True)
    assert line["completion_tokens"] >= 1


async def test_a_stream_cut_inside_an_event_is_raised_as_one_cut_between_events(
    processor: Processor, services: Services
) -> None:
    # The body ended inside a text delta. Sent on, closed by a blank line, the broken event
    # failed the SDK's JSON parse (a ValueError) before the gateway's error after it; now
    # it is dropped, and the SDK raises the gateway's error, as for a cut between events.
    received = await streamed(processor, [START, TEXT[:-30]])

    assert received == START + TEXT[: TEXT.index(b"event: content_block_delta")] + (
        b"event: error\ndata: " + ERROR_BODY + b"\n\n"
    )
    with pytest.raises(anthropic.APIStatusError) as raised:
        sdk_reads(received)
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": ENDED_EARLY},
    }
    line = log_line(services)
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "invalid_upstream_response")
    assert (line["prompt_tokens"], line["usage_estimated"]) == (25, True)


async def test_a_whole_stream_is_still_the_answer(processor: Processor, services: Services) -> None:
    # Split anywhere, message_stop last: the SDK gets the stream byte for byte.
    whole = START + TEXT + END
    chunks = [whole[:200], whole[200:-7], whole[-7:]]
    received = await streamed(processor, chunks)

    assert received == whole
    message = sdk_reads(received)
    assert (message.stop_reason, message.usage.output_tokens) == ("end_turn", 12)
    assert log_line(services)["outcome"] == "completed"


async def test_a_stream_without_its_message_stop_keeps_its_final_counts(
    processor: Processor, services: Services
) -> None:
    # The message_delta carries the stop reason and the final counts: the SDK's message
    # is whole without the terminator, and the request is billed Anthropic's counts.
    without_stop = START + TEXT + END.rsplit(b"event: message_stop", 1)[0]
    received = await streamed(processor, [without_stop])

    assert received == without_stop
    assert sdk_reads(received).stop_reason == "end_turn"
    line = log_line(services)
    assert (line["outcome"], line["usage_reported"], line["completion_tokens"]) == (
        "completed",
        True,
        12,
    )


async def test_claude_on_vertex_ended_early_is_raised_without_vertexs_own_event(
    google: tuple[str, Path],
) -> None:
    # Vertex's stream, its own vertex_event included, ended after the first text delta, in
    # chunks that split its events (the client gets Vertex's stream in whole events).
    cut = b"".join(sse_event(e) for e in EVENTS[:4])
    chunks = [cut[:150], cut[150:]]
    streamed_call = {**ANTHROPIC_TO_CLAUDE[2], "stream": True}
    vertex_log = MemoryLog()
    async with serving(vertex_config(google), vertex_log) as vertex:
        call = (ANTHROPIC_TO_CLAUDE[0], ANTHROPIC_KEY, streamed_call)
        _, _, received = await answered(vertex, call, 200, SSE, chunks)

    assert event_types(received) == [
        "message_start", "content_block_start", "content_block_delta", "error"
    ]  # fmt: skip
    with pytest.raises(anthropic.APIStatusError, match="ended before it was complete"):
        sdk_reads(received)
    [line] = vertex_log.lines()
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "invalid_upstream_response")
