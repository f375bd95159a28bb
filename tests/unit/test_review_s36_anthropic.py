"""Review of Anthropic Messages API answers as the bill and the client see them.

Each test plays one request through the real processor (the default config, Claude model
``claude-3-5-haiku-latest`` on the ``mock-anthropic`` provider), answered with Anthropic's
wire format: a message, or an event stream (``message_start`` with the prompt side and
the cache writes' 1-hour split, ``ping``, content blocks, ``message_delta`` with
cumulative counts, ``message_stop``). Both client routes are played: ``/v1/messages``
(passed through) and ``/v1/chat/completions`` (translated to OpenAI's shape).
What is checked is what a user sees: the log line's counts and cost, and the
``usage`` the OpenAI client reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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

AUTH = {"authorization": "Bearer team1-key"}
FROM_PROVIDER = {"x-envoy-upstream-service-time": "3"}
SSE = {"content-type": "text/event-stream", **FROM_PROVIDER}
JSON = {"content-type": "application/json", **FROM_PROVIDER}
MODEL = "claude-3-5-haiku-latest"
MESSAGES = "/v1/messages"
CHAT = "/v1/chat/completions"
ROUTES = [MESSAGES, CHAT]

# 10 uncached + 100 written (40 to the 5-minute cache, 60 to the 1-hour one) + 1000 read.
START_USAGE = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 100,
    "cache_read_input_tokens": 1000,
    "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 60},
    "output_tokens": 1,
    "service_tier": "standard",
}
PROMPT = 1110
# claude-3-5-haiku-latest: input 0.80, cached 0.08, 5-minute writes 1.00, 1-hour writes
# 1.60, output 4.00 per million tokens; web search $10 per 1,000.
PROMPT_PICOUSD = 10 * 800_000 + 1000 * 80_000 + 40 * 1_000_000 + 60 * 1_600_000
OUTPUT_PICOUSD = 4_000_000
SEARCH_PICOUSD = 10_000_000_000


def usd(picousd: int) -> float:
    return picousd / 10**12


def body(path: str, stream: bool) -> bytes:
    document: dict[str, Any] = {
        "model": MODEL,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if path == MESSAGES:
        document["max_tokens"] = 100
    elif stream:
        document["stream_options"] = {"include_usage": True}
    return orjson.dumps(document)


def event(kind: str, data: dict[str, Any], crlf: bool = False) -> bytes:
    text = b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
    return text.replace(b"\n", b"\r\n") if crlf else text


def message_start(usage: dict[str, Any], crlf: bool = False) -> bytes:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return event("message_start", {"type": "message_start", "message": message}, crlf)


def text_block(index: int, text: str, crlf: bool = False) -> list[bytes]:
    delta = {"type": "text_delta", "text": text}
    return [
        event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": {"type": "text"}},
            crlf,
        ),
        event("ping", {"type": "ping"}, crlf),
        event(
            "content_block_delta",
            {"type": "content_block_delta", "index": index, "delta": delta},
            crlf,
        ),
        event("content_block_stop", {"type": "content_block_stop", "index": index}, crlf),
    ]


def search_blocks(index: int, failed: bool = False) -> list[bytes]:
    """A web search's request block and its result block (an error result if ``failed``)."""
    request = {"type": "server_tool_use", "id": f"srvtoolu_{index}", "name": "web_search"}
    result: Any = [{"type": "web_search_result", "title": "T", "url": "https://example.com"}]
    if failed:
        result = {"type": "web_search_tool_result_error", "error_code": "max_uses_exceeded"}
    found = {"type": "web_search_tool_result", "tool_use_id": f"srvtoolu_{index}"}
    query = {"type": "input_json_delta", "partial_json": '{"query": "w"}'}
    return [
        event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": {**request}},
        ),
        event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": query}
        ),
        event("content_block_stop", {"type": "content_block_stop", "index": index}),
        event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index + 1,
                "content_block": {**found, "content": result},
            },
        ),
        event("content_block_stop", {"type": "content_block_stop", "index": index + 1}),
    ]


def message_delta(
    usage: dict[str, Any], reason: str | None = "end_turn", crlf: bool = False
) -> bytes:
    delta = {"stop_reason": reason, "stop_sequence": None}
    return event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}, crlf)


def message_stop(crlf: bool = False) -> bytes:
    return event("message_stop", {"type": "message_stop"}, crlf)


