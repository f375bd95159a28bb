"""Review s36: pricing and chargeback, as a platform team bills each team from them.

Each request's log line must say what the provider bills (every token class at its price,
tiers, long context as the provider counts it, server tools), and the report over the
rollups must hold exactly the sum of the log lines, dimensions as the gateway saw them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import yaml

from extproc.chargeback.period import Period
from extproc.chargeback.report import render
from extproc.config import GatewayConfig, parse_config
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"
SONNET, HAIKU_BEDROCK = "claude-sonnet-4-0", "anthropic.claude-3-haiku-20240307-v1:0"
ANTHROPIC_AUTH = {"x-api-key": "team1-key"}
OPENAI_AUTH = {"authorization": "Bearer team1-key"}
UPSTREAM = {"x-envoy-upstream-service-time": "12"}
JSON = {"content-type": "application/json", **UPSTREAM}
SSE = {"content-type": "text/event-stream", **UPSTREAM}
PROMPT = [{"role": "user", "content": "Review this repository"}]
MILLION = Decimal(10**6)


def usd(parts: list[tuple[int, str]]) -> Decimal:
    """Token counts at prices in USD per million (or request counts at USD per request)."""
    return sum((count * Decimal(price) for count, price in parts), Decimal(0)) / MILLION


def cost(line: dict[str, Any]) -> Decimal:
    return Decimal(str(line["cost_usd"]))


def lines(services: Services) -> list[dict[str, Any]]:
    return services.access_log.lines()  # type: ignore[attr-defined,no-any-return]


async def exchange(
    processor: Processor,
    path: str,
    auth: dict[str, str],
    body: dict[str, Any],
    chunks: list[bytes],
    headers: dict[str, str] = JSON,
) -> None:
    last = len(chunks) - 1
    await run_stream(processor, [
        request_headers(path, headers=auth), request_body(orjson.dumps(body)),
        response_headers(200, headers),
        *(response_body(chunk, end_of_stream=index == last) for index, chunk in enumerate(chunks)),
    ])  # fmt: skip


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n"


# Sonnet 4, 150,000 uncached + 40,000 read + 20,000 written (8,000 to the 1-hour cache):
# a 210,000-token prompt, above 200K only with the cache counted, as Anthropic counts it.
LONG_USAGE: dict[str, Any] = {
    "input_tokens": 150_000, "cache_read_input_tokens": 40_000,
    "cache_creation_input_tokens": 20_000,
    "cache_creation": {"ephemeral_5m_input_tokens": 12_000, "ephemeral_1h_input_tokens": 8_000},
    "output_tokens": 1_000,
    "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 1},
    "service_tier": "standard",
}  # fmt: skip
# Long-context prices of the default config; web search $10 per 1,000, web fetch 0.
LONG_COST = usd([(150_000, "6.00"), (40_000, "0.60"), (12_000, "7.50"), (8_000, "12.00"),
                 (1_000, "22.50"), (3, "10000")])  # fmt: skip


def test_the_expected_long_cost_is_the_providers_bill() -> None:
    # 0.9 + 0.024 + 0.09 + 0.096 + 0.0225 + 0.03
    assert Decimal("1.1625") == LONG_COST


# Claude's whole answer to a 210K-token prompt, and the request for it.
LONG_ANSWER = orjson.dumps(
    {"id": "msg_1", "type": "message", "role": "assistant", "model": SONNET,
     "content": [{"type": "text", "text": "Looks fine"}], "stop_reason": "end_turn",
     "usage": LONG_USAGE}
)  # fmt: skip
LONG_BODY = {"model": SONNET, "max_tokens": 2000, "messages": PROMPT}


async def test_an_anthropic_answer_over_200k_with_its_cache_bills_every_class_long(
    processor: Processor, services: Services
) -> None:
    await exchange(processor, "/v1/messages", ANTHROPIC_AUTH, LONG_BODY, [LONG_ANSWER])
    [line] = lines(services)
    assert (line["prompt_tokens"], line["cached_tokens"]) == (210_000, 40_000)
    assert (line["cache_write_tokens"], line["cache_write_1h_tokens"]) == (20_000, 8_000)
    assert line["server_tool_requests"] == {"web_search": 3, "web_fetch": 1}
    assert cost(line) == LONG_COST and line["cost_priced"] is True and line["long_context"]


async def test_an_anthropic_stream_whose_delta_repeats_the_cumulative_counts_bills_once(
    processor: Processor, services: Services
) -> None:
    # Anthropic's message_delta now repeats the input side's counts (cumulative): they
    # replace message_start's, never add to them.
    start_usage = {k: v for k, v in LONG_USAGE.items() if k != "server_tool_use"}
    start_usage = {**start_usage, "output_tokens": 1,
                   "server_tool_use": {"web_search_requests": 0}}  # fmt: skip
    chunks = [
        sse("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": SONNET,
            "content": [], "stop_reason": None, "usage": start_usage}}),
        sse("content_block_start", {"type": "content_block_start", "index": 0,
                                    "content_block": {"type": "text", "text": ""}}),
        sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "text_delta", "text": "Looks fine"}}),
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse("message_delta", {"type": "message_delta",
                              "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                              "usage": {k: v for k, v in LONG_USAGE.items()
                                        if k != "service_tier"}}),
        sse("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    body = {"model": SONNET, "max_tokens": 2000, "messages": PROMPT, "stream": True}
    await exchange(processor, "/v1/messages", ANTHROPIC_AUTH, body, chunks, SSE)
    [line] = lines(services)
    assert line["usage_estimated"] is False
    assert (line["prompt_tokens"], line["completion_tokens"]) == (210_000, 1_000)
    assert line["server_tool_requests"] == {"web_search": 3, "web_fetch": 1}
    assert cost(line) == LONG_COST


async def test_an_openai_client_of_claude_is_billed_as_anthropic_bills_it(
    processor: Processor, services: Services
) -> None:
    # /anthropic: OpenAI's API in, Anthropic's out; the same answer costs the same.
    await exchange(processor, "/anthropic", OPENAI_AUTH, LONG_BODY, [LONG_ANSWER])
    [line] = lines(services)
    assert line["prompt_tokens"] == 210_000
    assert cost(line) == LONG_COST


@pytest.fixture
async def signing(config: GatewayConfig, services: Services) -> AsyncIterator[Processor]:
    """A processor whose runtime has loaded its AWS credentials, as the server's has."""
    runtime = Runtime(config, services)
    await runtime.start()
    yield Processor(lambda: runtime, default_stages())
    await runtime.close()


