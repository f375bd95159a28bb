"""A CRLF is one line end: with a provider that ends its SSE lines with CRLF (as servers
built on sse-starlette do, and Google's), an event's line is no event until its blank line.

A CRLF taken for two line ends made an event's line reach the client before the event's
end; when the body then ended there (the upstream closed the stream after that line),
the gateway's closing error event joined the line, and the official client read one
event of two JSON documents it could not parse instead of the gateway's error.
"""

from __future__ import annotations

import re

import orjson
from hypothesis import given
from hypothesis import strategies as st
from openai._streaming import SSEDecoder

from extproc.config import load_config
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    client_body,
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators.sse import WholeEventBytes, _last_event_end
from tests.unit.conftest import MemoryLog

PLAIN = load_config("config/gateway.yaml", environ={})
CHUNK = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
# Two line ends in a row, CRLF counted once: where an event ends.
EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")


def crlf_event(content: str) -> bytes:
    delta = {"index": 0, "delta": {"content": content}}
    return b"data: " + orjson.dumps({**CHUNK, "choices": [delta]}) + b"\r\n\r\n"


def last_end(data: bytes, start: int) -> int:
    end = 0
    for found in EVENT_END.finditer(data, start):
        end = found.end()
    return end


def test_a_crlf_alone_ends_a_line_not_the_event() -> None:
    sent = WholeEventBytes()
    assert sent.take(b'data: {"a":1}\r\n', False) == b""
    assert sent.take(b'\r\ndata: {"b"', False) == b'data: {"a":1}\r\n\r\n'
    assert sent.take(b":2}\r\n\r\n", False) == b'data: {"b":2}\r\n\r\n'


@given(st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\r\n", b"\n\n"]), max_size=20), st.data())
def test_the_last_event_end_is_the_patterns_last_match(
    pieces: list[bytes], data: st.DataObject
) -> None:
    raw = b"".join(pieces)
    start = data.draw(st.integers(0, len(raw)))
    assert _last_event_end(raw, start) == last_end(raw, start)
    assert _last_event_end(bytearray(raw), start) == last_end(raw, start)


async def test_a_crlf_stream_cut_after_an_events_line_reaches_the_client_as_whole_events() -> None:
    log = MemoryLog()
    processor = processor_for(PLAIN, Services(GatewayMetrics(), log))
    # The client asked for usage: the provider's bytes go to it as they came.
    asked = {"model": "gpt-4o-mini", "stream": True, "stream_options": {"include_usage": True}}
    body = orjson.dumps({**asked, "messages": [{"role": "user", "content": "hi"}]})
    # The provider closes its stream after the second event's line, before its blank line.
    chunks = [crlf_event("Hello") + crlf_event(" world")[:-2], b""]
    answers = await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
            request_body(body),
            response_headers(200, {"content-type": "text/event-stream"}),
            response_body(chunks[0], end_of_stream=False),
            response_body(chunks[1], end_of_stream=True),
        ],
    )
    shown = client_body(chunks, answers[3:])
    # What the official client reads: each event's data, one JSON document each.
    events = [event.data for event in SSEDecoder().iter_bytes(iter([shown]))]
    assert events[-1] == "[DONE]"
    documents = [orjson.loads(data) for data in events[:-1]]
    texts = [d["choices"][0]["delta"]["content"] for d in documents if "choices" in d]
    assert texts == ["Hello", " world"]
    assert documents[-1]["error"]["code"] == "invalid_upstream_response"
    [line] = log.lines()
    assert (line["outcome"], line["usage_estimated"]) == ("upstream_error", True)
