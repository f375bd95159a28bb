"""The period of a usage report: whole UTC hours, given as from/to or as a day or a month.

``--from``/``--to`` take ISO 8601: a date-time, a date (its midnight), a week date, or a
year and month (``2026-11``: the month's start, as ``--month`` reads it).

Rollups are hourly, so a period must start and end on a whole hour: a report
never pretends to split an hour it cannot split. ``--day`` and ``--month`` are
calendar periods in a time zone (UTC by default); a zone whose midnight is not
a whole UTC hour (Asia/Kolkata, +05:30; Asia/Kathmandu, +05:45; Australia/Adelaide,
+10:30 or +09:30) cannot be reported on exactly and is refused, naming the two
reports on whole UTC hours nearest to it (one covering it and some minutes either
side, one within it): shifted to the hour, a day there would lose or gain half an
hour of usage without a word. So is a local time without an offset that a DST change makes
ambiguous (it happens twice) or void (it never happens): a bill must not depend
on a guess about which hour was meant.

A period spans at most ``MAX_PERIOD_DAYS``: every hour of it is one hash read,
and a typo such as ``--from 0001-01-01`` must not make the gateway serving the
management API read 87 million of them. Longer periods are split (costs are
integers, so the parts add up exactly).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo

from extproc.time_zones import zone_named

MAX_PERIOD_DAYS = 3660  # ten years, leap days included, with room to spare

_OUT_OF_RANGE = "the period must fall within the years 1 to 9999 (UTC)"


class PeriodError(ValueError):
    """A period the rollups cannot answer exactly; the message says why."""


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime  # exclusive

    @property
    def hours(self) -> int:
        return int((self.end - self.start).total_seconds() // 3600)


# A date (calendar or week), then a time after "T" (or a space), then an offset; each
# part checked by ``datetime.fromisoformat`` once put together. Matched first because
# that function takes any character between date and time: "2026-05-01+02:00" (a date
# at an offset) read as 02:00 without one, "2026-05-01-05:00" as 05:00, a period hours
# off without a word.
_MOMENT = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2}|\d{8}|\d{4}-?W\d{2}(?:-?\d)?)"
    r"(?:[Tt ](?P<time>[0-9:.,]+))?"
    r"(?P<offset>[Zz]|[+-][0-9:.,]+)?"
)


# ISO 8601's calendar month: a year and a month, with the hyphen (without it, 202611
# would read as a date of another shape), no day, time or offset.
_MONTH = re.compile(r"(?P<year>\d{4})-(?P<month>\d{2})")


def parse_moment(text: str, zone: tzinfo = UTC) -> datetime:
    """ISO 8601 date or date-time; a date alone is its midnight (the day's start, as
    ``--day`` reads it), a year and month alone the first day's (as ``--month`` reads
    it); a time without an offset is in ``zone``."""
    month = _MONTH.fullmatch(text)
    if month is not None:
        number = int(month["month"])
        if not 1 <= number <= 12:
            raise PeriodError(f"{text!r} is no month of the calendar: month must be in 1..12")
        # The month's start, as --month takes it: --from 2026-11 --to 2027-02 covers
        # exactly the three --month reports from November to January.
        return _month_start(int(month["year"]), number, zone)
    found = _MOMENT.fullmatch(text)
    if found is None:
        raise PeriodError(f"not an ISO 8601 date or time: {text!r}")
    try:
        offset = found["offset"] or ""
        moment = datetime.fromisoformat(
            f"{found['date']}T{found['time'] or '00:00'}"
            f"{'+00:00' if offset in ('Z', 'z') else offset}"
        )
    except ValueError as error:
        raise PeriodError(_no_such_moment(text, error)) from None
    if moment.tzinfo:
        return moment
    if found["time"] is None:
        # The day's start, never refused: where a DST change falls at midnight (Chile,
        # Cuba, Paraguay, Lebanon), 00:00 is void or happens twice, and --day and
        # --month take the day's start anyway. fold=0 gives it: the first 00:00, or,
        # read at the offset before the change, the instant the clocks jumped.
        return moment.replace(tzinfo=zone)
    return _local(moment, zone, text)


# Python's reasons for a date or time of the right shape that the calendar lacks (30
# February, hour 24, month 13): said as they are, where "not an ISO 8601 date" sent the
# operator looking for a typo in the format.
_CALENDAR_REASONS = re.compile(r"(?:day|month|hour|minute|second) (?:is out of range|must be in)")


def _no_such_moment(text: str, error: ValueError) -> str:
    reason = str(error)
    if _CALENDAR_REASONS.match(reason):
        return f"{text!r} is no date or time of the calendar: {reason}"
    return f"not an ISO 8601 date or time: {text!r}"


def _local(moment: datetime, zone: tzinfo, text: str) -> datetime:
    """A wall-clock time in ``zone``, refused when a DST change makes it ambiguous."""
    first, second = moment.replace(tzinfo=zone, fold=0), moment.replace(tzinfo=zone, fold=1)
    if first.utcoffset() == second.utcoffset():
        return first
    if first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == moment:
        raise PeriodError(
            f"{text!r} happens twice in {zone} (the clocks go back): give its offset,"
            f" {first.isoformat()} or {second.isoformat()}"
        )
    raise PeriodError(f"{text!r} does not exist in {zone} (the clocks go forward)")


def time_zone(name: str) -> tzinfo:
    """An IANA zone by its name, in any case (``utc``, ``europe/berlin``); never a
    host's own (``localtime``), which the CLI and the gateway it asks read apart."""
    try:
        return zone_named(name, any_case=True)
    except ValueError as error:
        raise PeriodError(str(error)) from None


