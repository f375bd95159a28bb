"""A billing review of Gemini's own API through the processor: every count Google
reports in ``usageMetadata`` reaches the log line and the token metric once, in a whole
answer and in a stream whose reports are cumulative, and a prompt Google blocked is
still charged its prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.runtime import Services
from extproc.testing import request_body, request_headers, response_body, response_headers
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

JSON = {"content-type": "application/json", "x-envoy-upstream-service-time": "3"}
# Every count Google may report: the prompt includes the cache hits; a tool's prompt and
# the thinking are counted apart from it and from the answer.
COUNTS = {
    "promptTokenCount": 100,
    "cachedContentTokenCount": 40,
    "toolUsePromptTokenCount": 7,
    "candidatesTokenCount": 5,
    "thoughtsTokenCount": 20,
    "totalTokenCount": 132,
}


def billed(services: Services) -> tuple[Any, ...]:
    line = log_line(services)
    tokens = {
        sample.labels["token_type"]: sample.value
        for family in services.metrics.registry.collect()
        if family.name == "tokens_consumed"
        for sample in family.samples
        if sample.name == "tokens_consumed_total"
    }
    return (
        line["prompt_tokens"],
        line["cached_tokens"],
        line["completion_tokens"],
        line["total_tokens"],
        tokens.get("prompt"),
        tokens.get("completion"),
    )


async def answered_whole(
    vertex: tuple[str, Path], services: Services, answer: dict[str, Any]
) -> None:
    """One generateContent call whose answer Vertex sends whole."""
    await play(
        vertex,
        [
            request_headers(f"{PREFIX}:generateContent", headers=KEY),
            request_body(orjson.dumps(BODY)),
            response_headers(200, JSON),
            response_body(orjson.dumps(answer)),
        ],
        services,
    )


async def test_a_whole_answer_bills_every_count_google_reported(
    vertex: tuple[str, Path],
) -> None:
    services = memory_services()
    answer = {
        "candidates": [{"content": {"parts": [{"text": "Hi"}]}, "finishReason": "STOP"}],
        "usageMetadata": COUNTS,
    }
    await answered_whole(vertex, services, answer)
    assert billed(services) == (107, 40, 25, 132, 107.0, 25.0)


@pytest.mark.parametrize("split", [False, True], ids=["one-chunk", "event-per-chunk"])
async def test_a_stream_bills_its_last_cumulative_counts_once(
    vertex: tuple[str, Path],
    split: bool,
) -> None:
    # Vertex's first events carry no count; Gemini's carry running ones. Each report
    # replaces the one before: summed, the prompt would be billed once per event.
    events = [
        {"candidates": [{"content": {"parts": [{"text": "Hel"}]}}], "usageMetadata": {}},
        {
            "candidates": [{"content": {"parts": [{"text": "l"}]}}],
            "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 2},
        },
        {
            "candidates": [{"content": {"parts": [{"text": "o"}]}, "finishReason": "STOP"}],
            "usageMetadata": COUNTS,
        },
    ]
    chunks = [event(e) for e in events] if split else [b"".join(event(e) for e in events)]
    services = memory_services()
    await play(
        vertex,
        [
            request_headers(f"{PREFIX}:streamGenerateContent?alt=sse", headers=KEY),
            request_body(orjson.dumps(BODY)),
            response_headers(200, SSE),
            *[
                response_body(chunk, end_of_stream=index == len(chunks) - 1)
                for index, chunk in enumerate(chunks)
            ],
        ],
        services,
    )
    assert billed(services) == (107, 40, 25, 132, 107.0, 25.0)


async def test_a_blocked_prompt_is_charged_its_prompt(
    vertex: tuple[str, Path],
) -> None:
    services = memory_services()
    blocked = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
    }
    await answered_whole(vertex, services, blocked)
    line = log_line(services)
    assert (line["outcome"], line["usage_estimated"]) == ("completed", False)
    assert billed(services)[:4] == (9, 0, 0, 9)


# -- the gateway's own refusals, as Gemini's clients read them ------------------------------


def test_a_rate_limit_tells_geminis_clients_when_to_retry_in_retry_info() -> None:
    from google.genai import errors

    from extproc.errors import RateLimitError

    refused = RateLimitError(
        "Rate limit reached for api_key 'team1' (rule 'rpm')",
        headers={"retry-after": "17", "x-ratelimit-limit-requests": "60"},
    )
    document = orjson.loads(refused.body("google"))
    sdk_error = errors.ClientError(429, document)
    assert (sdk_error.code, sdk_error.status) == (429, "RESOURCE_EXHAUSTED")
    # Gemini CLI and Google's SDKs read the wait from RetryInfo, as Google sends it.
    assert sdk_error.details["error"]["details"] == [
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "17s"}
    ]


def test_a_refusal_that_waiting_cannot_help_carries_no_retry_info() -> None:
    from extproc.errors import RateLimitError

    # A quota that never resets: no retry-after, so no delay to wait for.
    refused = RateLimitError("Token budget used", code="insufficient_quota")
    assert "details" not in orjson.loads(refused.body("google"))["error"]
