"""Usage reports as finance bills from them, reviewed afresh: a report asked through the
management API says the period and the grouping the gateway used, not what the CLI
would have used; and a report by no dimension is one line of totals either way."""

from __future__ import annotations

import asyncio
import csv
import functools
import io
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from extproc.chargeback import period as period_module
from extproc.cli import main
from extproc.management import usage as management_usage
from extproc.store.usage import UsageEntry, UsageStore
from tests.unit.test_usage_report_finance import TOKEN, management, store_url, write_entries

# The fixtures of the finance tests: the management API, the CLI's store.
__all__ = ["management", "store_url"]

# The gateway's clock: the CLI asking it runs on another host, whose clock (or hour)
# is not the gateway's. 2026-11-14 15:42 UTC makes the gateway's last 24 hours
# 2026-11-13T16:00Z to 2026-11-14T16:00Z.
GATEWAY_NOW = datetime(2026, 11, 14, 15, 42, tzinfo=UTC)
GATEWAY_FROM, GATEWAY_TO = "2026-11-13T16:00:00+00:00", "2026-11-14T16:00:00+00:00"


def usage(started: datetime, group: str, cost_picousd: int) -> UsageEntry:
    dimensions = {"route": "openai-chat", "model": "gpt-4o-mini", "provider": "mock",
                  "api_key_id": "k1", "user_id": "ann", "group_id": group}  # fmt: skip
    return UsageEntry(started.timestamp(), dimensions, 100, 10, cost_picousd=cost_picousd)


@pytest.fixture
def gateway_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The management API resolves periods at ``GATEWAY_NOW``; the CLI at its own now."""
    at_gateway_now = functools.partial(period_module.resolve_period, now=GATEWAY_NOW)
    monkeypatch.setattr(management_usage, "resolve_period", at_gateway_now)


def ask_api(address: str, *args: str) -> list[str]:
    return ["usage", "report", "--api", "--address", address, "--token", TOKEN, *args]


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
async def test_a_report_through_the_api_names_the_period_the_gateway_summed(
    management: tuple[str, UsageStore],
    gateway_clock: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The default period is the last 24 hours of the clock that resolves it: the
    # gateway's. The CLI printed its own clock's 24 hours over the gateway's numbers,
    # so a bill said it covered hours it did not.
    address, store = management
    await store.record(usage(datetime(2026, 11, 14, 9, 5, tzinfo=UTC), "finance", 7_000_000))

    code = await asyncio.to_thread(main, ask_api(address, "--by", "group", "--format", "json"))

    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = orjson.loads(captured.out)
    assert (document["from"], document["to"]) == (GATEWAY_FROM, GATEWAY_TO)
    assert document["totals"]["cost_usd"] == "0.000007"

    code = await asyncio.to_thread(main, ask_api(address, "--by", "group"))

    table = capsys.readouterr().out
    assert code == 0
    assert table.splitlines()[0].startswith(f"usage from {GATEWAY_FROM} to {GATEWAY_TO} ")


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
async def test_a_report_by_no_dimension_through_the_api_is_its_totals(
    management: tuple[str, UsageStore], capsys: pytest.CaptureFixture[str]
) -> None:
    # `--by ""` read from the store is one row of totals. Through the API, the gateway
    # (empty group_by: by model) answered rows by model, which the CLI wrote under a
    # header without the model: the CSV writer raised and the export died in a traceback.
    address, store = management
    await store.record(usage(datetime(2026, 11, 14, 9, 5, tzinfo=UTC), "finance", 3_000_000))
    await store.record(usage(datetime(2026, 11, 14, 10, 5, tzinfo=UTC), "sales", 4_000_000))
    args = ["--by", "", "--day", "2026-11-14", "--format", "csv"]

    code = await asyncio.to_thread(main, ["usage", "export", *ask_api(address, *args)[2:]])

    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert [(row["requests"], row["cost_usd"]) for row in rows] == [("2", "0.000007")]


def test_a_report_reaching_past_the_rollups_kept_says_so(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Hours expire after store.usage_retention_days (400 in config/gateway.yaml). A
    # month from before that reported zero usage and $0.00 with nothing said: a team's
    # bill of nothing, when its rollups were only gone.
    asyncio.run(write_entries(store_url, []))
    long_ago = (datetime.now(UTC) - timedelta(days=500)).strftime("%Y-%m")

    code = main(["usage", "export", "--month", long_ago, "--by", "group"])

    captured = capsys.readouterr()
    assert code == 1  # short of the expired hours
    assert captured.out.splitlines()[1:] == []  # the header alone: no usage is kept
    assert "expired" in captured.err and "store.usage_retention_days (400)" in captured.err


def test_a_report_within_the_rollups_kept_says_nothing_more(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(write_entries(store_url, []))
    recent = (datetime.now(UTC) - timedelta(days=300)).strftime("%Y-%m-%d")

    assert main(["usage", "export", "--day", recent, "--by", "group"]) == 0

    assert capsys.readouterr().err == ""
