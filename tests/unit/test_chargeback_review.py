"""Usage reports as a billing team uses them: periods at the edges of the calendar and at
DST changes, reports of any size, exports a pickup job can trust, and refusals that say
what is wrong instead of crashing."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import grpc
import orjson
import pytest

from extproc.chargeback.period import PeriodError, resolve_period
from extproc.chargeback.pricing import usd_text
from extproc.cli import main
from extproc.management.usage import rows_from_report
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey, free_port
from extproc.store.usage import UsageEntry, UsageStore
from tests.unit.test_management_usage import AUTH, usage_api
from tests.unit.test_spool_durability import DiskLog

__all__ = ["usage_api"]  # the management API fixture, shared with its own tests

UsageApi = tuple[pb_grpc.UsageReportsStub, UsageStore]
NOW = datetime(2026, 11, 14, 15, 42, tzinfo=UTC)
FEBRUARY = datetime(2026, 2, 10, 9, 30, tzinfo=UTC).timestamp()


# -- periods ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arguments",
    [
        {"day": "9999-12-31"},
        {"month": "9999-12"},
        {"start": "0001-01-01T00:00:00+01:00", "end": "0001-01-02T00:00:00Z"},
        {"end": "0001-01-01T00:00:00Z"},
        {"start": "9999-12-31T20:00:00-05:00", "end": "9999-12-31T22:00:00Z"},
    ],
)
def test_a_period_past_the_calendar_is_refused_with_a_reason(arguments: dict[str, str]) -> None:
    with pytest.raises(PeriodError, match="years 1 to 9999"):
        resolve_period(**arguments, now=NOW)  # type: ignore[arg-type]


def test_a_period_of_centuries_is_refused_before_any_hour_is_read() -> None:
    with pytest.raises(PeriodError, match="at most 3660 days"):
        resolve_period(start="0001-01-01T00:00:00Z", end="9999-12-31T00:00:00Z", now=NOW)
    with pytest.raises(PeriodError, match="at most 3660 days"):
        resolve_period(start="1990-01-01T00:00:00Z", now=NOW)  # --from only: up to now
    decade = resolve_period(start="2016-11-14T00:00:00Z", end="2026-11-14T00:00:00Z", now=NOW)
    assert decade.hours == 3652 * 24  # 2020 and 2024 are leap years


def test_a_local_time_the_clocks_pass_twice_needs_its_offset() -> None:
    # Berlin, 25 Oct 2026: 02:00-03:00 happens twice (CEST, then CET).
    with pytest.raises(PeriodError, match=r"happens twice.*02:00:00\+02:00.*02:00:00\+01:00"):
        resolve_period(
            start="2026-10-25T02:00", end="2026-10-26T00:00", zone_name="Europe/Berlin", now=NOW
        )
    second = resolve_period(
        start="2026-10-25T02:00+01:00", end="2026-10-26T00:00", zone_name="Europe/Berlin", now=NOW
    )
    assert second.start == datetime(2026, 10, 25, 1, tzinfo=UTC) and second.hours == 22


def test_a_local_time_the_clocks_skip_is_refused() -> None:
    # Berlin, 29 Mar 2026: 02:00-03:00 does not happen.
    with pytest.raises(PeriodError, match="does not exist in Europe/Berlin"):
        resolve_period(
            start="2026-03-29T02:00", end="2026-03-30T00:00", zone_name="Europe/Berlin", now=NOW
        )


def test_calendar_days_at_dst_changes_have_23_and_25_hours() -> None:
    spring = resolve_period(day="2026-03-29", zone_name="Europe/Berlin", now=NOW)
    autumn = resolve_period(day="2026-10-25", zone_name="Europe/Berlin", now=NOW)
    assert (spring.start, spring.hours) == (datetime(2026, 3, 28, 23, tzinfo=UTC), 23)
    assert (autumn.start, autumn.hours) == (datetime(2026, 10, 24, 22, tzinfo=UTC), 25)
    # Local times on either side of the change, unambiguous: taken as given.
    local = resolve_period(
        start="2026-10-25T00:00", end="2026-10-25T04:00", zone_name="Europe/Berlin", now=NOW
    )
    assert local.hours == 5


async def test_the_api_refuses_a_date_past_the_calendar_as_invalid(usage_api: UsageApi) -> None:
    stub, _ = usage_api
    for request in (
        pb.UsageReportRequest(day="9999-12-31"),
        pb.UsageReportRequest(start="0001-01-01T00:00:00Z", end="9999-12-31T00:00:00Z"),
        pb.UsageReportRequest(start="2026-10-25T02:00", end="2026-10-26T00:00",
                              time_zone="Europe/Berlin"),
    ):  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetUsageReport(request, metadata=AUTH)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()


# -- exact money at any size ----------------------------------------------------------------


def test_cost_text_is_exact_past_28_digits() -> None:
    huge = 10**40 + 1
    assert usd_text(huge) == "10000000000000000000000000000.000000000001"
    answer = pb.UsageReport(rows=[pb.UsageRow(cost_usd=usd_text(huge))])
    assert rows_from_report(answer)[0].cost_picousd == huge


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def store_url(valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The CLI reads the store of config/gateway.yaml, pointed at the test Valkey."""
    monkeypatch.setenv("REDIS_URL", valkey.url)
    yield valkey.url


