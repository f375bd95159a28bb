"""Review s36: Gemini on Vertex AI, billed as its clients and operators see it.

Gemini's own API (generateContent, streamGenerateContent ?alt=sse) and OpenAI chat
clients whose model is Gemini on Vertex's OpenAI-compatible endpoint, each request
played through the real processor with real ext_proc messages; each test checks the
request's log line (and, where it matters, what the client read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.testing import (
    client_body,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_gemini_review import (
    BODY,
    KEY,
    PREFIX,
    SSE,
    event,
    log_line,
    memory_services,
    play,
)

# The mock Vertex fixture, re-exported so pytest finds it here.
from tests.unit.test_gemini_review import vertex as vertex
from tests.unit.test_vertex_review import (
    GEMINI,
    JSON,
    OPENAI_KEY,
    PROMPT,
    serving,
    vertex_config,
)
from tests.unit.test_vertex_review import google as google

# Vertex's SSE for an OpenAI client (Gemini's OpenAI-compatible endpoint).
OPENAI_SSE = {"content-type": "text/event-stream", "x-envoy-upstream-service-time": "4"}


def gemini_stream_call(events: list[bytes], *, ended: bool) -> list[Any]:
    """The ext_proc messages of one streamGenerateContent call answered with ``events``;
    ``ended`` False: the client hung up after them (Envoy's end of stream never comes)."""
    return [
        request_headers(f"{PREFIX}:streamGenerateContent?alt=sse", headers=KEY),
        request_body(orjson.dumps(BODY)),
        response_headers(200, SSE),
        *(response_body(chunk, end_of_stream=False) for chunk in events),
        *([response_body(b"", end_of_stream=True)] if ended else []),
    ]


def text_event(text: str, usage: dict[str, int] | None = None, **part: Any) -> bytes:
    document: dict[str, Any] = {
        "candidates": [{"content": {"role": "model", "parts": [{"text": text, **part}]}}],
        "modelVersion": "gemini-2.5-flash",
    }
    if usage is not None:
        document["usageMetadata"] = usage
    return event(document)


# Gemini 2.5 thinks first: the event that ends its thinking counts the thoughts so far
# (a running output count); the answer's events that follow count only the prompt, or
# nothing, until the last one.
THINKING = text_event(
    "Let me think about the question.",
    {"promptTokenCount": 6, "thoughtsTokenCount": 40, "totalTokenCount": 46},
    thought=True,
)
ANSWER_TEXT = "The answer, at length. " * 200  # 4600 characters: about 1150 tokens
ANSWER_EVENTS = [
    text_event(ANSWER_TEXT[i : i + 460], {"promptTokenCount": 6, "totalTokenCount": 46})
    for i in range(0, len(ANSWER_TEXT), 460)
]
FAILED = event({"error": {"code": 500, "message": "Internal error.", "status": "INTERNAL"}})


# --- Gemini's own API: a stream cut after a running count ---------------------------------


@pytest.mark.parametrize("ending", ["client-hung-up", "error-event"])
async def test_answer_text_after_the_last_running_count_is_charged(
    vertex: tuple[str, Path], ending: str
) -> None:
    # The stream carried ~1150 tokens of answer text after Gemini's last output count
    # (40 thoughts). The provider bills what it generated; the docs promise a stream cut
    # or failed before its final counts is charged what it reported *and* the estimate of
    # the text it carried. A provider's error event gets that (the larger of the two); a
    # client that hangs up at the very same byte must not be charged 40 tokens instead.
    services = memory_services()
    events = [THINKING, *ANSWER_EVENTS]
    if ending == "error-event":
        events.append(FAILED)
    await play(vertex, gemini_stream_call(events, ended=False), services)
    line = log_line(services)
    assert line["prompt_tokens"] == 6
    assert line["completion_tokens"] >= len(ANSWER_TEXT) // 4, line


async def test_a_stream_cut_after_a_whole_running_count_keeps_googles_count(
    vertex: tuple[str, Path],
) -> None:
    # Where Gemini's running count covers every event (the Gemini API's way), the count
    # is what is billed: no estimate on top, the cache hits and the tool's prompt kept.
    services = memory_services()
    usage = {
        "promptTokenCount": 50,
        "cachedContentTokenCount": 30,
        "toolUsePromptTokenCount": 4,
        "candidatesTokenCount": 3,
        "thoughtsTokenCount": 12,
    }
    await play(vertex, gemini_stream_call([text_event("Hi there", usage)], ended=False), services)
    line = log_line(services)
    assert (line["outcome"], line["prompt_tokens"], line["cached_tokens"]) == ("aborted", 54, 30)
    assert line["completion_tokens"] == 15


async def test_a_two_candidate_stream_bills_its_last_cumulative_report_once(
    vertex: tuple[str, Path],
) -> None:
    # candidateCount 2: each candidate's events carry the request's running count (for
    # both candidates together); the last event ends both and carries the bill.
    services = memory_services()

    def both(texts: tuple[str, str], usage: dict[str, int], finish: bool) -> bytes:
        candidates = [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "index": index,
                **({"finishReason": "STOP"} if finish else {}),
            }
            for index, text in enumerate(texts)
        ]
        return event({"candidates": candidates, "usageMetadata": usage})

    two = {**BODY, "generationConfig": {"candidateCount": 2}}
    events = [
        both(("Hi", "Hello"), {"promptTokenCount": 6, "candidatesTokenCount": 3}, False),
        both((" you", " there"), {"promptTokenCount": 6, "candidatesTokenCount": 7}, True),
    ]
    await play(
        vertex,
        [
            request_headers(f"{PREFIX}:streamGenerateContent?alt=sse", headers=KEY),
            request_body(orjson.dumps(two)),
            response_headers(200, SSE),
            response_body(b"".join(events), end_of_stream=True),
        ],
        services,
    )
    line = log_line(services)
    assert (line["outcome"], line["prompt_tokens"], line["completion_tokens"]) == (
        "completed",
        6,
        7,
    )
    assert line["finish_reasons"] == ["STOP", "STOP"]


