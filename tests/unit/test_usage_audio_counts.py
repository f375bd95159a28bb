"""Audio tokens in the hourly rollups and the usage report.

Audio is billed at its own prices (gpt-audio: $32 and $64 per million audio tokens in and
out against $2.50 and $10 of text; Gemini's audio input and cached audio above text), and
each request's log line counts it apart (``prompt_audio_tokens``, ``cached_audio_tokens``,
``completion_audio_tokens``). Before, the rollup and ``extproc usage report|export`` held
audio only inside ``prompt_tokens``, ``cached_tokens`` and ``completion_tokens``: a
chargeback read from them could not be reconciled with its ``cost_usd`` (the report's
tokens at the text prices came to an eighth of a spoken exchange's bill) nor with the log
lines. The rollup now sums the three counts as it sums the others, under every dimension
set, in the same script call, and the report carries them in every format; an hour or a
spool record written before them reads as 0.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.chargeback.latency import BUCKETS
from extproc.chargeback.period import Period
from extproc.chargeback.report import IMAGE_COUNTS, SEARCH_COUNTS, render
from extproc.management.usage import rows_from_report, usage_report
from extproc.management.v1 import management_pb2 as pb
from extproc.runtime import Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.spool import Spool
from extproc.store.usage import DIMENSIONS, UsageEntry, UsageRow, UsageStore, totals_of
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
from tests.unit.sse_play import play_sse
from tests.unit.test_gemini_audio_pricing import USAGE as GEMINI_USAGE
from tests.unit.test_gemini_audio_pricing import generate as gemini_generate
from tests.unit.test_gemini_review import vertex as vertex
from tests.unit.test_openai_audio_pricing import (
    AUDIO_PRICE,
    AUDIO_USAGE,
    OPENAI_AUTH,
    body,
    config,
    spoken_answer,
    spoken_stream,
)

AUDIO = ("prompt_audio_tokens", "cached_audio_tokens", "completion_audio_tokens")
T0 = datetime(2026, 3, 1, 10, 15, tzinfo=UTC).timestamp()
T1 = datetime(2026, 3, 1, 11, 5, tzinfo=UTC).timestamp()
DAY = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
SPOKEN = {
    "route": "openai-chat", "model": "gpt-audio", "provider": "mock",
    "api_key_id": "team1", "user_id": "alice", "group_id": "support",
}  # fmt: skip
TYPED = {**SPOKEN, "model": "gpt-4o-mini", "api_key_id": "team2", "user_id": "bob"}
# What usage_record.lua runs inside its one call.
SCRIPT_COMMANDS = ("hdel", "hsetnx", "hincrby", "ttl", "expire")
# The report's columns before the audio counts, CSV by position.
CSV_BEFORE = (
    "model,requests,prompt_tokens,completion_tokens,cached_tokens,total_tokens,"
    "unpriced_requests,cost_usd,latency_p50_ms,latency_p95_ms,"
    "cache_write_tokens,cache_write_1h_tokens"
)


@pytest.fixture
async def store(valkey: EmbeddedValkey) -> AsyncIterator[UsageStore]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    yield UsageStore(client, "audio:", retention_days=3)
    await client.aclose()


def spoken(
    started: float, prompt_audio: int, cached_audio: int, completion_audio: int
) -> UsageEntry:
    return UsageEntry(
        started, SPOKEN, 1_200, 300, cached_tokens=cached_audio, cost_picousd=49_000_000,
        latency_ms=300, prompt_audio_tokens=prompt_audio, cached_audio_tokens=cached_audio,
        completion_audio_tokens=completion_audio,
    )  # fmt: skip


def report(rows: list[UsageRow], by: tuple[str, ...], fmt: str, period: Period = DAY) -> Any:
    text = render(rows, by, period, fmt)
    return orjson.loads(text) if fmt == "json" else text


def period_of(lines: list[dict[str, Any]]) -> Period:
    """The whole hours the log lines' timestamps fall in."""
    hours = [datetime.fromisoformat(line["timestamp"]) for line in lines]
    start = min(hours).replace(minute=0, second=0, microsecond=0)
    return Period(start, max(hours) + timedelta(hours=1))