def record(url: str, entries: list[UsageEntry]) -> None:
    """What the gateway would have rolled up (the CLI runs its own event loop, so this too)."""

    async def write() -> None:
        client = connect(url, 2.0)
        try:
            await client.flushdb()
            store = UsageStore(client, "aigw:", 30)
            for entry in entries:
                await store.record(entry)
        finally:
            await client.aclose()

    asyncio.run(write())


def usage(group: str, cost: int) -> UsageEntry:
    dims = {"route": "openai-chat", "model": "gpt-4o", "provider": "mock", "group_id": group}
    return UsageEntry(FEBRUARY, dims, 100, 20, cost_picousd=cost, latency_ms=120.0)


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_an_export_file_is_readable_like_any_file_and_on_disk_when_it_appears(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record(store_url, [usage("sales", 7)])
    target = tmp_path / "billing" / "2026-02.csv"
    previous = os.umask(0o022)
    try:
        disk = DiskLog(monkeypatch)
        assert main(["usage", "export", "--month", "2026-02", "--by", "group",
                     "--output", str(target)]) == 0  # fmt: skip
    finally:
        os.umask(previous)
    # The billing job runs as another user: the file has the umask's mode, not 0600.
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert next(csv.DictReader(target.open()))["cost_usd"] == "0.000000000007"
    rename = ("rename", os.path.realpath(target))
    before = disk.events[: disk.events.index(rename)]
    assert any(kind == "fsync" and Path(path).name.startswith(".2026-02.csv.")
               for kind, path in before)  # fmt: skip
    assert ("fsync", os.path.realpath(target.parent)) in disk.after(rename)


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_an_export_over_an_existing_file_keeps_its_mode(store_url: str, tmp_path: Path) -> None:
    record(store_url, [usage("sales", 7)])
    target = tmp_path / "2026-02.csv"
    target.write_text("last run\n")
    target.chmod(0o640)
    assert main(["usage", "export", "--month", "2026-02", "--output", str(target)]) == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert target.read_text().startswith("model,requests")


def test_an_export_that_cannot_be_written_is_one_line_and_leaves_nothing_behind(
    store_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record(store_url, [usage("sales", 7)])
    (tmp_path / "billing").write_text("a file where the directory should be\n")
    target = tmp_path / "billing" / "2026-02.csv"
    assert main(["usage", "export", "--month", "2026-02", "--output", str(target)]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write {target}" in err and "Traceback" not in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["billing"]


def test_a_store_that_does_not_answer_is_one_line_without_its_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REDIS_URL", f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0")
    code = main(["usage", "report", "--day", "2026-02-10"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and "s3cret-pw" not in err
    assert "error: the store did not answer" in err


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_a_csv_export_keeps_group_names_with_commas_quotes_and_newlines(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = 'Sales, "EMEA"\nWest'
    record(store_url, [usage(odd, 3), usage(odd, 4), usage("=1+2", 5), usage("", 1)])
    assert main(["usage", "export", "--month", "2026-02", "--by", "group"]) == 0
    rows = {row["group_id"]: row for row in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows[odd]["requests"] == "2" and rows[odd]["cost_usd"] == "0.000000000007"
    # A formula to a spreadsheet goes out after a ' (text follows), JSON keeps it exactly;
    # requests with no group are the "(none)" row, not a blank cell.
    assert set(rows) == {odd, "'=1+2", "(none)"}
    assert main(["usage", "report", "--month", "2026-02", "--by", "group", "--format", "json"]) == 0
    document = orjson.loads(capsys.readouterr().out)
    costs = [Decimal(row["cost_usd"]) for row in document["rows"]]
    assert sum(costs) == Decimal(document["totals"]["cost_usd"]) == Decimal("0.000000000013")
    assert document["totals"]["requests"] == sum(row["requests"] for row in document["rows"]) == 4


@pytest.mark.usefixtures("rollups_kept_at_fixed_dates")
def test_a_period_without_usage_has_no_rows_and_zero_totals(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    record(store_url, [usage("sales", 7)])  # in February only
    assert main(["usage", "report", "--month", "2026-03", "--format", "json"]) == 0
    document = orjson.loads(capsys.readouterr().out)
    assert document["rows"] == []
    assert (document["totals"]["requests"], document["totals"]["cost_usd"]) == (0, "0.00")
    assert main(["usage", "export", "--month", "2026-03", "--by", "group"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "group_id,requests,prompt_tokens,completion_tokens,cached_tokens,total_tokens,"
        "unpriced_requests,cost_usd,latency_p50_ms,latency_p95_ms,"
        "cache_write_tokens,cache_write_1h_tokens,"
        "prompt_audio_tokens,cached_audio_tokens,completion_audio_tokens,"
        "completion_image_tokens,prompt_image_tokens,image_generation_input_tokens,"
        "image_generation_input_image_tokens,image_generation_output_tokens,"
        "image_generation_output_image_tokens,search_units"
    ]
