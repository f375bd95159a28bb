"""A period of the right shape that the calendar lacks is refused with the reason.

``--day 2026-02-29`` was refused as "--day wants YYYY-MM-DD", which is what it is, and
``--from 2026-02-30`` as "not an ISO 8601 date or time": the operator looked for a typo
in the format, not at the calendar. The reason is now said as it is (2026 has no 29
February; an hour is 0 to 23; a month 1 to 12); a wrong shape keeps its message.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from extproc.chargeback.period import PeriodError, resolve_period

NOW = datetime(2026, 11, 14, 15, 42, tzinfo=UTC)


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        (
            {"day": "2026-02-29"},
            "--day '2026-02-29' is no day of the calendar: day is out of range",
        ),
        ({"day": "2026-13-01"}, "--day '2026-13-01' is no day of the calendar: month must be in"),
        ({"month": "2026-13"}, "--month wants YYYY-MM with MM from 01 to 12, got '2026-13'"),
        ({"month": "2026-00"}, "--month wants YYYY-MM with MM from 01 to 12, got '2026-00'"),
        (
            {"start": "2026-02-30", "end": "2026-03-02"},
            "'2026-02-30' is no date or time of the calendar: day is out of range",
        ),
        (
            {"start": "2026-11-30T10:00Z", "end": "2026-11-30T24:00"},
            "'2026-11-30T24:00' is no date or time of the calendar: hour must be in 0..23",
        ),
    ],
)
def test_a_date_the_calendar_lacks_is_refused_naming_why(
    arguments: dict[str, str], reason: str
) -> None:
    with pytest.raises(PeriodError) as refused:
        resolve_period(**arguments, now=NOW)  # type: ignore[arg-type]
    assert str(refused.value).startswith(reason)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"day": "2026/02/01"}, "--day wants YYYY-MM-DD, got '2026/02/01'"),
        ({"month": "2026"}, "--month wants YYYY-MM, got '2026'"),
        ({"start": "2026-05-01x10:00", "end": "2026-05-02"}, "not an ISO 8601 date or time"),
        ({"month": "10000-01"}, "the period must fall within the years 1 to 9999"),
    ],
)
def test_a_wrong_shape_keeps_its_message(arguments: dict[str, str], message: str) -> None:
    with pytest.raises(PeriodError, match=message):
        resolve_period(**arguments, now=NOW)  # type: ignore[arg-type]
