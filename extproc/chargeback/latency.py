"""Latency distributions in the hourly rollups: fixed buckets, percentiles from them.

Each request that reached a provider adds 1 to exactly one bucket of its
rollup row: the first whose upper bound (in milliseconds, from the request
reaching the gateway to the end of its response, streams included) is not
below its latency. Buckets are fixed, so rows of any hours, replicas and
subjects add up bucket by bucket, and a p50/p95 can be read for any grouping.

A percentile is interpolated linearly inside the bucket it falls in, as
Prometheus' ``histogram_quantile`` does; its precision is that bucket's width
(e.g. a p95 between 750 and 1000 ms is exact to within 250 ms). One falling in
the last, unbounded bucket is reported as the last finite bound (300 s).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

# Upper bounds in ms; one more bucket holds everything slower.
BOUNDS_MS: tuple[int, ...] = (
    10, 25, 50, 100, 200, 300, 500, 750, 1000, 1500, 2000, 3000, 5000, 7500, 10000,
    15000, 20000, 30000, 60000, 120000, 300000,
)  # fmt: skip
BUCKETS = len(BOUNDS_MS) + 1
# The measure names of the buckets in the rollup hash: latency_le_10 ... latency_le_inf.
BUCKET_NAMES: tuple[str, ...] = (
    *(f"latency_le_{bound}" for bound in BOUNDS_MS),
    "latency_le_inf",
)


def bucket_index(latency_ms: float) -> int:
    """The bucket a latency falls in (upper bounds are inclusive)."""
    return bisect.bisect_left(BOUNDS_MS, latency_ms)


def percentile(counts: Sequence[int], quantile: float) -> float | None:
    """The ``quantile`` (0..1) of a distribution given as per-bucket counts; None if empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = quantile * total
    below = 0
    for index, count in enumerate(counts):
        if count and below + count >= rank:
            if index >= len(BOUNDS_MS):
                return float(BOUNDS_MS[-1])
            lower = BOUNDS_MS[index - 1] if index else 0
            upper = BOUNDS_MS[index]
            return lower + (upper - lower) * (rank - below) / count
        below += count
    return float(BOUNDS_MS[-1])
