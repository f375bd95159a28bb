"""Calendar reports in zones whose midnight is not a whole UTC hour.

The rollups are UTC hours. A day in Asia/Kolkata (+05:30) starts at 18:30 UTC, inside
the 18:00 rollup, so no report of whole rollups is that day: shifted to the hour it
would lose or gain half an hour of usage without a word. ``--day``, ``--month`` and
``--last-month`` there are refused (exit 2, one ``error:`` line, nothing on stdout),
with the two reports on whole UTC hours nearest to the period asked for: one covering
it and the minutes either side, one within it. Before, the refusal said that "the
start" (which the operator never wrote) was off the hour and gave the start of one
such report alone, leaving its end to be worked out (and a month's last half hour was
easily lost). Against a real Valkey through the CLI, and the period's reading alone.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from extproc.chargeback.period import PeriodError, resolve_period
from extproc.cli import main
from extproc.store.embedded import EmbeddedValkey
from tests.unit.test_usage_report_finance import at, key_usage, requests_in, write_entries

NOW = datetime(2026, 12, 6, 15, tzinfo=UTC)
_SUGGESTED = re.compile(r"--from (\S+) --to (\S+)")


@pytest.fixture
def store_url(valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The CLI reads the store of config/gateway.yaml, pointed at the test Valkey."""
    monkeypatch.setenv("REDIS_URL", valkey.url)
    yield valkey.url


