"""Time zones by their IANA name, for calendar quotas and usage reports.

One zone name must mean one calendar wherever it is read: on every replica of the
gateway, and on the operator's laptop running ``extproc usage report --api``. So a name
the tz database holds for a host's own setting is refused, though ``zoneinfo`` opens it:

- ``localtime``: a link to the host's ``/etc/localtime``. A quota's window key names its
  zone (``cd:2026-03-10@localtime``), so replicas on hosts in different zones shared one
  counter for days that begin at different hours; and a report's ``--day`` was the
  laptop's day when checked and the gateway host's when summed;
- ``posixrules`` (the rules a POSIX ``TZ`` string borrows) and ``Factory`` (the
  placeholder of a host whose zone was never set): names of no place.

An offset written as a zone (``UTC+2``, ``GMT-05:00``) is no name the database has; the
error gives the ``Etc/GMT`` zone of a whole-hour offset, whose sign is POSIX's, inverted
(``Etc/GMT-2`` is two hours ahead of UTC).
"""

from __future__ import annotations

import re
from functools import cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

_HOST_NAMES = {
    "localtime": "the zone of whichever host reads it, which differs between the gateway's"
    " replicas and the hosts asking them",
    "posixrules": "the rules a POSIX TZ string borrows, not a place",
    "factory": "the placeholder of a host whose zone was never set, not a place",
}
_SUGGESTION = "use an IANA name such as 'UTC' or 'Europe/Berlin'"
_OFFSET = re.compile(r"(?:utc|gmt|z)?\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?", re.IGNORECASE)


def zone_named(name: str, *, any_case: bool = False) -> ZoneInfo:
    """The zone ``name`` names; ValueError saying why when it names none, or one that
    depends on the host. ``any_case``: ``europe/berlin`` is Europe/Berlin (the names are
    case-sensitive only as file names, and no two differ by case alone)."""
    if not name.strip():
        raise ValueError(f"unknown time zone {name!r} (empty): {_SUGGESTION}")
    host = _HOST_NAMES.get(name.casefold())
    if host is not None:
        raise ValueError(f"time zone {name!r} is {host}: {_SUGGESTION}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    folded = _folded_names().get(name.casefold()) if any_case else None
    if folded is None:
        raise ValueError(f"unknown time zone {name!r}: {_offset_hint(name) or _SUGGESTION}")
    return ZoneInfo(folded)


@cache
def _folded_names() -> dict[str, str]:
    return {known.casefold(): known for known in available_timezones()}


def _offset_hint(name: str) -> str | None:
    """For an offset written as a zone: the zone with that offset, or why there is none."""
    found = _OFFSET.fullmatch(name.strip())
    if found is None:
        return None
    sign, hours, minutes = found[1], int(found[2]), int(found[3] or 0)
    east = sign == "+"
    if hours == minutes == 0:
        return "an offset is no zone name: use 'UTC'"
    # The Etc/GMT zones run from 12 hours behind UTC to 14 ahead, in whole hours.
    if minutes or hours > (14 if east else 12):
        return (
            "an offset is no zone name, and no Etc/GMT zone has this one: use the IANA"
            " name of a place that keeps it, such as 'Asia/Kolkata' for +05:30"
        )
    # POSIX counts west of Greenwich as positive: UTC+2 is Etc/GMT-2.
    etc = f"Etc/GMT{'-' if east else '+'}{hours}"
    return (
        f"an offset is no zone name: use {etc!r} for a fixed UTC{sign}{hours} (its sign is"
        " POSIX's, inverted), or the IANA name of a place, which keeps its daylight saving"
    )
