"""Hourly usage rollups: requests, prompt and completion tokens per dimension set.

One hash per UTC hour, ``<prefix>usage:<YYYYMMDDHH>``; each field is the
dimension values joined by tabs, then the measure name. A request counts in the
hour it started, the same timestamp its log line carries, so the rollup and the
logs reconcile exactly. Every hash expires after ``usage_retention_days``.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from extproc.store import scripts

DIMENSIONS = ("route", "model", "provider", "api_key_id", "user_id", "group_id")
MEASURES = ("requests", "prompt_tokens", "completion_tokens")
_SEPARATOR = "\t"
_HOURS_PER_BATCH = 500


@dataclass(frozen=True, slots=True)
class UsageEntry:
    started_at: float
    dimensions: dict[str, str]
    prompt_tokens: int
    completion_tokens: int


@dataclass(slots=True)
class UsageRow:
    dimensions: dict[str, str]
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    hours: set[str] = field(default_factory=set)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


# (hour bucket, field prefix) -> [requests, prompt tokens, completion tokens]
UsageTotals = dict[tuple[str, str], list[int]]


@functools.lru_cache(maxsize=64)
def _bucket_of_hour(hour: int) -> str:
    return hour_bucket(datetime.fromtimestamp(hour * 3600, UTC))


def add_entry(totals: UsageTotals, entry: UsageEntry) -> None:
    # Formatting a date per request showed in profiles; the hour number is enough to key it.
    bucket = _bucket_of_hour(int(entry.started_at // 3600))
    prefix = _SEPARATOR.join(entry.dimensions.get(d, "") for d in DIMENSIONS) + _SEPARATOR
    counts = totals.setdefault((bucket, prefix), [0, 0, 0])
    counts[0] += 1
    counts[1] += entry.prompt_tokens
    counts[2] += entry.completion_tokens


def totals_of(entries: list[UsageEntry]) -> UsageTotals:
    totals: UsageTotals = {}
    for entry in entries:
        add_entry(totals, entry)
    return totals


def merge_totals(into: UsageTotals, more: UsageTotals) -> None:
    for key, counts in more.items():
        target = into.setdefault(key, [0, 0, 0])
        for index, value in enumerate(counts):
            target[index] += value


def hour_bucket(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H")


class UsageStore:
    def __init__(self, client: Any, key_prefix: str, retention_days: int) -> None:
        self._client = client
        self._prefix = key_prefix
        self._ttl = retention_days * 86400
        self._record = scripts.register(client, "usage_record")

    def _key(self, bucket: str) -> str:
        return f"{self._prefix}usage:{bucket}"

    async def record(self, entry: UsageEntry) -> None:
        await self.record_totals(totals_of([entry]), uuid.uuid4().hex)

    async def record_totals(self, totals: UsageTotals, batch_id: str) -> None:
        """Add summed usage to the rollups: one EVALSHA per hour touched (almost always one).

        Not pipelined: redis-py checks a pipeline's scripts with an extra SCRIPT
        EXISTS round trip, while a lone EVALSHA reloads only on NOSCRIPT.
        """
        by_hour: dict[str, list[str | int]] = {}
        for (bucket, prefix), (requests, prompt, completion) in totals.items():
            by_hour.setdefault(bucket, [self._ttl, batch_id]).extend(
                (prefix, requests, prompt, completion)
            )
        for bucket, args in by_hour.items():
            await self._record(keys=[self._key(bucket)], args=args)

    async def ping(self) -> bool:
        return bool(await self._client.ping())

    async def query(
        self, start: datetime, end: datetime, by: tuple[str, ...] = ("route", "model")
    ) -> list[UsageRow]:
        """Sum the hours in ``[start, end)`` grouped by the dimensions in ``by``."""
        unknown = [name for name in by if name not in DIMENSIONS]
        if unknown:
            raise ValueError(
                f"unknown dimension {unknown[0]!r}; choose from {', '.join(DIMENSIONS)}"
            )
        rows: dict[tuple[str, ...], UsageRow] = {}
        buckets = list(_hours(start, end))
        for offset in range(0, len(buckets), _HOURS_PER_BATCH):
            batch = buckets[offset : offset + _HOURS_PER_BATCH]
            async with self._client.pipeline(transaction=False) as pipe:
                for bucket in batch:
                    pipe.hgetall(self._key(bucket))
                results = await pipe.execute()
            for bucket, fields in zip(batch, results, strict=True):
                for raw_field, raw_value in fields.items():
                    _add(rows, by, bucket, raw_field.decode(), int(raw_value))
        return sorted(rows.values(), key=lambda row: tuple(row.dimensions.values()))


def _add(
    rows: dict[tuple[str, ...], UsageRow], by: tuple[str, ...], bucket: str, name: str, value: int
) -> None:
    *values, measure = name.split(_SEPARATOR)
    if measure not in MEASURES or len(values) != len(DIMENSIONS):
        return
    dimensions = dict(zip(DIMENSIONS, values, strict=True))
    group = tuple(dimensions[d] for d in by)
    row = rows.get(group)
    if row is None:
        row = rows[group] = UsageRow(dict(zip(by, group, strict=True)))
    setattr(row, measure, getattr(row, measure) + value)
    row.hours.add(bucket)


def _hours(start: datetime, end: datetime) -> Iterator[str]:
    moment = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    end = end.astimezone(UTC)
    while moment < end:
        yield hour_bucket(moment)
        moment += timedelta(hours=1)
