"""Edges of streamed token accounting, each played through the real processor with real
ext_proc messages: the request's log line says what it was charged."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

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
from tests.unit.conftest import MemoryLog
from tests.unit.test_gemini_review import memory_services
from tests.unit.test_gemini_review import streamed as gemini_streamed

# The mock Vertex fixture, re-exported so pytest finds it here.
from tests.unit.test_gemini_review import vertex as vertex
from tests.unit.test_gemini_review import whole_line as gemini_line

PLAIN = load_config("config/gateway.yaml", environ={})
AUTH = {"authorization": "Bearer team1-key"}
UPSTREAM = {"x-envoy-upstream-service-time": "3"}
# 2,000 characters of generated text: 500 tokens at four characters each.
TEXT = "word " * 400


class Played:
    """What the client got of one streamed answer, and the request's log line."""

    def __init__(self, body: bytes, line: dict[str, Any]) -> None:
        self.body = body
        self.line = line

    @property
    def charged(self) -> tuple[int, int, bool]:
        line = self.line
        return line["prompt_tokens"], line["completion_tokens"], line["usage_estimated"]


async def play(
    path: str,
    body: dict[str, Any],
    chunks: list[bytes],
    *,
    ended: bool = True,
    answer_headers: dict[str, str] | None = None,
) -> Played:
    """The client sends ``body`` on ``path``; the provider answers 200 with ``chunks``.
    ``ended``: the last chunk ends the stream; False, the client hung up after it."""
    log = MemoryLog()
    processor = processor_for(PLAIN, Services(GatewayMetrics(), log))
    last = len(chunks) - 1
    answers = await run_stream(
        processor,
        [
            request_headers(path, headers=AUTH),
            request_body(orjson.dumps(body)),
            response_headers(
                200, {"content-type": "text/event-stream", **UPSTREAM, **(answer_headers or {})}
            ),
            *(
                response_body(chunk, end_of_stream=ended and number == last)
                for number, chunk in enumerate(chunks)
            ),
        ],
    )
    [line] = log.lines()
    return Played(client_body(chunks, answers[3:]), line)


# --- a stream the provider compressed, cut before its usage report -----------------------

CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
CHAT_STREAM = (
    b"data: "
    + orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": TEXT}, "finish_reason": None}],
        }
    )
    + b"\n\n"
)
CLAUDE = {
    "model": "claude-3-5-haiku-latest",
    "max_tokens": 1000,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}
CLAUDE_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
    b'"type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[],'
    b'"usage":{"input_tokens":25,"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"' + TEXT.encode() + b'"}}\n\n'
)
RESPONSES = {"model": "gpt-4o-mini", "stream": True, "input": "hi"}
RESPONSES_STREAM = (
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1",'
    b'"model":"gpt-4o-mini","status":"in_progress"}}\n\n'
    b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
    b'"delta":"' + TEXT.encode() + b'"}\n\n'
)
CUT_STREAMS = [
    pytest.param("/v1/chat/completions", CHAT, CHAT_STREAM, id="openai-chat"),
    pytest.param("/v1/messages", CLAUDE, CLAUDE_STREAM, id="anthropic"),
    pytest.param("/v1/chat/completions", CLAUDE, CLAUDE_STREAM, id="openai-to-anthropic"),
    pytest.param("/v1/responses", RESPONSES, RESPONSES_STREAM, id="responses"),
]


@pytest.mark.parametrize(("path", "body", "stream"), CUT_STREAMS)
@pytest.mark.parametrize("ended", [False, True], ids=["client-left", "provider-ended"])
async def test_a_compressed_stream_without_its_usage_is_charged_the_text_it_carried(
    path: str, body: dict[str, Any], stream: bytes, ended: bool
) -> None:
    """The completion of a stream that ends without its usage report is estimated from
    the text it carried; a provider that compressed it (the gateway asked for none)
    hid that text from the count, and the request was charged its prompt alone."""
    plain = await play(path, body, [stream], ended=ended)
    compressed = gzip.compress(stream)
    halves = [compressed[: len(compressed) // 2], compressed[len(compressed) // 2 :]]
    played = await play(
        path, body, halves, ended=ended, answer_headers={"content-encoding": "gzip"}
    )
    assert plain.charged[1:] == (500, True)
    assert played.charged == plain.charged
    # Uncompressed, or compressed again on the lean path, whose headers have left.
    compressed_again = played.body[:2] == b"\x1f\x8b"
    got = zlib.decompressobj(31).decompress(played.body) if compressed_again else played.body
    assert TEXT.encode() in got


# --- the stream's last line, ended by Envoy's empty end of stream ------------------------


@pytest.mark.parametrize(("path", "body", "stream"), CUT_STREAMS)
async def test_a_last_line_without_its_line_end_is_counted_whatever_message_ends_the_stream(
    path: str, body: dict[str, Any], stream: bytes
) -> None:
    """A stream without a usage report whose provider closed it without ending its last
    event (no blank line) is charged the text of that event: with Envoy's end of stream
    on the last chunk, as with Envoy's own empty end-of-stream message after it (the
    usual way Envoy ends a chunked answer), which left the last line uncounted."""
    unended = stream.rstrip(b"\n")
    with_last = await play(path, body, [unended])
    after_last = await play(path, body, [unended, b""])
    assert with_last.charged[1:] == (500, True)
    assert after_last.charged == with_last.charged


# --- a Gemini stream Google ended before its last event ---------------------------------

# Vertex counts only the prompt until its last event; Gemini counts the output as it goes.
PROMPT_ONLY = {"promptTokenCount": 30}
RUNNING = {"promptTokenCount": 30, "candidatesTokenCount": 10}


def gemini_text(text: str, counts: dict[str, int] | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}]
    }
    if counts is not None:
        document["usageMetadata"] = counts
    return document