@pytest.mark.parametrize(
    ("zone", "asked", "local_start", "local_end"),
    [
        ("Asia/Kolkata", {"day": "2026-11-02"}, "2026-11-01T18:30Z", "2026-11-02T18:30Z"),
        ("Asia/Kolkata", {"month": "2026-11"}, "2026-10-31T18:30Z", "2026-11-30T18:30Z"),
        ("Asia/Kathmandu", {"month": "2026-11"}, "2026-10-31T18:15Z", "2026-11-30T18:15Z"),
        ("Australia/Adelaide", {"last_month": True}, "2026-10-31T13:30Z", "2026-11-30T13:30Z"),
        # Summer time begins in Adelaide on 4 October: the month starts at +09:30 and
        # ends at +10:30.
        ("Australia/Adelaide", {"month": "2026-10"}, "2026-09-30T14:30Z", "2026-10-31T13:30Z"),
        ("America/St_Johns", {"month": "2026-11"}, "2026-11-01T02:30Z", "2026-12-01T03:30Z"),
    ],
)
def test_a_calendar_period_off_the_hour_is_refused_with_the_reports_that_can_be_made(
    zone: str, asked: dict[str, str | bool], local_start: str, local_end: str
) -> None:
    with pytest.raises(PeriodError) as refused:
        resolve_period(zone_name=zone, now=NOW, **asked)  # type: ignore[arg-type]
    message = str(refused.value)
    assert f"in {zone} runs from {local_start} to {local_end}" in message
    assert "is not a whole UTC hour" in message
    start, end = (datetime.fromisoformat(local_start), datetime.fromisoformat(local_end))
    # Both reports it names can be asked for as written, and are what they say.
    [wide, narrow] = [
        resolve_period(start=first, end=last, zone_name=zone, now=NOW)
        for first, last in _SUGGESTED.findall(message)
    ]
    assert wide.start < start and end < wide.end
    assert (start - wide.start).total_seconds() < 3600 and (wide.end - end).total_seconds() < 3600
    assert start < narrow.start and narrow.end < end
    assert (narrow.start - start).total_seconds() < 3600
    assert (end - narrow.end).total_seconds() < 3600


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"])
def test_a_zone_whose_midnight_is_a_whole_utc_hour_reports_its_month(zone: str) -> None:
    month = resolve_period(month="2026-11", zone_name=zone, now=NOW)
    assert month.start.minute == 0 and month.end.minute == 0


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_the_cli_refuses_a_kolkata_month_rather_than_shift_it_by_half_an_hour(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # One request in the half hour before Kolkata's November, one in its first half hour;
    # one in its last half hour, one in the half hour after it.
    asyncio.run(write_entries(store_url, [
        key_usage(at("2026-10-31T18:10:00+00:00"), 1),
        key_usage(at("2026-10-31T18:40:00+00:00"), 1),
        key_usage(at("2026-11-30T18:10:00+00:00"), 1),
        key_usage(at("2026-11-30T18:40:00+00:00"), 1),
    ]))  # fmt: skip
    for command in ("report", "export"):
        assert main(["usage", command, "--month", "2026-11", "--time-zone", "Asia/Kolkata"]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        [line] = captured.err.splitlines()
        assert line.startswith("error: --month 2026-11 in Asia/Kolkata runs from")
    [wide, narrow] = _SUGGESTED.findall(line)
    # The report covering the month counts all four requests (the rollups cannot tell
    # the halves of an hour apart); the one within it counts neither hour it splits.
    assert requests_in(["--from", wide[0], "--to", wide[1]], capsys) == 4
    assert requests_in(["--from", narrow[0], "--to", narrow[1]], capsys) == 0


def test_an_end_alone_off_the_hour_is_named_not_the_start_it_implies() -> None:
    # --to alone reports the 24 hours before it: Kolkata's midnight is 18:30 UTC, and the
    # error named "the start 2026-11-01T18:30:00+00:00", a time nobody wrote.
    with pytest.raises(PeriodError, match=r"^the end 2026-11-03T00:00:00\+05:30 is not on"):
        resolve_period(end="2026-11-03", zone_name="Asia/Kolkata", now=NOW)
    day = resolve_period(end="2026-11-03", zone_name="Europe/Berlin", now=NOW)
    assert (day.start, day.end) == (
        datetime(2026, 11, 1, 23, tzinfo=UTC),
        datetime(2026, 11, 2, 23, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("asked", "local_start", "local_end", "off"),
    [
        # The month as --from/--to name it ("the hours of the --month reports"): before,
        # the refusal named only a start, then, once the start was mended, only an end.
        ({"start": "2026-11", "end": "2026-12"}, "2026-10-31T18:30Z", "2026-11-30T18:30Z",
         "neither end is"),
        ({"start": "2026-11-01", "end": "2026-11-08"}, "2026-10-31T18:30Z", "2026-11-07T18:30Z",
         "neither end is"),
        ({"start": "2026-11-01", "end": "2026-11-07T18:00Z"}, "2026-10-31T18:30Z",
         "2026-11-07T18:00Z", "its start is not"),
        ({"start": "2026-10-31T18:00Z", "end": "2026-12-01"}, "2026-10-31T18:00Z",
         "2026-11-30T18:30Z", "its end is not"),
    ],
)  # fmt: skip
def test_from_and_to_off_the_hour_are_refused_with_the_reports_that_can_be_made(
    asked: dict[str, str], local_start: str, local_end: str, off: str
) -> None:
    with pytest.raises(PeriodError) as refused:
        resolve_period(zone_name="Asia/Kolkata", now=NOW, **asked)
    message = str(refused.value)
    assert message.startswith(f"--from {asked['start']} --to {asked['end']} in Asia/Kolkata")
    assert f"runs from {local_start} to {local_end}, and {off} on a whole UTC hour" in message
    start, end = (datetime.fromisoformat(local_start), datetime.fromisoformat(local_end))
    # Both reports it names can be asked for as written: one covering the period, and
    # one within it, each less than an hour from it at either end.
    [wide, narrow] = [
        resolve_period(start=first, end=last, zone_name="Asia/Kolkata", now=NOW)
        for first, last in _SUGGESTED.findall(message.partition("instead:")[2])
    ]
    assert wide.start <= start and end <= wide.end
    assert (start - wide.start).total_seconds() < 3600 and (wide.end - end).total_seconds() < 3600
    assert start <= narrow.start and narrow.end <= end
    assert (narrow.start - start).total_seconds() < 3600
    assert (end - narrow.end).total_seconds() < 3600


def test_the_cli_names_both_reports_for_a_kolkata_month_given_as_from_and_to(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--from", "2026-11", "--to", "2026-12", "--time-zone", "Asia/Kolkata"]
    assert main(["usage", "report", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("error: --from 2026-11 --to 2026-12 in Asia/Kolkata runs from")
    assert _SUGGESTED.findall(line.partition("instead:")[2]) == [
        ("2026-10-31T18:00Z", "2026-11-30T19:00Z"),
        ("2026-10-31T19:00Z", "2026-11-30T18:00Z"),
    ]
