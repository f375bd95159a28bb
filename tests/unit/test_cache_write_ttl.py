"""Claude's 1-hour prompt-cache writes are billed at their own price, on every path.

Anthropic bills a prompt-cache write at 1.25x the input price for its 5-minute cache and
at 2x for its 1-hour cache, and reports the split: ``usage.cache_creation`` =
``{"ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"}`` beside the total
``cache_creation_input_tokens`` (a message, a stream's ``message_start`` or
``message_delta``); Bedrock Converse reports it as ``usage.cacheDetails``, a list of
``{"ttl": "5m" | "1h", "inputTokens"}`` beside ``cacheWriteInputTokens``.

Every answer below reports 100 uncached input tokens, 3000 written to the cache (1000
for 5 minutes, 2000 for an hour) and 50 output tokens; the default config's prices
make each answer cost what a billing team would compute by hand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import orjson
import pytest

from extproc.aws_eventstream import encode_event
from extproc.chargeback.pricing import cost_of, token_prices
from extproc.config import GatewayConfig
from extproc.config.pricing_model import ModelPrice
from extproc.context import Usage
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)

OPENAI_AUTH = {"authorization": "Bearer team1-key"}
ANTHROPIC_AUTH = {"x-api-key": "team1-key"}
SSE = {"content-type": "text/event-stream"}
EVENT_STREAM = {"content-type": "application/vnd.amazon.eventstream"}
PROMPT = [{"role": "user", "content": "Summarise the attached handbook"}]

# Anthropic's usage for the answers below: 100 + 3000 prompt tokens, 50 output tokens.
INPUT_SIDE: dict[str, Any] = {
    "input_tokens": 100,
    "cache_creation_input_tokens": 3000,
    "cache_read_input_tokens": 0,
    "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
}
# The same counts as Bedrock Converse reports them (1h before 5m, as AWS sorts them).
BEDROCK_USAGE: dict[str, Any] = {
    "inputTokens": 100,
    "outputTokens": 50,
    "totalTokens": 3150,
    "cacheReadInputTokens": 0,
    "cacheWriteInputTokens": 3000,
    "cacheDetails": [{"ttl": "1h", "inputTokens": 2000}, {"ttl": "5m", "inputTokens": 1000}],
}

# The default config's prices (USD per million: input, 5-minute write, 1-hour write, output)
# and what 100 input + 1000 (5m) + 2000 (1h) written + 50 output tokens cost at them.
SONNET = "claude-sonnet-4-0"  # 3.00, 3.75, 6.00, 15.00
SONNET_COST = (100 * 3 + 1000 * Decimal("3.75") + 2000 * 6 + 50 * 15) / 10**6
HAIKU = "claude-3-5-haiku-latest"  # 0.80, 1.00, 1.60, 4.00
HAIKU_COST = (100 * Decimal("0.80") + 1000 * 1 + 2000 * Decimal("1.60") + 50 * 4) / 10**6
# anthropic.claude-3-haiku-20240307-v1:0 on Bedrock: 0.25, 0.30, 0.50, 1.25.
BEDROCK_HAIKU_COST = (
    100 * Decimal("0.25") + 1000 * Decimal("0.30") + 2000 * Decimal("0.50") + 50 * Decimal("1.25")
) / 10**6


@pytest.fixture
async def gateway(config: GatewayConfig, services: Services) -> AsyncIterator[Processor]:
    """The gateway's processor over the default config, with its AWS signer loaded."""
    runtime = Runtime(config, services)
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


def only_line(services: Services) -> dict[str, Any]:
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line  # type: ignore[no-any-return]


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        for event in events
    )


