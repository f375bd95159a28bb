"""``--from 2026-11`` (a year and a month, ISO 8601's calendar month) is the month's start.

It was refused as "not an ISO 8601 date or time", though ISO 8601 writes a month so and
the report takes ``--month 2026-11`` and week dates (``2026-W18``) alike: the operator
had to spell out ``2026-11-01``. A year and month now reads as the month's first day,
at midnight in the report's zone, as a date alone reads as its midnight: ``--from
2026-11 --to 2027-02`` is November to January, the same hours as the three ``--month``
reports that add up to it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import pytest

from extproc.chargeback.period import PeriodError, resolve_period
from extproc.cli import main
from tests.unit.test_usage_report_finance import at, key_usage, store_url, write_entries

__all__ = ["store_url"]

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York"])
def test_from_and_to_a_month_are_the_month_as_month_reads_it(zone: str) -> None:
    months = resolve_period(start="2026-11", end="2026-12", zone_name=zone, now=NOW)

    assert months == resolve_period(month="2026-11", zone_name=zone, now=NOW)


def test_a_span_of_months_is_the_months_it_covers() -> None:
    span = resolve_period(start="2026-11", end="2027-02", zone_name="Europe/Berlin", now=NOW)

    # Midnight on the 1st in Berlin: winter time, an hour ahead of UTC.
    assert span.start == datetime(2026, 10, 31, 23, tzinfo=UTC)
    assert span.end == datetime(2027, 1, 31, 23, tzinfo=UTC)
    first = resolve_period(month="2026-11", zone_name="Europe/Berlin", now=NOW)
    last = resolve_period(month="2027-01", zone_name="Europe/Berlin", now=NOW)
    assert (span.start, span.end) == (first.start, last.end)


def test_from_a_month_alone_runs_to_the_current_hour() -> None:
    period = resolve_period(start="2026-11", now=NOW)

    assert period.start == datetime(2026, 11, 1, tzinfo=UTC)
    assert period.end == datetime(2026, 12, 6, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-13", "'2026-13' is no month of the calendar: month must be in 1..12"),
        ("2026-00", "'2026-00' is no month of the calendar: month must be in 1..12"),
        # ISO 8601 has no year and month without the hyphen (it would read as a date).
        ("202611", "not an ISO 8601 date or time: '202611'"),
        ("2026-1", "not an ISO 8601 date or time: '2026-1'"),
        ("2026-11T10:00", "not an ISO 8601 date or time: '2026-11T10:00'"),
    ],
)
def test_a_month_the_calendar_lacks_or_a_wrong_shape_is_refused(text: str, message: str) -> None:
    with pytest.raises(PeriodError) as refused:
        resolve_period(start=text, end="2027-01-01", now=NOW)

    assert str(refused.value) == message


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
async def test_the_report_from_and_to_months_counts_the_months_requests(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two requests in November (Berlin time), one on the evening of 31 October UTC that
    # is already 1 November in Berlin, and one in December.
    await write_entries(
        store_url,
        [
            key_usage(at("2026-10-31T23:30:00+00:00"), 1),
            key_usage(at("2026-11-15T12:00:00+00:00"), 2),
            key_usage(at("2026-12-02T12:00:00+00:00"), 3),
        ],
    )
    zone = ["--time-zone", "Europe/Berlin"]

    code = await asyncio.to_thread(
        main, ["usage", "report", "--from", "2026-11", "--to", "2026-12", *zone, "--format", "json"]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    november = orjson.loads(captured.out)
    assert november["totals"]["requests"] == 2
    assert (november["from"], november["to"]) == (
        "2026-10-31T23:00:00+00:00",
        "2026-11-30T23:00:00+00:00",
    )
    code = await asyncio.to_thread(
        main, ["usage", "report", "--month", "2026-11", *zone, "--format", "json"]
    )
    assert code == 0
    assert orjson.loads(capsys.readouterr().out) == november
