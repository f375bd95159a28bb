"""A stream cut before Anthropic's count of its server tools still bills the searches it made.

Anthropic counts a stream's server-tool requests (``usage.server_tool_use``) in
``message_delta``, near the end; the stream shows each request earlier, as a
``server_tool_use`` block (its ``name``: ``web_search``, ``web_fetch``) followed by its
result block. A stream that ends before ``message_delta`` (the client hung up, the
provider failed) is billed the searches its blocks showed, marked estimated like its
tokens; when ``message_delta``'s count arrives, it is the bill.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson
import pytest

from extproc.processor import Processor
from extproc.runtime import Services
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators import anthropic_anthropic, openai_anthropic

SONNET = "claude-sonnet-4-0"
PER_SEARCH = Decimal("0.01")  # the default config: web_search at $10 per 1,000
PROMPT = [{"role": "user", "content": "x" * 40}]
SSE = {"content-type": "text/event-stream"}
ANTHROPIC_KEY = {"x-api-key": "team1-key"}
OPENAI_KEY = {"authorization": "Bearer team1-key"}


def sse(payload: Mapping[str, object]) -> bytes:
    return f"event: {payload['type']}\n".encode() + b"data: " + orjson.dumps(payload) + b"\n\n"


def message_start() -> bytes:
    usage = {
        "input_tokens": 40,
        "output_tokens": 1,
        "server_tool_use": {"web_search_requests": 0, "web_fetch_requests": 0},
    }
    message = {"id": "msg_1", "type": "message", "model": SONNET, "content": [], "usage": usage}
    return sse({"type": "message_start", "message": message})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return sse({"type": "content_block_start", "index": index, "content_block": block})


def block_stop(index: int) -> bytes:
    return sse({"type": "content_block_stop", "index": index})


def text(index: int, words: str) -> bytes:
    delta = {"type": "text_delta", "text": words}
    return (
        block_start(index, {"type": "text", "text": ""})
        + sse({"type": "content_block_delta", "index": index, "delta": delta})
        + block_stop(index)
    )


def tool_call(index: int, name: str, query: dict[str, str], error: str | None = None) -> bytes:
    """A server tool's request and its result, as Anthropic streams them (two blocks)."""
    tool_id = f"srvtoolu_{index}"
    partial = {"type": "input_json_delta", "partial_json": orjson.dumps(query).decode()}
    result: Any
    if error is not None:
        result = {"type": f"{name}_tool_result_error", "error_code": error}
    elif name == "web_search":
        result = [{"type": "web_search_result", "url": "https://example.com", "title": "t",
                   "encrypted_content": "abc", "page_age": None}]  # fmt: skip
    else:
        result = {"type": f"{name}_result", "url": "https://example.com", "content": {}}
    return (
        block_start(index, {"type": "server_tool_use", "id": tool_id, "name": name, "input": {}})
        + sse({"type": "content_block_delta", "index": index, "delta": partial})
        + block_stop(index)
        + block_start(
            index + 1, {"type": f"{name}_tool_result", "tool_use_id": tool_id, "content": result}
        )
        + block_stop(index + 1)
    )


def search(index: int, error: str | None = None) -> bytes:
    return tool_call(index, "web_search", {"query": f"the act, part {index}"}, error)


def fetch(index: int) -> bytes:
    return tool_call(index, "web_fetch", {"url": "https://example.com/act"})


