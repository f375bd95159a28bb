"""The CSV export's cells as a spreadsheet reads them: no formula in any of them, and a
request without a user or group shown as such, not as a blank.

A ``'`` in front of a value starting with ``=``, ``+``, ``-`` or ``@`` did not cover one
starting with spaces (``" =1+cmd|..."``: LibreOffice and Excel trim it on import and run
it), nor a full-width ``=`` (U+FF1D) or another look-alike a spreadsheet may normalise.
And a dimension with no value was an empty cell, which a pivot table shows as
"(blank)" together with any other blank (a value of spaces it trimmed); JSON had "".
"""

from __future__ import annotations

import csv
import io
import unicodedata
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.chargeback.period import Period
from extproc.chargeback.report import NO_VALUE, render
from extproc.store.usage import UsageRow

PERIOD = Period(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
FORMULA_STARTS = "=+-@"


def rows_for(*groups: str) -> list[UsageRow]:
    rows = []
    for group in groups:
        row = UsageRow({"group_id": group})
        row.requests = 1
        rows.append(row)
    return rows


def exported(*groups: str) -> list[str]:
    """The group cells of the CSV export, as a CSV reader gets them."""
    text = render(rows_for(*groups), ("group_id",), PERIOD, "csv")
    return [row["group_id"] for row in csv.DictReader(io.StringIO(text, newline=""))]


def runs_as_a_formula(cell: str) -> bool:
    """What a spreadsheet could run: after the blanks and format characters it passes
    over, a formula's first character, or one that normalises (NFKC) to one, or a minus
    sign of another script (U+2212 does not normalise to "-")."""
    rest = cell.lstrip()
    while rest and unicodedata.category(rest[0]) in ("Cf", "Cc", "Zs"):
        rest = rest[1:].lstrip()
    if not rest:
        return False
    first = rest[0]
    normalised = unicodedata.normalize("NFKC", first)[:1]
    return normalised in FORMULA_STARTS or unicodedata.category(first) in ("Sm", "Pd")


@pytest.mark.parametrize(
    "value",
    [
        " =1+cmd|' /C calc'!A0",
        "   +SUM(1)",
        "\u3000=1+1",  # the ideographic space
        "\u200b=1+1",  # a zero-width space
        "\u00a0@SUM(1)",  # a no-break space
        '\uff1dHYPERLINK("http://x")',  # the full-width equals sign
        "\uff0b1+1",
        "\uff0d1+1",
        "\uff20SUM(1)",
        "\u2212" + "1+1",  # the minus sign
        "\ufe62" + "1+1",  # the small plus sign
    ],
)
def test_a_value_a_spreadsheet_trims_or_normalises_into_a_formula_is_marked(value: str) -> None:
    assert exported(value) == ["'" + value]


def test_a_value_of_letters_after_spaces_is_written_as_it_is() -> None:
    assert exported("  engineering", "\u00e9quipe", "R&D") == [
        "  engineering",
        "\u00e9quipe",
        "R&D",
    ]


def test_a_request_without_a_group_is_none_in_csv_and_null_in_json() -> None:
    # The word is the CSV's and the table's, null JSON's; a group that is the word
    # itself is marked, so "(none)" always means none.
    assert exported("", NO_VALUE, "sales") == [NO_VALUE, "'" + NO_VALUE, "sales"]
    document = orjson.loads(render(rows_for("", NO_VALUE), ("group_id",), PERIOD, "json"))
    assert [row["group_id"] for row in document["rows"]] == [None, NO_VALUE]
    table = render(rows_for(""), ("group_id",), PERIOD, "table")
    assert "\n-" in table


@given(st.text(max_size=12))
def test_no_cell_is_a_formula_and_each_gives_its_value_back(value: str) -> None:
    [cell] = exported(value)
    assert not runs_as_a_formula(cell) or cell.startswith("'")
    if value == "":
        assert cell == NO_VALUE
    else:
        # A program drops one leading mark to get the value back.
        assert cell in (value, "'" + value)
