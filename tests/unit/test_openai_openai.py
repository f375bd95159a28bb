"""The OpenAI-to-OpenAI translator: usage from bodies and streams, the hidden usage chunk."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import given
from hypothesis import strategies as st

from extproc.translators.openai_openai import ChunkStreamReader, CompletionReader, prepare_request

USAGE_EVENT = (
    b'data: {"id":"c","choices":[],"model":"m-1",'
    b'"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}\n\n'
)
CONTENT = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"a \\"usage\\": {"}}]}\n\n'
STREAM = CONTENT * 3 + USAGE_EVENT + b"data: [DONE]\n\n"


def feed_all(reader: ChunkStreamReader, stream: bytes, cuts: list[int]) -> bytes:
    points = sorted({0, *[c % (len(stream) + 1) for c in cuts], len(stream)})
    out = b""
    for start, end in itertools.pairwise(points):
        result = reader.feed(stream[start:end], end == len(stream))
        out += stream[start:end] if result is None else result
    return out


def test_prepare_request_renames_the_model_and_asks_for_usage() -> None:
    body = {"model": "alias", "messages": [], "stream": True, "stream_options": {"x": 1}}
    sent = prepare_request(body, "real-model", stream=True, client_wants_usage=False)
    assert sent is not None
    assert sent["model"] == "real-model"
    assert sent["stream_options"] == {"x": 1, "include_usage": True}


def test_prepare_request_leaves_a_ready_body_alone() -> None:
    body = {"model": "m", "messages": []}
    assert prepare_request(body, "m", stream=False, client_wants_usage=False) is None


def test_completion_usage_and_model_are_read() -> None:
    reader = CompletionReader()
    body = orjson.dumps({"model": "m-2", "usage": {"prompt_tokens": 3, "completion_tokens": 4}})
    assert reader.feed(body[:10], False) is None
    assert reader.feed(body[10:], True) is None
    assert reader.usage is not None and reader.usage.total_tokens == 7
    assert reader.response_model == "m-2"


def test_garbage_completion_reports_no_usage() -> None:
    reader = CompletionReader()
    reader.feed(b"<html>", True)
    assert reader.usage is None


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_usage_chunk_is_hidden_wherever_the_stream_is_cut(cuts: list[int]) -> None:
    reader = ChunkStreamReader(hide_usage_chunk=True)
    delivered = feed_all(reader, STREAM, cuts)
    assert delivered == CONTENT * 3 + b"data: [DONE]\n\n"
    assert reader.usage is not None and reader.usage.total_tokens == 12
    assert reader.response_model == "m-1"


@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_stream_passes_unchanged_when_the_client_asked_for_usage(cuts: list[int]) -> None:
    reader = ChunkStreamReader(hide_usage_chunk=False)
    assert feed_all(reader, STREAM, cuts) == STREAM
    assert reader.usage is not None and reader.usage.prompt_tokens == 7


def test_crlf_event_separators_are_understood() -> None:
    reader = ChunkStreamReader(hide_usage_chunk=True)
    delivered = reader.feed(STREAM.replace(b"\n", b"\r\n"), True)
    assert delivered is not None and b'usage":{' not in delivered
    assert reader.usage is not None


def test_whole_content_events_go_through_without_a_body_mutation() -> None:
    reader = ChunkStreamReader(hide_usage_chunk=True)
    event = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    # None: Envoy forwards the chunk as it came (a mutation would copy every chunk).
    assert reader.feed(event, end_of_stream=False) is None
    # Half an event is held back until its end arrives.
    assert reader.feed(event[:10], end_of_stream=False) == b""
    assert reader.feed(event[10:], end_of_stream=False) == event
