"""The usage report as a finance team bills from it: a month of a large organisation, read
from the store or through the management API; periods given with offsets, as dates, or
the wrong way round; sums of a million requests to the picodollar; replicas writing the
same hour; and never a key's secret in the rollups."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from extproc.chargeback.pricing import usd_float
from extproc.cli import main
from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageEntry, UsageStore, UsageTotals, totals_of
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
from tests.unit.test_service_tier_pricing import (
    MINI,
    MINI_FLEX,
    MINI_PRIORITY,
    MINI_STANDARD,
    ask_openai,
    chat_body,
    completion,
    tiered_config,
)
from tests.unit.usage_api import management_api

NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)
CLI_PREFIX = "aigw:"  # config/gateway.yaml's store.key_prefix
TOKEN = "finance-admin-token"


@pytest.fixture
def store_url(valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The CLI reads the store of config/gateway.yaml, pointed at the test Valkey."""
    monkeypatch.setenv("REDIS_URL", valkey.url)
    yield valkey.url


@pytest.fixture
async def store(valkey: EmbeddedValkey) -> AsyncIterator[UsageStore]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    yield UsageStore(client, "finance:", retention_days=3)
    await client.aclose()


def key_usage(started: float, key: int, cost: int = 1_000_000) -> UsageEntry:
    dims = {"route": "openai-chat", "model": "gpt-4o-mini", "provider": "mock",
            "api_key_id": f"key-{key:05d}", "user_id": f"user-{key:05d}@example.com",
            "group_id": f"group-{key % 7}"}  # fmt: skip
    return UsageEntry(started, dims, 1000, 200, cost_picousd=cost, latency_ms=450.0)


def in_hour(hour: datetime, totals: UsageTotals) -> UsageTotals:
    """The same totals, counted in another hour."""
    bucket = hour.strftime("%Y%m%d%H")
    return {(bucket, prefix): tally for (_, prefix), tally in totals.items()}


async def write_month(url: str, keys: int) -> None:
    """November with ``keys`` API keys busy every hour, as a large organisation's store."""
    client = connect(url, 5.0)
    try:
        await client.flushdb()
        store = UsageStore(client, CLI_PREFIX, 30)
        totals = totals_of([key_usage(NOVEMBER.timestamp(), key) for key in range(keys)])
        for hour in range(30 * 24):
            moment = NOVEMBER + timedelta(hours=hour)
            await store.record_totals(in_hour(moment, totals), f"batch-{hour}")
    finally:
        await client.aclose()


@pytest.fixture
def output_limit(valkey: EmbeddedValkey) -> Iterator[None]:
    """A store that drops a client whose unread answers pass 4 MB (Redis' and Valkey's
    client-output-buffer-limit, which operators set against clients that hog memory)."""

    async def configure(limit: str) -> None:
        client = connect(valkey.url, 2.0)
        try:
            await client.config_set("client-output-buffer-limit", limit)
        finally:
            await client.aclose()

    asyncio.run(configure("normal 4mb 4mb 0"))
    yield
    asyncio.run(configure("normal 0 0 0"))