@pytest.mark.parametrize("model_id", [HAIKU_BEDROCK, f"us.{HAIKU_BEDROCK}"])
async def test_a_converse_answer_bills_reads_and_both_writes_at_their_prices(
    signing: Processor, services: Services, model_id: str
) -> None:
    answer = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Looks fine"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 1_000, "outputTokens": 200, "totalTokens": 6_200,
                  "cacheReadInputTokens": 3_000, "cacheWriteInputTokens": 2_000,
                  "cacheDetails": [{"ttl": "5m", "inputTokens": 500},
                                   {"ttl": "1h", "inputTokens": 1_500}]},
        "metrics": {"latencyMs": 10},
    }  # fmt: skip
    body = {"messages": [{"role": "user", "content": [{"text": "Review this"}]}]}
    await exchange(signing, f"/model/{quote(model_id, safe='')}/converse", OPENAI_AUTH, body,
                   [orjson.dumps(answer)])  # fmt: skip
    [line] = lines(services)
    assert (line["prompt_tokens"], line["cached_tokens"]) == (6_000, 3_000)
    assert (line["cache_write_tokens"], line["cache_write_1h_tokens"]) == (2_000, 1_500)
    # Haiku 3 on Bedrock in the default config: 0.25 / 0.03 / 0.30 / 0.50 / 1.25.
    assert cost(line) == usd([(1_000, "0.25"), (3_000, "0.03"), (500, "0.30"),
                              (1_500, "0.50"), (200, "1.25")])  # fmt: skip
    assert line["cost_priced"] is True


# --- The rollup and the report: the sum of the log lines, dimensions as they were -------

# Subjects whose names a billing system must get back as written.
AWKWARD = [
    ("k:1@a", "alice@example.com:ops|1", 'Sales, "EMEA"'),
    ("k.u", "zoë 👩‍💻", ""),
    ("k-tab", "x\x1ft", "tab\there"),
]