def at_prices(counts: dict[str, Any], price: dict[str, str]) -> Decimal:
    """What a row's (or a line's) counts cost at the OpenAI audio model's prices."""
    text_in = counts["prompt_tokens"] - counts["prompt_audio_tokens"]
    text_out = counts["completion_tokens"] - counts["completion_audio_tokens"]
    return (
        text_in * Decimal(price["input_per_million"])
        + counts["prompt_audio_tokens"] * Decimal(price["audio_input_per_million"])
        + text_out * Decimal(price["output_per_million"])
        + counts["completion_audio_tokens"] * Decimal(price["audio_output_per_million"])
    ) / 10**6


# --- Through the gateway: the report says what the log lines say ------------------------


async def test_the_report_s_audio_is_the_log_lines_and_prices_to_its_cost(
    store: UsageStore,
) -> None:
    writer = UsageWriter(store, on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), usage_writer=writer)
    gateway = processor_for(config(), services)
    # A spoken answer whole, then streamed, then a text answer of the same model.
    await run_stream(gateway, [
        request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(body()),
        response_headers(200, {"content-type": "application/json"}),
        response_body(spoken_answer(AUDIO_USAGE)),
    ])  # fmt: skip
    await play_sse(
        gateway, "/v1/chat/completions", OPENAI_AUTH,
        body(stream=True, stream_options={"include_usage": True}), spoken_stream(AUDIO_USAGE),
    )  # fmt: skip
    text_usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    await run_stream(gateway, [
        request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(body()),
        response_headers(200, {"content-type": "application/json"}),
        response_body(spoken_answer(text_usage)),
    ])  # fmt: skip
    assert await writer.flush() is True

    lines = services.access_log.lines()  # type: ignore[attr-defined]
    period = period_of(lines)
    by = ("api_key_id", "model")
    [row] = report(await store.query(period.start, period.end, by), by, "json", period)["rows"]
    assert row["requests"] == len(lines) == 3
    for name in AUDIO:
        assert row[name] == sum(line[name] for line in lines)
    # Before: no audio in the report at all, so its tokens priced as text came to
    # $0.01208 of the $0.09808 billed.
    assert (row["prompt_audio_tokens"], row["cached_audio_tokens"]) == (2_000, 0)
    assert row["completion_audio_tokens"] == 500
    assert Decimal(row["cost_usd"]) == sum(Decimal(str(line["cost_usd"])) for line in lines)
    assert Decimal(row["cost_usd"]) == at_prices(row, AUDIO_PRICE)


async def test_gemini_s_cached_audio_reaches_the_report(
    store: UsageStore, vertex: tuple[str, Path]
) -> None:
    writer = UsageWriter(store, on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), usage_writer=writer)
    line = await gemini_generate(vertex, GEMINI_USAGE, services=services)
    assert await writer.flush() is True

    period = period_of([line])
    rows = await store.query(period.start, period.end, ("model",))
    [row] = report(rows, ("model",), "json", period)["rows"]
    assert [row[name] for name in AUDIO] == [line[name] for name in AUDIO] == [8_000, 3_000, 0]
    assert (row["cached_tokens"], row["cost_usd"]) == (4_000, str(line["cost_usd"]))


# --- The rollup: every grouping, in the one script call, old hours and spools as 0 ------


async def test_audio_adds_up_under_every_dimension(store: UsageStore) -> None:
    await store.record(spoken(T0, 1_000, 0, 250))
    await store.record(spoken(T1, 800, 300, 0))
    await store.record(UsageEntry(T1, TYPED, 50, 10))

    for name in DIMENSIONS:
        rows = {row.dimensions[name]: row for row in await store.query(DAY.start, DAY.end, (name,))}
        audio = rows[SPOKEN[name]]
        if SPOKEN[name] == TYPED[name]:  # route, provider, group: one row for both
            assert audio.requests == 3
        else:
            assert rows[TYPED[name]].prompt_audio_tokens == 0
            assert audio.requests == 2
        counts = (audio.prompt_audio_tokens, audio.cached_audio_tokens)
        assert (*counts, audio.completion_audio_tokens) == (1_800, 300, 250), name