# -- a month of a large organisation -----------------------------------------------------------


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_a_month_of_many_busy_keys_is_read_in_answers_the_store_can_send(
    store_url: str, output_limit: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # 60 keys every hour of November: 300 fields an hour. Reading 500 hours in one round
    # trip made the store buffer a 15 MB answer before sending it: past a buffer
    # limit the store hangs up, past store.timeout_ms (0.5 s) the client does (measured:
    # 1,500 keys an hour, a three weeks' report failed after 0.51 s). Either way the finance
    # team's monthly report said "the store did not answer".
    asyncio.run(write_month(store_url, keys=60))

    code = main(["usage", "export", "--month", "2026-11", "--by", "group", "--format", "json"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    totals = orjson.loads(captured.out)["totals"]
    assert totals["requests"] == 60 * 30 * 24
    assert Decimal(totals["cost_usd"]) == Decimal("0.000001") * 60 * 30 * 24


@pytest.fixture
async def management(valkey: EmbeddedValkey) -> AsyncIterator[tuple[str, UsageStore]]:
    """A gateway's management API over the test store: its address, and the store."""
    async with management_api(valkey.url, TOKEN, "api:", 400) as api:
        yield api


async def test_a_report_of_many_keys_comes_whole_through_the_management_api(
    management: tuple[str, UsageStore], capsys: pytest.CaptureFixture[str]
) -> None:
    # One row per key and user: 15,000 of them, of users with long addresses, is a 5 MB
    # answer, over gRPC's default 4 MB for what a client receives, so `--api` refused the
    # report a direct read gave. (40,000 keys of short addresses cost three times the
    # CPU.)
    address, store = management
    keys = 15_000
    # A day the API's store keeps: a report of expired hours exits 1.
    day = (datetime.now(UTC) - timedelta(days=2)).replace(hour=0, minute=0, second=0)
    day = day.replace(microsecond=0)
    entries = [key_usage(day.timestamp() + 60, key, cost=key) for key in range(keys)]
    for entry in entries:
        user = entry.dimensions["user_id"]
        entry.dimensions["user_id"] = user.replace("@", "@" + "accounts-payable." * 12)
    for offset in range(0, keys, 2_000):
        await store.record_totals(totals_of(entries[offset : offset + 2_000]), f"b{offset}")

    code = await asyncio.to_thread(
        main,
        ["usage", "export", "--api", "--address", address, "--token", TOKEN,
         "--day", f"{day:%Y-%m-%d}", "--by", "api_key,user"],
    )  # fmt: skip

    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert len(rows) == keys
    assert sum(Decimal(row["cost_usd"]) for row in rows) == Decimal(sum(range(keys))) / 10**12


# -- the period ------------------------------------------------------------------------------


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


async def write_entries(url: str, entries: list[UsageEntry]) -> None:
    client = connect(url, 2.0)
    try:
        await client.flushdb()
        store = UsageStore(client, CLI_PREFIX, 30)
        for found in entries:
            await store.record(found)
    finally:
        await client.aclose()


def requests_in(args: list[str], capsys: pytest.CaptureFixture[str]) -> int:
    assert main(["usage", "report", *args, "--format", "json"]) == 0
    requests: int = orjson.loads(capsys.readouterr().out)["totals"]["requests"]
    return requests


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_bounds_with_offsets_or_dates_name_whole_utc_hours_the_end_left_out(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(write_entries(store_url, [
        key_usage(at("2026-12-01T07:59:59+00:00"), 1),
        key_usage(at("2026-12-01T08:00:00+00:00"), 1),
        key_usage(at("2026-12-01T09:59:59+00:00"), 1),
        key_usage(at("2026-12-01T10:00:00+00:00"), 1),
        key_usage(at("2026-11-30T23:30:00+00:00"), 1),
    ]))  # fmt: skip

    # 10:00 and 12:00 in UTC+2 are 08:00 and 10:00 UTC: the hours 08 and 09.
    assert requests_in(["--from", "2026-12-01T10:00+02:00", "--to", "2026-12-01T12:00+02:00"],
                       capsys) == 2  # fmt: skip
    # A date alone is its midnight, in --time-zone: Berlin's 1 December began at 23:00 UTC.
    assert requests_in(["--from", "2026-12-01", "--to", "2026-12-02"], capsys) == 4
    assert requests_in(["--from", "2026-12-01", "--to", "2026-12-02",
                        "--time-zone", "Europe/Berlin"], capsys) == 5  # fmt: skip


@pytest.mark.parametrize(
    ("bounds", "reason"),
    [
        (["--from", "2026-12-02", "--to", "2026-12-01"], "before its end"),
        (["--from", "2026-12-01T10:30:00Z", "--to", "2026-12-01T12:00:00Z"], "whole UTC hour"),
    ],
)
def test_a_period_the_rollups_cannot_answer_is_one_line_and_exit_2(
    store_url: str, capsys: pytest.CaptureFixture[str], bounds: list[str], reason: str
) -> None:
    for command in ("report", "export"):
        assert main(["usage", command, *bounds]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        [line] = captured.err.splitlines()
        assert line.startswith("error: ") and reason in line


# -- sums ------------------------------------------------------------------------------------


async def test_a_million_requests_cost_what_their_log_lines_add_up_to(store: UsageStore) -> None:
    # $0.0000048 a request (e.g. 32 prompt tokens at $0.15 per million): each log line
    # says 4.8e-06; added as decimals, as chargeback.md asks, a million of them is $4.80.
    line_cost = orjson.loads(orjson.dumps({"cost_usd": usd_float(4_800_000)}))["cost_usd"]
    writer = UsageWriter(store, on_error=lambda: None)
    started = NOVEMBER.timestamp()
    # Two hours of three keys: the requests' entries repeat every 7,200. Built once, as
    # building one cost as much as adding it.
    entries = [key_usage(started + second, second % 3, cost=4_800_000) for second in range(7200)]
    for request in range(1_000_000):
        writer.add(entries[request % 7200])
        if request % 100_000 == 0:
            assert await writer.flush() is True
    assert await writer.flush() is True

    rows = await store.query(NOVEMBER, NOVEMBER + timedelta(days=1), ("api_key_id",))

    assert sum(row.requests for row in rows) == 1_000_000
    total = sum(Decimal(row.cost_picousd) / 10**12 for row in rows)
    assert total == Decimal(repr(line_cost)) * 1_000_000 == Decimal("4.80")


async def test_a_tier_served_request_counts_at_its_tier_price_as_its_log_line_says(
    store: UsageStore,
) -> None:
    writer = UsageWriter(store, on_error=lambda: None)
    services = Services(GatewayMetrics(), MemoryLog(), usage_writer=writer)
    gateway = processor_for(tiered_config(), services)
    for tier in ("flex", "default", "priority"):
        await ask_openai(gateway, "/v1/chat/completions", chat_body(MINI), completion(tier))
    assert await writer.flush() is True

    lines = services.access_log.lines()  # type: ignore[attr-defined]
    started = datetime.fromisoformat(lines[0]["timestamp"]).replace(
        minute=0, second=0, microsecond=0
    )
    rows = await store.query(started, started + timedelta(hours=2), ("model",))
    [row] = rows
    # At half the price for flex, above it for priority: not three standard requests.
    assert Decimal(row.cost_picousd) / 10**12 == MINI_FLEX + MINI_STANDARD + MINI_PRIORITY
    assert Decimal(row.cost_picousd) / 10**12 == sum(Decimal(str(li["cost_usd"])) for li in lines)


async def test_replicas_flushing_the_same_hour_at_once_add_up(
    store: UsageStore, valkey: EmbeddedValkey
) -> None:
    clients = [connect(valkey.url, 2.0) for _ in range(3)]
    writers = [UsageWriter(UsageStore(c, "finance:", 3), on_error=lambda: None) for c in clients]
    try:
        for round_ in range(50):
            for index, writer in enumerate(writers):
                writer.add(key_usage(NOVEMBER.timestamp() + round_, index % 2, cost=7))
            # Every replica's flush runs against the same hour's hash at once.
            assert await asyncio.gather(*(w.flush() for w in writers)) == [True] * 3
    finally:
        for client in clients:
            await client.aclose()

    rows = await store.query(NOVEMBER, NOVEMBER + timedelta(hours=1), ("api_key_id",))
    assert [(row.requests, row.cost_picousd) for row in rows] == [(100, 700), (50, 350)]


# -- identities ------------------------------------------------------------------------------


async def test_identities_come_back_as_they_were_whatever_they_hold(store: UsageStore) -> None:
    odd_user = "corp\tälice 日本 👩‍💻 \x1ft\\t"
    huge_group = "g" * 100_000
    dims = {"route": "openai-chat", "model": "gpt-4o", "provider": "mock",
            "api_key_id": "key:1,2", "user_id": odd_user, "group_id": huge_group}  # fmt: skip
    await store.record(UsageEntry(NOVEMBER.timestamp(), dims, 10, 2, cost_picousd=5))
    await store.record(key_usage(NOVEMBER.timestamp(), 1))

    rows = await store.query(NOVEMBER, NOVEMBER + timedelta(hours=1), ("user_id", "group_id"))

    found = {(row.dimensions["user_id"], row.dimensions["group_id"]): row for row in rows}
    assert found[(odd_user, huge_group)].prompt_tokens == 10
    assert found[("user-00001@example.com", "group-1")].prompt_tokens == 1000


async def test_a_rollup_names_the_key_by_its_id_never_its_secret(
    config: GatewayConfig, store: UsageStore, valkey: EmbeddedValkey
) -> None:
    writer = UsageWriter(store, on_error=lambda: None)
    processor = processor_for(config, Services(GatewayMetrics(), MemoryLog(), usage_writer=writer))
    body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    answer = orjson.dumps(
        {"id": "c1", "object": "chat.completion", "model": "gpt-4o-mini",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                      "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
    )  # fmt: skip
    await run_stream(
        processor,
        [
            request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
            request_body(body),
            response_headers(200, {"content-type": "application/json"}),
            response_body(answer),
        ],
    )
    assert await writer.flush() is True

    client = connect(valkey.url, 2.0)
    try:
        keys = [key async for key in client.scan_iter(match="finance:*")]
        hours = [key for key in keys if key != b"finance:usage:key_ids"]
        fields = [b"".join(await client.hkeys(key)) for key in hours]
        ids = await client.zrange("finance:usage:key_ids", 0, -1)
        stored = b"".join([*keys, *fields, *ids])
    finally:
        await client.aclose()
    assert b"\tteam1\talice\tengineering\t" in stored
    assert ids == [b"team1"]
    assert b"team1-key" not in stored