def awkward_config() -> GatewayConfig:
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    keys = raw["auth"]["api_keys"]
    for index, (key_id, user, group) in enumerate(AWKWARD):
        entry = {"id": key_id, "key": f"awkward-key-{index}", "user_id": user}
        if group:
            entry["group_id"] = group
        keys.append(entry)
    return parse_config(yaml.safe_dump(raw, sort_keys=False), "gateway.yaml", {})


@pytest.fixture
async def usage_store(valkey: EmbeddedValkey) -> AsyncIterator[UsageStore]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    yield UsageStore(client, "s36:", retention_days=3)
    await client.aclose()


def openai_answer(model: str, prompt: int, cached: int, completion: int) -> bytes:
    return orjson.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": prompt + completion,
                  "prompt_tokens_details": {"cached_tokens": cached}},
    })  # fmt: skip


async def test_the_report_is_the_sum_of_the_log_lines_per_subject_and_model(
    usage_store: UsageStore,
) -> None:
    writer = UsageWriter(usage_store, on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), usage_writer=writer)
    processor = processor_for(awkward_config(), services)
    # Sub-cent costs that a float sum would drift on, a priced and an unpriced model.
    for index in range(len(AWKWARD)):
        auth = {"authorization": f"Bearer awkward-key-{index}"}
        for prompt in (7, 1_333, 99_991):
            body = {"model": "gpt-4o-mini", "messages": PROMPT}
            answer = openai_answer("gpt-4o-mini", prompt, prompt // 3, 17)
            await exchange(processor, "/v1/chat/completions", auth, body, [answer])
        # A claude-* model the table has no price for (served by prefix).
        unpriced = {"id": "msg_1", "type": "message", "role": "assistant",
                    "model": "claude-opus-9", "content": [{"type": "text", "text": "ok"}],
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": 10, "output_tokens": 5}}  # fmt: skip
        body = {"model": "claude-opus-9", "max_tokens": 20, "messages": PROMPT}
        await exchange(processor, "/v1/messages", {"x-api-key": f"awkward-key-{index}"}, body,
                       [orjson.dumps(unpriced)])  # fmt: skip
    assert await writer.flush() is True
    logged = lines(services)
    assert len(logged) == 4 * len(AWKWARD)
    assert all(line["provider"] for line in logged)
    stamps = [datetime_of(line) for line in logged]
    start = min(stamps).replace(minute=0, second=0, microsecond=0)
    period = Period(start, max(stamps).replace(minute=0, second=0, microsecond=0)
                    + timedelta(hours=1))  # fmt: skip
    by = ("api_key_id", "user_id", "group_id", "model")
    rows = await usage_store.query(period.start, period.end, by)
    document = orjson.loads(render(rows, by, period, "json"))
    expected: dict[tuple[str | None, ...], dict[str, Any]] = {}
    for line in logged:
        # A missing identity is null in the JSON export, (none) in CSV.
        group = tuple(line[name] or None for name in by)
        found = expected.setdefault(group, {"requests": 0, "cost": Decimal(0), "unpriced": 0,
                                             "prompt": 0, "cached": 0})  # fmt: skip
        found["requests"] += 1
        found["cost"] += cost(line)
        found["unpriced"] += 0 if line["cost_priced"] else 1
        found["prompt"] += line["prompt_tokens"]
        found["cached"] += line["cached_tokens"]
    got = {
        tuple(row[name] for name in by): {
            "requests": row["requests"], "cost": Decimal(row["cost_usd"]),
            "unpriced": row["unpriced_requests"], "prompt": row["prompt_tokens"],
            "cached": row["cached_tokens"]}
        for row in document["rows"]
    }  # fmt: skip
    assert got == expected
    assert {key[0] for key in got} == {key_id for key_id, _, _ in AWKWARD}
    assert Decimal(document["totals"]["cost_usd"]) == sum(cost(line) for line in logged)
    assert document["totals"]["unpriced_requests"] == len(AWKWARD)
    # CSV reads back to the same values (RFC 4180, CRLF).
    table = list(csv.DictReader(io.StringIO(render(rows, by, period, "csv"), newline="")))
    assert {(r["api_key_id"], r["user_id"], r["group_id"]) for r in table} == {
        (key_id, user, group or "(none)") for key_id, user, group in AWKWARD
    }


def datetime_of(line: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(line["timestamp"])
