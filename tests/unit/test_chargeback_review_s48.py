"""Usage exports reviewed once more, as the finance team opens them and as a stray key
in the store would have them read: no formula in a spreadsheet that splits lines at
``;`` or at tabs, and no count the store could not have written taken as usage."""

from __future__ import annotations

import asyncio
import csv
import gc
import io
import tracemalloc
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from extproc.cli import main
from extproc.config import GatewayConfig
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageStore, totals_of
from extproc.store.usage_writer import UsageWriter
from tests.unit.test_chargeback_review_s42 import ask_chat_of_anthropic, writer
from tests.unit.test_usage_report_finance import (
    CLI_PREFIX,
    TOKEN,
    in_hour,
    key_usage,
    store_url,
)
from tests.unit.usage_api import management_api

__all__ = ["store_url", "writer"]

FORMULA_STARTS = tuple("=+-@\t\r")


def cells_read_at(text: str, separator: str) -> list[str]:
    """Every cell of a CSV as a spreadsheet reads it that splits its lines at ``separator``
    (Excel opening a .csv in a locale whose list separator is ";", an import dialog with
    "Tab" ticked), quotes honoured as every spreadsheet honours them."""
    return [cell for row in csv.reader(io.StringIO(text, newline=""), delimiter=separator)
            for cell in row]  # fmt: skip


@pytest.mark.parametrize(
    "model",
    [
        # The DDE payload of OWASP's cheat sheet, needing no quote and no comma (either
        # had the whole value quoted); the last ";" ends the cell before the row's counts.
        "claude-x;=cmd|' /C calc'!A0;",
        "claude-x;@SUM(1+1);",
        "claude-x\t=1+1\t",
        "claude-x;-2+3",
    ],
)
async def test_a_formula_after_a_separator_a_spreadsheet_splits_at_does_not_run(
    config: GatewayConfig,
    writer: UsageWriter,
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    model: str,
) -> None:
    # A key holder names its model on a route whose provider takes any name. A "'" in
    # front of a value that starts like a formula does not cover a formula that starts
    # after a ";": the spreadsheets of most of continental Europe open a .csv split at
    # ";", and the cell after it ran.
    await ask_chat_of_anthropic(config, writer, model)

    code = await asyncio.to_thread(main, ["usage", "export", "--by", "model,group"])

    exported = capsys.readouterr().out
    assert code == 0
    for separator in (";", "\t"):
        assert not [
            cell for cell in cells_read_at(exported, separator) if cell.startswith(FORMULA_STARTS)
        ]
    # A CSV reader gets the value back as it was, and JSON keeps it as the log line has it.
    [row] = list(csv.DictReader(io.StringIO(exported, newline="")))
    assert (row["model"], row["group_id"], row["requests"]) == (model, "engineering", "1")
    code = await asyncio.to_thread(main, ["usage", "export", "--by", "model", "--format", "json"])
    assert orjson.loads(capsys.readouterr().out)["rows"][0]["model"] == model


HOUR = datetime(2026, 11, 3, 10, tzinfo=UTC)
BUCKET = HOUR.strftime("%Y%m%d%H")
STRAY_FIELD = "openai-chat\tgpt-4o-mini\tmock\tkey-manual\t\tgroup-0\tprompt_tokens"


async def hour_with_a_stray_count(url: str, prefix: str, count: str) -> None:
    """One hour of three keys' usage as the gateway writes it, and a count written by hand
    (HSET: the gateway only ever adds with HINCRBY)."""
    client = connect(url, 2.0)
    try:
        totals = totals_of([key_usage(HOUR.timestamp(), key) for key in range(3)])
        await UsageStore(client, prefix, 30).record_totals(totals, "batch-1")
        await client.hset(f"{prefix}usage:{BUCKET}", STRAY_FIELD, count)
    finally:
        await client.aclose()


# None of them a count HINCRBY could have written (it refuses to add to each of them), all
# of them integers to Python's int(): the first two stopped the report, the others were
# added to the bill without a word.
NO_STORE_COUNTS = [str(2**64), str(2**63), " 7", "+7", "1_000", "007"]


