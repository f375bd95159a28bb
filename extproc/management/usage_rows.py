"""An answer of ``aigw.management.v1.UsageReports`` turned back into rollup rows, so
``extproc usage report --api`` prints exactly what it prints from the store.

Apart from the service (``extproc.management.usage``): the command line reads the
answer without importing the gateway's server side.
"""

from __future__ import annotations

from datetime import datetime

from extproc.chargeback.latency import BUCKETS
from extproc.chargeback.pricing import picousd_of
from extproc.management.v1 import management_pb2 as pb
from extproc.store.usage import (
    IMAGE_GENERATION,
    IMAGE_INPUT,
    SEARCH,
    UnreadableHour,
    UsageRow,
    hour_bucket,
)

# The counts added after the image part of the completion, read by name.
_ADDED = (*IMAGE_INPUT, *IMAGE_GENERATION, *SEARCH)


def unreadable_from_report(report: pb.UsageReport) -> list[UnreadableHour]:
    """The hours an answer says it could not read whole; ValueError for an hour that is
    no RFC 3339 time (the report is then refused whole: it cannot say what it lacks)."""
    found = []
    for hour in report.unreadable_hours:
        try:
            start = datetime.fromisoformat(hour.hour)
        except ValueError:
            start = None
        if start is None or start.tzinfo is None:
            raise ValueError(f"the gateway answered an unreadable hour: {hour.hour!r}")
        found.append(UnreadableHour(hour_bucket(start), hour.key, hour.reason))
    return found


def rows_from_report(report: pb.UsageReport) -> list[UsageRow]:
    """The rollup rows an answer carries, as the store would have given them."""
    rows = []
    for found in report.rows:
        buckets = list(found.latency_buckets)[:BUCKETS]
        # A protobuf map keeps no order: the dimensions in the answer's group_by order,
        # as the store's rows have them (a JSON row lists them in that order).
        named = {
            name: found.dimensions[name] for name in report.group_by if name in found.dimensions
        }
        rows.append(
            UsageRow(
                {**named, **found.dimensions},
                requests=found.requests,
                prompt_tokens=found.prompt_tokens,
                completion_tokens=found.completion_tokens,
                cached_tokens=found.cached_tokens,
                # The decimal text: exact at any size, where cost_picousd stops at int64.
                cost_picousd=picousd_of(found.cost_usd),
                unpriced_requests=found.unpriced_requests,
                latency_buckets=buckets + [0] * (BUCKETS - len(buckets)),
                cache_write_tokens=found.cache_write_tokens,
                cache_write_1h_tokens=found.cache_write_1h_tokens,
                server_tool_requests=dict(found.server_tool_requests),
                prompt_audio_tokens=found.prompt_audio_tokens,
                cached_audio_tokens=found.cached_audio_tokens,
                completion_audio_tokens=found.completion_audio_tokens,
                completion_image_tokens=found.completion_image_tokens,
                **{name: getattr(found, name) for name in _ADDED},
            )
        )
    return rows
