"""Streams of OpenAI-compatible providers that are not OpenAI, read for the bill.

Each stream below is shaped as a provider sends it (docs/providers.md, OpenAI-compatible
providers): Gemini's OpenAI endpoint and vLLM's ``continuous_usage_stats`` repeat a
running ``usage`` on every chunk; Mistral and llama.cpp put it in the finish chunk;
Moonshot inside the choice; Azure opens with a ``choices: []`` chunk of prompt filter
results; DeepSeek, vLLM, Ollama and OpenRouter stream reasoning text beside ``content``;
xAI counts reasoning tokens beside ``completion_tokens``; DeepSeek and Moonshot name
their cache hits their own way. The bill must count each report once, drop none, and
charge a stream cut or failed at least what the provider had already reported; a client
that did not ask for usage must not find any in its stream.
"""

from __future__ import annotations

from decimal import Decimal
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
from tests.unit.sse_play import only_line, play_sse
from tests.unit.test_cut_stream_server_tools import (
    anthropic_stream,
    block_start,
    message_start,
    sse,
)
from tests.unit.test_cut_stream_server_tools import text as anthropic_text

CHAT = "/v1/chat/completions"
AUTH = {"authorization": "Bearer team1-key"}
MODEL = "gpt-4o-mini"  # on the default config's mock provider, type openai
PROMPT = [{"role": "user", "content": "x" * 40}]
# The gateway's own estimate of that prompt: 40 characters / 4, + 4 for the message.
PROMPT_ESTIMATE = 40 // 4 + 4
# gpt-4o-mini's prices in the default config, USD per million tokens.
INPUT, CACHED_INPUT, OUTPUT = Decimal("0.15"), Decimal("0.075"), Decimal("0.60")
DONE = b"data: [DONE]\n\n"


def body(*, include_usage: bool) -> bytes:
    fields: dict[str, Any] = {"model": MODEL, "stream": True, "messages": PROMPT}
    if include_usage:
        fields["stream_options"] = {"include_usage": True}
    return orjson.dumps(fields)


def event(choices: list[dict[str, Any]], **fields: Any) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": MODEL}
    return b"data: " + orjson.dumps({**chunk, "choices": choices, **fields}) + b"\n\n"


def delta(finish_reason: str | None = None, **fields: Any) -> list[dict[str, Any]]:
    return [{"index": 0, "delta": fields, "finish_reason": finish_reason}]


def text(words: str, **fields: Any) -> bytes:
    return event(delta(content=words), **fields)


def finish(**fields: Any) -> bytes:
    return event(delta("stop"), **fields)


def usage(prompt: int, completion: int, **details: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        **details,
    }


def error_event() -> bytes:
    error = {"message": "The model is overloaded", "type": "server_error", "code": None}
    return b"data: " + orjson.dumps({"error": error}) + b"\n\n"


async def stream(
    processor: Processor,
    services: Services,
    chunks: list[bytes],
    *,
    include_usage: bool = True,
    ended: bool = True,
) -> tuple[dict[str, Any], bytes]:
    """A client streams a chat completion; the provider answers ``chunks``. The log line
    and what the client received."""
    sent = body(include_usage=include_usage)
    answers = await play_sse(processor, CHAT, AUTH, sent, chunks, ended=ended)
    return only_line(services), client_body(chunks, answers)


def counts(line: dict[str, Any]) -> tuple[int, int]:
    return line["prompt_tokens"], line["completion_tokens"]


# 1. A running usage on every chunk (Gemini's OpenAI endpoint, vLLM's continuous_usage_stats).

RUNNING = [
    text("Once", usage=usage(900, 1)),
    text(" upon", usage=usage(900, 2)),
    text(" a time", usage=usage(900, 4)),
]


async def test_a_running_usage_on_every_chunk_is_billed_at_its_last_report_not_its_sum(
    processor: Processor, services: Services
) -> None:
    line, _ = await stream(processor, services, [*RUNNING, finish(usage=usage(900, 5)), DONE])
    assert counts(line) == (900, 5)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    assert Decimal(str(line["cost_usd"])) == (900 * INPUT + 5 * OUTPUT) / 10**6


async def test_a_stream_cut_after_running_reports_is_charged_the_last_one(
    processor: Processor, services: Services
) -> None:
    line, _ = await stream(processor, services, RUNNING, ended=False)
    assert line["outcome"] == "aborted"
    assert counts(line) == (900, 4)
    assert line["usage_reported"] is True