# --- OpenAI chat clients of Gemini on Vertex ----------------------------------------------


def completion(usage: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": GEMINI,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "4"},
                    "finish_reason": "stop",
                }
            ],
            "usage": usage,
        }
    )


async def test_gemini_thinking_reported_only_in_the_total_is_billed_as_output(
    google: tuple[str, Path],
) -> None:
    # Google's OpenAI-compatible endpoint counts Gemini's thinking in total_tokens and not
    # in completion_tokens, with no completion_tokens_details to say so (seen from it:
    # {"completion_tokens": 1, "prompt_tokens": 9, "total_tokens": 103}). Thinking is
    # billed as output (the native API's thoughtsTokenCount, which the gateway bills):
    # the 93 tokens are Google's charge, and must be the gateway's too.
    log = MemoryLog()
    async with serving(vertex_config(google), log) as processor:
        await run_stream(
            processor,
            [
                request_headers("/v1/chat/completions", headers=OPENAI_KEY),
                request_body(orjson.dumps({"model": "gemini-flash", "messages": PROMPT})),
                response_headers(200, JSON),
                response_body(
                    completion({"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 103})
                ),
            ],
        )
    [line] = log.lines()
    assert line["prompt_tokens"] == 9
    assert (line["completion_tokens"], line["total_tokens"]) == (94, 103)


async def test_a_running_count_on_every_chunk_is_billed_once_and_hidden_from_the_client(
    google: tuple[str, Path],
) -> None:
    # Vertex's OpenAI endpoint repeats the count so far on every chunk. The client did not
    # ask for usage: it must find none (a framework adding up chunk usage would bill it
    # many times over), and the log line must hold the last count, not a sum.
    def chunk(text: str, completion_tokens: int, finish: str | None = None) -> bytes:
        document = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": GEMINI,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": 9,
                "completion_tokens": completion_tokens,
                "total_tokens": 9 + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": 4},
            },
        }
        return b"data: " + orjson.dumps(document) + b"\n\n"

    chunks = [chunk("Hello", 1), chunk(" there", 2), chunk("!", 3, "stop"), b"data: [DONE]\n\n"]
    log = MemoryLog()
    async with serving(vertex_config(google), log) as processor:
        body = {"model": "gemini-flash", "messages": PROMPT, "stream": True}
        answers = await run_stream(
            processor,
            [
                request_headers("/v1/chat/completions", headers=OPENAI_KEY),
                request_body(orjson.dumps(body)),
                response_headers(200, OPENAI_SSE),
                *(response_body(c, end_of_stream=False) for c in chunks),
                response_body(b"", end_of_stream=True),
            ],
        )
    received = client_body([*chunks, b""], answers[3:])
    assert b'"usage"' not in received and received.count(b"data: ") == 4
    [line] = log.lines()
    assert (line["prompt_tokens"], line["completion_tokens"], line["cached_tokens"]) == (9, 3, 4)
    assert line["usage_estimated"] is False and line["outcome"] == "completed"