@pytest.mark.parametrize(
    "events",
    [
        [gemini_text(TEXT, PROMPT_ONLY)],
        [gemini_text("word " * 40, RUNNING), gemini_text(TEXT)],
    ],
    ids=["prompt-only-count", "text-after-the-running-count"],
)
async def test_a_gemini_stream_ended_before_its_last_event_is_charged_the_text_it_carried(
    vertex: tuple[str, Path], events: list[dict[str, Any]]
) -> None:
    """Google ended the stream (Envoy's end of stream) before its last event: no finish
    reason, text after its last output count. It was charged that stale count, reported
    (0 or 10 output tokens for 2,000 characters the client got), where a client that
    left at the same point was charged the estimate of the text: now both are. The
    client reads an error event last (the SDK raises it), which the log line names."""
    left = memory_services()
    await gemini_streamed(vertex, left, events, ended=False)
    ended = memory_services()
    await gemini_streamed(vertex, ended, events, ended=True)
    _, _, left_estimated, left_prompt, left_completion = gemini_line(left)
    outcome, reported, estimated, prompt, completion = gemini_line(ended)
    assert (left_estimated, left_prompt) == (True, 30) and left_completion >= 500
    assert (outcome, reported, estimated) == ("upstream_error", False, True)
    assert (prompt, completion) == (left_prompt, left_completion)


async def test_a_gemini_stream_ended_after_its_counted_text_keeps_the_count(
    vertex: tuple[str, Path],
) -> None:
    """Without a finish reason, a last count that covers all the text streamed is still
    the bill (the answer asked for more candidates than Google sent, say)."""
    services = memory_services()
    await gemini_streamed(vertex, services, [gemini_text(TEXT, RUNNING)], ended=True)
    assert gemini_line(services) == ("completed", True, False, 30, 10)


# --- the usage chunk the gateway asked for, from servers that send it without choices ----


def chat_chunk(text: str, finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": {"content": text}, "finish_reason": finish}
    document = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    return b"data: " + orjson.dumps({**document, "choices": [choice]}) + b"\n\n"


@pytest.mark.parametrize("choices", [{}, {"choices": None}], ids=["no-choices", "null-choices"])
async def test_a_usage_only_chunk_without_choices_is_hidden_from_a_client_that_did_not_ask(
    choices: dict[str, Any],
) -> None:
    """Some OpenAI-compatible servers (TGI, some proxies) send the usage-only chunk the
    gateway asked for without ``choices``, or with ``"choices": null``. Stripped of its
    usage, it reached the client as a chunk with no choices, which OpenAI never sends and
    strict clients reject; it is removed as ``choices: []`` is, and still billed."""
    counts = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    document = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini"}
    usage = b"data: " + orjson.dumps({**document, **choices, "usage": counts}) + b"\n\n"
    sent = chat_chunk("Hi") + chat_chunk("", "stop")
    played = await play("/v1/chat/completions", CHAT, [sent + usage + b"data: [DONE]\n\n"])
    assert played.body == sent + b"data: [DONE]\n\n"
    assert played.charged == (9, 12, False)
    assert played.line["usage_reported"] is True


# --- a negative count is no count ---------------------------------------------------------

NEGATIVE_REPORTS = [
    pytest.param(
        "/v1/chat/completions",
        CHAT,
        CHAT_STREAM + b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[],'
        b'"usage":{"prompt_tokens":-100000,"completion_tokens":500,"total_tokens":-99500}}\n\n'
        b"data: [DONE]\n\n",
        id="openai-chat",
    ),
    pytest.param(
        "/v1/messages",
        CLAUDE,
        CLAUDE_STREAM
        + b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        b'"end_turn"},"usage":{"input_tokens":-100000,"output_tokens":500}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
        id="anthropic",
    ),
    pytest.param(
        "/v1/chat/completions",
        CLAUDE,
        CLAUDE_STREAM
        + b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
        b'"end_turn"},"usage":{"output_tokens":-100000}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
        id="openai-to-anthropic",
    ),
]


@pytest.mark.parametrize(("path", "body", "stream"), NEGATIVE_REPORTS)
async def test_a_negative_count_in_a_streams_report_is_no_count(
    path: str, body: dict[str, Any], stream: bytes
) -> None:
    """A provider (or a proxy in front of it) reporting a negative count: read as it was,
    the request was billed and charged less than nothing (its quota given tokens back),
    as the Responses API's, Converse's and Gemini's readers already refuse. Now the
    count is no count: the stream is charged the estimate of what it carried, or the
    counts Anthropic reported that are counts."""
    played = await play(path, body, [stream])
    line = played.line
    counts = ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens")
    assert min(line[name] for name in counts) >= 0
    assert played.charged[1] >= 500
