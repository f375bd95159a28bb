"""A month's usage report when one hour's rollup key under the gateway's prefix was written
by a person or another program: the other hours are still reported, the hour is named as
missing (stderr, JSON, the management API's answer) and the CLI exits 1, never a whole
report refused for one key, and never an hour read silently as no usage."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from extproc.cli import main
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageStore, totals_of
from tests.unit.test_usage_report_finance import (
    CLI_PREFIX,
    NOVEMBER,
    TOKEN,
    in_hour,
    key_usage,
    store_url,
)
from tests.unit.usage_api import management_api

__all__ = ["store_url"]

HOURS = 30 * 24
KEYS = 3
STRAY = NOVEMBER + timedelta(days=14, hours=5)  # 2026-11-15T05:00Z
STRAY_BUCKET = STRAY.strftime("%Y%m%d%H")


async def write_november(url: str, prefix: str) -> None:
    """Every hour of November: three keys, one request each at $0.000001."""
    client = connect(url, 5.0)
    try:
        await client.flushdb()
        store = UsageStore(client, prefix, 30)
        totals = totals_of([key_usage(NOVEMBER.timestamp(), key) for key in range(KEYS)])
        for hour in range(HOURS):
            moment = NOVEMBER + timedelta(hours=hour)
            if moment != STRAY:
                await store.record_totals(in_hour(moment, totals), f"batch-{hour}")
    finally:
        await client.aclose()


async def stray_key(url: str, prefix: str, kind: str) -> None:
    """A key of another type where the gateway keeps one hour's rollup (a person's SET, a
    script's list), or a hash with a count that is not an integer in it."""
    client = connect(url, 2.0)
    key = f"{prefix}usage:{STRAY_BUCKET}"
    try:
        if kind == "string":
            await client.set(key, "see the ticket")
        elif kind == "list":
            await client.rpush(key, "a", "b")
        else:
            # The hour's counts as the gateway writes them, and one written by hand.
            totals = totals_of([key_usage(STRAY.timestamp(), key) for key in range(KEYS)])
            await UsageStore(client, prefix, 30).record_totals(totals, "batch-stray")
            field = "openai-chat\tgpt-4o-mini\tmock\tkey-manual\t\tgroup-0\tprompt_tokens"
            await client.hset(key, field, "1.5e3")
    finally:
        await client.aclose()


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("kind", ["string", "list"])
@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_a_stray_key_in_one_hour_leaves_the_month_reported_and_names_the_hour(
    store_url: str, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    asyncio.run(write_november(store_url, CLI_PREFIX))
    asyncio.run(stray_key(store_url, CLI_PREFIX, kind))

    code, out, err = run_cli(
        ["usage", "report", "--month", "2026-11", "--by", "group", "--format", "json"], capsys
    )

    # Before: exit 2, "the store did not answer (ResponseError)", and no report at all.
    assert code == 1, err
    document = orjson.loads(out)
    assert document["totals"]["requests"] == KEYS * (HOURS - 1)
    assert Decimal(document["totals"]["cost_usd"]) == Decimal("0.000001") * KEYS * (HOURS - 1)
    assert document["partial"] is True
    [missing] = document["unreadable_hours"]
    assert missing["hour"] == "2026-11-15T05:00:00+00:00"
    assert missing["key"] == f"{CLI_PREFIX}usage:{STRAY_BUCKET}"
    assert "another type" in missing["reason"]
    [warning] = err.splitlines()
    assert warning.startswith("warning: the usage of the hour from 2026-11-15T05:00:00+00:00")
    assert f"{CLI_PREFIX}usage:{STRAY_BUCKET}" in warning


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_a_whole_month_read_says_it_is_not_partial(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(write_november(store_url, CLI_PREFIX))

    code, out, err = run_cli(["usage", "report", "--month", "2026-11", "--format", "json"], capsys)

    assert (code, err) == (0, "")
    document = orjson.loads(out)
    assert (document["partial"], document["unreadable_hours"]) == (False, [])


def test_an_export_short_of_an_hour_goes_to_a_partial_file_not_the_billing_one(
    store_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    asyncio.run(write_november(store_url, CLI_PREFIX))
    asyncio.run(stray_key(store_url, CLI_PREFIX, "string"))
    target = tmp_path / "2026-11.csv"
    target.write_text("last run's file\n")  # what a billing job would pick up again

    code, _, err = run_cli(
        ["usage", "export", "--month", "2026-11", "--by", "api_key", "--output", str(target)],
        capsys,
    )

    # Before: the short report was written to 2026-11.csv as if whole; only the exit code
    # and a warning told, which a job that watches for the file never sees.
    assert code == 1, err
    assert target.read_text() == "last run's file\n"
    partial = tmp_path / "2026-11.csv.partial"
    rows = list(csv.DictReader(io.StringIO(partial.read_text())))
    assert [int(row["requests"]) for row in rows] == [HOURS - 1] * KEYS
    assert f"wrote 3 rows to {partial}" in err
    assert "2026-11-15T05:00:00+00:00" in err
    assert err.rstrip().endswith(
        f"error: {target} was not written: the report is short of the hours above, so it went"
        f" to {partial}; move their keys away and export again, or pass --allow-partial to"
        " write it as it is"
    )


def test_allow_partial_writes_the_short_export_where_asked_and_still_exits_1(
    store_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    asyncio.run(write_november(store_url, CLI_PREFIX))
    asyncio.run(stray_key(store_url, CLI_PREFIX, "list"))
    target = tmp_path / "2026-11.json"
    argv = ["usage", "export", "--month", "2026-11", "--format", "json", "--output", str(target)]

    code, _, err = run_cli([*argv, "--allow-partial"], capsys)

    assert code == 1, err
    document = orjson.loads(target.read_bytes())
    assert document["partial"] is True
    assert document["totals"]["requests"] == KEYS * (HOURS - 1)
    assert not (tmp_path / "2026-11.json.partial").exists()
    assert "was not written" not in err


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_a_whole_export_replaces_the_file_and_removes_an_earlier_partial_one(
    store_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    asyncio.run(write_november(store_url, CLI_PREFIX))
    asyncio.run(stray_key(store_url, CLI_PREFIX, "string"))
    target = tmp_path / "2026-11.csv"
    argv = ["usage", "export", "--month", "2026-11", "--by", "api_key", "--output", str(target)]
    assert run_cli(argv, capsys)[0] == 1
    # The stray key moved away (its hour's usage is in the spool's rejected file).
    asyncio.run(write_november(store_url, CLI_PREFIX))

    code, _, err = run_cli(argv, capsys)

    assert (code, err.strip()) == (0, f"wrote 3 rows to {target}")
    assert not (tmp_path / "2026-11.csv.partial").exists()
    rows = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [int(row["requests"]) for row in rows] == [HOURS - 1] * KEYS


def test_a_count_that_is_not_an_integer_is_left_out_and_its_hour_named(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(write_november(store_url, CLI_PREFIX))
    asyncio.run(stray_key(store_url, CLI_PREFIX, "hand-written count"))

    code, out, err = run_cli(
        ["usage", "report", "--month", "2026-11", "--by", "", "--format", "json"], capsys
    )

    # Before: "error: invalid literal for int() with base 10: b'1.5e3'", exit 2.
    assert code == 1, err
    document = orjson.loads(out)
    # Every hour's requests, the stray hour's included; its hand-written count left out.
    assert document["totals"]["requests"] == KEYS * HOURS
    assert document["totals"]["prompt_tokens"] == 1000 * KEYS * HOURS
    [missing] = document["unreadable_hours"]
    assert "1 count(s)" in missing["reason"] and "not integers" in missing["reason"]
    assert "2026-11-15T05:00:00+00:00" in err


async def test_a_field_that_is_no_count_of_the_gateway_is_no_missing_usage(
    valkey: EmbeddedValkey,
) -> None:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    store = UsageStore(client, "own:", 30)
    await store.record(key_usage(STRAY.timestamp(), 1))
    await client.hset(f"own:usage:{STRAY_BUCKET}", "note", "re-billed, see ticket 42")
    try:
        found = await store.read(STRAY, STRAY + timedelta(hours=1), ("api_key_id",))
    finally:
        await client.aclose()

    assert found.unreadable == []
    assert [row.requests for row in found.rows] == [1]


async def test_query_refuses_to_answer_short(valkey: EmbeddedValkey) -> None:
    # query() has no way to say its sums lack an hour: it raises, naming the key.
    from extproc.store.usage import UnreadableHoursError

    client = connect(valkey.url, 2.0)
    await client.flushdb()
    await client.set(f"own:usage:{STRAY_BUCKET}", "x")
    try:
        with pytest.raises(UnreadableHoursError, match=f"own:usage:{STRAY_BUCKET}"):
            await UsageStore(client, "own:", 30).query(STRAY, STRAY + timedelta(hours=2))
    finally:
        await client.aclose()


async def test_the_management_api_reports_the_other_hours_and_names_the_stray_one(
    valkey: EmbeddedValkey, capsys: pytest.CaptureFixture[str]
) -> None:
    async with management_api(valkey.url, TOKEN, "api:", 400) as (address, _):
        await write_november(valkey.url, "api:")
        await stray_key(valkey.url, "api:", "list")

        code = await asyncio.to_thread(
            main,
            ["usage", "report", "--api", "--address", address, "--token", TOKEN,
             "--month", "2026-11", "--by", "group", "--format", "json"],
        )  # fmt: skip

    captured = capsys.readouterr()
    # Before: UNAVAILABLE, "the store did not answer", and no report.
    assert code == 1, captured.err
    document = orjson.loads(captured.out)
    assert document["totals"]["requests"] == KEYS * (HOURS - 1)
    assert document["partial"] is True
    assert [hour["hour"] for hour in document["unreadable_hours"]] == ["2026-11-15T05:00:00+00:00"]
    assert "warning: the usage of the hour from 2026-11-15T05:00:00+00:00" in captured.err


async def test_the_management_api_answer_carries_the_unreadable_hours(
    valkey: EmbeddedValkey,
) -> None:
    # What another client (grpcurl, a billing job) reads in the answer itself.
    from extproc.management.client import UsageClient
    from extproc.management.v1 import management_pb2 as pb

    async with management_api(valkey.url, TOKEN, "api:", 400) as (address, _):
        await write_november(valkey.url, "api:")
        await stray_key(valkey.url, "api:", "string")

        def ask() -> pb.UsageReport:
            with UsageClient(address, TOKEN, 10.0) as client:
                return client.report(pb.UsageReportRequest(month="2026-11"))

        answer = await asyncio.to_thread(ask)

    assert answer.totals.requests == KEYS * (HOURS - 1)
    [hour] = answer.unreadable_hours
    assert (hour.hour, hour.key) == ("2026-11-15T05:00:00+00:00", f"api:usage:{STRAY_BUCKET}")
