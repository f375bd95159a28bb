"""An SSE event that never ends, from an OpenAI provider to an OpenAI client.

Past ``sse.MAX_EVENT_BYTES`` (32 MiB) the gateway drops the event it was holding. The
Anthropic routes then fail the stream (tests/unit/test_sse_event_bound.py); so does this
one, rather than going on as if the event had not been: the gateway could no longer read
the stream, and when it hides the usage chunk from a client that did not ask for it, the
client would silently miss an event. The client reads what came before, then an
OpenAI-shaped error event and ``[DONE]``; the request is charged an estimate, and the log
line names the error.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import client_body
from extproc.translators import sse
from extproc.translators.openai_openai import ChunkStreamReader
from tests.unit.sse_play import only_line, play_sse

MIB = 1024 * 1024
CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
PROMPT = [{"role": "user", "content": "x" * 40}]
# The gateway's estimate of that prompt: 40 characters / 4, + 4 per message.
PROMPT_ESTIMATE = 40 // 4 + 4


def chunk_event(fields: str) -> bytes:
    return (
        b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk",' + fields.encode() + b"}\n\n"
    )


ROLE = chunk_event('"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]')
TEXT = chunk_event('"choices":[{"index":0,"delta":{"content":"Once upon"}}]')
# An event whose blank line does not come before 32 MiB: a text delta that goes on and on.
ENDLESS_START = b'data: {"id":"chatcmpl-1","choices":[{"index":0,"delta":{"content":"'
ENDLESS_END = b"a" * 100 + b'"}}]}\n\n'
# What the provider sends after it: text, the usage chunk the gateway asked for, [DONE].
AFTER = chunk_event('"choices":[{"index":0,"delta":{"content":" a time"}}]')
USAGE = chunk_event(
    '"choices":[],"usage":{"prompt_tokens":14,"completion_tokens":9000000,"total_tokens":9000014}'
)
DONE = b"data: [DONE]\n\n"


def provider_stream() -> list[bytes]:
    """Some text, one event past the limit (its end comes at last), then the rest."""
    chunks = [ROLE + TEXT + ENDLESS_START]
    chunks += [b"a" * MIB] * ((sse.MAX_EVENT_BYTES + 2 * MIB) // MIB)
    return [*chunks, ENDLESS_END + AFTER + USAGE + DONE]


async def send(processor: Processor, **fields: Any) -> tuple[bytes, list[bytes]]:
    chunks = provider_stream()
    body = {"model": "gpt-4o-mini", "stream": True, "messages": PROMPT, **fields}
    answers = await play_sse(processor, CHAT, AUTH, orjson.dumps(body), chunks)
    return client_body(chunks, answers), chunks


def the_error(event: bytes) -> dict[str, Any]:
    error: dict[str, Any] = orjson.loads(event.removeprefix(b"data: "))["error"]
    return error


def assert_charged_as_failed(services: Services) -> None:
    line = only_line(services)
    assert line["outcome"] == "upstream_error"
    assert line["http_status_code"] == 200
    assert (line["error_type"], line["error_code"]) == (
        "upstream_error",
        "upstream_event_too_large",
    )
    # Not the provider's later usage chunk (which the client never saw): an estimate.
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    # The text the provider generated, " a time" too (it bills it, though the client never
    # saw it): 16 characters, 4 tokens; the prompt as the quota estimate counts it.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT_ESTIMATE, 4)
    assert line["cost_usd"] > 0


async def test_a_client_without_usage_reads_the_error_last_and_is_charged_an_estimate(
    processor: Processor, services: Services
) -> None:
    # Before: the oversized event was silently left out, " a time" and [DONE] followed,
    # and the request was billed the provider's usage chunk as if nothing had happened.
    sent, _ = await send(processor)
    events = [event for event in sent.split(b"\n\n") if event]
    assert events[:2] == [ROLE.strip(), TEXT.strip()]
    error = the_error(events[2])
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_event_too_large")
    assert "longer than 33554432 bytes" in error["message"]
    assert events[3:] == [b"data: [DONE]"]
    assert_charged_as_failed(services)


async def test_a_client_with_usage_reads_the_whole_events_as_they_came_then_the_error(
    processor: Processor, services: Services
) -> None:
    # Its events pass as they came, whole: the start of the oversized event, held until
    # its end, never reaches it. Then the error.
    sent, chunks = await send(processor, stream_options={"include_usage": True})
    passed, _, tail = sent.rpartition(b"\n\ndata: {")
    assert b"".join(chunks).startswith(passed + b"\n\n")
    assert len(passed) < MIB
    error_event, *rest = (b"data: {" + tail).split(b"\n\n")
    error = the_error(error_event)
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_event_too_large")
    # Nothing after it: not " a time", not the usage chunk.
    assert rest == [b"data: [DONE]", b""]
    assert_charged_as_failed(services)


@pytest.mark.parametrize("hide", [True, False], ids=["usage-hidden", "usage-shown"])
def test_the_reader_fails_once_and_shows_nothing_after(hide: bool) -> None:
    reader = ChunkStreamReader(hide_usage_chunk=hide)
    chunks = provider_stream()
    out = [reader.feed(chunk, False) or b"" for chunk in chunks[:-1]]
    ended = [i for i, replaced in enumerate(out) if b"upstream_event_too_large" in replaced]
    assert len(ended) == 1
    assert out[ended[0]].endswith(b"\n\n" + DONE)
    assert all(replaced == b"" for replaced in out[ended[0] + 1 :])
    assert reader.feed(chunks[-1], True) == b""
    assert reader.usage is None
    assert reader.failure is not None and reader.failure.error is not None
    assert reader.failure.error.code == "upstream_event_too_large"
    assert reader.failure.prompt_tokens is None  # OpenAI reports usage last
