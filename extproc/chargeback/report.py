"""Usage reports: rollup rows as records, and those records as a table, CSV or JSON.

One record per group of the ``--by`` dimensions, with the summed measures, the
exact cost and the latency p50/p95 of the requests in the group. The same
records feed the CLI (``extproc usage report|export``) and the management API,
so both say the same thing.

Money leaves as exact decimal text (``"0.000123"``), never a binary float: a
billing system adding the rows gets the total to the picodollar.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson

from extproc.chargeback.period import Period
from extproc.chargeback.pricing import usd_text
from extproc.store.usage import UsageRow

# `--by api_key,user,group` reads better than the stored dimension names.
DIMENSION_ALIASES = {"api_key": "api_key_id", "user": "user_id", "group": "group_id"}
COUNTS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "unpriced_requests",
)
COLUMNS = (*COUNTS, "cost_usd", "latency_p50_ms", "latency_p95_ms")


def dimensions(by: str) -> tuple[str, ...]:
    """``--by`` as stored dimension names, in the order given, without repeats."""
    names: list[str] = []
    for part in by.split(","):
        name = DIMENSION_ALIASES.get(part.strip(), part.strip())
        if name and name not in names:
            names.append(name)
    return tuple(names)


def _latency(row: UsageRow, quantile: float) -> float | None:
    found = row.latency_ms(quantile)
    return None if found is None else round(found, 1)


def record(row: UsageRow) -> dict[str, Any]:
    """One report row: its dimensions, then the columns of ``COLUMNS``."""
    return {
        **row.dimensions,
        **{name: getattr(row, name) for name in COUNTS},
        "cost_usd": usd_text(row.cost_picousd),
        "latency_p50_ms": _latency(row, 0.50),
        "latency_p95_ms": _latency(row, 0.95),
    }


def totals(rows: list[UsageRow]) -> UsageRow:
    """Every row added up (latency buckets too, so the total has its own percentiles)."""
    total = UsageRow({})
    for row in rows:
        for name in (*COUNTS[:4], "unpriced_requests", "cost_picousd"):
            setattr(total, name, getattr(total, name) + getattr(row, name))
        for index, count in enumerate(row.latency_buckets):
            total.latency_buckets[index] += count
    return total


def render(rows: list[UsageRow], by: tuple[str, ...], period: Period, fmt: str) -> str:
    records = [record(row) for row in rows]
    if fmt == "json":
        total = record(totals(rows))
        document = {
            "from": period.start.isoformat(),
            "to": period.end.isoformat(),
            "group_by": list(by),
            "currency": "USD",
            "rows": records,
            "totals": total,
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    headers = [*by, *COLUMNS]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=headers, lineterminator="\n")
        writer.writeheader()
        writer.writerows(
            {key: "" if value is None else value for key, value in found.items()}
            for found in records
        )
        return buffer.getvalue()
    return _table(records, headers, by, record(totals(rows)), period)


def _table(
    records: list[dict[str, Any]],
    headers: list[str],
    by: tuple[str, ...],
    total: dict[str, Any],
    period: Period,
) -> str:
    def cells(found: dict[str, Any]) -> list[str]:
        return ["-" if found.get(h) is None else str(found.get(h)) for h in headers]

    total_cells = cells({**total, **{name: "" for name in by}})
    if by:
        total_cells[0] = "TOTAL"
    body = [cells(found) for found in records]
    widths = [
        max(len(h), *(len(row[i]) for row in [*body, total_cells])) for i, h in enumerate(headers)
    ]
    lines = [
        f"usage from {period.start.isoformat()} to {period.end.isoformat()}"
        " (hourly rollups, UTC; cost in USD; latency p50/p95 in ms)"
    ]
    for row in [headers, *body, total_cells]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"
