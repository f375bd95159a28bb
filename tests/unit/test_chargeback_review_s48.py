"""Usage exports reviewed once more, as the finance team opens them and as a stray key
in the store would have them read: no formula in a spreadsheet that splits lines at
``;`` or at tabs, and no count the store could not have written taken as usage."""

from __future__ import annotations

import asyncio
import csv
import io

import orjson
import pytest

from extproc.cli import main
from extproc.config import GatewayConfig
from extproc.store.usage_writer import UsageWriter
from tests.unit.test_chargeback_review_s42 import ask_chat_of_anthropic, writer
from tests.unit.test_usage_report_finance import store_url

__all__ = ["store_url", "writer"]

FORMULA_STARTS = tuple("=+-@\t\r")


def cells_read_at(text: str, separator: str) -> list[str]:
    """Every cell of a CSV as a spreadsheet reads it that splits its lines at ``separator``
    (Excel opening a .csv in a locale whose list separator is ";", an import dialog with
    "Tab" ticked), quotes honoured as every spreadsheet honours them."""
    return [cell for row in csv.reader(io.StringIO(text, newline=""), delimiter=separator)
            for cell in row]  # fmt: skip


@pytest.mark.parametrize(
    "model",
    [
        # The DDE payload of OWASP's cheat sheet, needing no quote and no comma (either
        # had the whole value quoted); the last ";" ends the cell before the row's counts.
        "claude-x;=cmd|' /C calc'!A0;",
        "claude-x;@SUM(1+1);",
        "claude-x\t=1+1\t",
        "claude-x;-2+3",
    ],
)
async def test_a_formula_after_a_separator_a_spreadsheet_splits_at_does_not_run(
    config: GatewayConfig,
    writer: UsageWriter,
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    model: str,
) -> None:
    # A key holder names its model on a route whose provider takes any name. A "'" in
    # front of a value that starts like a formula does not cover a formula that starts
    # after a ";": the spreadsheets of most of continental Europe open a .csv split at
    # ";", and the cell after it ran.
    await ask_chat_of_anthropic(config, writer, model)

    code = await asyncio.to_thread(main, ["usage", "export", "--by", "model,group"])

    exported = capsys.readouterr().out
    assert code == 0
    for separator in (";", "\t"):
        assert not [
            cell for cell in cells_read_at(exported, separator) if cell.startswith(FORMULA_STARTS)
        ]
    # A CSV reader gets the value back as it was, and JSON keeps it as the log line has it.
    [row] = list(csv.DictReader(io.StringIO(exported, newline="")))
    assert (row["model"], row["group_id"], row["requests"]) == (model, "engineering", "1")
    code = await asyncio.to_thread(main, ["usage", "export", "--by", "model", "--format", "json"])
    assert orjson.loads(capsys.readouterr().out)["rows"][0]["model"] == model
