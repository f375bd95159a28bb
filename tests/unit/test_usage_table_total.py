"""The report table's total line cannot be taken for a row.

A group (or user, key, model) is named by whoever runs the identity provider or the
client: one literally named ``TOTAL`` printed a row reading ``TOTAL ...`` above the real
total, which read ``TOTAL ...`` too, and a reader could not tell which was the sum. Now a
rule of dashes stands between the rows and the total: the line after it is the total,
whatever the rows are named. CSV and JSON, read by programs, are unchanged.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import orjson

from extproc.chargeback.period import Period
from extproc.chargeback.report import render
from extproc.store.usage import UsageRow

PERIOD = Period(datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
ROWS = [
    UsageRow({"group_id": "TOTAL"}, requests=3, cost_picousd=5),
    UsageRow({"group_id": "sales"}, requests=4, cost_picousd=7),
]


def _is_rule(line: str) -> bool:
    return set(line) == {"-", " "}


def test_a_group_named_total_reads_as_a_row_and_the_total_follows_a_rule() -> None:
    table = render(ROWS, ("group_id",), PERIOD, "table")

    _period, header, named_total, sales, rule, total = table.splitlines()
    assert header.startswith("group_id ")
    assert named_total.startswith("TOTAL ") and named_total.split()[1] == "3"
    assert sales.startswith("sales ") and sales.split()[1] == "4"
    # The rule spans every column, under the header's column starts.
    assert _is_rule(rule) and len(rule) == len(header.rstrip())
    assert total.startswith("TOTAL ") and total.split()[1] == "7"


def test_a_table_grouped_by_nothing_is_its_total_line_alone() -> None:
    table = render(ROWS, (), PERIOD, "table")

    _period, _header, total = table.splitlines()
    assert total.split()[0] == "7"


def test_csv_and_json_have_no_rule_and_no_total_line() -> None:
    exported = render(ROWS, ("group_id",), PERIOD, "csv")
    assert [row["group_id"] for row in csv.DictReader(io.StringIO(exported, newline=""))] == [
        "TOTAL",
        "sales",
    ]
    document = orjson.loads(render(ROWS, ("group_id",), PERIOD, "json"))
    assert [row["group_id"] for row in document["rows"]] == ["TOTAL", "sales"]
    assert document["totals"]["requests"] == 7
