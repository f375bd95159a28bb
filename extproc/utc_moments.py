"""How a moment (unix seconds) is written where an operator reads it: ISO 8601 in UTC.

One writing for the key commands' tables and sentences and the key management API's
refusals: ``2027-01-01T00:00:00Z``, with the milliseconds when the moment has them
(``2026-05-04T11:00:00.734Z``, as the access log writes its timestamps). Cut to the
second, an old secret's grace (the rotation's moment plus the grace) read as ending
before the moment ``--json`` gave, and a key typed to expire at ``...:00.5Z`` was shown
as expired while it still worked.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_moment(unix: float) -> str:
    """``unix`` as ``YYYY-MM-DDTHH:MM:SS[.mmm]Z``; a number no calendar date holds (a
    record written by hand, say) as that number, rather than no answer at all."""
    try:
        moment = datetime.fromtimestamp(unix, UTC)
    except (OverflowError, ValueError, OSError):
        return f"{unix!r} (unix seconds, no date)"
    timespec = "milliseconds" if moment.microsecond // 1000 else "seconds"
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")