async def play(
    processor: Processor,
    path: str,
    request: bytes,
    headers: dict[str, str],
    chunks: Sequence[bytes],
    *,
    cut: bool = False,
) -> bytes:
    """The request answered with ``chunks``; ``cut``: the client hung up after the last one
    (Envoy sends no end of stream). What the client read."""
    messages = [
        request_headers(path, headers=AUTH),
        request_body(request),
        response_headers(200, headers),
    ]
    last = len(chunks) - 1
    messages += [
        response_body(chunk, end_of_stream=not cut and index == last)
        for index, chunk in enumerate(chunks)
    ]
    answers = await run_stream(processor, messages)
    assert not any(a.HasField("immediate_response") for a in answers)
    return client_body(chunks, answers)


def logged(services: Services) -> dict[str, Any]:
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line


def openai_usage(shown: bytes) -> dict[str, Any]:
    """The usage of the OpenAI client's last chunk that carries one (or of its answer)."""
    if not shown.startswith(b"data:"):
        return orjson.loads(shown)["usage"]
    chunks = [
        orjson.loads(part[5:])
        for part in shown.split(b"\n\n")
        if part.startswith(b"data:") and part[5:].strip() != b"[DONE]"
    ]
    [usage] = [chunk["usage"] for chunk in chunks if chunk.get("usage")]
    return usage


def counts(line: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached_tokens",
        "cache_write_tokens",
        "cache_write_1h_tokens",
        "server_tool_requests",
        "usage_reported",
        "usage_estimated",
        "cost_usd",
    )
    return {key: line[key] for key in keys}


