"""The time windows that limit rules count in: which window an instant falls in, and its key.

Everything here is pure: the caller passes ``now`` (epoch seconds, UTC), which
always comes from the Redis server so that every gateway replica agrees on the
window, whatever its own clock says.

Two families of window:

* fixed windows (second, minute, hour, day) of constant length, aligned to the
  epoch: ``day`` is 24 h starting at midnight UTC;
* calendar windows (day, week, month) from local midnight to local midnight in
  a time zone, so a calendar day lasts 23 or 25 hours across a DST change.

plus the lifetime window, which never ends. Windows of one kind tile time:
each ends exactly where the next starts, so no instant is counted twice or lost.
A window's ``key`` is its one source of truth in Redis counter keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from extproc.time_zones import zone_named

__all__ = [
    "LIFETIME_TTL_SECONDS",
    "Window",
    "WindowKind",
    "reset_at",
    "validate_timezone",
    "window_for",
]

# A lifetime counter has no end to outlive; ten years keeps it while stopping
# abandoned subjects from piling up in Redis forever.
LIFETIME_TTL_SECONDS = 10 * 365 * 86400
# The longest a window's counter outlives it (ttl_seconds).
MAX_SLACK_S = 3600


class WindowKind(StrEnum):
    SECOND = "second"
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"
    CALENDAR_DAY = "calendar_day"
    CALENDAR_WEEK = "calendar_week"
    CALENDAR_MONTH = "calendar_month"
    LIFETIME = "lifetime"


# Fixed kinds: (length in seconds, key prefix). The key carries the window's
# index since the epoch, which is short and independent of any time zone.
_FIXED: dict[WindowKind, tuple[int, str]] = {
    WindowKind.SECOND: (1, "s"),
    WindowKind.MINUTE: (60, "m"),
    WindowKind.HOUR: (3600, "h"),
    WindowKind.DAY: (86400, "d"),
}


@dataclass(frozen=True, slots=True)
class Window:
    """One window: ``start`` inclusive, ``end`` exclusive (None: never ends)."""

    kind: WindowKind
    start: float
    end: float | None
    key: str

    def seconds_left(self, now: float) -> float | None:
        """Seconds until the window ends (0 once it has), or None for a lifetime window."""
        if self.end is None:
            return None
        return max(0.0, self.end - now)

    def ttl_seconds(
        self, now: float, slack: float | None = None, lifetime: int = LIFETIME_TTL_SECONDS
    ) -> int:
        """How long a counter for this window must live in Redis: until ``end + slack``.

        The slack keeps a counter a while after its window closed, for a streamed
        response's late settlement; by default as long as the window lasted, at most
        an hour (``MAX_SLACK_S``). A longer slack would buy nothing on short windows,
        whose every second or minute leaves a key per subject: an hour's slack kept
        3,600 per-second counters alive for each subject of a requests_per_second rule.
        At least 1, because Redis rejects EXPIRE 0 as "delete now".
        """
        if self.end is None:
            return lifetime
        if slack is None:
            slack = min(MAX_SLACK_S, self.end - self.start)
        return max(1, math.ceil(self.end - now + slack))


def reset_at(window: Window) -> float | None:
    """When the window's counters start again from zero (None: never)."""
    return window.end


def validate_timezone(tz: str) -> None:
    """Raise ValueError unless ``tz`` is an IANA time zone name this host knows."""
    _zone(tz)


def window_for(kind: WindowKind, now: float, tz: str = "UTC", week_start: int = 0) -> Window:
    """The window of ``kind`` that contains ``now`` (epoch seconds, UTC).

    ``tz`` matters only for calendar kinds; ``week_start`` only for weeks
    (0 = Monday as in ISO 8601, ..., 6 = Sunday).
    """
    if not math.isfinite(now):
        raise ValueError(f"now must be a finite epoch time, got {now!r}")
    kind = WindowKind(kind)
    if kind is WindowKind.LIFETIME:
        return Window(kind, 0.0, None, "life")
    fixed = _FIXED.get(kind)
    if fixed is not None:
        length, prefix = fixed
        # Float floor division is exact (it goes through fmod), unlike
        # floor(now / length), which can round up to the next window just
        # before a boundary and give start > now.
        index = int(now // length)
        return Window(kind, float(index * length), float((index + 1) * length), f"{prefix}:{index}")
    if kind is WindowKind.CALENDAR_WEEK and (
        isinstance(week_start, bool) or not isinstance(week_start, int) or not 0 <= week_start <= 6
    ):
        raise ValueError(f"week_start must be 0 (Monday) to 6 (Sunday), got {week_start!r}")
    return _calendar_window(kind, now, tz, _zone(tz), week_start)


def _zone(tz: str) -> ZoneInfo:
    # Exact names only: the window key names the zone as written (``@Europe/Berlin``), and
    # one spelling per zone keeps one counter per window.
    return zone_named(tz)


def _calendar_window(
    kind: WindowKind, now: float, tz: str, zone: ZoneInfo, week_start: int
) -> Window:
    # Local midnights fall on whole seconds (tz offsets are whole seconds), so
    # flooring first cannot change the local date; fromtimestamp() on the raw
    # float would round 23:59:59.9999999 up into the next day.
    today = datetime.fromtimestamp(math.floor(now), zone).date()
    first = _period_first_day(kind, today, week_start)
    start = _local_midnight(first, zone)
    end = _local_midnight(_shift(kind, first, 1), zone)
    # The local date is only a first guess when midnight is skipped or repeated
    # by a transition that crosses it: the window is defined by its start and
    # end instants, so move to the neighbour that really contains ``now``.
    while now < start:
        first = _shift(kind, first, -1)
        start, end = _local_midnight(first, zone), start
    while now >= end:
        first = _shift(kind, first, 1)
        start, end = end, _local_midnight(_shift(kind, first, 1), zone)
    return Window(kind, float(start), float(end), f"{_calendar_key(kind, first, week_start)}@{tz}")


def _period_first_day(kind: WindowKind, day: date, week_start: int) -> date:
    if kind is WindowKind.CALENDAR_DAY:
        return day
    if kind is WindowKind.CALENDAR_WEEK:
        return day - timedelta(days=(day.weekday() - week_start) % 7)
    return day.replace(day=1)


def _shift(kind: WindowKind, first: date, periods: int) -> date:
    """The first day of the period ``periods`` away from the one starting on ``first``."""
    if kind is WindowKind.CALENDAR_DAY:
        return first + timedelta(days=periods)
    if kind is WindowKind.CALENDAR_WEEK:
        return first + timedelta(weeks=periods)
    months = first.year * 12 + first.month - 1 + periods
    return date(months // 12, months % 12 + 1, 1)


def _local_midnight(day: date, zone: ZoneInfo) -> int:
    """The instant of 00:00 local time on ``day``, as whole epoch seconds.

    fold=0 takes the first of two midnights when the clock is set back across
    it, and for a midnight the clock skips (e.g. America/Santiago jumps from
    00:00 to 01:00) it applies the offset before the jump, which lands exactly
    on the jump: the first instant of the new local day.
    """
    return int(datetime.combine(day, time(0), tzinfo=zone).timestamp())


def _calendar_key(kind: WindowKind, first: date, week_start: int) -> str:
    if kind is WindowKind.CALENDAR_DAY:
        return f"cd:{first.isoformat()}"
    if kind is WindowKind.CALENDAR_WEEK:
        if week_start == 0:
            iso = first.isocalendar()
            return f"cw:{iso.year}-W{iso.week:02d}"
        return f"cw:{first.isoformat()}"
    return f"cm:{first.year:04d}-{first.month:02d}"