async def test_a_running_count_stream_its_provider_ended_before_its_finish_is_ended_early(
    processor: Processor, services: Services
) -> None:
    """The provider's body ended after a running report and before any finish reason or
    [DONE] (a proxy, or an upstream whose body ends with its connection). A running count
    on a content chunk is no end of the answer: the stream was passed on as whole (the SDK
    returned "Once upon a time" as the answer) and logged completed. Now it ends with the
    gateway's error, as any stream cut so, billed the count its last event carried."""
    line, received = await stream(processor, services, RUNNING)
    assert received.startswith(b"".join(RUNNING))
    assert b"the provider's stream ended before it was complete" in received
    assert received.endswith(DONE)
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "invalid_upstream_response")
    assert counts(line) == (900, 4)
    assert Decimal(str(line["cost_usd"])) == (900 * INPUT + 4 * OUTPUT) / 10**6


async def test_a_stream_ended_after_text_its_last_report_did_not_count_estimates_that_text(
    processor: Processor, services: Services
) -> None:
    # "Once upon a time, and then" (27 characters) is 7 tokens estimated, more than the 4
    # the last report counted before ", and then" came: the report is a floor.
    line, _ = await stream(processor, services, [*RUNNING, text(", and then")])
    assert line["outcome"] == "upstream_error"
    assert counts(line) == (900, 7)


async def test_a_stream_the_provider_failed_keeps_the_running_count_it_had_reported(
    processor: Processor, services: Services
) -> None:
    """The provider's 900 prompt tokens were read before its error: the bill may estimate
    what came after, never fall below them (the gateway's own estimate is 14)."""
    line, _ = await stream(processor, services, [*RUNNING, error_event()])
    assert line["outcome"] == "upstream_error"
    assert line["usage_estimated"] is True
    assert line["prompt_tokens"] == 900
    assert line["completion_tokens"] >= 4


# 2. Where the report comes: the finish chunk, the choice, before the finish chunk.


async def test_usage_in_the_finish_chunk_is_read(processor: Processor, services: Services) -> None:
    # Mistral, llama.cpp: the last content chunk carries the usage, choices not empty.
    chunks = [text("Hello"), finish(usage=usage(19, 13)), DONE]
    line, _ = await stream(processor, services, chunks)
    assert counts(line) == (19, 13)
    assert line["usage_reported"] is True


async def test_usage_inside_the_choice_is_read(processor: Processor, services: Services) -> None:
    # Moonshot (Kimi): the finish chunk's choice carries the usage, the chunk none.
    choice = [{"index": 0, "delta": {}, "finish_reason": "stop", "usage": usage(19, 13)}]
    line, _ = await stream(processor, services, [text("Hello"), event(choice), DONE])
    assert counts(line) == (19, 13)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)


async def test_usage_in_the_choice_and_again_in_a_usage_chunk_is_counted_once(
    processor: Processor, services: Services
) -> None:
    choice = [{"index": 0, "delta": {}, "finish_reason": "stop", "usage": usage(19, 13)}]
    chunks = [text("Hello"), event(choice), event([], usage=usage(19, 13)), DONE]
    line, _ = await stream(processor, services, chunks)
    assert counts(line) == (19, 13)


async def test_a_usage_chunk_before_the_finish_chunk_is_read_and_hidden(
    processor: Processor, services: Services
) -> None:
    chunks = [text("Hello"), event([], usage=usage(19, 13)), finish(), DONE]
    line, received = await stream(processor, services, chunks, include_usage=False)
    assert counts(line) == (19, 13)
    assert received == text("Hello") + finish() + DONE


# 3. "usage": null on every chunk, and no report: the provider ignored include_usage.

NULL_USAGE = [text("abcdefgh", usage=None), text("abcdefgh", usage=None), finish(usage=None)]


@pytest.mark.parametrize("ended", [True, False])
async def test_a_stream_whose_usage_stays_null_is_charged_its_estimate(
    processor: Processor, services: Services, ended: bool
) -> None:
    chunks = [*NULL_USAGE, DONE] if ended else NULL_USAGE
    line, _ = await stream(processor, services, chunks, include_usage=False, ended=ended)
    assert (line["usage_reported"], line["usage_estimated"]) == (False, True)
    # 16 characters streamed: 4 tokens; the prompt as the quota estimate counts it.
    assert counts(line) == (PROMPT_ESTIMATE, 4)


# 4. Azure OpenAI: a first chunk of prompt filter results, content filter results after.

AZURE_FIRST = (
    b'data: {"choices":[],"created":0,"id":"","model":"","object":"","prompt_filter_results":'
    b'[{"prompt_index":0,"content_filter_results":{"hate":{"filtered":false,"severity":"safe"},'
    b'"jailbreak":{"filtered":false,"detected":false}}}]}\n\n'
)
SAFE = {"hate": {"filtered": False, "severity": "safe"}}
# Azure reports a filter it could not run as an error object inside the choice.
NOT_FILTERED = {
    "error": {"code": "content_filter_error", "message": "The contents are not filtered"}
}


