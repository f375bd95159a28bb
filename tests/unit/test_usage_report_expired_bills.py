"""A report over hours whose rollups expired is short, and says so where a billing job looks:
the JSON names the first hour kept, the command exits 1, and an export does not replace the
file a month was exported to while its hours were kept. Before, the report was all zeros
with exit 0 (a note on stderr alone), and exporting an old month again overwrote the bill
kept from it with $0.00."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from extproc import usage_report
from extproc.chargeback.retention import first_hour_kept
from extproc.cli import main
from extproc.store.usage import UsageStore
from tests.unit.test_usage_report_finance import TOKEN, management, store_url, write_entries

# The fixtures of the finance tests: the management API (its store keeps 400 days), the
# CLI's store (config/gateway.yaml's, which keeps 400).
__all__ = ["management", "store_url"]

NOW = datetime(2026, 11, 14, 15, 42, tzinfo=UTC)
# At NOW, 400 days of retention keep the hours from 2025-10-10T16:00Z on: September is gone.
EXPIRED_MONTH = "2025-09"
KEPT_FROM = "2025-10-10T16:00:00+00:00"
KEPT_BILL = "group_id,requests,cost_usd\r\nfinance,1200,431.25\r\n"


@pytest.fixture
def cli_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI tells expired hours at ``NOW``."""
    at_now = functools.partial(usage_report._note_expired_hours, now=NOW)
    monkeypatch.setattr(usage_report, "_note_expired_hours", at_now)


def test_exporting_an_expired_month_again_keeps_the_bill_exported_before(
    store_url: str, cli_clock: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(write_entries(store_url, []))
    bill = tmp_path / "2025-09-by-group.csv"
    bill.write_bytes(KEPT_BILL.encode())

    code = main(["usage", "export", "--month", EXPIRED_MONTH, "--by", "group",
                 "--output", str(bill)])  # fmt: skip

    err = capsys.readouterr().err
    assert code == 1, err
    assert bill.read_bytes() == KEPT_BILL.encode()
    assert (tmp_path / "2025-09-by-group.csv.partial").exists()
    assert "have expired" in err
    assert f"{bill} was not written" in err

    # Asked for as it is, it is written, and still not taken for a whole bill.
    code = main(["usage", "export", "--month", EXPIRED_MONTH, "--by", "group",
                 "--output", str(bill), "--allow-partial"])  # fmt: skip
    capsys.readouterr()
    assert code == 1
    assert bill.read_text().startswith("group_id,requests,")


def test_the_json_of_an_expired_period_names_the_first_hour_kept(
    store_url: str, cli_clock: None, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(write_entries(store_url, []))

    code = main(["usage", "report", "--month", EXPIRED_MONTH, "--by", "group", "--format", "json"])

    captured = capsys.readouterr()
    assert code == 1, captured.err
    document = orjson.loads(captured.out)
    assert document["totals"]["cost_usd"] == "0.00"
    assert document["partial"] is True
    assert document["unreadable_hours"] == []
    assert document["expired_before"] == KEPT_FROM
    assert document["usage_retention_days"] == 400


def test_the_json_of_a_kept_period_says_nothing_expired(
    store_url: str, cli_clock: None, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(write_entries(store_url, []))

    code = main(["usage", "report", "--month", "2026-10", "--format", "json"])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = orjson.loads(captured.out)
    assert document["partial"] is False
    assert document["expired_before"] is None
    assert document["usage_retention_days"] is None


async def test_an_expired_period_asked_of_the_management_api_is_short_too(
    management: tuple[str, UsageStore],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, _ = management
    monkeypatch.setenv("AIGW_ADMIN_TOKEN", TOKEN)
    day = datetime.now(UTC) - timedelta(days=410)  # the API's store keeps 400

    code = await asyncio.to_thread(
        main,
        ["usage", "report", "--api", "--address", address, "--day", f"{day:%Y-%m-%d}",
         "--format", "json"],
    )  # fmt: skip

    captured = capsys.readouterr()
    assert code == 1, captured.err
    document = orjson.loads(captured.out)
    assert document["partial"] is True
    kept_from = datetime.fromisoformat(document["expired_before"])
    assert kept_from > day
    assert abs(kept_from - (first_hour_kept(400) or kept_from)) <= timedelta(hours=1)
    assert document["usage_retention_days"] == 400
