"""A period refused for starting or ending off the hour by seconds names those seconds.

Cut to the minute, ``--from 2026-11-01T00:00:30Z`` was refused as running "from
2026-11-01T00:00Z", which reads as on the hour, and the report suggested instead covered
it "with 0 minutes before it": the operator could not see what was wrong with the period.
"""

from __future__ import annotations

import pytest

from extproc.chargeback.period import PeriodError, resolve_period
from extproc.cli import main


def refusal(start: str, end: str) -> str:
    with pytest.raises(PeriodError) as refused:
        resolve_period(start=start, end=end)
    return str(refused.value)


def test_a_start_seconds_after_the_hour_is_named_with_its_seconds() -> None:
    message = refusal("2026-11-01T00:00:30Z", "2026-11-02")

    assert "runs from 2026-11-01T00:00:30Z to 2026-11-02T00:00Z" in message
    assert "covers it, with 30 seconds before it;" in message


def test_an_end_a_fraction_of_a_second_before_the_hour_is_named_so() -> None:
    message = refusal("2026-11-01T00:30:15Z", "2026-11-02T05:59:59.5Z")

    assert "runs from 2026-11-01T00:30:15Z to 2026-11-02T05:59:59.5Z" in message
    assert "with 30 minutes 15 seconds before it and 0.5 seconds after it" in message


def test_the_cli_prints_the_seconds_too(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["usage", "report", "--from", "2026-11-01T00:00:00.000001Z",
                 "--to", "2026-11-02"])  # fmt: skip

    err = capsys.readouterr().err
    assert code == 2
    assert "runs from 2026-11-01T00:00:00.000001Z to" in err
    assert "with 0.000001 seconds before it" in err


def test_minutes_off_the_hour_read_as_before() -> None:
    message = refusal("2026-11-01T00:30Z", "2026-11-02")

    assert "runs from 2026-11-01T00:30Z to 2026-11-02T00:00Z" in message
    assert "with 30 minutes before it;" in message


def test_a_single_minute_or_second_reads_in_the_singular() -> None:
    message = refusal("2026-11-01T00:01:01Z", "2026-11-02T05:59Z")

    assert "with 1 minute 1 second before it and 1 minute after it" in message


def test_a_single_minute_alone_reads_in_the_singular() -> None:
    message = refusal("2026-11-01T00:01Z", "2026-11-02")

    assert "with 1 minute before it;" in message
    assert "1 minutes" not in message