def message(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-answered",
        "content": [{"type": "text", "text": "Here it is."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def anthropic_stream(start_usage: dict[str, Any], delta_usage: dict[str, Any]) -> bytes:
    start = {**message(start_usage), "content": [], "stop_reason": None}
    return sse(
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0,
         "delta": {"type": "text_delta", "text": "Here it is."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": delta_usage},
        {"type": "message_stop"},
    )  # fmt: skip


def bedrock_stream(usage: dict[str, Any]) -> bytes:
    def event(kind: str, payload: dict[str, Any]) -> bytes:
        return encode_event(kind, orjson.dumps(payload))

    return (
        event("messageStart", {"role": "assistant"})
        + event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Here it is."}})
        + event("contentBlockStop", {"contentBlockIndex": 0})
        + event("messageStop", {"stopReason": "end_turn"})
        + event("metadata", {"usage": usage, "metrics": {"latencyMs": 12}})
    )


def bedrock_answer(usage: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "output": {"message": {"role": "assistant", "content": [{"text": "Here it is."}]}},
            "stopReason": "end_turn",
            "usage": usage,
            "metrics": {"latencyMs": 12},
        }
    )


def messages_body(model: str, *, stream: bool) -> bytes:
    return orjson.dumps({"model": model, "max_tokens": 100, "stream": stream, "messages": PROMPT})


def chat_body(model: str, *, stream: bool) -> bytes:
    return orjson.dumps({"model": model, "stream": stream, "messages": PROMPT})


SPLIT_IN_DELTA = {**INPUT_SIDE, "output_tokens": 50}
NO_SPLIT_AT_START = {k: v for k, v in INPUT_SIDE.items() if k != "cache_creation"}

# (path, request headers, request body, response headers, answer, cost in USD)
PATHS = {
    "anthropic client, JSON answer passed through": (
        "/v1/messages", ANTHROPIC_AUTH, messages_body(SONNET, stream=False),
        {"content-type": "application/json"},
        orjson.dumps(message({**INPUT_SIDE, "output_tokens": 50})), SONNET_COST,
    ),
    "anthropic client, stream passed through (split in message_start)": (
        "/v1/messages", ANTHROPIC_AUTH, messages_body(SONNET, stream=True), SSE,
        anthropic_stream({**INPUT_SIDE, "output_tokens": 1}, {"output_tokens": 50}), SONNET_COST,
    ),
    "anthropic client, stream passed through (split in message_delta)": (
        "/v1/messages", ANTHROPIC_AUTH, messages_body(SONNET, stream=True), SSE,
        anthropic_stream({**NO_SPLIT_AT_START, "output_tokens": 1}, SPLIT_IN_DELTA), SONNET_COST,
    ),
    "openai client, JSON answer translated": (
        "/anthropic/chat/completions", OPENAI_AUTH, chat_body(HAIKU, stream=False),
        {"content-type": "application/json"},
        orjson.dumps(message({**INPUT_SIDE, "output_tokens": 50})), HAIKU_COST,
    ),
    "openai client, stream translated (split in message_start)": (
        "/anthropic/chat/completions", OPENAI_AUTH, chat_body(HAIKU, stream=True), SSE,
        anthropic_stream({**INPUT_SIDE, "output_tokens": 1}, {"output_tokens": 50}), HAIKU_COST,
    ),
    "openai client, stream translated (split in message_delta)": (
        "/anthropic/chat/completions", OPENAI_AUTH, chat_body(HAIKU, stream=True), SSE,
        anthropic_stream({**NO_SPLIT_AT_START, "output_tokens": 1}, SPLIT_IN_DELTA), HAIKU_COST,
    ),
    "openai client, Bedrock Converse answer": (
        "/bedrock/haiku/chat/completions", OPENAI_AUTH, chat_body("ignored", stream=False),
        {"content-type": "application/json"}, bedrock_answer(BEDROCK_USAGE), BEDROCK_HAIKU_COST,
    ),
    "openai client, Bedrock ConverseStream answer": (
        "/bedrock/haiku/chat/completions", OPENAI_AUTH, chat_body("ignored", stream=True),
        EVENT_STREAM, bedrock_stream(BEDROCK_USAGE), BEDROCK_HAIKU_COST,
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "headers", "body", "answer_headers", "answer", "cost"),
    list(PATHS.values()),
    ids=list(PATHS),
)
async def test_one_hour_cache_writes_are_billed_at_the_one_hour_price(
    gateway: Processor,
    services: Services,
    path: str,
    headers: dict[str, str],
    body: bytes,
    answer_headers: dict[str, str],
    answer: bytes,
    cost: Decimal,
) -> None:
    await run_stream(gateway, [
        request_headers(path, headers=headers), request_body(body),
        response_headers(200, answer_headers), response_body(answer),
    ])  # fmt: skip
    line = only_line(services)
    assert line["http_status_code"] == 200
    assert (line["prompt_tokens"], line["completion_tokens"]) == (3100, 50)
    assert Decimal(str(line["cost_usd"])) == cost
    # The total of both caches' writes keeps its meaning; the 1-hour part is named apart.
    assert (line["cache_write_tokens"], line["cache_write_1h_tokens"]) == (3000, 2000)


async def test_writes_without_a_split_are_all_billed_at_the_five_minute_price(
    gateway: Processor, services: Services
) -> None:
    # An older answer (or a proxy) that reports only the total: today's 1.25x price.
    usage = {**NO_SPLIT_AT_START, "output_tokens": 50}
    await run_stream(gateway, [
        request_headers("/v1/messages", headers=ANTHROPIC_AUTH),
        request_body(messages_body(SONNET, stream=False)),
        response_headers(200), response_body(orjson.dumps(message(usage))),
    ])  # fmt: skip
    line = only_line(services)
    assert (line["cache_write_tokens"], line["cache_write_1h_tokens"]) == (3000, 0)
    assert Decimal(str(line["cost_usd"])) == (100 * 3 + 3000 * Decimal("3.75") + 50 * 15) / 10**6


FAILING_STREAM = sse(
    {"type": "message_start",
     "message": {**message({**INPUT_SIDE, "output_tokens": 1}), "content": []}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "abcd"}},
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
)  # fmt: skip


@pytest.mark.parametrize(
    ("path", "headers", "body", "cost"),
    [
        (
            "/v1/messages",
            ANTHROPIC_AUTH,
            messages_body(SONNET, stream=True),
            # "abcd" is one token by the gateway's estimate.
            (100 * 3 + 1000 * Decimal("3.75") + 2000 * 6 + 1 * 15) / 10**6,
        ),
        (
            "/anthropic/chat/completions",
            OPENAI_AUTH,
            chat_body(HAIKU, stream=True),
            (100 * Decimal("0.80") + 1000 * 1 + 2000 * Decimal("1.60") + 1 * 4) / 10**6,
        ),
    ],
    ids=["anthropic client", "openai client"],
)
async def test_a_stream_the_provider_failed_keeps_its_one_hour_writes(
    gateway: Processor,
    services: Services,
    path: str,
    headers: dict[str, str],
    body: bytes,
    cost: Decimal,
) -> None:
    await run_stream(gateway, [
        request_headers(path, headers=headers), request_body(body),
        response_headers(200, SSE), response_body(FAILING_STREAM),
    ])  # fmt: skip
    line = only_line(services)
    assert (line["outcome"], line["usage_estimated"]) == ("upstream_error", True)
    assert (line["prompt_tokens"], line["completion_tokens"]) == (3100, 1)
    assert Decimal(str(line["cost_usd"])) == cost
    assert (line["cache_write_tokens"], line["cache_write_1h_tokens"]) == (3000, 2000)


# --- the price table ------------------------------------------------------------------------


def price(**cache: str) -> ModelPrice:
    return ModelPrice(
        input_per_million=Decimal(3),
        output_per_million=Decimal(15),
        **{name: Decimal(value) for name, value in cache.items()},
    )


def test_without_a_one_hour_price_one_hour_writes_cost_the_cache_write_price() -> None:
    # 3000 written to the cache, 2000 of them for an hour.
    writes = Usage(3000, 0, 3000, cache_write_tokens=3000, cache_write_1h_tokens=2000)
    with_write_price = price(cache_write_input_per_million="3.75")
    assert cost_of(writes, token_prices(with_write_price)).usd == 3000 * Decimal("3.75") / 10**6
    # ... and without that either, the input price.
    assert cost_of(writes, token_prices(price())).usd == 3000 * Decimal(3) / 10**6
    both = price(cache_write_input_per_million="3.75", cache_write_1h_input_per_million="6")
    assert cost_of(writes, token_prices(both)).usd == (1000 * Decimal("3.75") + 2000 * 6) / 10**6


def test_no_more_tokens_are_billed_than_the_prompt_has() -> None:
    prices = token_prices(
        price(cache_write_input_per_million="3.75", cache_write_1h_input_per_million="6")
    )
    # A 1-hour part larger than all the writes (a malformed report): only the writes,
    # all of them at the 1-hour price.
    bloated = Usage(3000, 0, 3000, cache_write_tokens=1000, cache_write_1h_tokens=5000)
    assert cost_of(bloated, prices).usd == (2000 * 3 + 1000 * 6) / Decimal(10**6)
    # Writes reported beyond the prompt: never more than the prompt's tokens are billed.
    beyond = Usage(100, 0, 100, cache_write_tokens=3000, cache_write_1h_tokens=2000)
    assert cost_of(beyond, prices).usd == 100 * 6 / Decimal(10**6)
    negative = Usage(100, 0, 100, cache_write_tokens=50, cache_write_1h_tokens=-10)
    assert cost_of(negative, prices).usd == (50 * 3 + 50 * Decimal("3.75")) / 10**6


def test_a_one_hour_price_takes_six_decimals_at_most() -> None:
    assert price(cache_write_1h_input_per_million="6.000001").cache_write_1h_input == Decimal(
        "6.000001"
    )
    with pytest.raises(ValueError, match="cache_write_1h_input_per_million"):
        price(cache_write_1h_input_per_million="6.0000001")


def test_the_default_config_prices_claude_one_hour_writes_at_twice_the_input(
    config: GatewayConfig,
) -> None:
    claude = {name: p for name, p in config.pricing.models.items() if "claude" in name}
    assert claude
    for name, model_price in claude.items():
        assert model_price.cache_write_1h_input == 2 * model_price.input_per_million, name
