"""Quota windows: where each window starts and ends, and the key its counters live under."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.quota.windows import (
    LIFETIME_TTL_SECONDS,
    Window,
    WindowKind,
    reset_at,
    validate_timezone,
    window_for,
)

BERLIN = "Europe/Berlin"
NEW_YORK = "America/New_York"
CALENDAR_KINDS = [WindowKind.CALENDAR_DAY, WindowKind.CALENDAR_WEEK, WindowKind.CALENDAR_MONTH]
HOUR = 3600.0


def at(
    tz: str, year: int, month: int, day: int, hour: int = 0, minute: int = 0, s: int = 0
) -> float:
    """Epoch seconds of a local wall-clock time (fold=0) in ``tz``."""
    return datetime(year, month, day, hour, minute, s, tzinfo=ZoneInfo(tz)).timestamp()


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, s: int = 0) -> float:
    return at("UTC", year, month, day, hour, minute, s)


def length(window: Window) -> float:
    assert window.end is not None
    return window.end - window.start


def end(window: Window) -> float:
    assert window.end is not None
    return window.end


def test_the_system_time_zone_database_is_there() -> None:
    # Calendar windows need the host's tz database (the tzdata package is not installed).
    assert datetime(2026, 7, 1, tzinfo=ZoneInfo(BERLIN)).isoformat().endswith("+02:00")


# -- fixed windows ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "seconds", "prefix"),
    [
        (WindowKind.SECOND, 1, "s"),
        (WindowKind.MINUTE, 60, "m"),
        (WindowKind.HOUR, 3600, "h"),
        (WindowKind.DAY, 86400, "d"),
    ],
)
def test_fixed_windows_are_aligned_to_the_epoch(
    kind: WindowKind, seconds: int, prefix: str
) -> None:
    boundary = 20435 * 86400.0  # 2025-12-13T00:00Z, a boundary of every fixed kind
    index = int(boundary) // seconds
    assert window_for(kind, boundary) == Window(
        kind, boundary, boundary + seconds, f"{prefix}:{index}"
    )
    before = window_for(kind, boundary - 0.001)
    assert (before.start, before.end, before.key) == (
        boundary - seconds,
        boundary,
        f"{prefix}:{index - 1}",
    )


def test_minute_boundary() -> None:
    last = window_for(WindowKind.MINUTE, utc(2026, 5, 4, 10, 59, 59) + 0.999999)
    first = window_for(WindowKind.MINUTE, utc(2026, 5, 4, 11, 0, 0))
    assert last.end == first.start == utc(2026, 5, 4, 11, 0)
    assert last.key != first.key
    assert first.seconds_left(utc(2026, 5, 4, 11, 0, 15)) == 45


def test_hour_boundary() -> None:
    window = window_for(WindowKind.HOUR, utc(2026, 5, 4, 10, 30))
    assert (window.start, window.end) == (utc(2026, 5, 4, 10), utc(2026, 5, 4, 11))
    assert window_for(WindowKind.HOUR, utc(2026, 5, 4, 11)).start == utc(2026, 5, 4, 11)


def test_a_float_just_below_a_boundary_stays_in_the_earlier_window() -> None:
    # 60 * k - 1e-7 divided by 60 rounds to k; the window must still contain now.
    now = 29427360 * 60.0 - 1e-7
    window = window_for(WindowKind.MINUTE, now)
    assert window.start <= now < end(window)


def test_day_is_utc_aligned_while_calendar_day_follows_the_zone() -> None:
    now = at(BERLIN, 2026, 5, 4, 0, 30)  # 22:30 UTC the day before
    assert window_for(WindowKind.DAY, now).start == utc(2026, 5, 3)
    assert window_for(WindowKind.CALENDAR_DAY, now, BERLIN).start == at(BERLIN, 2026, 5, 4)


# -- calendar months ---------------------------------------------------------------------------


def test_last_half_hour_of_january_in_berlin_is_still_january() -> None:
    window = window_for(WindowKind.CALENDAR_MONTH, at(BERLIN, 2026, 1, 31, 23, 30), BERLIN)
    assert window.key == "cm:2026-01@Europe/Berlin"
    assert window.start == at(BERLIN, 2026, 1, 1)
    assert window.end == at(BERLIN, 2026, 2, 1) == utc(2026, 1, 31, 23)


def test_half_past_eleven_utc_on_january_31_is_already_february_in_berlin() -> None:
    window = window_for(WindowKind.CALENDAR_MONTH, utc(2026, 1, 31, 23, 30), BERLIN)
    assert window.key == "cm:2026-02@Europe/Berlin"
    assert (window.start, window.end) == (at(BERLIN, 2026, 2, 1), at(BERLIN, 2026, 3, 1))


def test_december_rolls_over_to_january_of_the_next_year() -> None:
    december = window_for(WindowKind.CALENDAR_MONTH, at(NEW_YORK, 2026, 12, 31, 23, 59), NEW_YORK)
    assert december.key == "cm:2026-12@America/New_York"
    assert december.end == at(NEW_YORK, 2027, 1, 1)
    january = window_for(WindowKind.CALENDAR_MONTH, end(december), NEW_YORK)
    assert january.key == "cm:2027-01@America/New_York"
    assert january.start == december.end


def test_february_of_a_leap_year_has_29_days() -> None:
    window = window_for(WindowKind.CALENDAR_MONTH, utc(2028, 2, 29, 12), "UTC")
    assert window.key == "cm:2028-02@UTC"
    assert length(window) == 29 * 24 * HOUR
    assert window_for(WindowKind.CALENDAR_MONTH, utc(2027, 2, 10), "UTC").end == utc(2027, 3, 1)


def test_month_across_spring_forward_is_one_hour_short() -> None:
    window = window_for(WindowKind.CALENDAR_MONTH, at(BERLIN, 2026, 3, 15), BERLIN)
    assert length(window) == 31 * 24 * HOUR - HOUR


# -- calendar days across DST ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        (BERLIN, (2026, 3, 29), 23),  # spring forward 02:00 -> 03:00
        (BERLIN, (2026, 10, 25), 25),  # fall back 03:00 -> 02:00
        (BERLIN, (2026, 3, 28), 24),
        (NEW_YORK, (2026, 3, 8), 23),  # spring forward 02:00 -> 03:00
        (NEW_YORK, (2026, 11, 1), 25),
        ("America/Santiago", (2026, 9, 6), 23),  # midnight itself is skipped
        ("America/Santiago", (2026, 4, 4), 25),  # 24:00 is set back to 23:00
    ],
)
def test_calendar_day_length_across_dst(tz: str, day: tuple[int, int, int], hours: int) -> None:
    noon = at(tz, *day, 12)
    window = window_for(WindowKind.CALENDAR_DAY, noon, tz)
    assert window.key == f"cd:{day[0]}-{day[1]:02d}-{day[2]:02d}@{tz}"
    assert length(window) == hours * HOUR
    assert window.seconds_left(window.start) == hours * HOUR


def test_the_day_midnight_is_skipped_starts_at_the_jump() -> None:
    # In Santiago on 2026-09-06 the clock jumps from 00:00 to 01:00: the day starts at 01:00 local.
    tz = ZoneInfo("America/Santiago")
    window = window_for(
        WindowKind.CALENDAR_DAY, at("America/Santiago", 2026, 9, 6, 12), "America/Santiago"
    )
    assert datetime.fromtimestamp(window.start, tz).hour == 1
    assert datetime.fromtimestamp(window.start - 1, tz).day == 5


def test_the_repeated_hour_after_fall_back_belongs_to_the_same_berlin_day() -> None:
    first_0230 = at(BERLIN, 2026, 10, 25, 2, 30)
    second_0230 = first_0230 + HOUR
    assert window_for(WindowKind.CALENDAR_DAY, first_0230, BERLIN) == window_for(
        WindowKind.CALENDAR_DAY, second_0230, BERLIN
    )


# -- calendar weeks ----------------------------------------------------------------------------


def test_iso_week_starts_on_monday() -> None:
    window = window_for(WindowKind.CALENDAR_WEEK, at(BERLIN, 2026, 3, 29, 23, 59), BERLIN)  # Sun
    assert window.key == "cw:2026-W13@Europe/Berlin"
    assert (window.start, window.end) == (at(BERLIN, 2026, 3, 23), at(BERLIN, 2026, 3, 30))
    # The week holds the spring-forward Sunday, so it is an hour short.
    assert length(window) == 7 * 24 * HOUR - HOUR


def test_sunday_week_is_keyed_by_its_first_day() -> None:
    window = window_for(WindowKind.CALENDAR_WEEK, at(BERLIN, 2026, 3, 29, 0, 0), BERLIN, 6)
    assert window.key == "cw:2026-03-29@Europe/Berlin"
    assert (window.start, window.end) == (at(BERLIN, 2026, 3, 29), at(BERLIN, 2026, 4, 5))
    saturday = window_for(WindowKind.CALENDAR_WEEK, window.start - 1, BERLIN, 6)
    assert saturday.key == "cw:2026-03-22@Europe/Berlin"


def test_iso_week_of_a_new_year_uses_the_iso_year() -> None:
    # 2027-01-01 is a Friday in ISO week 53 of 2026.
    window = window_for(WindowKind.CALENDAR_WEEK, utc(2027, 1, 1, 12), "UTC")
    assert window.key == "cw:2026-W53@UTC"
    assert window.start == utc(2026, 12, 28)


@pytest.mark.parametrize("week_start", [-1, 7, True])
def test_week_start_out_of_range_is_refused(week_start: int) -> None:
    with pytest.raises(ValueError, match="week_start"):
        window_for(WindowKind.CALENDAR_WEEK, 0.0, "UTC", week_start)


# -- keys, lifetime, ttl, zones ---------------------------------------------------------------


@pytest.mark.parametrize("kind", list(WindowKind))
def test_key_is_stable_inside_a_window_and_differs_outside(kind: WindowKind) -> None:
    window = window_for(kind, at(BERLIN, 2026, 6, 17, 13, 37, 42) + 0.25, BERLIN)
    inside = [window.start, (window.start + (window.end or window.start + 1)) / 2]
    for now in inside:
        assert window_for(kind, now, BERLIN) == window
    if window.end is not None:
        assert window_for(kind, window.end, BERLIN).key != window.key
        assert window_for(kind, window.start - 0.5, BERLIN).key != window.key


def test_the_same_local_date_in_two_zones_has_two_keys() -> None:
    now = utc(2026, 6, 17, 12)
    assert window_for(WindowKind.CALENDAR_DAY, now, BERLIN).key == "cd:2026-06-17@Europe/Berlin"
    assert (
        window_for(WindowKind.CALENDAR_DAY, now, NEW_YORK).key == "cd:2026-06-17@America/New_York"
    )


def test_lifetime_window_never_ends() -> None:
    window = window_for(WindowKind.LIFETIME, utc(2026, 6, 17))
    assert window == Window(WindowKind.LIFETIME, 0.0, None, "life")
    assert window.seconds_left(utc(2030, 1, 1)) is None
    assert reset_at(window) is None
    assert window.ttl_seconds(utc(2026, 6, 17)) == LIFETIME_TTL_SECONDS
    assert window.ttl_seconds(utc(2026, 6, 17), lifetime=86400) == 86400


@pytest.mark.parametrize(
    ("kind", "longest_s"),
    [
        # A per-second counter is gone two seconds on: a requests_per_second rule used to
        # keep 3,600 of them per subject, an hour's worth.
        (WindowKind.SECOND, 2),
        (WindowKind.MINUTE, 120),
        (WindowKind.HOUR, 7200),
        (WindowKind.DAY, 86400 + 3600),
        (WindowKind.CALENDAR_MONTH, 31 * 86400 + 3600),
    ],
)
def test_a_counter_outlives_its_window_by_as_long_as_it_lasted_at_most_an_hour(
    kind: WindowKind, longest_s: int
) -> None:
    now = utc(2026, 1, 1, 0, 0, 0)
    assert window_for(kind, now).ttl_seconds(now) == longest_s


def test_counter_ttl_outlives_the_window_by_the_slack() -> None:
    window = window_for(WindowKind.MINUTE, utc(2026, 6, 17, 12, 0, 50))
    assert reset_at(window) == window.end == utc(2026, 6, 17, 12, 1)
    assert window.ttl_seconds(utc(2026, 6, 17, 12, 0, 50)) == 10 + 60  # a minute's slack
    assert window.ttl_seconds(utc(2026, 6, 17, 12, 0, 50), slack=3600) == 10 + 3600
    assert window.ttl_seconds(utc(2026, 6, 17, 12, 0, 50) + 0.5, slack=0) == 10  # rounded up
    assert window.ttl_seconds(utc(2026, 6, 17, 13), slack=0) == 1  # never 0: EXPIRE 0 deletes
    assert window.seconds_left(utc(2026, 6, 17, 13)) == 0


@pytest.mark.parametrize("tz", ["Mars/Olympus", "europe/berlin", "", "/etc/localtime", "../UTC"])
def test_unknown_time_zone_is_a_value_error(tz: str) -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        validate_timezone(tz)
    with pytest.raises(ValueError, match="unknown time zone"):
        window_for(WindowKind.CALENDAR_DAY, 0.0, tz)


def test_known_time_zones_validate() -> None:
    for tz in ["UTC", BERLIN, NEW_YORK, "Asia/Kolkata"]:
        validate_timezone(tz)


def test_non_finite_now_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        window_for(WindowKind.MINUTE, float("nan"))


# -- property: calendar windows tile time ------------------------------------------------------

ZONES = [
    "UTC",
    BERLIN,
    NEW_YORK,
    "America/Santiago",  # DST changes at midnight
    "Asia/Kolkata",  # half-hour offset
    "Australia/Lord_Howe",  # half-hour DST shift
    "Pacific/Apia",  # skipped 2011-12-30 entirely
]


@settings(max_examples=400, deadline=None)
@given(
    now=st.floats(min_value=utc(1990, 1, 1), max_value=utc(2100, 1, 1), allow_nan=False),
    kind=st.sampled_from(CALENDAR_KINDS),
    tz=st.sampled_from(ZONES),
    week_start=st.integers(min_value=0, max_value=6),
)
def test_calendar_windows_tile_time(now: float, kind: WindowKind, tz: str, week_start: int) -> None:
    window = window_for(kind, now, tz, week_start)
    assert window.end is not None
    assert window.start <= now < window.end
    assert window_for(kind, window.start, tz, week_start) == window
    following = window_for(kind, window.end, tz, week_start)
    assert following.start == window.end
    assert following.key != window.key
    previous = window_for(kind, window.start - 0.000001, tz, week_start)
    assert previous.end == window.start


@settings(max_examples=200, deadline=None)
@given(
    now=st.floats(min_value=utc(1990, 1, 1), max_value=utc(2100, 1, 1), allow_nan=False),
    kind=st.sampled_from([WindowKind.SECOND, WindowKind.MINUTE, WindowKind.HOUR, WindowKind.DAY]),
)
def test_fixed_windows_tile_time(now: float, kind: WindowKind) -> None:
    window = window_for(kind, now)
    assert window.end is not None
    assert window.start <= now < window.end
    assert window_for(kind, window.end).start == window.end
    assert window_for(kind, window.start) == window


def test_samoa_skipped_day_leaves_no_gap() -> None:
    # Pacific/Apia moved across the date line: 2011-12-29 was followed by 2011-12-31.
    tz = "Pacific/Apia"
    thursday = window_for(WindowKind.CALENDAR_DAY, at(tz, 2011, 12, 29, 12), tz)
    following = window_for(WindowKind.CALENDAR_DAY, end(thursday), tz)
    assert following.key == "cd:2011-12-31@Pacific/Apia"
    assert following.start == thursday.end
