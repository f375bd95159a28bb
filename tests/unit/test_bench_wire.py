"""The benchmark's own HTTP/SSE parsing and its streaming upstream: figures it prints rest on them.

A miscounted event or chunk would silently skew the streaming row's events/s and
"chunks received", so the parsers are checked on streams cut at every byte, and
the upstream is checked end to end over a real socket (no Envoy: fast).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from benchmarks.http_wire import (
    ChunkedDecoder,
    ResponseReader,
    SseEvents,
    WireError,
    check_chat_stream,
    format_request,
)
from benchmarks.sse_upstream import FIRST_GAP_HEADER, http_chunk, start_server, stream_events


def _chunked(*payloads: bytes) -> bytes:
    return b"".join(http_chunk(p) for p in payloads) + b"0\r\n\r\n"


def _stream_response(events: list[bytes]) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
    head += b"transfer-encoding: chunked\r\n\r\n"
    return head + _chunked(*events)


def test_chunked_body_decodes_the_same_however_the_bytes_are_split() -> None:
    wire = _chunked(b"data: one\n\n", b"data: two\n\n", b"x" * 300)
    for cut in range(1, len(wire)):
        decoder = ChunkedDecoder()
        payload = decoder.feed(wire[:cut]) + decoder.feed(wire[cut:])
        assert payload == b"data: one\n\ndata: two\n\n" + b"x" * 300
        assert decoder.done
        assert decoder.chunks == 3


def test_chunked_garbage_is_an_error_not_a_miscount() -> None:
    with pytest.raises(WireError):
        ChunkedDecoder().feed(b"zz\r\nhello\r\n")
    with pytest.raises(WireError):
        ChunkedDecoder().feed(b"5\r\nhelloXX")
    decoder = ChunkedDecoder()
    with pytest.raises(WireError):
        decoder.feed(b"0\r\n\r\nextra")


def test_sse_events_are_counted_across_any_split_and_the_tail_is_kept() -> None:
    events = stream_events(5)
    body = b"".join(events)
    for cut in range(1, len(body)):
        seen = SseEvents()
        seen.feed(body[:cut])
        seen.feed(body[cut:])
        assert seen.count == 6  # five chunks and [DONE]
        assert seen.leftover == b""
        assert seen.first == events[0].rstrip(b"\n")
        assert list(seen.last)[-1] == b"data: [DONE]"


def test_a_complete_chat_stream_passes_the_check_and_broken_ones_say_why() -> None:
    def check(events: list[bytes], expected: int | None = 5) -> str | None:
        seen = SseEvents()
        seen.feed(b"".join(events))
        return check_chat_stream(seen, expected_chunks=expected)

    events = stream_events(5)
    assert check(events) is None
    assert "[DONE]" in (check(events[:-1]) or "")
    assert "usage" in (check([*events[:-2], events[-1]], expected=None) or "")
    assert "expected 6" in (check(events, expected=6) or "")
    # A response guard may hold text back and re-split it: more chunks are fine.
    assert check(events, expected=4) is None
    assert "no server-sent event" in (check([]) or "")


def test_the_upstream_stream_is_an_openai_stream_whose_last_chunk_has_usage() -> None:
    events = stream_events(1000)
    assert len(events) == 1001
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 997
    assert all(c["usage"] is None for c in chunks[:-1])


def test_response_reader_handles_content_length_and_chunked_answers() -> None:
    plain = b'HTTP/1.1 401 Unauthorized\r\ncontent-length: 12\r\n\r\n{"error":{}}'
    reader = ResponseReader()
    assert reader.feed(plain[:20]) == b""
    assert reader.feed(plain[20:]) == b'{"error":{}}'
    assert (reader.status, reader.complete, reader.chunks) == (401, True, 0)

    wire = _stream_response(stream_events(4))
    reader = ResponseReader()
    body = b"".join(reader.feed(wire[i : i + 7]) for i in range(0, len(wire), 7))
    assert reader.status == 200 and reader.complete
    assert reader.chunks == 5
    assert body == b"".join(stream_events(4))


async def test_the_upstream_streams_every_event_and_echoes_the_first_gap() -> None:
    server = await start_server(0, events=50)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for headers in ({}, {FIRST_GAP_HEADER: "5"}):  # two requests on one connection
            body = b'{"model":"gpt-4o-mini","stream":true}'
            writer.write(format_request("POST", "/v1/chat/completions", headers, body))
            response, seen = ResponseReader(), SseEvents()
            while not response.complete:
                seen.feed(response.feed(await asyncio.wait_for(reader.read(65536), 10)))
            assert response.status == 200
            assert response.headers[FIRST_GAP_HEADER] == headers.get(FIRST_GAP_HEADER, "0")
            assert check_chat_stream(seen, expected_chunks=50) is None
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