def message_delta(**tools: int) -> bytes:
    usage: dict[str, Any] = {"output_tokens": 90}
    if tools:
        usage["server_tool_use"] = {f"{name}_requests": count for name, count in tools.items()}
    return sse({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": usage})


MESSAGE_STOP = sse({"type": "message_stop"})
OVERLOADED = sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
# Two searches and a fetch, then the answer starts: the client hangs up here.
SEARCHED_THEN_CUT = message_start() + search(0) + search(2) + fetch(4) + text(6, "The act")


def stream_body() -> bytes:
    return orjson.dumps({"model": SONNET, "max_tokens": 100, "stream": True, "messages": PROMPT})


def chat_body() -> bytes:
    return orjson.dumps({"model": SONNET, "stream": True, "messages": PROMPT})


async def anthropic_stream(
    processor: Processor, services: Services, stream: bytes, *, ended: bool
) -> dict[str, Any]:
    """An Anthropic client's stream through the gateway; the request's log line."""
    return await _stream_line(
        processor, services, stream, ended, "/v1/messages", ANTHROPIC_KEY, stream_body()
    )


async def openai_stream(
    processor: Processor, services: Services, stream: bytes, *, ended: bool
) -> dict[str, Any]:
    """An OpenAI client's stream, translated from Anthropic's; the request's log line."""
    return await _stream_line(
        processor, services, stream, ended, "/anthropic/chat/completions", OPENAI_KEY, chat_body()
    )


async def _stream_line(
    processor: Processor,
    services: Services,
    stream: bytes,
    ended: bool,
    path: str,
    headers: dict[str, str],
    body: bytes,
) -> dict[str, Any]:
    await run_stream(
        processor,
        [
            request_headers(path, headers=headers),
            request_body(body),
            response_headers(200, SSE),
            response_body(stream, end_of_stream=ended),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line  # type: ignore[no-any-return]


def search_cost(line: dict[str, Any]) -> Decimal:
    """What the line's cost holds beyond its tokens' (Sonnet's prices, no cache)."""
    tokens = line["prompt_tokens"] * Decimal("3.00") + line["completion_tokens"] * Decimal(15)
    return Decimal(str(line["cost_usd"])) - tokens / 10**6


# --- An Anthropic client (bytes passed through) ---------------------------------------


async def test_a_stream_the_client_left_after_searching_bills_its_searches(
    processor: Processor, services: Services
) -> None:
    line = await anthropic_stream(processor, services, SEARCHED_THEN_CUT, ended=False)
    assert line["outcome"] == "aborted"
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert line["server_tool_requests"] == {"web_search": 2, "web_fetch": 1}
    assert search_cost(line) == 2 * PER_SEARCH


async def test_a_stream_the_provider_failed_after_searching_bills_its_searches(
    processor: Processor, services: Services
) -> None:
    line = await anthropic_stream(processor, services, SEARCHED_THEN_CUT + OVERLOADED, ended=True)
    assert (line["outcome"], line["usage_estimated"]) == ("upstream_error", True)
    assert line["server_tool_requests"] == {"web_search": 2, "web_fetch": 1}
    assert search_cost(line) == 2 * PER_SEARCH


async def test_a_search_that_failed_is_not_billed(processor: Processor, services: Services) -> None:
    # The second search went past the request's max_uses: Anthropic neither ran nor bills it.
    stream = message_start() + search(0) + search(2, error="max_uses_exceeded") + text(4, "So")
    line = await anthropic_stream(processor, services, stream, ended=False)
    assert line["server_tool_requests"] == {"web_search": 1}


async def test_anthropic_s_own_count_wins_once_it_arrives(
    processor: Processor, services: Services
) -> None:
    # Anthropic counted one search where the blocks show two: its count is the bill.
    stream = SEARCHED_THEN_CUT + message_delta(web_search=1, web_fetch=1) + MESSAGE_STOP
    line = await anthropic_stream(processor, services, stream, ended=True)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    assert line["server_tool_requests"] == {"web_search": 1, "web_fetch": 1}
    assert search_cost(line) == PER_SEARCH


async def test_anthropic_s_count_wins_even_when_the_stream_then_fails(
    processor: Processor, services: Services
) -> None:
    stream = SEARCHED_THEN_CUT + message_delta(web_search=1, web_fetch=0) + OVERLOADED
    line = await anthropic_stream(processor, services, stream, ended=True)
    assert line["usage_estimated"] is True
    assert line["server_tool_requests"] == {"web_search": 1}


async def test_text_that_names_the_blocks_bills_nothing(
    processor: Processor, services: Services
) -> None:
    words = 'a "server_tool_use" block named "web_search", then "web_search_tool_result"'
    line = await anthropic_stream(
        processor, services, message_start() + text(0, words), ended=False
    )
    assert line["server_tool_requests"] is None


async def test_other_server_tools_are_not_counted_as_requests(
    processor: Processor, services: Services
) -> None:
    # Code execution is billed by the container's time, not per request: Anthropic's
    # server_tool_use count has no entry for it.
    stream = message_start() + tool_call(0, "bash_code_execution", {"command": "ls"})
    line = await anthropic_stream(processor, services, stream + search(2), ended=False)
    assert line["server_tool_requests"] == {"web_search": 1}


# --- An OpenAI client (translated) ----------------------------------------------------


async def test_a_translated_stream_the_client_left_bills_its_searches(
    processor: Processor, services: Services
) -> None:
    line = await openai_stream(processor, services, SEARCHED_THEN_CUT, ended=False)
    assert line["outcome"] == "aborted"
    assert line["usage_estimated"] is True
    assert line["server_tool_requests"] == {"web_search": 2, "web_fetch": 1}
    assert search_cost(line) == 2 * PER_SEARCH


async def test_a_translated_stream_the_provider_failed_bills_its_searches(
    processor: Processor, services: Services
) -> None:
    line = await openai_stream(processor, services, SEARCHED_THEN_CUT + OVERLOADED, ended=True)
    assert (line["outcome"], line["usage_estimated"]) == ("upstream_error", True)
    assert line["server_tool_requests"] == {"web_search": 2, "web_fetch": 1}


async def test_a_translated_stream_bills_anthropic_s_count_once_it_arrives(
    processor: Processor, services: Services
) -> None:
    stream = SEARCHED_THEN_CUT + message_delta(web_search=1, web_fetch=1) + MESSAGE_STOP
    line = await openai_stream(processor, services, stream, ended=True)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    assert line["server_tool_requests"] == {"web_search": 1, "web_fetch": 1}


# --- However the stream is cut into chunks --------------------------------------------


@pytest.mark.parametrize("step", [1, 7, 64])
def test_the_blocks_are_counted_whatever_the_chunks(step: int) -> None:
    readers = (
        anthropic_anthropic.EventStreamReader(),
        openai_anthropic.StreamTranslator(include_usage=False, request_id="r", created=0),
    )
    for reader in readers:
        for at in range(0, len(SEARCHED_THEN_CUT), step):
            reader.feed(SEARCHED_THEN_CUT[at : at + step], False)
        assert anthropic_anthropic.server_tools_counted(reader) == {
            "web_search": 2,
            "web_fetch": 1,
        }


# --- A whole answer without Anthropic's count -----------------------------------------


async def test_a_whole_answer_without_usage_bills_the_searches_its_blocks_show(
    processor: Processor, services: Services
) -> None:
    # A proxy that strips usage: the answer is charged its estimate, and the searches its
    # blocks show, as a stream ended without its count is (a failed one not billed).
    tool_id = "srvtoolu_{}".format
    content = [
        {"type": "server_tool_use", "id": tool_id(0), "name": "web_search", "input": {}},
        {"type": "web_search_tool_result", "tool_use_id": tool_id(0), "content": []},
        {"type": "server_tool_use", "id": tool_id(1), "name": "web_search", "input": {}},
        {
            "type": "web_search_tool_result",
            "tool_use_id": tool_id(1),
            "content": {"type": "web_search_tool_result_error", "error_code": "max_uses_exceeded"},
        },
        {"type": "server_tool_use", "id": tool_id(2), "name": "web_fetch", "input": {}},
        {"type": "text", "text": "The act changed."},
    ]
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": SONNET,
               "content": content, "stop_reason": "end_turn"}  # fmt: skip
    body = orjson.dumps({"model": SONNET, "max_tokens": 100, "messages": PROMPT})
    await run_stream(
        processor,
        [
            request_headers("/v1/messages", headers=ANTHROPIC_KEY),
            request_body(body),
            response_headers(200, {"content-type": "application/json"}),
            response_body(orjson.dumps(message)),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    assert line["server_tool_requests"] == {"web_search": 1, "web_fetch": 1}
    assert search_cost(line) == PER_SEARCH
