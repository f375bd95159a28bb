"""A report of a period that has not ended, or only just, says that it may still grow.

A request counts in the hour it started but is added to it when it ends, and calls have
no overall limit: a month exported at 00:05 on the 1st lacks the streams still running
across midnight, and ``--month 2026-11 --time-zone America/Los_Angeles`` run at 02:00 UTC
on 1 December lacks Los Angeles' last eight hours of November. Before, such a report
looked final; exported again the next day it said otherwise, without a word on either.
The report now says so on stderr (stdout, the report a job imports, is unchanged).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from extproc.chargeback.open_period import open_note
from extproc.chargeback.period import Period, resolve_period
from extproc.cli import main
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageEntry, UsageStore

DECEMBER_1 = datetime(2026, 12, 1, tzinfo=UTC)
NOVEMBER = Period(datetime(2026, 11, 1, tzinfo=UTC), DECEMBER_1)
# The CLI's own clock decides, so the CLI tests take periods far from it either way: one
# long over, though within the rollups' retention (a report of expired hours is short,
# and exits 1), and one not begun.
LONG_OVER_USE = (datetime.now(UTC) - timedelta(days=60)).replace(
    day=10, hour=9, minute=30, second=0, microsecond=0
)
LONG_OVER, NOT_BEGUN = f"{LONG_OVER_USE:%Y-%m}", "2099-01"


def test_a_month_reported_minutes_after_it_ended_may_still_grow() -> None:
    note = open_note(NOVEMBER, DECEMBER_1 + timedelta(minutes=5))
    assert note is not None
    assert "ended at 2026-12-01T00:00Z, less than an hour ago" in note
    assert "may still grow" in note
    assert open_note(NOVEMBER, DECEMBER_1 + timedelta(minutes=59)) is not None


def test_a_month_reported_an_hour_after_it_ended_is_final() -> None:
    assert open_note(NOVEMBER, DECEMBER_1 + timedelta(hours=1)) is None
    assert open_note(NOVEMBER, DECEMBER_1 + timedelta(days=20)) is None


def test_a_month_in_a_zone_behind_utc_is_not_over_when_utc_s_is() -> None:
    now = DECEMBER_1 + timedelta(hours=2)
    los_angeles = resolve_period(month="2026-11", zone_name="America/Los_Angeles", now=now)

    note = open_note(los_angeles, now)

    assert note is not None
    assert "ends at 2026-12-01T08:00Z, after now (2026-12-01T02:00Z)" in note
    assert "until now only" in note


@pytest.fixture
def store_url(valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The CLI reads the store of config/gateway.yaml, pointed at the test Valkey."""
    monkeypatch.setenv("REDIS_URL", valkey.url)
    yield valkey.url


def record_february(url: str) -> None:
    async def write() -> None:
        client = connect(url, 2.0)
        try:
            await client.flushdb()
            dims = {"route": "openai-chat", "model": "gpt-4o", "group_id": "sales"}
            started = LONG_OVER_USE.timestamp()
            await UsageStore(client, "aigw:", 30).record(UsageEntry(started, dims, 100, 20))
        finally:
            await client.aclose()

    asyncio.run(write())


def notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "the period end" in line]


def test_the_cli_says_so_on_stderr_and_prints_the_report_all_the_same(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record_february(store_url)
    assert main(["usage", "export", "--month", NOT_BEGUN, "--by", "group"]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("group_id,requests,")
    [note] = notes(printed.err)
    assert note.startswith("note: the period ends at 2099-02-01T00:00Z, after now")

    assert main(["usage", "report", "--to", f"{NOT_BEGUN}-01", "--format", "json"]) == 0
    printed = capsys.readouterr()
    assert orjson.loads(printed.out)["rows"] == []
    assert len(notes(printed.err)) == 1


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_a_period_long_over_or_up_to_now_gets_no_such_note(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record_february(store_url)
    assert main(["usage", "export", "--month", LONG_OVER, "--by", "group"]) == 0
    printed = capsys.readouterr()
    assert printed.out.splitlines()[1].startswith("sales,1,100,20,")
    assert notes(printed.err) == []
    # The last 24 hours, and --from alone, ask for the usage until now: no note.
    assert main(["usage", "report", "--format", "json"]) == 0
    assert notes(capsys.readouterr().err) == []
    assert main(["usage", "report", "--from", "2026-01-01", "--format", "json"]) == 0
    assert notes(capsys.readouterr().err) == []
