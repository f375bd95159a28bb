"""An SSE event that never ends is not held without bound.

The stream readers hold the start of an event until its blank line arrives. A provider,
or a broken proxy in front of it, that sends an event with no end would make the gateway
hold all of it. Past ``sse.MAX_EVENT_BYTES`` (32 MiB) the held bytes are dropped and the
stream fails as an upstream error, as a provider's error event inside a stream does: the
client reads the error in its API's shape, the log line names it, and the request is
charged what the provider had reported plus an estimate of the rest.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import orjson

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import client_body
from extproc.translators import sse
from tests.unit.sse_play import only_line, play_sse

MIB = 1024 * 1024
PROMPT = [{"role": "user", "content": "x" * 40}]
SONNET = "claude-sonnet-4-0"

MESSAGE_START = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1","type":"message","model":"'
    + SONNET.encode()
    + b'","content":[],"usage":{"input_tokens":40,"output_tokens":1}}}\n\n'
)
TEXT = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
    b'"text":"Once upon"}}\n\n'
)
# An event whose blank line never comes: a text delta that goes on and on.
ENDLESS_START = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
)
MORE = b"a" * MIB


def endless_stream(total: int) -> Iterator[bytes]:
    """message_start, some text, then ``total`` bytes of one event that never ends."""
    yield MESSAGE_START + TEXT + ENDLESS_START
    for _ in range(total // MIB):
        yield MORE


# --- The buffer ------------------------------------------------------------------


def test_an_event_that_never_ends_is_not_held_without_bound() -> None:
    buffer = sse.EventBuffer()
    tracemalloc.start()
    try:
        for chunk in endless_stream(2 * sse.MAX_EVENT_BYTES + 16 * MIB):
            assert buffer.whole_events(chunk, False) in (b"", MESSAGE_START + TEXT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # What is held never passes the limit by more than a chunk (and a resize's copy).
    assert peak < sse.MAX_EVENT_BYTES + 4 * MIB
    assert buffer.overflowed


def test_events_after_an_oversized_one_are_cut_whole_again() -> None:
    buffer = sse.EventBuffer(max_event_bytes=64)
    first = b'data: {"n":1}\n\n'
    assert buffer.whole_events(first + b"data: " + b"x" * 40, False) == first
    assert not buffer.overflowed
    # Past the limit: dropped, up to its end, wherever that falls.
    assert buffer.whole_events(b"x" * 40, False) == b""
    assert buffer.overflowed
    assert buffer.whole_events(b"x" * 500 + b"\n", False) == b""
    assert buffer.whole_events(b'\ndata: {"n":2}\n\ndata: {"n"', False) == b'data: {"n":2}\n\n'
    assert buffer.whole_events(b":3}\n\n", True) == b'data: {"n":3}\n\n'


def test_an_event_just_under_the_limit_is_read_whole() -> None:
    buffer = sse.EventBuffer(max_event_bytes=64)
    event = b"data: " + b"x" * 56 + b"\n\n"
    assert len(event) == 64
    assert buffer.whole_events(event[:40], False) == b""
    assert buffer.whole_events(event[40:63], False) == b""
    assert buffer.whole_events(event[63:], False) == event
    assert not buffer.overflowed


# --- Through the gateway ---------------------------------------------------------


async def send_endless(
    processor: Processor, path: str, headers: dict[str, str], body: dict[str, Any]
) -> tuple[bytes, list[bytes]]:
    chunks = [*endless_stream(sse.MAX_EVENT_BYTES + 2 * MIB), b"a" * 100 + b'"}}\n\n']
    answers = await play_sse(processor, path, headers, orjson.dumps(body), chunks)
    return client_body(chunks, answers), chunks


def assert_charged_as_failed(line: dict[str, Any]) -> None:
    assert line["outcome"] == "upstream_error"
    assert (line["error_type"], line["error_code"]) == (
        "upstream_error",
        "upstream_event_too_large",
    )
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    # message_start's 40 input tokens; "Once upon" (9 characters) is 3 tokens.
    assert (line["prompt_tokens"], line["completion_tokens"]) == (40, 3)
    assert line["cost_usd"] > 0


async def test_an_openai_client_reads_an_upstream_error_and_the_request_is_charged(
    processor: Processor, services: Services
) -> None:
    body = {"model": SONNET, "stream": True, "messages": PROMPT}
    sent, _ = await send_endless(
        processor, "/anthropic/chat/completions", {"authorization": "Bearer team1-key"}, body
    )
    events = [event for event in sent.split(b"\n\n") if event]
    error = orjson.loads(events[-2].removeprefix(b"data: "))["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_event_too_large")
    assert events[-1] == b"data: [DONE]"
    assert b'"content":"Once upon"' in sent
    assert_charged_as_failed(only_line(services))


async def test_an_anthropic_client_reads_an_error_event_and_nothing_after(
    processor: Processor, services: Services
) -> None:
    body = {"model": SONNET, "stream": True, "max_tokens": 100, "messages": PROMPT}
    sent, chunks = await send_endless(processor, "/v1/messages", {"x-api-key": "team1-key"}, body)
    # The provider's whole events as they came (the oversized one, held until its end,
    # never reaches it), then Anthropic's error event, last.
    passed, _, tail = sent.rpartition(b"\n\nevent: error\n")
    assert b"".join(chunks).startswith(passed + b"\n\n")
    assert len(passed) < MIB
    data, *rest = tail.split(b"\n")
    error = orjson.loads(data.removeprefix(b"data: "))
    assert (error["type"], error["error"]["type"]) == ("error", "api_error")
    assert "longer than 33554432 bytes" in error["error"]["message"]
    assert rest == [b"", b""]
    assert_charged_as_failed(only_line(services))