async def test_an_azure_stream_is_read_and_its_filter_chunk_reaches_the_client(
    processor: Processor, services: Services
) -> None:
    content = [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None,
                "content_filter_results": SAFE}]  # fmt: skip
    last = [
        {"index": 0, "delta": {}, "finish_reason": "stop", "content_filter_result": NOT_FILTERED}
    ]
    usage_chunk = event([], usage=usage(12, 17), model="gpt-4o-2024-08-06")
    chunks = [AZURE_FIRST, event(content), event(last), usage_chunk, DONE]
    line, received = await stream(processor, services, chunks, include_usage=False)
    # A filter's error inside a choice is no failure of the stream.
    assert line["outcome"] == "completed"
    assert counts(line) == (12, 17)
    assert line["response_model"] == "gpt-4o-2024-08-06"
    assert received == AZURE_FIRST + event(content) + event(last) + DONE


# 5. Reasoning: streamed text the provider bills as completion tokens, and its count.

REASONING = "r" * 400
ANSWER = "a" * 40
# 440 characters generated: 110 tokens at one per four.
REASONED_TOKENS = (400 + 40) // 4


@pytest.mark.parametrize(
    "reasoning_delta",
    [
        pytest.param({"reasoning_content": REASONING}, id="deepseek"),
        pytest.param({"reasoning": REASONING}, id="vllm-ollama-groq"),
        # vLLM's compatibility shape: the same text under both names.
        pytest.param({"reasoning": REASONING, "reasoning_content": REASONING}, id="both-names"),
        # OpenRouter: the same text again in reasoning_details.
        pytest.param(
            {
                "reasoning": REASONING,
                "reasoning_details": [
                    {"type": "reasoning.text", "text": REASONING, "format": "f", "index": 0}
                ],
            },
            id="openrouter",
        ),
    ],
)
async def test_a_cut_stream_is_charged_the_reasoning_it_streamed_once(
    processor: Processor, services: Services, reasoning_delta: dict[str, Any]
) -> None:
    chunks = [event(delta(**reasoning_delta)), text(ANSWER)]
    line, _ = await stream(processor, services, chunks, include_usage=False, ended=False)
    assert line["usage_estimated"] is True
    assert line["completion_tokens"] == REASONED_TOKENS


async def test_a_cut_anthropic_stream_is_charged_the_thinking_it_streamed(
    processor: Processor, services: Services
) -> None:
    # The same gap on Anthropic's own stream: a thinking block's text is output too.
    thinking = {"type": "thinking_delta", "thinking": REASONING}
    cut = (
        message_start()
        + block_start(0, {"type": "thinking", "thinking": "", "signature": ""})
        + sse({"type": "content_block_delta", "index": 0, "delta": thinking})
        + anthropic_text(1, ANSWER)
    )
    line = await anthropic_stream(processor, services, cut, ended=False)
    assert line["usage_estimated"] is True
    assert line["completion_tokens"] == REASONED_TOKENS


async def test_reasoning_tokens_inside_completion_tokens_are_billed_once(
    processor: Processor, services: Services
) -> None:
    # OpenAI (and Gemini's endpoint): completion_tokens includes the reasoning tokens.
    reported = usage(12, 1994, completion_tokens_details={"reasoning_tokens": 1269})
    line, _ = await stream(processor, services, [text("Hi"), event([], usage=reported), DONE])
    assert counts(line) == (12, 1994)


# xAI: completion_tokens is the visible answer, the reasoning tokens are counted beside it
# (total_tokens = prompt + completion + reasoning), and billed as output.
XAI_USAGE = {
    "prompt_tokens": 663,
    "completion_tokens": 50,
    "total_tokens": 837,
    "completion_tokens_details": {"reasoning_tokens": 124},
    "prompt_tokens_details": {"cached_tokens": 654},
}


async def test_reasoning_tokens_beside_completion_tokens_are_billed(
    processor: Processor, services: Services
) -> None:
    line, _ = await stream(processor, services, [text("Hi"), event([], usage=XAI_USAGE), DONE])
    assert counts(line) == (663, 50 + 124)
    assert line["total_tokens"] == 837


async def test_a_whole_answer_with_reasoning_tokens_beside_its_completion_bills_them(
    processor: Processor, services: Services
) -> None:
    line = await json_answer(processor, services, {"usage": XAI_USAGE})
    assert counts(line) == (663, 174)


# 6. Cache hits, by the names providers give them.