async def test_the_audio_counts_go_in_the_batch_s_one_script_call(
    store: UsageStore, valkey: EmbeddedValkey
) -> None:
    client = store._client
    await client.config_resetstat()
    await store.record_totals(
        totals_of([spoken(T0, 1_000, 0, 250), UsageEntry(T0, TYPED, 50, 10)]), "one-batch"
    )
    stats = await client.info("commandstats")
    # One script call (EVALSHA, or EVAL if the server lacked the script), and no command
    # of its own for the audio counts: the rest are those the script runs.
    sent = set(stats) - {"cmdstat_info", "cmdstat_config|resetstat", "cmdstat_script|load"}
    scripts = {name for name in sent if name.startswith("cmdstat_eval")}
    assert sum(stats[name]["calls"] for name in scripts) == 1
    # The index of api_key_ids (key_id_usage) is written once an hour, not per batch.
    indexed = {"cmdstat_zadd", "cmdstat_zremrangebyscore", "cmdstat_expire"}
    assert sent - scripts <= {f"cmdstat_{name}" for name in SCRIPT_COMMANDS} | indexed
    fields = {
        name.decode(): int(value)
        for name, value in (await client.hgetall(store._key("2026030110"))).items()
    }
    prefix = "\t".join(SPOKEN[name] for name in DIMENSIONS) + "\t"
    written = [fields[prefix + name] for name in ("prompt_audio_tokens", "completion_audio_tokens")]
    assert written == [1_000, 250]
    # Only counts above 0 are written: no audio field for the text request, no cached audio.
    assert prefix + "cached_audio_tokens" not in fields
    assert not [name for name in fields if "audio" in name and not name.startswith(prefix)]


async def test_an_hour_written_before_the_audio_counts_reads_them_as_zero(
    store: UsageStore,
) -> None:
    # What an earlier gateway wrote: no audio field at all.
    prefix = "\t".join(SPOKEN[name] for name in DIMENSIONS) + "\t"
    await store._client.hset(
        store._key("2026030110"),
        mapping={prefix + "requests": 2, prefix + "prompt_tokens": 2_400,
                 prefix + "completion_tokens": 600, prefix + "cost_picousd": 98_000_000,
                 "batch\tabc": 1},
    )  # fmt: skip
    await store.record(spoken(T1, 1_000, 0, 250))
    [row] = report(await store.query(DAY.start, DAY.end, ("model",)), ("model",), "json")["rows"]
    assert (row["requests"], row["prompt_tokens"]) == (3, 3_600)
    assert [row[name] for name in AUDIO] == [1_000, 0, 250]


async def test_a_spool_record_from_before_the_audio_counts_replays_as_it_was(
    store: UsageStore, tmp_path: Path
) -> None:
    # An earlier gateway spooled its counts by position: the sums, the buckets, the writes.
    [(bucket, prefix)] = totals_of([spoken(T0, 0, 0, 0)])
    counts = [2, 2_400, 600, 0, 98_000_000, 0] + [0] * BUCKETS + [0, 0]
    spool = Spool(tmp_path, "usage")
    spool.append({"id": "before-audio", "totals": [[bucket, prefix, *counts]]})
    writer = UsageWriter(store, on_error=lambda: None, spool=spool)
    writer.add(spoken(T0, 1_000, 300, 250))
    assert await writer.flush() is True
    assert spool.pending() == 0
    [row] = await store.query(DAY.start, DAY.end, ("model",))
    assert (row.requests, row.prompt_tokens, row.cost_picousd) == (3, 3_600, 147_000_000)
    assert (row.prompt_audio_tokens, row.cached_audio_tokens, row.completion_audio_tokens) == (
        1_000, 300, 250,
    )  # fmt: skip


class DownOnce(UsageStore):
    """A store whose first write fails before landing (the store is down)."""

    failed = False

    async def record_totals(self, totals: Any, batch_id: str, *, replayed: bool = False) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("store down")
        await super().record_totals(totals, batch_id, replayed=replayed)