def assert_client_agrees(line: dict[str, Any], shown: bytes) -> None:
    usage = openai_usage(shown)
    assert usage["prompt_tokens"] == line["prompt_tokens"]
    assert usage["completion_tokens"] == line["completion_tokens"]
    assert usage["total_tokens"] == line["total_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] == line["cached_tokens"]


# --- a whole stream, however Envoy cut it ------------------------------------------------


def crlf_stream() -> bytes:
    """A web-searching answer, every line ended CRLF, as a proxy in front may send it."""
    usage = {
        "input_tokens": 10,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 25,
        "server_tool_use": {"web_search_requests": 1},
    }
    crlf = [event.replace(b"\n", b"\r\n") for event in search_blocks(1)]
    return b"".join(
        [
            message_start(START_USAGE, crlf=True),
            *text_block(0, "Hello", crlf=True),
            *crlf,
            message_delta(usage, crlf=True),
            message_stop(crlf=True),
        ]
    )


WHOLE = {
    "prompt_tokens": PROMPT,
    "completion_tokens": 25,
    "total_tokens": PROMPT + 25,
    "cached_tokens": 1000,
    "cache_write_tokens": 100,
    "cache_write_1h_tokens": 60,
    "server_tool_requests": {"web_search": 1},
    "usage_reported": True,
    "usage_estimated": False,
    "cost_usd": usd(PROMPT_PICOUSD + 25 * OUTPUT_PICOUSD + SEARCH_PICOUSD),
}


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("size", [1, 7])
async def test_a_crlf_stream_in_chunks_of_any_size_is_billed_as_one_chunk(
    processor: Processor, services: Services, path: str, size: int
) -> None:
    """Chunks of one byte cut every ``\\r\\n``, the blank line ending each event, and the
    ``event:`` line of ``message_stop`` between two messages: the counts and their price
    are those of the stream read whole, and the OpenAI client's usage agrees."""
    stream = crlf_stream()
    chunks = [stream[start : start + size] for start in range(0, len(stream), size)]
    shown = await play(processor, path, body(path, True), SSE, chunks)

    line = logged(services)
    assert counts(line) == WHOLE
    assert line["outcome"] == "completed"
    if path == CHAT:
        assert_client_agrees(line, shown)


# --- cumulative counts ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ROUTES)
async def test_each_message_delta_replaces_the_counts_before_it(
    processor: Processor, services: Services, path: str
) -> None:
    """Server tools may make Anthropic send two ``message_delta`` events: their counts are
    running totals (the prompt grows with the search results), never summed."""
    first = {
        "input_tokens": 500,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
        "output_tokens": 30,
        "server_tool_use": {"web_search_requests": 1},
    }
    last = {**first, "input_tokens": 900, "output_tokens": 70}
    last["server_tool_use"] = {"web_search_requests": 2}
    chunks = [
        message_start(START_USAGE),
        *search_blocks(0),
        message_delta(first, reason=None),
        *search_blocks(2),
        *text_block(4, "done"),
        message_delta(last),
        message_stop(),
    ]
    shown = await play(processor, path, body(path, True), SSE, chunks)

    line = logged(services)
    prompt = 900 + 100 + 1000
    assert (line["prompt_tokens"], line["completion_tokens"]) == (prompt, 70)
    assert (line["cached_tokens"], line["cache_write_tokens"]) == (1000, 100)
    assert line["server_tool_requests"] == {"web_search": 2}
    if path == CHAT:
        assert_client_agrees(line, shown)
        # One finish shown, though two message_delta events came.
        assert shown.count(b'"finish_reason":"stop"') == 1


# --- a stream cut or failed ------------------------------------------------------------------


@pytest.mark.parametrize("path", ROUTES)
async def test_a_stream_cut_after_message_start_is_charged_its_cache_counts_and_text(
    processor: Processor, services: Services, path: str
) -> None:
    """The client hung up after 40 characters of text: the prompt side is Anthropic's own
    (its cache reads and both kinds of writes, each at its price), the output the
    estimate of the text streamed, and the line says it is an estimate."""
    chunks = [message_start(START_USAGE), *text_block(0, "x" * 40)]
    await play(processor, path, body(path, True), SSE, chunks, cut=True)

    line = logged(services)
    assert counts(line) == {
        "prompt_tokens": PROMPT,
        "completion_tokens": 10,
        "total_tokens": PROMPT + 10,
        "cached_tokens": 1000,
        "cache_write_tokens": 100,
        "cache_write_1h_tokens": 60,
        "server_tool_requests": None,
        "usage_reported": False,
        "usage_estimated": True,
        "cost_usd": usd(PROMPT_PICOUSD + 10 * OUTPUT_PICOUSD),
    }
    assert line["outcome"] == "aborted"
    # The model that answered, as message_start named it, though the answer was cut.
    assert line["response_model"] == "claude-3-5-haiku-20241022"


@pytest.mark.parametrize("path", ROUTES)
async def test_a_stream_cut_mid_search_bills_the_searches_its_blocks_showed(
    processor: Processor, services: Services, path: str
) -> None:
    """Cut before Anthropic's count: each web search block shown is billed, but one whose
    result is an error (Anthropic bills no failed search)."""
    chunks = [message_start(START_USAGE), *search_blocks(0), *search_blocks(2, failed=True)]
    await play(processor, path, body(path, True), SSE, chunks, cut=True)

    line = logged(services)
    assert line["server_tool_requests"] == {"web_search": 1}
    assert line["usage_estimated"] is True
    assert line["prompt_tokens"] == PROMPT
    completion = line["completion_tokens"]
    expected = PROMPT_PICOUSD + completion * OUTPUT_PICOUSD + SEARCH_PICOUSD
    assert line["cost_usd"] == usd(expected)


@pytest.mark.parametrize("path", ROUTES)
async def test_an_error_event_mid_stream_keeps_anthropics_prompt_counts(
    processor: Processor, services: Services, path: str
) -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    chunks = [message_start(START_USAGE), *text_block(0, "y" * 40), event("error", error)]
    shown = await play(processor, path, body(path, True), SSE, chunks)

    line = logged(services)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (PROMPT, 10)
    assert (line["cache_write_tokens"], line["cache_write_1h_tokens"]) == (100, 60)
    assert line["usage_estimated"] is True
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "upstream_overloaded")
    # The client reads the error last, in its own API's shape.
    if path == MESSAGES:
        assert shown.endswith(event("error", error))
    else:
        error_read, end = shown.rstrip().split(b"\n\n")[-2:]
        assert b'"code":"upstream_overloaded"' in error_read
        assert end == b"data: [DONE]"


# --- a whole message -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ROUTES)
async def test_a_whole_message_is_billed_and_shown_as_anthropic_counted_it(
    processor: Processor, services: Services, path: str
) -> None:
    usage = {
        **START_USAGE,
        "output_tokens": 25,
        "server_tool_use": {"web_search_requests": 1, "web_fetch_requests": 1},
    }
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-5-haiku-20241022",
        "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "text", "text": "hi"},
        ],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }
    shown = await play(processor, path, body(path, False), JSON, [orjson.dumps(message)])

    line = logged(services)
    assert counts(line) == {
        **WHOLE,
        "server_tool_requests": {"web_search": 1, "web_fetch": 1},
        # web fetch costs only its tokens.
        "cost_usd": usd(PROMPT_PICOUSD + 25 * OUTPUT_PICOUSD + SEARCH_PICOUSD),
    }
    if path == CHAT:
        assert_client_agrees(line, shown)
    else:
        assert shown == orjson.dumps(message)