def _hour_before(moment: datetime) -> datetime:
    """The whole UTC hour at or before ``moment`` (a UTC time)."""
    return moment.replace(minute=0, second=0, microsecond=0)


def _whole_hour(moment: datetime, what: str, *, end: bool = False) -> datetime:
    """``moment`` in UTC, refused when not on a whole hour. The hour suggested instead
    widens the period (the hour before a start, the one after an end), so that it
    still covers all the time asked about."""
    utc = moment.astimezone(UTC)
    if utc.minute or utc.second or utc.microsecond:
        suggested = _hour_before(utc) + (timedelta(hours=1) if end else timedelta(0))
        raise PeriodError(
            f"{what} {moment.isoformat()} is not on a whole UTC hour (rollups are hourly);"
            f" give --from/--to on whole UTC hours instead, such as {suggested.isoformat()}"
        )
    return utc


def _calendar_period(begin: datetime, finish: datetime, asked: str, zone: tzinfo) -> Period:
    """The UTC hours of a calendar period (``--day``, ``--month``, ``--last-month``), or
    its refusal when the zone's midnight is not a whole UTC hour: the message says so,
    rather than that "the start" (which the operator never wrote) is off the hour, and
    names a whole report on each side, its end included (the start alone left the
    operator to work out the end, and a month's last half hour was easily lost)."""
    start, end = begin.astimezone(UTC), finish.astimezone(UTC)
    if _on_the_hour(start) and _on_the_hour(end):
        return Period(start, end)
    off = begin if not _on_the_hour(start) else finish
    raise PeriodError(
        f"{asked} in {zone} runs from {_utc(start)} to {_utc(end)}: midnight there (UTC"
        f"{_offset(off)}) is not a whole UTC hour, and the rollups are UTC hours, so no"
        f" report can start or end with it.{_whole_hour_reports(start, end)}"
    )


def _given_period(begin: datetime, finish: datetime, asked: str) -> Period:
    """The UTC hours of ``--from``/``--to`` given both, or, when either is off the hour,
    their refusal naming the whole reports on each side, as a calendar period's does:
    ``--from 2026-11 --to 2026-12`` in Kolkata is that month, and the refusal named only
    a start, then, once it was mended, only an end."""
    start, end = begin.astimezone(UTC), finish.astimezone(UTC)
    if start >= end or (_on_the_hour(start) and _on_the_hour(end)):
        # An empty period is refused for that (resolve_period), whatever its hours.
        return Period(start, end)
    if not (_on_the_hour(start) or _on_the_hour(end)):
        off = "neither end is"
    else:
        off = "its end is not" if _on_the_hour(start) else "its start is not"
    raise PeriodError(
        f"{asked} runs from {_utc(start)} to {_utc(end)}, and {off} on a whole UTC hour:"
        f" the rollups are UTC hours, so no report can start or end off one."
        f"{_whole_hour_reports(start, end)}"
    )


def _whole_hour_reports(start: datetime, end: datetime) -> str:
    """The reports on whole UTC hours nearest to ``start``..``end`` (UTC): one covering
    it, and one within it when it holds a whole hour."""
    wide = Period(_hour_before(start), _hour_after(end))
    narrow = Period(_hour_after(start), _hour_before(end))
    message = (
        f" Report whole UTC hours instead: --from {_utc(wide.start)} --to {_utc(wide.end)}"
        f" covers it{_margins(start - wide.start, wide.end - end)}"
    )
    if narrow.start < narrow.end:
        message += f"; --from {_utc(narrow.start)} --to {_utc(narrow.end)} falls within it"
    return message


def _on_the_hour(moment: datetime) -> bool:
    return moment == _hour_before(moment)


def _hour_after(moment: datetime) -> datetime:
    """The whole UTC hour at or after ``moment`` (a UTC time)."""
    before = _hour_before(moment)
    return before if before == moment else before + timedelta(hours=1)


def _utc(moment: datetime) -> str:
    """``moment`` (UTC) as a refusal names it: to the minute, with the seconds (and their
    fraction) when it has them. Cut to the minute, ``--from 2026-11-01T00:00:30Z`` was
    refused as running "from 2026-11-01T00:00Z", which reads as on the hour."""
    if moment.microsecond:
        return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond:06d}".rstrip("0") + "Z"
    if moment.second:
        return f"{moment:%Y-%m-%dT%H:%M:%S}Z"
    return f"{moment:%Y-%m-%dT%H:%M}Z"


