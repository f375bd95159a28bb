"""A report through a gateway's management API over hours whose rollups expired says so,
as the report read from the store does: `extproc usage report --api` printed a bill of
the kept hours alone without a word, where the local report noted the expired ones."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from grpc import aio as grpc_aio

from extproc.chargeback.retention import first_hour_kept
from extproc.cli import main
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.store.usage import UsageStore
from tests.unit.test_usage_report_finance import TOKEN, management, store_url

# The fixtures of the finance tests: the management API (its store keeps 400 days), the
# CLI's store.
__all__ = ["management", "store_url"]

RETENTION_DAYS = 400  # the management fixture's store, as config/gateway.yaml's


def hour(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:00Z")


def report_from(days_ago: int) -> list[str]:
    """A day's report from ``days_ago`` days back, on whole UTC hours."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start -= timedelta(days=days_ago)
    return ["--from", hour(start), "--to", hour(start + timedelta(days=1)), "--format", "json"]


async def ask(address: str, request: pb.UsageReportRequest) -> pb.UsageReport:
    async with grpc_aio.insecure_channel(address) as channel:
        stub = pb_grpc.UsageReportsStub(channel)
        answer: pb.UsageReport = await stub.GetUsageReport(
            request, metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
        return answer


async def test_the_api_answer_names_the_first_hour_kept_when_the_period_starts_before_it(
    management: tuple[str, UsageStore],
) -> None:
    address, _ = management
    before = first_hour_kept(RETENTION_DAYS)
    start = datetime.now(UTC) - timedelta(days=RETENTION_DAYS + 10)

    answer = await ask(address, pb.UsageReportRequest(day=f"{start:%Y-%m-%d}"))

    after = first_hour_kept(RETENTION_DAYS)
    assert before is not None and after is not None
    assert answer.expired_before in {before.isoformat(), after.isoformat()}
    assert answer.usage_retention_days == RETENTION_DAYS

    # Within the retention: nothing said, as an older gateway's answer says nothing.
    recent = await ask(address, pb.UsageReportRequest())
    assert not recent.expired_before
    assert recent.usage_retention_days == 0


async def test_the_cli_prints_the_same_note_through_the_api_as_from_the_store(
    management: tuple[str, UsageStore],
    store_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, _ = management
    # Not --token: a token on the command line is warned about on stderr.
    monkeypatch.setenv("AIGW_ADMIN_TOKEN", TOKEN)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        DEFAULT_CONFIG.read_text().replace(
            "store:\n", f"store:\n  usage_retention_days: {RETENTION_DAYS}\n", 1
        )
    )
    period = report_from(RETENTION_DAYS + 10)
    kept_from = first_hour_kept(RETENTION_DAYS)

    code = await asyncio.to_thread(
        main, ["usage", "report", "--api", "--address", address, *period]
    )
    through_api = capsys.readouterr()
    # Short of the expired hours, either way: exit 1.
    assert code == 1, through_api.err
    assert await asyncio.to_thread(main, ["usage", "report", "--config", str(config), *period]) == 1
    from_store = capsys.readouterr()

    assert kept_from is not None
    note = (
        f"note: the rollups of hours before {hour(kept_from)} have expired (kept for"
        f" store.usage_retention_days ({RETENTION_DAYS}) days): this report does not count them"
    )
    if first_hour_kept(RETENTION_DAYS) == kept_from:  # the clock did not pass an hour meanwhile
        assert through_api.err.strip() == note
        assert from_store.err.strip() == note
    # stdout stays the report a billing job imports: the note is on stderr alone.
    assert orjson.loads(through_api.out)["totals"]["requests"] == 0


async def test_a_report_within_the_retention_through_the_api_has_no_note(
    management: tuple[str, UsageStore],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, _ = management
    monkeypatch.setenv("AIGW_ADMIN_TOKEN", TOKEN)
    code = await asyncio.to_thread(
        main, ["usage", "report", "--api", "--address", address, *report_from(RETENTION_DAYS - 2)]
    )

    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
