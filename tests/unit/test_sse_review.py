"""Usage read from streamed answers, however the provider writes and cuts its SSE.

SSE (WHATWG HTML, server-sent events) ends lines with CR, LF or CRLF, lets ``data:`` go
without its space, allows comment lines and an event's data over several lines. A stream
cut into body chunks anywhere must give the same usage and the same client bytes, and a
client that did not ask for usage loses the usage-only chunk and nothing else.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.context import Usage
from extproc.translators import openai_anthropic_stream
from extproc.translators.anthropic_anthropic import EventStreamReader
from extproc.translators.openai_openai import ChunkStreamReader

CONTENT = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}'
USAGE = (
    b'data: {"id":"c","choices":[],"model":"m-1","usage":'
    b'{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}'
)
DONE = b"data: [DONE]"
OPENAI_USAGE = Usage(7, 5, 12, 0)

Reader = ChunkStreamReader | EventStreamReader


def sse(events: list[bytes], newline: bytes = b"\n") -> bytes:
    """Events with their lines ended by ``newline`` and a blank line after each."""
    return b"".join(e.replace(b"\n", newline) + newline * 2 for e in events)


def parse(stream: bytes) -> list[tuple[str, str]]:
    """The events a spec-following SSE client reads: (event type, data)."""
    events: list[tuple[str, str]] = []
    kind, data = "message", list[str]()
    for line in re.split(r"\r\n|\r|\n", stream.decode()):
        if not line:
            if data:
                events.append((kind, "\n".join(data)))
            kind, data = "message", []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value
    return events


def feed(reader: Reader, stream: bytes, cuts: list[int]) -> bytes:
    """What the client receives when the stream arrives cut at ``cuts``."""
    points = sorted({0, *(c % (len(stream) + 1) for c in cuts), len(stream)})
    out = b""
    for start, end in itertools.pairwise(points):
        part = stream[start:end]
        result = reader.feed(part, end == len(stream))
        out += part if result is None else result
    return out


def multi_line(event: bytes) -> bytes:
    """The same JSON spread over one ``data:`` line per member, as pretty-printing would."""
    return event.replace(b',"', b',\ndata: "')


OPENAI_STREAMS = {
    "lf": sse([CONTENT, CONTENT, USAGE, DONE]),
    "crlf": sse([CONTENT, CONTENT, USAGE, DONE], b"\r\n"),
    "cr": sse([CONTENT, CONTENT, USAGE, DONE], b"\r"),
    "no_space": sse([CONTENT.replace(b"data: ", b"data:"), USAGE[:5] + USAGE[6:], b"data:[DONE]"]),
    "comments": sse([b": ping", CONTENT, b": ping\n" + USAGE, DONE]),
    "event_line": sse([b"event: chunk\n" + CONTENT, b"event: chunk\n" + USAGE, DONE]),
    "multi_line": sse([CONTENT, multi_line(USAGE), DONE]),
    "multi_line_crlf": sse([CONTENT, multi_line(USAGE), DONE], b"\r\n"),
}


def is_usage_only(event: tuple[str, str]) -> bool:
    return '"choices":[]' in event[1]


@pytest.mark.parametrize("hide", [False, True])
@pytest.mark.parametrize("name", sorted(OPENAI_STREAMS))
def test_openai_usage_and_client_events_survive_any_single_cut(name: str, hide: bool) -> None:
    stream = OPENAI_STREAMS[name]
    expected = [e for e in parse(stream) if not (hide and is_usage_only(e))]
    whole = None
    for cut in range(len(stream) + 1):
        reader = ChunkStreamReader(hide_usage_chunk=hide)
        out = feed(reader, stream, [cut])
        assert reader.usage == OPENAI_USAGE, cut
        assert reader.response_model == "m-1"
        assert parse(out) == expected, cut
        if not hide:
            assert out == stream  # the client asked for usage: its bytes are the provider's
        whole = out if whole is None else whole
        assert out == whole, cut


@pytest.mark.parametrize("hide", [False, True])
@pytest.mark.parametrize("name", sorted(OPENAI_STREAMS))
def test_openai_stream_fed_byte_by_byte(name: str, hide: bool) -> None:
    stream = OPENAI_STREAMS[name]
    reader = ChunkStreamReader(hide_usage_chunk=hide)
    out = feed(reader, stream, list(range(len(stream))))
    assert reader.usage == OPENAI_USAGE
    assert parse(out) == [e for e in parse(stream) if not (hide and is_usage_only(e))]


@given(
    name=st.sampled_from(sorted(OPENAI_STREAMS)),
    hide=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=2_000), max_size=20),
)
def test_openai_any_cuts_give_the_uncut_result(name: str, hide: bool, cuts: list[int]) -> None:
    stream = OPENAI_STREAMS[name]
    uncut = ChunkStreamReader(hide_usage_chunk=hide)
    whole = feed(uncut, stream, [])
    reader = ChunkStreamReader(hide_usage_chunk=hide)
    assert feed(reader, stream, cuts) == whole
    assert reader.usage == uncut.usage == OPENAI_USAGE


def test_usage_chunk_and_done_in_one_body_chunk() -> None:
    reader = ChunkStreamReader(hide_usage_chunk=True)
    assert reader.feed(sse([CONTENT]), False) is None
    out = reader.feed(sse([USAGE, DONE]), False)
    assert out == sse([DONE])
    assert reader.usage == OPENAI_USAGE


def test_usage_with_content_is_never_hidden() -> None:
    # Some OpenAI-compatible servers put usage on the last content chunk: the text stays.
    last = USAGE.replace(b'"choices":[]', b'"choices":[{"index":0,"delta":{"content":"!"}}]')
    stream = sse([CONTENT, last, DONE])
    reader = ChunkStreamReader(hide_usage_chunk=True)
    # The text stays; the report, which this client did not ask for, is taken out.
    unasked = last[: last.index(b',"usage":')] + b"}"
    assert parse(feed(reader, stream, [10, 200])) == parse(sse([CONTENT, unasked, DONE]))
    assert reader.usage == OPENAI_USAGE


def test_a_very_large_event_is_read_whole() -> None:
    big = (
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"' + b"x" * 2_000_000 + b'"}}]}'
    )
    stream = sse([big, USAGE, DONE], b"\r\n")
    reader = ChunkStreamReader(hide_usage_chunk=True)
    out = feed(reader, stream, list(range(0, len(stream), 16_384)))
    assert reader.usage == OPENAI_USAGE
    assert parse(out) == parse(sse([big, DONE]))


# Anthropic: usage from message_start (input) and message_delta (output); bytes untouched.
START = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"model":"claude-x","usage":'
    b'{"input_tokens":10,"cache_read_input_tokens":2,"output_tokens":1}}}'
)
DELTA_TEXT = (
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"hi"}}'
)
DELTA = (
    b"event: message_delta\n"
    b'data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}'
)
STOP = b'event: message_stop\ndata: {"type":"message_stop"}'
ANTHROPIC_USAGE = Usage(12, 9, 21, 2, 0)

ANTHROPIC_STREAMS = {
    "lf": sse([START, b": ping", DELTA_TEXT, DELTA, STOP]),
    "crlf": sse([START, DELTA_TEXT, DELTA, STOP], b"\r\n"),
    "cr": sse([START, DELTA_TEXT, DELTA, STOP], b"\r"),
    "no_space": sse([START, DELTA_TEXT, DELTA, STOP]).replace(b": ", b":"),
    "multi_line": sse([START, DELTA_TEXT, multi_line(DELTA), STOP]),
    "ping_events": sse([START, b'event: ping\ndata: {"type": "ping"}', DELTA, STOP], b"\r\n"),
}


@pytest.mark.parametrize("name", sorted(ANTHROPIC_STREAMS))
def test_anthropic_usage_survives_any_single_cut(name: str) -> None:
    stream = ANTHROPIC_STREAMS[name]
    for cut in range(len(stream) + 1):
        reader = EventStreamReader()
        assert feed(reader, stream, [cut]) == stream
        assert reader.usage == ANTHROPIC_USAGE, cut
        assert reader.response_model == "claude-x"


@pytest.mark.parametrize("name", sorted(ANTHROPIC_STREAMS))
def test_anthropic_stream_fed_byte_by_byte(name: str) -> None:
    stream = ANTHROPIC_STREAMS[name]
    reader = EventStreamReader()
    assert feed(reader, stream, list(range(len(stream)))) == stream
    assert reader.usage == ANTHROPIC_USAGE


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n", b"\r"])
def test_a_translated_anthropic_stream_reads_the_same_whatever_its_line_ends(
    line_end: bytes,
) -> None:
    """OpenAI client, Anthropic provider: the translator cuts events like the readers do."""
    source = Path("tests/fixtures/openai_anthropic/streams/text.anthropic.txt").read_bytes()
    stream = source.replace(b"\r\n", b"\n").replace(b"\n", line_end)

    def translate(body: bytes, size: int) -> tuple[bytes, Usage | None]:
        translator = openai_anthropic_stream.StreamTranslator(
            include_usage=True, request_id="r", created=1
        )
        pieces = [body[i : i + size] for i in range(0, len(body), size)]
        out = b"".join(
            translator.feed(piece, index == len(pieces) - 1) for index, piece in enumerate(pieces)
        )
        return out, translator.usage

    expected = translate(source.replace(b"\r\n", b"\n"), len(source))
    assert expected[1] is not None
    for size in (1, 7, 64):
        assert translate(stream, size) == expected, size
