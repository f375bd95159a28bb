"""``extproc usage report``: the hourly rollups summed over a period, as a table, JSON or CSV.

Reads the store the gateway writes: ``store.url`` when set, else the embedded
Valkey of a running gateway on the same data dir, else (nobody serving) the
embedded Valkey started for the time of the report.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from datetime import UTC, datetime, timedelta

import orjson

from extproc.config.model import GatewayConfig
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey, running_endpoint
from extproc.store.usage import UsageRow, UsageStore

# `--by api_key,user,group` reads better than the stored dimension names.
DIMENSION_ALIASES = {"api_key": "api_key_id", "user": "user_id", "group": "group_id"}
COLUMNS = ("requests", "prompt_tokens", "completion_tokens", "total_tokens")


def parse_moment(text: str) -> datetime:
    """ISO 8601 date or date-time; a time without a zone is UTC."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"not an ISO 8601 date or time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def report(config: GatewayConfig, args: argparse.Namespace) -> int:
    end = parse_moment(args.end) if args.end else datetime.now(UTC)
    start = parse_moment(args.start) if args.start else end - timedelta(days=1)
    if start >= end:
        print("--from must be before --to", file=sys.stderr)
        return 2
    by = tuple(
        DIMENSION_ALIASES.get(name.strip(), name.strip())
        for name in args.by.split(",")
        if name.strip()
    )
    embedded: EmbeddedValkey | None = None
    url = config.store.url or running_endpoint(config.store.data_dir)
    if url is None:
        embedded = EmbeddedValkey(config.store.data_dir)
        url = embedded.start()
    client = connect(url, config.store.timeout_ms / 1000.0)
    try:
        store = UsageStore(client, config.store.key_prefix, config.store.usage_retention_days)
        try:
            rows = await store.query(start, end, by)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    finally:
        await client.aclose()
        if embedded is not None:
            embedded.stop()
    sys.stdout.write(render(rows, by, start, end, args.format))
    return 0


def render(
    rows: list[UsageRow], by: tuple[str, ...], start: datetime, end: datetime, fmt: str
) -> str:
    records = [
        {**row.dimensions, **{column: getattr(row, column) for column in COLUMNS}} for row in rows
    ]
    if fmt == "json":
        document = {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "group_by": list(by),
            "rows": records,
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    headers = [*by, *COLUMNS]
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=headers, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buffer.getvalue()
    cells = [[str(record[h]) for h in headers] for record in records]
    totals = ["TOTAL", *([""] * (len(by) - 1))] if by else []
    totals += [str(sum(int(record[c]) for record in records)) for c in COLUMNS]
    widths = [
        max(len(h), *(len(row[i]) for row in [*cells, totals])) for i, h in enumerate(headers)
    ]
    lines = [f"usage from {start.isoformat()} to {end.isoformat()} (hourly rollups, UTC)"]
    for row in [headers, *cells, totals]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"