async def test_audio_spooled_in_an_outage_is_replayed_whole(
    store: UsageStore, valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    flaky = DownOnce(connect(valkey.url, 2.0), "audio:", retention_days=3)
    spool = Spool(tmp_path, "usage")
    writer = UsageWriter(flaky, on_error=lambda: None, spool=spool)
    writer.add(spoken(T0, 1_000, 300, 250))
    assert await writer.flush() is False
    assert spool.pending() == 1
    assert await writer.flush() is True
    [row] = await store.query(DAY.start, DAY.end, ("model",))
    assert (row.prompt_audio_tokens, row.cached_audio_tokens, row.completion_audio_tokens) == (
        1_000, 300, 250,
    )  # fmt: skip


# --- The report: JSON keys and CSV columns added at the end, the table when there is audio --


async def test_json_rows_and_totals_end_with_the_audio_counts(store: UsageStore) -> None:
    await store.record(spoken(T0, 1_000, 300, 250))
    await store.record(UsageEntry(T0, TYPED, 50, 10))
    document = report(await store.query(DAY.start, DAY.end, ("model",)), ("model",), "json")
    rows = {row["model"]: row for row in document["rows"]}
    for found in (*rows.values(), document["totals"]):
        # Added after every earlier key (the image counts after them, then the search
        # units, added later): a reader of the old schema is unaffected.
        assert list(found)[-11:] == [
            "server_tool_requests",
            *AUDIO,
            *IMAGE_COUNTS,
            *SEARCH_COUNTS,
        ]
    assert [rows["gpt-4o-mini"][name] for name in AUDIO] == [0, 0, 0]
    assert [document["totals"][name] for name in AUDIO] == [1_000, 300, 250]


async def test_csv_adds_the_audio_columns_after_the_fixed_ones_and_before_the_tools(
    store: UsageStore,
) -> None:
    await store.record(UsageEntry(T0, TYPED, 50, 10))
    quiet = report(await store.query(DAY.start, DAY.end, ("model",)), ("model",), "csv")
    # Always there, so a file imported month after month keeps its columns.
    assert quiet.splitlines() == [
        CSV_BEFORE
        + ",prompt_audio_tokens,cached_audio_tokens,completion_audio_tokens,"
        + ",".join((*IMAGE_COUNTS, *SEARCH_COUNTS)),
        "gpt-4o-mini,1,50,10,0,60,0,0.00,,,0,0,0,0,0,0,0,0,0,0,0,0",
    ]

    await store.record(spoken(T1, 1_000, 300, 250))
    await store.record(UsageEntry(T1, TYPED, 50, 10, server_tool_requests={"web_search": 2}))
    lines = report(
        await store.query(DAY.start, DAY.end, ("model",)), ("model",), "csv"
    ).splitlines()
    # The tools, whose columns come and go with the month, stay last.
    assert lines[0] == (
        CSV_BEFORE
        + ",prompt_audio_tokens,cached_audio_tokens,completion_audio_tokens,"
        + ",".join((*IMAGE_COUNTS, *SEARCH_COUNTS))
        + ",server_tool_requests:web_search"
    )
    assert lines[1].startswith("gpt-4o-mini,2,") and lines[1].endswith(",0" * 12 + ",2")
    assert lines[2].startswith("gpt-audio,1,1200,300,300,") and lines[2].endswith(
        ",0,0,1000,300,250,0" + ",0" * 5 + ",0" + ",0"
    )


async def test_the_table_shows_the_audio_columns_only_for_a_period_with_audio(
    store: UsageStore,
) -> None:
    await store.record(UsageEntry(T0, TYPED, 50, 10))
    await store.record(spoken(T1, 1_000, 0, 250))
    ten = Period(datetime(2026, 3, 1, 10, tzinfo=UTC), datetime(2026, 3, 1, 11, tzinfo=UTC))

    quiet = report(await store.query(ten.start, ten.end, ("model",)), ("model",), "table", ten)
    assert "audio" not in quiet

    table = report(await store.query(DAY.start, DAY.end, ("model",)), ("model",), "table")
    header, *body_lines = table.splitlines()[1:]
    # No cached audio this day: that column stays out, as a cache-write column would.
    assert header.split()[-2:] == ["prompt_audio_tokens", "completion_audio_tokens"]
    audio = next(line.split() for line in body_lines if line.startswith("gpt-audio"))
    typed = next(line.split() for line in body_lines if line.startswith("gpt-4o-mini"))
    assert (audio[-2:], typed[-2:], body_lines[-1].split()[-2:]) == (
        ["1000", "250"], ["0", "0"], ["1000", "250"],
    )  # fmt: skip


async def test_the_management_api_carries_the_audio_counts(store: UsageStore) -> None:
    await store.record(spoken(T0, 1_000, 300, 250))
    await store.record(UsageEntry(T0, TYPED, 50, 10))
    by = ("group_id", "model")
    rows = await store.query(DAY.start, DAY.end, by)
    answer = pb.UsageReport.FromString(usage_report(rows, by, DAY).SerializeToString())

    assert [getattr(answer.totals, name) for name in AUDIO] == [1_000, 300, 250]
    # `usage report --api` prints what a report from the store prints.
    assert render(rows_from_report(answer), by, DAY, "json") == render(rows, by, DAY, "json")
    assert render(rows_from_report(answer), by, DAY, "csv") == render(rows, by, DAY, "csv")
