"""Whether a report's period is over, and the note that says when it is not yet.

A request counts in the hour it started (its log line's ``timestamp``), but it is added
to that hour when it ends: a stream that starts at 23:58 on the last day of a month and
runs for ten minutes lands in that month's last hour at 00:08, and calls have no overall
time limit. So a month reported just after it ends (a billing job at 00:05 on the 1st),
or before it ends in the zone it was asked in (``--month 2026-11 --time-zone
America/Los_Angeles`` run at 02:00 UTC on 1 December, eight hours before Los Angeles'
November ends), is short of usage that will still come, and a job that imports it has a
bill that the same export run the next day contradicts. The report says so on stderr;
stdout stays the report, as for the other notes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from extproc.chargeback.period import Period

# How long after a period's end its report may still grow. Calls have no overall limit,
# so this is no guarantee, only the time beyond which a call still running is rare (a
# reasoning model's longest answers take minutes): the docs advise billing a day later.
SETTLING = timedelta(hours=1)


def open_note(period: Period, now: datetime | None = None) -> str | None:
    """The stderr note of a period that has not ended, or ended less than ``SETTLING``
    ago; None for a period whose report is final."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    end = period.end.astimezone(UTC)
    if end > now:
        return (
            f"note: the period ends at {end:%Y-%m-%dT%H:%MZ}, after now ({now:%Y-%m-%dT%H:%MZ}):"
            " this report counts its usage until now only; report it again once it has"
            " ended for the whole period"
        )
    if end > now - SETTLING:
        return (
            f"note: the period ended at {end:%Y-%m-%dT%H:%MZ}, less than an hour ago: a request"
            " that started before then and is still running is counted, in the hour it"
            " started, once it ends, so this report may still grow; report it again later"
            " for a final bill"
        )
    return None