@pytest.mark.parametrize("count", NO_STORE_COUNTS)
async def test_a_count_the_store_could_not_hold_is_left_out_and_its_hour_named(
    store_url: str, capsys: pytest.CaptureFixture[str], count: str
) -> None:
    client = connect(store_url, 2.0)
    await client.flushdb()
    await client.aclose()
    await hour_with_a_stray_count(store_url, CLI_PREFIX, count)

    code = await asyncio.to_thread(
        main, ["usage", "export", "--day", "2026-11-03", "--by", "group", "--format", "json"]
    )

    # Before, 2**64 gave a traceback (orjson: "Integer exceeds 64-bit range") and no report.
    captured = capsys.readouterr()
    assert code == 1, captured.err
    document = orjson.loads(captured.out)
    assert (document["totals"]["requests"], document["totals"]["prompt_tokens"]) == (3, 3000)
    [missing] = document["unreadable_hours"]
    assert missing["key"] == f"{CLI_PREFIX}usage:{BUCKET}" and "1 count(s)" in missing["reason"]
    assert f"the hour from {HOUR.isoformat()} is missing" in captured.err


@pytest.mark.parametrize("count", [str(2**63), str(-(2**63) - 1), "1_000"])
async def test_the_management_api_names_the_hour_of_such_a_count_rather_than_fail(
    valkey: EmbeddedValkey, capsys: pytest.CaptureFixture[str], count: str
) -> None:
    async with management_api(valkey.url, TOKEN, "api:", 400) as (address, _):
        await hour_with_a_stray_count(valkey.url, "api:", count)

        code = await asyncio.to_thread(
            main,
            ["usage", "report", "--api", "--address", address, "--token", TOKEN,
             "--day", "2026-11-03", "--by", "group", "--format", "json"],
        )  # fmt: skip

    # Before, past int64: "error: Unexpected <class 'ValueError'>: Value out of range"
    # (the API's UNKNOWN, its traceback in the gateway's log), exit 2 and no report.
    captured = capsys.readouterr()
    assert code == 1, captured.err
    document = orjson.loads(captured.out)
    assert (document["totals"]["requests"], document["totals"]["prompt_tokens"]) == (3, 3000)
    assert [hour["key"] for hour in document["unreadable_hours"]] == [f"api:usage:{BUCKET}"]


KEYS = 50
TEN_DAYS = 240


async def retained_by_a_report(store: UsageStore, hours: int) -> int:
    """The memory a report of the first ``hours`` hours holds once read (its rows), by
    api_key and user: what the management API keeps until it has answered."""
    gc.collect()
    tracemalloc.start()
    try:
        found = await store.read(HOUR, HOUR + timedelta(hours=hours), ("api_key_id", "user_id"))
        gc.collect()
        retained, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(found.rows) == KEYS and found.rows[0].requests == hours
    return retained


async def test_a_long_report_holds_its_rows_not_its_hours(valkey: EmbeddedValkey) -> None:
    # Each row kept a set of the hours it was summed from, which no reader used: a
    # quarter by 2,000 keys held 264 MB, a year of a large organisation gigabytes, in the
    # gateway serving the management API. The rows of ten days now take what one day's do.
    client = connect(valkey.url, 5.0)
    await client.flushdb()
    store = UsageStore(client, "long:", 30)
    totals = totals_of([key_usage(HOUR.timestamp(), key) for key in range(KEYS)])
    every_hour = {}
    for hour in range(TEN_DAYS):
        every_hour.update(in_hour(HOUR + timedelta(hours=hour), totals))
    await store.record_totals(every_hour, "batch-1")
    try:
        one_day = await retained_by_a_report(store, 24)
        ten_days = await retained_by_a_report(store, TEN_DAYS)
    finally:
        await client.aclose()

    assert ten_days < one_day * 1.5, (one_day, ten_days)