@pytest.mark.parametrize(
    "reported",
    [
        pytest.param({"prompt_tokens_details": {"cached_tokens": 9000}}, id="openai"),
        pytest.param(
            {"prompt_cache_hit_tokens": 9000, "prompt_cache_miss_tokens": 1000}, id="deepseek"
        ),
        pytest.param(
            {
                "prompt_tokens_details": {"cached_tokens": 9000},
                "prompt_cache_hit_tokens": 9000,
                "prompt_cache_miss_tokens": 1000,
            },
            id="deepseek-both",
        ),
        pytest.param({"cached_tokens": 9000}, id="moonshot"),
    ],
)
async def test_a_cache_hit_is_priced_as_one_whatever_its_name(
    processor: Processor, services: Services, reported: dict[str, Any]
) -> None:
    reported_usage = usage(10_000, 100, **reported)
    line, _ = await stream(processor, services, [text("Hi"), event([], usage=reported_usage), DONE])
    assert line["cached_tokens"] == 9000
    expected = (1000 * INPUT + 9000 * CACHED_INPUT + 100 * OUTPUT) / 10**6
    assert Decimal(str(line["cost_usd"])) == expected


@pytest.mark.parametrize(
    ("reported", "cached"),
    [
        pytest.param({}, 0, id="missing"),
        pytest.param({"prompt_tokens_details": None}, 0, id="details-null"),
        pytest.param({"prompt_tokens_details": {"cached_tokens": None}}, 0, id="cached-null"),
        pytest.param({"prompt_cache_hit_tokens": None}, 0, id="deepseek-null"),
        pytest.param({"prompt_tokens_details": {"cached_tokens": -5}}, 0, id="negative"),
        # A cache hit is part of the prompt: never more than all of it.
        pytest.param(
            {"prompt_tokens_details": {"cached_tokens": 99_999}}, 10_000, id="above-prompt"
        ),
    ],
)
async def test_a_missing_or_odd_cache_count_is_read_safely(
    processor: Processor, services: Services, reported: dict[str, Any], cached: int
) -> None:
    reported_usage = usage(10_000, 100, **reported)
    line, _ = await stream(processor, services, [text("Hi"), event([], usage=reported_usage), DONE])
    assert counts(line) == (10_000, 100)
    assert line["cached_tokens"] == cached


async def test_a_whole_deepseek_answer_prices_its_cache_hits(
    processor: Processor, services: Services
) -> None:
    reported = usage(10_000, 100, prompt_cache_hit_tokens=9000, prompt_cache_miss_tokens=1000)
    line = await json_answer(processor, services, {"usage": reported})
    assert line["cached_tokens"] == 9000


# 7. A client that did not ask for usage finds none in its stream.


async def test_a_client_that_did_not_ask_for_usage_gets_none_from_a_running_report(
    processor: Processor, services: Services
) -> None:
    chunks = [*RUNNING, finish(usage=usage(900, 5)), event([], usage=usage(900, 5)), DONE]
    line, received = await stream(processor, services, chunks, include_usage=False)
    assert counts(line) == (900, 5)
    events = [orjson.loads(e.removeprefix(b"data: ")) for e in received.split(b"\n\n")[:-2]]
    # Every content chunk reaches the client, none with a usage report in it.
    assert [e["choices"][0]["delta"].get("content") for e in events] == [
        "Once",
        " upon",
        " a time",
        None,
    ]
    assert all("usage" not in e for e in events)
    assert received.endswith(DONE)


async def test_a_client_that_did_not_ask_for_usage_gets_none_from_the_choice(
    processor: Processor, services: Services
) -> None:
    choice = [{"index": 0, "delta": {}, "finish_reason": "stop", "usage": usage(19, 13)}]
    line, received = await stream(
        processor, services, [text("Hi"), event(choice), DONE], include_usage=False
    )
    assert counts(line) == (19, 13)
    assert b'"usage"' not in received
    assert b'"finish_reason":"stop"' in received


async def test_a_client_that_asked_for_usage_gets_the_stream_as_sent(
    processor: Processor, services: Services
) -> None:
    chunks = [*RUNNING, finish(usage=usage(900, 5)), DONE]
    _, received = await stream(processor, services, chunks, include_usage=True)
    assert received == b"".join(chunks)


async def json_answer(
    processor: Processor, services: Services, fields: dict[str, Any]
) -> dict[str, Any]:
    """A client's chat completion answered whole with ``fields``; the log line."""
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}}],
        **fields,
    }
    sent = orjson.dumps({"model": MODEL, "messages": PROMPT})
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(sent),
            response_headers(200),
            response_body(orjson.dumps(answer)),
        ],
    )
    return only_line(services)
