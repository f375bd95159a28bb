"""Cache writes and server tool requests in the hourly rollups and the usage report.

A team's bill carries what its prompt-cache writes and web searches cost; the report
must also say why: how many prompt tokens went to the provider's cache (the 1-hour
part apart: Anthropic bills it at 2x the input price, the 5-minute writes at 1.25x) and
how many requests each server tool made. The counts sum exactly what the request log
lines say, and hours written before these measures existed still read (as 0).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.chargeback.latency import BUCKETS
from extproc.chargeback.period import Period
from extproc.chargeback.report import render
from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.spool import Spool
from extproc.store.usage import UsageEntry, UsageStore, totals_of
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

T0 = datetime(2026, 3, 1, 10, 15, tzinfo=UTC).timestamp()
T1 = datetime(2026, 3, 1, 11, 5, tzinfo=UTC).timestamp()
DAY = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
SONNET = {"route": "anthropic-messages", "model": "claude-sonnet-4-0", "provider": "mock"}
MINI = {"route": "openai-chat", "model": "gpt-4o-mini", "provider": "mock"}
# The report's columns before these measures: a billing import reading CSV by position
# must find them where they were.
OLD_CSV_HEADER = (
    "model,requests,prompt_tokens,completion_tokens,cached_tokens,total_tokens,"
    "unpriced_requests,cost_usd,latency_p50_ms,latency_p95_ms"
)
# Always in CSV, after the cache writes and before the tools (test_usage_audio_counts).
AUDIO_COLUMNS = ",prompt_audio_tokens,cached_audio_tokens,completion_audio_tokens"
# After them, added later (test_gemini_image_pricing).
IMAGE_COLUMNS = (
    ",completion_image_tokens,prompt_image_tokens,image_generation_input_tokens"
    ",image_generation_input_image_tokens,image_generation_output_tokens"
    ",image_generation_output_image_tokens"
)
# After them, added later still (test_search_units_ledgers).
SEARCH_COLUMNS = ",search_units"


@pytest.fixture
async def store(valkey: EmbeddedValkey) -> AsyncIterator[UsageStore]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    yield UsageStore(client, "counts:", retention_days=3)
    await client.aclose()


def claude(
    started: float, writes: int = 0, writes_1h: int = 0, **tools: int
) -> UsageEntry:  # fmt: skip
    return UsageEntry(
        started, SONNET, 100, 20, cache_write_tokens=writes, cache_write_1h_tokens=writes_1h,
        server_tool_requests=tools, cost_picousd=1_000_000, latency_ms=300,
    )  # fmt: skip


def report(rows: Any, by: tuple[str, ...], fmt: str, period: Period = DAY) -> Any:
    text = render(rows, by, period, fmt)
    return orjson.loads(text) if fmt == "json" else text


# --- Through the gateway: the report says what the log lines say -------------------------


def anthropic_answer(usage: dict[str, Any]) -> bytes:
    content = [{"type": "text", "text": "The act now says"}]
    return orjson.dumps(
        {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-0",
         "content": content, "stop_reason": "end_turn", "usage": usage}
    )  # fmt: skip


WROTE_AND_SEARCHED = {
    "input_tokens": 40,
    "output_tokens": 9,
    "cache_creation_input_tokens": 22,
    "cache_creation": {"ephemeral_5m_input_tokens": 10, "ephemeral_1h_input_tokens": 12},
    "server_tool_use": {"web_search_requests": 3, "web_fetch_requests": 2},
}
PLAIN = {"input_tokens": 40, "output_tokens": 9}


async def test_the_report_counts_the_cache_writes_and_searches_of_the_log_lines(
    config: GatewayConfig, store: UsageStore
) -> None:
    writer = UsageWriter(store, on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), usage_writer=writer)
    processor = processor_for(config, services)
    body = orjson.dumps(
        {"model": "claude-sonnet-4-0", "max_tokens": 100,
         "messages": [{"role": "user", "content": "What changed this week?"}]}
    )  # fmt: skip
    for usage in (WROTE_AND_SEARCHED, PLAIN, WROTE_AND_SEARCHED):
        await run_stream(
            processor,
            [
                request_headers("/v1/messages", headers={"x-api-key": "team1-key"}),
                request_body(body),
                response_headers(200, {"content-type": "application/json"}),
                response_body(anthropic_answer(usage)),
            ],
        )
    assert await writer.flush() is True

    lines = services.access_log.lines()  # type: ignore[attr-defined]
    hours = [datetime.fromisoformat(line["timestamp"]) for line in lines]
    start = min(hours).replace(minute=0, second=0, microsecond=0)
    period = Period(start, max(hours) + timedelta(hours=1))
    rows = await store.query(period.start, period.end, ("api_key_id",))
    [row] = report(rows, ("api_key_id",), "json", period)["rows"]
    assert row["requests"] == len(lines) == 3
    assert row["cache_write_tokens"] == sum(line["cache_write_tokens"] for line in lines) == 44
    assert row["cache_write_1h_tokens"] == sum(line["cache_write_1h_tokens"] for line in lines)
    assert row["cache_write_1h_tokens"] == 24
    assert row["server_tool_requests"] == {"web_search": 6, "web_fetch": 4}


# --- The rollup: summed, stored only when there is something to count --------------------


async def test_writes_and_tool_requests_add_up_over_requests_and_hours(store: UsageStore) -> None:
    await store.record(claude(T0, writes=22, writes_1h=12, web_search=3, web_fetch=2))
    await store.record(claude(T0, writes=5, web_search=1))
    await store.record(claude(T1, writes=100, writes_1h=100, code_execution=4))
    await store.record(UsageEntry(T1, MINI, 10, 5, cached_tokens=4))

    rows = {row.dimensions["model"]: row for row in await store.query(*DAY_RANGE, ("model",))}
    sonnet, mini = rows["claude-sonnet-4-0"], rows["gpt-4o-mini"]
    assert (sonnet.requests, sonnet.cache_write_tokens, sonnet.cache_write_1h_tokens) == (
        3, 127, 112,
    )  # fmt: skip
    assert sonnet.server_tool_requests == {"web_search": 4, "web_fetch": 2, "code_execution": 4}
    assert (mini.cache_write_tokens, mini.cache_write_1h_tokens) == (0, 0)
    assert mini.server_tool_requests == {}
    ten_o_clock = await store.query(
        datetime(2026, 3, 1, 10, tzinfo=UTC), datetime(2026, 3, 1, 11, tzinfo=UTC), ("model",)
    )
    assert [(r.cache_write_tokens, r.server_tool_requests) for r in ten_o_clock] == [
        (27, {"web_search": 4, "web_fetch": 2})
    ]


DAY_RANGE = (DAY.start, DAY.end)


async def hour_fields(store: UsageStore, bucket: str) -> dict[str, int]:
    raw = await store._client.hgetall(store._key(bucket))
    return {name.decode(): int(value) for name, value in raw.items()}


async def test_each_tool_is_its_own_field_and_only_counts_above_zero_are_written(
    store: UsageStore,
) -> None:
    await store.record(claude(T0, writes=22, writes_1h=12, web_search=3))
    await store.record(UsageEntry(T0, MINI, 10, 5))

    fields = await hour_fields(store, "2026030110")
    sonnet = "anthropic-messages\tclaude-sonnet-4-0\tmock\t\t\t\t"
    assert fields[sonnet + "cache_write_tokens"] == 22
    assert fields[sonnet + "cache_write_1h_tokens"] == 12
    # A tool the provider adds tomorrow gets its field the same way: no code change.
    assert fields[sonnet + "server_tool_requests:web_search"] == 3
    mini = [name for name in fields if name.startswith("openai-chat\t")]
    assert not [name for name in mini if "cache_write" in name or "server_tool" in name]


async def test_an_hour_written_before_these_measures_reads_as_zero_writes_and_no_tools(
    store: UsageStore,
) -> None:
    # What an earlier gateway wrote: no cache-write or tool fields at all.
    prefix = "anthropic-messages\tclaude-sonnet-4-0\tmock\tteam1\talice\tengineering\t"
    await store._client.hset(
        store._key("2026030110"),
        mapping={prefix + "requests": 2, prefix + "prompt_tokens": 80,
                 prefix + "completion_tokens": 18, prefix + "cost_picousd": 510_000_000,
                 prefix + "latency_le_500": 2, "batch\tabc": 1},
    )  # fmt: skip
    rows = await store.query(*DAY_RANGE, ("model",))
    document = report(rows, ("model",), "json")
    [row] = document["rows"]
    assert (row["requests"], row["prompt_tokens"], row["cost_usd"]) == (2, 80, "0.00051")
    assert (row["cache_write_tokens"], row["cache_write_1h_tokens"]) == (0, 0)
    assert row["server_tool_requests"] == {}
    assert document["totals"]["server_tool_requests"] == {}


async def test_a_tool_name_holding_the_separator_cannot_break_its_row(store: UsageStore) -> None:
    # The translators only pass names like web_search; the rollup does not rely on it.
    await store.record(claude(T0, **{"odd\ttool": 2, "odd\x1ftool": 1, "web_search": 1}))
    [row] = await store.query(*DAY_RANGE, ("model", "provider"))
    assert row.dimensions == {"model": "claude-sonnet-4-0", "provider": "mock"}
    assert row.server_tool_requests == {"odd\ttool": 2, "odd\x1ftool": 1, "web_search": 1}


# --- Through a store outage: the spool keeps the counts --------------------------------


class DownOnce(UsageStore):
    """A store whose first write fails before landing (the store is down)."""

    failed = 0

    async def record_totals(self, totals: Any, batch_id: str, *, replayed: bool = False) -> None:
        if not self.failed:
            self.failed += 1
            raise ConnectionError("store down")
        await super().record_totals(totals, batch_id, replayed=replayed)


async def test_writes_and_searches_spooled_in_an_outage_are_replayed_whole(
    store: UsageStore, valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    flaky = DownOnce(connect(valkey.url, 2.0), "counts:", retention_days=3)
    spool = Spool(tmp_path, "usage")
    writer = UsageWriter(flaky, on_error=lambda: None, spool=spool)
    writer.add(claude(T0, writes=22, writes_1h=12, web_search=3, web_fetch=2))
    assert await writer.flush() is False
    assert spool.pending() == 1

    writer.add(claude(T0, web_search=1))
    assert await writer.flush() is True  # the new batch, then the spooled one
    assert spool.pending() == 0
    [row] = await store.query(*DAY_RANGE, ("model",))
    assert (row.requests, row.cache_write_tokens, row.cache_write_1h_tokens) == (2, 22, 12)
    assert row.server_tool_requests == {"web_search": 4, "web_fetch": 2}


async def test_a_spool_record_from_before_these_measures_replays_as_it_was(
    store: UsageStore, tmp_path: Path
) -> None:
    # An earlier gateway spooled its counts by position: the six sums, then the buckets.
    [(bucket, prefix)] = totals_of([claude(T0)])
    counts = [3, 300, 60, 0, 3_000_000, 0] + [0] * BUCKETS
    spool = Spool(tmp_path, "usage")
    spool.append({"id": "before-upgrade", "totals": [[bucket, prefix, *counts]]})
    writer = UsageWriter(store, on_error=lambda: None, spool=spool)
    assert await writer.flush() is True
    assert spool.pending() == 0
    [row] = await store.query(*DAY_RANGE, ("model",))
    assert (row.requests, row.prompt_tokens, row.cost_picousd) == (3, 300, 3_000_000)
    assert (row.cache_write_tokens, row.server_tool_requests) == (0, {})


# --- The report: JSON always, the table only when the period has them, CSV after the rest --


async def test_json_rows_and_totals_always_carry_the_counts(store: UsageStore) -> None:
    await store.record(claude(T0, writes=22, writes_1h=12, web_search=3))
    await store.record(UsageEntry(T0, MINI, 10, 5))
    await store.record(UsageEntry(T1, {**MINI, "model": "gpt-4o"}, 10, 5))
    await store.record(claude(T1, writes=8, web_search=2, web_fetch=1))

    document = report(await store.query(*DAY_RANGE, ("model",)), ("model",), "json")
    rows = {row["model"]: row for row in document["rows"]}
    assert rows["gpt-4o-mini"]["cache_write_tokens"] == 0
    assert rows["gpt-4o-mini"]["server_tool_requests"] == {}
    assert rows["claude-sonnet-4-0"]["cache_write_tokens"] == 30
    assert rows["claude-sonnet-4-0"]["cache_write_1h_tokens"] == 12
    assert rows["claude-sonnet-4-0"]["server_tool_requests"] == {"web_search": 5, "web_fetch": 1}
    totals = document["totals"]
    assert (totals["cache_write_tokens"], totals["cache_write_1h_tokens"]) == (30, 12)
    assert totals["server_tool_requests"] == {"web_fetch": 1, "web_search": 5}


async def test_the_table_shows_write_and_tool_columns_only_for_a_period_that_has_them(
    store: UsageStore,
) -> None:
    await store.record(UsageEntry(T0, MINI, 10, 5))
    await store.record(claude(T1, writes=22, web_search=3))
    ten = Period(datetime(2026, 3, 1, 10, tzinfo=UTC), datetime(2026, 3, 1, 11, tzinfo=UTC))

    quiet = report(await store.query(ten.start, ten.end, ("model",)), ("model",), "table", ten)
    assert "cache_write" not in quiet and "server_tool" not in quiet

    table = report(await store.query(*DAY_RANGE, ("model",)), ("model",), "table")
    header, *body = table.splitlines()[1:]
    columns = header.split()
    # No 1-hour writes this day: that column stays out.
    assert columns[-2:] == ["cache_write_tokens", "server_tool_requests:web_search"]
    sonnet = next(line.split() for line in body if line.startswith("claude-sonnet-4-0"))
    mini = next(line.split() for line in body if line.startswith("gpt-4o-mini"))
    total = body[-1].split()
    assert (sonnet[-2:], mini[-2:], total[-2:]) == (["22", "3"], ["0", "0"], ["22", "3"])


async def test_csv_keeps_its_columns_and_adds_the_counts_after_them(store: UsageStore) -> None:
    await store.record(UsageEntry(T0, MINI, 10, 5))
    csv_quiet = report(await store.query(*DAY_RANGE, ("model",)), ("model",), "csv")
    # A billing import reading by position still finds every column where it was; the
    # cache writes are always there, a tool only for a period that used it.
    assert csv_quiet.splitlines() == [
        OLD_CSV_HEADER
        + ",cache_write_tokens,cache_write_1h_tokens"
        + AUDIO_COLUMNS
        + IMAGE_COLUMNS
        + SEARCH_COLUMNS,
        "gpt-4o-mini,1,10,5,0,15,0,0.00,,,0,0,0,0,0,0" + ",0" * 5 + ",0",
    ]

    await store.record(claude(T1, writes=22, writes_1h=12, web_search=3, web_fetch=2))
    lines = report(await store.query(*DAY_RANGE, ("model",)), ("model",), "csv").splitlines()
    assert lines[0] == (
        OLD_CSV_HEADER + ",cache_write_tokens,cache_write_1h_tokens" + AUDIO_COLUMNS
        + IMAGE_COLUMNS + SEARCH_COLUMNS
        + ",server_tool_requests:web_fetch,server_tool_requests:web_search"
    )  # fmt: skip
    assert lines[1].endswith(",22,12,0,0,0,0" + ",0" * 5 + ",0" + ",2,3") and lines[1].startswith(
        "claude-sonnet-4-0,1,100,20,"
    )
    assert lines[2].endswith(",0,0,0,0,0,0" + ",0" * 5 + ",0" + ",0,0") and lines[2].startswith(
        "gpt-4o-mini,"
    )
