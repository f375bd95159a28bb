"""An OpenAI-compatible provider that repeats a running usage on every chunk (Gemini's
OpenAI endpoint, vLLM's ``continuous_usage_stats``), through the real stack.

The mock provider streams that way when asked (``x-mock-usage: every-chunk``); the
official ``openai`` client reads the stream through Envoy and the gateway.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai import APIError, OpenAI

from extproc.devstack import LocalStack
from extproc.mock_llm import count_tokens
from extproc.mock_llm.openai_api import EVERY_CHUNK, USAGE_HEADER
from tests.integration.conftest import GatewayLog, metric, scrape

MODEL = "gpt-4o-mini"


def stream_events(client: OpenAI, **options: Any) -> tuple[str, list[dict[str, Any]]]:
    """A streamed chat completion from a provider with a running usage; the request id
    and the chunks the client received, as sent (not as the SDK models them)."""
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count as you go"}],
        stream=True,
        extra_headers={USAGE_HEADER: EVERY_CHUNK},
        **options,
    ) as response:
        request_id = response.headers["x-request-id"]
        lines = [line for line in response.iter_lines() if line.startswith("data: {")]
    return request_id, [orjson.loads(line.removeprefix("data: ")) for line in lines]


def completion_tokens_metric(stack: LocalStack) -> float:
    samples = scrape(stack.metrics_url)
    return metric(samples, "tokens_consumed_total", model=MODEL, token_type="completion")


def test_a_running_usage_is_billed_once_and_reaches_only_the_client_that_asked(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)

    # A client that asked for usage gets the provider's stream as sent: a count per chunk.
    asked_id, asked = stream_events(client, stream_options={"include_usage": True})
    assert all(isinstance(chunk["usage"], dict) for chunk in asked)

    # Counted once its line is written: the count can come just after the client read
    # the stream's end (docs/metrics.md), and must not land inside the next delta.
    assert gateway_log.for_request(asked_id)
    before = completion_tokens_metric(stack)
    request_id, events = stream_events(client)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in events)
    assert text == "Mock reply to: Count as you go"
    # A client that did not: every content chunk, no usage report in any of them.
    assert all(chunk["choices"] and "usage" not in chunk for chunk in events)

    # The bill is the provider's last report, not the sum of its running counts.
    [line] = gateway_log.for_request(request_id)
    assert (line["usage_reported"], line["usage_estimated"]) == (True, False)
    assert line["completion_tokens"] == count_tokens(text)
    assert completion_tokens_metric(stack) - before == count_tokens(text)


def test_a_running_usage_stream_its_provider_ends_early_is_raised_and_billed_its_count(
    stack: LocalStack, gateway_log: GatewayLog
) -> None:
    # The mock's end_after: the body ends cleanly after two content chunks, each with the
    # running count, before the finish chunk and [DONE]. The count on a content chunk is
    # no end of the answer: the SDK raises the gateway's error instead of returning two
    # words as the whole answer, and the line says the provider ended the stream early.
    client = OpenAI(base_url=f"{stack.base_url}/v1", api_key="team1-key", max_retries=0)
    pieces: list[str] = []
    with client.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count as you go"}],
        stream=True,
        extra_headers={USAGE_HEADER: EVERY_CHUNK, "x-mock-fault": "end_after=2"},
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(APIError, match="ended before it was complete"):
            for chunk in response.parse():
                pieces += [c.delta.content or "" for c in chunk.choices]
    assert "".join(pieces) == "Mock reply"
    [line] = gateway_log.for_request(request_id)
    assert (line["outcome"], line["error_code"]) == ("upstream_error", "invalid_upstream_response")
    # Billed what the provider's last running count said: the two pieces it sent.
    assert line["completion_tokens"] == count_tokens("Mock reply") == 2
