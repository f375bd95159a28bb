"""The Anthropic-to-Anthropic translator: model rename, usage from messages and event streams."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.context import Usage
from extproc.translators import anthropic_anthropic
from extproc.translators.anthropic_anthropic import (
    EventStreamReader,
    MessageReader,
    prepare_request,
)

MODEL = "claude-sonnet-4-5-20250929"

# A non-streaming answer as the API sends it, prompt caching on.
MESSAGE = (
    b'{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant",'
    b'"model":"claude-sonnet-4-5-20250929",'
    b'"content":[{"type":"text","text":"Hi! How can I help?"}],'
    b'"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,'
    b'"cache_creation_input_tokens":1024,"cache_read_input_tokens":2048,'
    b'"cache_creation":{"ephemeral_5m_input_tokens":1024,"ephemeral_1h_input_tokens":0},'
    b'"output_tokens":8,"service_tier":"standard"}}'
)
# Cache reads are prompt tokens, and also reported as cached tokens.
MESSAGE_USAGE = Usage(
    12 + 1024 + 2048, 8, 12 + 1024 + 2048 + 8, cached_tokens=2048, cache_write_tokens=1024
)

MESSAGE_START = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_01Aq9w938a90dw8q","type":"message",'
    b'"role":"assistant","model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,'
    b'"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":0,'
    b'"cache_read_input_tokens":2048,"output_tokens":2,"service_tier":"standard"}}}\n\n'
)
PREAMBLE = (
    b"event: content_block_start\n"
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b"event: ping\n"
    b'data: {"type": "ping"}\n\n'
)
# A text delta that quotes the usage events' names must not be mistaken for one.
DELTAS = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"Hello"}}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
    b'"text":" {\\"type\\":\\"message_delta\\",\\"usage\\":{\\"output_tokens\\":999}}"}}\n\n'
)
MESSAGE_DELTA = (
    b"event: content_block_stop\n"
    b'data: {"type":"content_block_stop","index":0}\n\n'
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
    b'"usage":{"output_tokens":15}}\n\n'
)
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
STREAM = MESSAGE_START + PREAMBLE + DELTAS + MESSAGE_DELTA + MESSAGE_STOP
STREAM_USAGE = Usage(472 + 2048, 15, 472 + 2048 + 15, cached_tokens=2048)


def feed_all(reader: EventStreamReader | MessageReader, body: bytes, cuts: list[int]) -> None:
    """Feed ``body`` cut at the given points; the client must receive every byte as it
    came (a chunk that ends inside an event waits for the rest of it)."""
    points = sorted({0, *[cut % (len(body) + 1) for cut in cuts], len(body)})
    sent = b""
    for start, end in itertools.pairwise(points):
        part = body[start:end]
        out = reader.feed(part, end == len(body))
        sent += part if out is None else out
    assert sent == body


def message_delta(usage: dict[str, Any]) -> bytes:
    data = {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": usage}
    return b"event: message_delta\ndata: " + orjson.dumps(data) + b"\n\n"


def test_prepare_request_renames_the_model() -> None:
    body = {"model": "claude", "max_tokens": 10, "messages": [], "stream": True}
    sent = prepare_request(body, MODEL)
    assert sent == {"model": MODEL, "max_tokens": 10, "messages": [], "stream": True}


def test_prepare_request_leaves_a_ready_body_alone() -> None:
    assert prepare_request({"model": MODEL, "max_tokens": 10, "messages": []}, MODEL) is None


def test_message_usage_counts_cache_tokens_as_prompt_tokens() -> None:
    reader = MessageReader()
    feed_all(reader, MESSAGE, [40, 300])
    assert reader.usage == MESSAGE_USAGE
    assert reader.response_model == MODEL


def test_message_without_cache_fields_counts_input_tokens_only() -> None:
    reader = MessageReader()
    reader.feed(b'{"model":"m","usage":{"input_tokens":5,"output_tokens":3}}', True)
    assert reader.usage == Usage(5, 3, 8)


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b'{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
        b'{"model":"m","usage":{"input_tokens":5}}',
        b'{"model":"m","usage":{"input_tokens":true,"output_tokens":3}}',
        b"[1, 2]",
    ],
    ids=["html", "error-body", "no-output-tokens", "bool-count", "not-an-object"],
)
def test_message_without_readable_usage_reports_none(body: bytes) -> None:
    reader = MessageReader()
    assert reader.feed(body, True) is None
    assert reader.usage is None


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_stream_usage_is_read_wherever_the_stream_is_cut(cuts: list[int]) -> None:
    reader = EventStreamReader()
    feed_all(reader, STREAM, cuts)
    assert reader.usage == STREAM_USAGE
    assert reader.response_model == MODEL


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_crlf_stream_is_read_wherever_it_is_cut(cuts: list[int]) -> None:
    reader = EventStreamReader()
    feed_all(reader, STREAM.replace(b"\n", b"\r\n"), cuts)
    assert reader.usage == STREAM_USAGE
    assert reader.response_model == MODEL


def test_stream_delivered_event_by_event_is_read() -> None:
    reader = EventStreamReader()
    events = [event + b"\n\n" for event in STREAM.split(b"\n\n") if event]
    for i, event in enumerate(events):
        assert reader.feed(event, i == len(events) - 1) is None
    assert reader.usage == STREAM_USAGE


def test_last_message_delta_wins_because_counts_are_cumulative() -> None:
    # Server tools make the API send several message_delta events, each with running totals
    # that may include input and cache counts.
    stream = (
        MESSAGE_START
        + message_delta({"output_tokens": 5})
        + message_delta({"input_tokens": 900, "cache_read_input_tokens": 4096, "output_tokens": 40})
        + MESSAGE_STOP
    )
    reader = EventStreamReader()
    feed_all(reader, stream, [])
    assert reader.usage == Usage(900 + 4096, 40, 900 + 4096 + 40, cached_tokens=4096)


def test_stream_ended_before_message_delta_reports_no_usage_and_ends_in_an_error() -> None:
    # Ended cleanly, as a proxy or a connection-delimited body ends a cut stream:
    # Anthropic never ends one so, and as it came the SDK took the text for the answer.
    reader = EventStreamReader()
    body = MESSAGE_START + PREAMBLE + DELTAS
    assert reader.feed(body[:100], False) == b""  # the start of an event waits for its end
    last = reader.feed(body[100:], True)
    assert last == body + (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error",'
        b'"message":"the provider\'s stream ended before it was complete"}}\n\n'
    )
    assert reader.usage is None
    assert reader.response_model == MODEL
    assert reader.failure is not None and reader.failure.error is not None
    assert reader.failure.error.code == "invalid_upstream_response"
    assert reader.failure.prompt_tokens == 472 + 2048  # message_start's, kept for the charge


def test_error_event_mid_stream_reports_no_usage() -> None:
    error = (
        b"event: error\n"
        b'data: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n'
    )
    reader = EventStreamReader()
    feed_all(reader, MESSAGE_START + PREAMBLE + error, [])
    assert reader.usage is None


def test_last_event_without_its_blank_line_is_read_at_end_of_stream() -> None:
    reader = EventStreamReader()
    body = MESSAGE_START + MESSAGE_DELTA.rstrip(b"\n")
    # Its data is whole: read, and sent with the blank line the SDK needs to read it.
    assert reader.feed(body, True) == body + b"\n\n"
    assert reader.usage == STREAM_USAGE


def test_data_spread_over_several_lines_is_joined() -> None:
    split_delta = (
        b"event: message_delta\n"
        b'data: {"type":"message_delta",\n'
        b'data: "usage":{"output_tokens":15}}\n\n'
    )
    reader = EventStreamReader()
    feed_all(reader, MESSAGE_START + split_delta, [])
    assert reader.usage == STREAM_USAGE


@pytest.mark.parametrize(
    "stream",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b'event: message_start\ndata: {"type":"message_start", not json\n\n' + MESSAGE_DELTA,
        MESSAGE_START + b'event: message_delta\ndata: {"type":"message_delta","usage":{}}\n\n',
        b"\n\n\n\n",
    ],
    ids=["html", "broken-message-start", "delta-without-output", "blank-lines"],
)
def test_garbage_stream_reports_no_usage(stream: bytes) -> None:
    reader = EventStreamReader()
    feed_all(reader, stream, [7])
    assert reader.usage is None


def test_only_usage_events_are_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[bytes] = []

    def loads(data: bytes) -> Any:
        parsed.append(data)
        return orjson.loads(data)

    fake = SimpleNamespace(loads=loads, JSONDecodeError=orjson.JSONDecodeError)
    monkeypatch.setattr(anthropic_anthropic, "orjson", fake)
    reader = EventStreamReader()
    feed_all(reader, MESSAGE_START + PREAMBLE + DELTAS * 500 + MESSAGE_DELTA + MESSAGE_STOP, [])

    assert reader.usage == STREAM_USAGE
    assert len(parsed) == 2
