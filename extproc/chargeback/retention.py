"""Which hours of a report the store no longer keeps, and the note that says so.

An hour's rollup expires ``store.usage_retention_days`` after its first write. A report
whose period starts before the hours still kept reads the expired ones as no usage: a
bill of $0.00 for a month whose rollups expired must not pass for a month without
usage. The report read from the store and the one a gateway's management API answers
say it in the same words (``expired_note``), the API through its answer's
``expired_before`` and ``usage_retention_days``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from extproc.chargeback.period import Period


def first_hour_kept(retention_days: int, now: datetime | None = None) -> datetime | None:
    """The first hour the store still keeps whole at ``now``; None when the retention
    reaches back before the year 1 ("forever", 999999 days): nothing has expired."""
    # An hour's hash expires retention_days after its first write, made at the earliest
    # as the hour begins: the hour that began at or before now - retention_days may be
    # gone already (on a busy gateway it is), the one after it is kept whole.
    try:
        expired_by = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    except OverflowError:
        return None
    return expired_by.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def expired_before(
    period: Period, retention_days: int, now: datetime | None = None
) -> datetime | None:
    """The first hour kept whole when ``period`` starts before it, else None."""
    kept_from = first_hour_kept(retention_days, now)
    if kept_from is None or period.start >= kept_from:
        return None
    return kept_from


def expired_note(kept_from: datetime, retention_days: int) -> str:
    if kept_from.tzinfo is None:
        kept_from = kept_from.replace(tzinfo=UTC)  # the API's times are UTC
    return (
        f"note: the rollups of hours before {kept_from.astimezone(UTC):%Y-%m-%dT%H:00Z} have"
        f" expired (kept for store.usage_retention_days ({retention_days}) days): this report"
        " does not count them"
    )