def _offset(moment: datetime) -> str:
    offset = moment.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _margins(before: timedelta, after: timedelta) -> str:
    """What a report widened to whole hours counts besides the period asked for."""
    parts = [
        f"{_duration(extra)} {side} it"
        for extra, side in ((before, "before"), (after, "after"))
        if extra
    ]
    return f", with {' and '.join(parts)}" if parts else ""


def _duration(extra: timedelta) -> str:
    """Less than an hour, in minutes and seconds: a margin under a minute read "0 minutes",
    and one of a single minute "1 minutes"."""
    minutes, rest = divmod(extra, timedelta(minutes=1))
    parts = [_counted(str(minutes), "minute")] if minutes else []
    if rest:
        seconds = f"{rest.total_seconds():.6f}".rstrip("0").rstrip(".")
        parts.append(_counted(seconds, "second"))
    return " ".join(parts)


def _counted(amount: str, unit: str) -> str:
    """``amount`` of ``unit``, plural unless exactly one ("0.5 seconds", "1 second")."""
    return f"{amount} {unit}" if amount == "1" else f"{amount} {unit}s"


def _month_start(year: int, month: int, zone: tzinfo) -> datetime:
    return datetime(year, month, 1, tzinfo=zone)


def _next_month(year: int, month: int) -> tuple[int, int]:
    return (year + 1, 1) if month == 12 else (year, month + 1)


def resolve_period(
    *,
    start: str | None = None,
    end: str | None = None,
    day: str | None = None,
    month: str | None = None,
    last_month: bool = False,
    zone_name: str = "UTC",
    now: datetime | None = None,
) -> Period:
    """The period a report asks for. Default: the last 24 hours, the current one included."""
    try:
        period = _resolve(start, end, day, month, last_month, zone_name, now)
    except PeriodError:
        raise
    except (OverflowError, ValueError):
        # A date next to year 1 or 9999 whose UTC time or next day/month is not a date.
        raise PeriodError(_OUT_OF_RANGE) from None
    if period.start >= period.end:
        # Named, since one of them may be implied: --from alone ends with the current hour.
        raise PeriodError(
            f"the start of the period ({period.start.isoformat()}) must be before its end"
            f" ({period.end.isoformat()})"
        )
    if period.end - period.start > timedelta(days=MAX_PERIOD_DAYS):
        raise PeriodError(
            f"a report spans at most {MAX_PERIOD_DAYS} days (about ten years):"
            " split a longer period, its parts add up exactly"
        )
    return period


def _resolve(
    start: str | None,
    end: str | None,
    day: str | None,
    month: str | None,
    last_month: bool,
    zone_name: str,
    now: datetime | None,
) -> Period:
    zone = time_zone(zone_name)
    now = (now or datetime.now(UTC)).astimezone(zone)
    shortcuts = [name for name, value in (("--day", day), ("--month", month)) if value]
    if last_month:
        shortcuts.append("--last-month")
    if len(shortcuts) > 1 or (shortcuts and (start or end)):
        raise PeriodError("give one of --from/--to, --day, --month and --last-month")
    if day:
        try:
            first = date.fromisoformat(day)
        except ValueError as error:
            if _CALENDAR_REASONS.match(str(error)):
                raise PeriodError(f"--day {day!r} is no day of the calendar: {error}") from None
            raise PeriodError(f"--day wants YYYY-MM-DD, got {day!r}") from None
        begin = datetime(first.year, first.month, first.day, tzinfo=zone)
        # Midnight to midnight in the zone: 23 or 25 hours on a DST change.
        following = first + timedelta(days=1)
        finish = datetime(following.year, following.month, following.day, tzinfo=zone)
        return _calendar_period(begin, finish, f"--day {day}", zone)
    if month or last_month:
        if month:
            try:
                year, number = (int(part) for part in month.split("-"))
            except ValueError:
                raise PeriodError(f"--month wants YYYY-MM, got {month!r}") from None
            if not 1 <= number <= 12:
                raise PeriodError(f"--month wants YYYY-MM with MM from 01 to 12, got {month!r}")
        else:
            year, number = (now.year - 1, 12) if now.month == 1 else (now.year, now.month - 1)
        begin = _month_start(year, number, zone)
        finish = _month_start(*_next_month(year, number), zone)
        asked = f"--month {month}" if month else f"--last-month ({year:04d}-{number:02d})"
        return _calendar_period(begin, finish, asked, zone)
    if end:
        finish = parse_moment(end, zone)
    else:
        finish = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        finish += timedelta(hours=1)
    # 24 hours, counted in UTC: a day back on a zone's wall clock is 23 or 25 hours
    # across a DST change (or lands in the hour the clocks skip).
    if not start:
        # The end first: the start is implied by it, and "the start ... is not on a whole
        # UTC hour" named a time the operator never wrote (--to 2026-11-03 in Kolkata).
        finish = _whole_hour(finish, "the end", end=True)
        return Period(finish - timedelta(days=1), finish)
    begin = parse_moment(start, zone)
    if end:
        named = "" if str(zone) == "UTC" else f" in {zone}"
        return _given_period(begin, finish, f"--from {start} --to {end}{named}")
    return Period(_whole_hour(begin, "the start"), _whole_hour(finish, "the end", end=True))
