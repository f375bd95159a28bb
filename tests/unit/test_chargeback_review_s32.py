"""Usage reports as a billing team asks for them: dates with an offset mean the midnight
at that offset, a period that cannot be answered says which two ends it saw, and a
report grouped by nothing shows its figures once."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from extproc.chargeback.period import PeriodError, resolve_period
from extproc.cli import main
from extproc.store.usage import UsageEntry
from tests.unit.test_chargeback_review import FEBRUARY, record, store_url

__all__ = ["store_url"]  # the CLI's store, shared with the first review's tests

NOW = datetime(2026, 11, 14, 15, 42, tzinfo=UTC)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# -- periods ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "zone", "expected"),
    [
        # Midnight at +02:00 is 22:00 UTC the day before (read as 02:00 UTC before).
        ("2026-05-01+02:00", "2026-05-02+02:00", "UTC", ("2026-04-30T22:00", "2026-05-01T22:00")),
        ("2026-05-01-05:00", "2026-05-02-05:00", "Europe/Berlin",
         ("2026-05-01T05:00", "2026-05-02T05:00")),
        ("20260501+0200", "20260502+0200", "UTC", ("2026-04-30T22:00", "2026-05-01T22:00")),
        # "Z" is UTC whatever --time-zone says (read as Berlin's midnight before).
        ("2026-05-01Z", "2026-05-02Z", "Europe/Berlin", ("2026-05-01T00:00", "2026-05-02T00:00")),
        # RFC 3339 allows a lowercase "z" (refused before).
        ("2026-05-01T00:00:00z", "2026-05-02t00:00:00z", "Europe/Berlin",
         ("2026-05-01T00:00", "2026-05-02T00:00")),
    ],
)  # fmt: skip
def test_a_date_with_an_offset_is_the_midnight_at_that_offset(
    start: str, end: str, zone: str, expected: tuple[str, str]
) -> None:
    period = resolve_period(start=start, end=end, zone_name=zone, now=NOW)
    assert (period.start, period.end) == (utc(expected[0]), utc(expected[1]))


@pytest.mark.parametrize("text", ["2026-05-01x10:00", "2026-05-01_10:00", "2026-05-01/10:00"])
def test_a_date_and_time_joined_by_other_than_t_or_a_space_is_refused(text: str) -> None:
    # Python reads any character there; a typo must not pass for a time.
    with pytest.raises(PeriodError, match="not an ISO 8601 date or time"):
        resolve_period(start=text, end="2026-05-02", now=NOW)


def test_the_forms_a_report_took_before_still_mean_what_they_meant() -> None:
    for start, end, expected in [
        ("2026-05-01", "2026-05-02T00:00:00Z", ("2026-05-01T00:00", "2026-05-02T00:00")),
        ("2026-05-01 00:00", "20260502T0000Z", ("2026-05-01T00:00", "2026-05-02T00:00")),
        ("2026-05-01T01:00+01:00", "2026-05-02T00:00:00.000+00:00",
         ("2026-05-01T00:00", "2026-05-02T00:00")),
        ("2026-W18", "2026-W19-1", ("2026-04-27T00:00", "2026-05-04T00:00")),
    ]:  # fmt: skip
        period = resolve_period(start=start, end=end, now=NOW)
        assert (period.start, period.end) == (utc(expected[0]), utc(expected[1]))


# -- the CLI ---------------------------------------------------------------------------------


def entry(group: str, cost: int) -> UsageEntry:
    dims = {"route": "openai-chat", "model": "gpt-4o", "provider": "mock", "group_id": group}
    return UsageEntry(FEBRUARY, dims, 100, 20, cost_picousd=cost, latency_ms=120.0)


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_a_report_of_a_date_with_an_offset_sums_that_offsets_day(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record(store_url, [entry("sales", 7)])  # 2026-02-10T09:30Z: 23:30 on the 10th at +14:00
    argv = ["usage", "report", "--from", "2026-02-11+14:00", "--to", "2026-02-12+14:00"]
    assert main([*argv, "--format", "json"]) == 0
    document = orjson.loads(capsys.readouterr().out)
    assert (document["from"], document["to"]) == (
        "2026-02-10T10:00:00+00:00",
        "2026-02-11T10:00:00+00:00",
    )
    assert document["totals"]["requests"] == 0  # the 10th's request is not the 11th's


def test_a_start_after_the_end_names_both(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # --from alone ends with the current hour: a start in the future is after it.
    assert main(["usage", "report", "--from", "9999-01-01"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        "error: the start of the period (9999-01-01T00:00:00+00:00) must be before its end ("
        in (captured.err)
    )
    assert "Traceback" not in captured.err


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_a_table_grouped_by_nothing_shows_its_figures_once(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record(store_url, [entry("sales", 7), entry("ops", 5)])
    assert main(["usage", "report", "--month", "2026-02", "--by", ""]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:2] == ["requests", "prompt_tokens"]
    assert [line.split()[0] for line in lines[2:]] == ["2"]  # one line: both requests
    assert "0.000000000012" in lines[2]


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_dimensions_are_named_in_any_case_as_the_help_names_them(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record(store_url, [entry("sales", 7), entry("ops", 5)])
    assert main(["usage", "report", "--month", "2026-02", "--by", "Group", "--format", "json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)["rows"]
    assert sorted(row["group_id"] for row in rows) == ["ops", "sales"]


def test_an_unknown_dimension_is_refused_before_the_store_is_asked(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A store nothing listens on: the refusal must not wait for it, nor be about it.
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert main(["usage", "report", "--month", "2026-02", "--by", "model,team"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: unknown dimension 'team'; choose from route, model, provider, api_key, user,"
        " group\n"
    )


@pytest.mark.parametrize(
    ("given", "zone"),
    [("utc", "UTC"), ("europe/berlin", "Europe/Berlin"), ("AMERICA/NEW_YORK", "America/New_York")],
)
def test_a_time_zone_is_named_in_any_case(given: str, zone: str) -> None:
    period = resolve_period(day="2026-05-01", zone_name=given, now=NOW)
    expected = resolve_period(day="2026-05-01", zone_name=zone, now=NOW)
    assert (period.start, period.end) == (expected.start, expected.end)
    assert period.hours == 24


def test_an_unknown_time_zone_is_still_refused() -> None:
    with pytest.raises(PeriodError, match="unknown time zone 'Mars/Olympus'"):
        resolve_period(day="2026-05-01", zone_name="Mars/Olympus", now=NOW)


def test_an_end_off_the_hour_is_told_the_hour_after_it() -> None:
    # The suggestion widens the period: the hour before would leave out the time asked.
    # Both ends given: the covering report comes first, whole and ready to paste.
    covering = r"--from 2026-05-01T00:00Z --to 2026-05-01T11:00Z covers it"
    with pytest.raises(PeriodError, match=covering):
        resolve_period(start="2026-05-01T00:00Z", end="2026-05-01T10:30Z", now=NOW)
    covering = r"--from 2026-05-01T00:00Z --to 2026-05-01T10:00Z covers it"
    with pytest.raises(PeriodError, match=covering):
        resolve_period(start="2026-05-01T00:30Z", end="2026-05-01T10:00Z", now=NOW)
