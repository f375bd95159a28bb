"""The request log line's ``timestamp`` is written without a datetime per request
(``access_log.log_timestamp``): its text must be the one ``datetime`` writes, at every
millisecond edge and whatever second the line before was in."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest

from extproc.telemetry.access_log import log_timestamp


def as_datetime_writes_it(wall: float) -> str:
    """What the line said before: the reference."""
    return (
        datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


EDGES = [
    0.0,
    1.0,
    # Microseconds that round up into the next millisecond, or the next second.
    1_767_000_000.0004995,
    1_767_000_000.0009995,
    1_767_000_000.9995,
    1_767_000_000.9999995,
    1_767_000_000.99999949,
    math.nextafter(1_767_000_001.0, 0.0),
    # Near half a microsecond: fromtimestamp rounds half to even.
    0.0000005,
    0.0000015,
    0.0000025,
    # A new day, a new year, the last second datetime can write.
    1_767_225_599.999,
    1_767_225_600.0,
    253_402_300_799.999,
    # Before 1970 (a clock set wrong).
    -0.0000005,
    -1.0000001,
    -86_400.9999996,
]


@pytest.mark.parametrize("wall", EDGES)
def test_a_timestamp_on_a_millisecond_edge_reads_as_datetime_writes_it(wall: float) -> None:
    assert log_timestamp(wall) == as_datetime_writes_it(wall)


def test_timestamps_of_lines_in_the_same_and_other_seconds_read_as_datetime_writes_them() -> None:
    rng = random.Random(7)
    now = 1_767_000_000.0
    walls = [now + rng.random() * 3 for _ in range(20_000)]  # runs of the same second
    walls += [rng.uniform(0, 4e9) for _ in range(20_000)]  # a new second each time
    walls += [now + rng.randrange(10**6) / 1e6 for _ in range(20_000)]  # whole microseconds
    assert [log_timestamp(wall) for wall in walls] == [as_datetime_writes_it(w) for w in walls]
