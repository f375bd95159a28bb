"""A provider's token count the gateway cannot take is no count, whoever reports it.

A buggy or hostile OpenAI-compatible server (or any provider) may report an unsigned -1
(``2**64 - 1``, ``2**32 - 1``), a count past what a double holds exactly, a float, a
string or ``true``. Taken, one such count used up the team's whole budget, priced the
request at trillions of dollars in counters no reset lowers, and pushed the hour's
rollup past the store's 64-bit integers, so every later count of that team's hour was
left out of the report. Every usage reader applies one rule (``token_counts``): a whole
number from 0 to 2**31 - 1, else the request is charged the gateway's estimate, marked
``usage_estimated``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from extproc.config.loader import parse_config
from extproc.context import Usage
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from extproc.translators import anthropic_anthropic, openai_embeddings, openai_openai
from extproc.translators.bedrock_bedrock import converse_usage
from extproc.translators.bedrock_cohere_embeddings import input_token_count
from extproc.translators.bedrock_embeddings import EmbeddingTranslator as TitanEmbeddings
from extproc.translators.bedrock_invoke import INPUT_TOKENS_HEADER, header_usage
from extproc.translators.gemini_gemini import usage_report
from extproc.translators.openai_bedrock_stream import read_usage
from extproc.translators.openai_responses import usage_from_responses
from extproc.translators.token_counts import (
    MAX_TOKEN_COUNT,
    header_token_count,
    struct_token_count,
    token_count,
)
from tests.unit.conftest import MemoryLog
from tests.unit.quota_helpers import DEFAULT_CONFIG, HARD_CAP

# Past the bound: just past it, a 32-bit and a 64-bit unsigned -1, one past 2**53, and
# the largest integer orjson reads as one (a longer one reads as a float).
PAST_THE_BOUND = [MAX_TOKEN_COUNT + 1, 2**32 - 1, 2**53 + 1, 2**63, 2**64 - 1]
NO_COUNTS: list[Any] = [*PAST_THE_BOUND, -1, True, 12.5, 12.0, 1e300, "12", None]


def _prompt_read_by(read: Callable[[Any], Any]) -> Callable[[Any], int | None]:
    return lambda value: _prompt_of(read(value))


def _prompt_of(read: Any) -> int | None:
    if read is None:
        return None
    usage = read[0] if isinstance(read, tuple) else read
    return usage.prompt_tokens if isinstance(usage, Usage) else usage.prompt


# Each reader, given a usage report whose prompt count is ``value``: the prompt it bills,
# None when it reads no report.
READERS: dict[str, Callable[[Any], int | None]] = {
    "openai chat": _prompt_read_by(
        lambda v: openai_openai.usage_from_object({"prompt_tokens": v, "completion_tokens": 3})
    ),
    "openai responses": _prompt_read_by(
        lambda v: usage_from_responses({"input_tokens": v, "output_tokens": 3})
    ),
    "openai embeddings": _prompt_read_by(
        lambda v: openai_embeddings.usage_from_embeddings({"prompt_tokens": v})
    ),
    "anthropic messages": _prompt_read_by(
        lambda v: anthropic_anthropic.usage_from_object({"input_tokens": v, "output_tokens": 3})
    ),
    "bedrock converse": _prompt_read_by(
        lambda v: converse_usage({"inputTokens": v, "outputTokens": 3})
    ),
    "openai chat on bedrock": _prompt_read_by(
        lambda v: read_usage({"inputTokens": v, "outputTokens": 3})
    ),
    "gemini usageMetadata": _prompt_read_by(
        lambda v: usage_report({"promptTokenCount": v, "candidatesTokenCount": 3})
    ),
    "bedrock invoke headers": _prompt_read_by(
        # An embeddings answer's headers: the input count alone is its whole report.
        lambda v: header_usage(
            {INPUT_TOKENS_HEADER: str(v)} if v is not None else {}, generates=False
        )
    ),
    "bedrock cohere header": lambda v: input_token_count(
        {"x-amzn-bedrock-input-token-count": str(v)} if v is not None else {}
    ),
    "bedrock titan embeddings": lambda v: TitanEmbeddings(model="m", base64_vectors=False).read(
        {"embedding": [0.5], "inputTextTokenCount": v}
    )[1],  # type: ignore[index]
}


# Bedrock's header counts are text: only their digits are a count (below).
HEADER_READERS = {"bedrock invoke headers", "bedrock cohere header"}


@pytest.mark.parametrize(
    ("reader", "value"),
    [
        pytest.param(reader, value, id=f"{reader}-{value!r}")
        for reader in READERS
        for value in NO_COUNTS
        if not (reader in HEADER_READERS and isinstance(value, str))
    ],
)
def test_no_reader_bills_what_is_no_count(reader: str, value: Any) -> None:
    assert READERS[reader](value) is None


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("value", [0, 12, MAX_TOKEN_COUNT])
def test_every_reader_bills_a_count_up_to_the_bound(reader: str, value: int) -> None:
    assert READERS[reader](value) == value


@pytest.mark.parametrize(
    ("text", "count"),
    [("12", 12), (" 12 ", 12), ("0", 0), ("0012", 12), (str(MAX_TOKEN_COUNT), MAX_TOKEN_COUNT)],
)
def test_a_header_count_is_its_digits(text: str, count: int) -> None:
    assert header_token_count(text) == count


@pytest.mark.parametrize(
    "text", ["", "-1", "1.5", "²", "1e3", str(2**31), "0" * 5000 + "1" * 5000, None]
)
def test_a_header_that_is_no_count_reads_as_none(text: str | None) -> None:
    # Thousands of digits made int() raise (a 500 to the client) instead.
    assert header_token_count(text) is None


def test_a_struct_count_may_be_a_whole_float() -> None:
    assert struct_token_count(6.0) == 6
    assert [struct_token_count(v) for v in (6.5, 1e300, float("inf"), -1.0, True)] == [None] * 5


def test_the_rule_is_the_same_for_every_count_of_a_report() -> None:
    # A cache count past the bound is none: no cache hit, never a prompt below 0 or
    # past the bound.
    big = {"prompt_tokens": 100, "completion_tokens": 3, "cached_tokens": 2**64 - 1}
    usage = openai_openai.usage_from_object(big)
    assert usage is not None
    assert (usage.prompt_tokens, usage.cached_tokens) == (100, 0)
    assert token_count(MAX_TOKEN_COUNT) == MAX_TOKEN_COUNT


# -- through the gateway: an unsigned -1 from an OpenAI-compatible server -------------------

CHAT = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
TEAM1 = {"authorization": "Bearer team1-key"}


def chat_answer(prompt_tokens: int) -> bytes:
    return orjson.dumps(
        {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there"},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 3,
                   "total_tokens": prompt_tokens}}
    )  # fmt: skip


async def answered(processor: Processor, answer: bytes, body: bytes = CHAT) -> None:
    await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers=TEAM1),
            request_body(body),
            response_headers(200, {"content-type": "application/json"}),
            response_body(answer),
        ],
    )


@pytest.fixture
async def usage_store(valkey: EmbeddedValkey, quota_store: QuotaStore) -> AsyncIterator[UsageStore]:
    # quota_store flushed the database first.
    client = connect(valkey.url, 2.0)
    yield UsageStore(client, "bounds:", retention_days=3)
    await client.aclose()


def gateway(quota_store: QuotaStore, usage_store: UsageStore) -> tuple[Processor, Services]:
    writer = UsageWriter(usage_store, on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store, usage_writer=writer)
    config = parse_config(DEFAULT_CONFIG + HARD_CAP % 100_000, "gateway.yaml", {})
    runtime = Runtime(config, services)
    return Processor(lambda: runtime, default_stages()), services


@pytest.mark.parametrize("reported", [2**64 - 1, 2**32 - 1])
async def test_an_unsigned_minus_one_neither_spends_the_budget_nor_prices_the_request(
    quota_store: QuotaStore, usage_store: UsageStore, reported: int
) -> None:
    processor, services = gateway(quota_store, usage_store)
    await answered(processor, chat_answer(reported))
    await quota_store.flush()
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    assert line["usage_estimated"] is True
    assert 0 < line["prompt_tokens"] < 100
    assert line["total_tokens"] == line["prompt_tokens"] + line["completion_tokens"]
    assert line["cost_usd"] < 0.01
    prometheus = generate_latest(services.metrics.registry).decode()
    [prompt_counter] = [
        row
        for row in prometheus.splitlines()
        if row.startswith("tokens_consumed_total{") and 'token_type="prompt"' in row
    ]
    assert float(prompt_counter.rsplit(" ", 1)[1]) == line["prompt_tokens"]
    # The team's hard-capped 100,000 tokens a day were all spent by that one answer: its
    # next request was refused with a 429 until the day's end.
    nxt = await run_stream(
        processor, [request_headers("/v1/chat/completions", headers=TEAM1), request_body(CHAT)]
    )
    assert nxt[1].WhichOneof("response") == "request_body"


async def test_the_hours_rollup_still_adds_up_to_the_log_lines(
    quota_store: QuotaStore, usage_store: UsageStore
) -> None:
    # 2**63 - 10 fitted the store's 64-bit integer; the next request's prompt pushed the
    # team's hour past it and was left out of the report, which then no longer matched
    # the log lines.
    processor, services = gateway(quota_store, usage_store)
    await answered(processor, chat_answer(2**63 - 10))
    await answered(processor, chat_answer(20))
    assert services.usage_writer is not None
    assert await services.usage_writer.flush() is True
    lines = services.access_log.lines()  # type: ignore[attr-defined]
    start = datetime.fromisoformat(lines[0]["timestamp"]).replace(minute=0, second=0, microsecond=0)
    rows = await usage_store.query(start, start + timedelta(hours=2), ("api_key_id",))
    [row] = rows
    assert row.requests == 2
    assert row.prompt_tokens == sum(line["prompt_tokens"] for line in lines) < 100