# --- Grounding with Google Search --------------------------------------------------------

# Gemini 2.5 is billed per grounded prompt ($35 per 1,000), Gemini 3 per search query.
PRICED_SEARCH = {
    "models": {
        "gemini-2.5-flash": {
            "input_per_million": 0.30,
            "output_per_million": 2.50,
            "server_tools_per_thousand": {"grounded_prompt": 35.00, "google_search": 0},
        }
    }
}
GROUNDED_USAGE = {"promptTokenCount": 10, "candidatesTokenCount": 20, "totalTokenCount": 30}


def grounded(queries: list[str], **more: Any) -> dict[str, Any]:
    """A candidate's answer grounded by Google Search queries ``queries``."""
    return {
        "content": {"role": "model", "parts": [{"text": "Grounded."}]},
        "groundingMetadata": {"webSearchQueries": queries, "groundingChunks": []},
        **more,
    }


async def generated(
    vertex: tuple[str, Path], answer: bytes, pricing: dict[str, Any]
) -> dict[str, Any]:
    """The log line of a generateContent call Vertex answered ``answer``, under ``pricing``."""
    services = memory_services()
    await play(
        vertex,
        [
            request_headers(f"{PREFIX}:generateContent", headers=KEY),
            request_body(orjson.dumps(BODY)),
            response_headers(200, {**SSE, "content-type": "application/json"}),
            response_body(answer),
        ],
        services,
        pricing=pricing,
    )
    return log_line(services)


async def test_a_grounded_answer_bills_its_prompt_and_queries_as_search_requests(
    vertex: tuple[str, Path],
) -> None:
    # Google bills Grounding with Google Search beside the tokens: the line counts the
    # grounded prompt and its queries, and prices the one the table prices.
    answer = orjson.dumps(
        {
            "candidates": [grounded(["weather paris", "paris forecast"], finishReason="STOP")],
            "usageMetadata": GROUNDED_USAGE,
            "modelVersion": "gemini-2.5-flash",
        }
    )
    line = await generated(vertex, answer, PRICED_SEARCH)
    assert line["server_tool_requests"] == {"grounded_prompt": 1, "google_search": 2}
    assert line["cost_priced"] is True
    assert line["cost_usd"] == pytest.approx(10 * 0.30e-6 + 20 * 2.50e-6 + 0.035)


async def test_a_grounded_answer_without_a_search_price_is_not_priced_as_complete(
    vertex: tuple[str, Path],
) -> None:
    # A table that prices the model's tokens but not its searches: the line says the
    # cost is incomplete rather than show $0 for searches Google billed.
    answer = orjson.dumps(
        {
            "candidates": [grounded(["weather"], finishReason="STOP")],
            "usageMetadata": GROUNDED_USAGE,
        }
    )
    tokens_only = {
        "models": {"gemini-2.5-flash": {"input_per_million": 0.30, "output_per_million": 2.50}}
    }
    line = await generated(vertex, answer, tokens_only)
    assert line["server_tool_requests"] == {"grounded_prompt": 1, "google_search": 1}
    assert line["cost_priced"] is False


@pytest.mark.parametrize("ended", [True, False], ids=["whole", "cut"])
async def test_a_streams_grounding_is_billed_once_whole_or_cut(
    vertex: tuple[str, Path], ended: bool
) -> None:
    # The grounding may come in more than one event (repeated): counted once. A stream
    # cut after it is charged the searches it showed, as Google billed them.
    first = event({"candidates": [grounded(["paris"])], "usageMetadata": {"promptTokenCount": 10}})
    last = event(
        {
            "candidates": [grounded(["paris", "paris news"], finishReason="STOP")],
            "usageMetadata": GROUNDED_USAGE,
        }
    )
    events = [first, last] if ended else [first]
    services = memory_services()
    await play(vertex, gemini_stream_call(events, ended=ended), services, pricing=PRICED_SEARCH)
    line = log_line(services)
    queries = 2 if ended else 1
    assert line["server_tool_requests"] == {"grounded_prompt": 1, "google_search": queries}
    assert line["usage_estimated"] is not ended
