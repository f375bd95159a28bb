"""The usage report over the management API: the same rows as the CLI, behind the admin token."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
from grpc import aio as grpc_aio

from extproc.chargeback.period import Period
from extproc.chargeback.report import render
from extproc.config import parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.audit import AuditLog
from extproc.management.quotas import QuotaAdmin
from extproc.management.service import QuotaManagementService, start_server
from extproc.management.usage import UsageReportService, rows_from_report
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey, free_port
from extproc.store.usage import UsageEntry, UsageStore
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics

TOKEN = "unit-usage-admin-token"
PREFIX = "u:"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
T0 = datetime(2026, 2, 10, 9, 30, tzinfo=UTC).timestamp()


def entry(group: str, model: str, cost: int, latency: float) -> UsageEntry:
    dims = {"route": "openai-chat", "model": model, "provider": "mock", "group_id": group}
    return UsageEntry(T0, dims, 100, 20, cached_tokens=10, cost_picousd=cost, latency_ms=latency)


@pytest.fixture
async def usage_api(
    valkey: EmbeddedValkey,
) -> AsyncIterator[tuple[pb_grpc.UsageReportsStub, UsageStore]]:
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    config = parse_config(DEFAULT_CONFIG.read_text(), "gateway.yaml", {"AIGW_ADMIN_TOKEN": TOKEN})
    runtime = Runtime(config, Services(GatewayMetrics(), AccessLog(stdout=False)))
    store = UsageStore(client, PREFIX, 30)
    quota_store = QuotaStore(client, PREFIX)
    audit = AuditLog(io.BytesIO())
    quotas = QuotaManagementService(lambda: runtime, QuotaAdmin(client, PREFIX, quota_store), audit)
    usage = UsageReportService(lambda: runtime, store, audit)
    address = f"127.0.0.1:{free_port()}"
    server = await start_server(address, quotas, None, usage)
    channel = grpc_aio.insecure_channel(address)
    try:
        yield pb_grpc.UsageReportsStub(channel), store
    finally:
        await channel.close()
        await server.stop(None)
        await client.aclose()


async def test_a_month_by_group_and_model_with_costs_and_latency(
    usage_api: tuple[pb_grpc.UsageReportsStub, UsageStore],
) -> None:
    stub, store = usage_api
    await store.record(entry("marketing", "gpt-4o", 3_000_000, 120))
    await store.record(entry("marketing", "gpt-4o", 1_000_000, 180))
    await store.record(entry("engineering", "gpt-4o-mini", 7, 40))
    request = pb.UsageReportRequest(month="2026-02", group_by=["group", "model"])

    report = await stub.GetUsageReport(request, metadata=AUTH)

    assert (report.start, report.end) == ("2026-02-01T00:00:00+00:00", "2026-03-01T00:00:00+00:00")
    assert list(report.group_by) == ["group_id", "model"]
    rows = {(r.dimensions["group_id"], r.dimensions["model"]): r for r in report.rows}
    marketing = rows[("marketing", "gpt-4o")]
    assert (marketing.requests, marketing.cached_tokens, marketing.cost_usd) == (2, 20, "0.000004")
    assert 100 <= marketing.latency_p50_ms <= 200 and marketing.HasField("latency_p95_ms")
    assert report.totals.cost_picousd == 4_000_007
    # The CLI prints the API's answer exactly as it prints the store's rows.
    period = Period(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    by = ("group_id", "model")
    direct = await store.query(period.start, period.end, by)
    assert render(rows_from_report(report), by, period, "csv") == render(direct, by, period, "csv")


async def test_a_report_of_millions_of_dollars_is_exact(
    usage_api: tuple[pb_grpc.UsageReportsStub, UsageStore],
) -> None:
    stub, store = usage_api
    # Two groups of $5M each: the total passes int64 picodollars.
    five_million = 5_000_000 * 10**12
    await store.record(entry("marketing", "gpt-4o", five_million, 120))
    await store.record(entry("sales", "gpt-4o", five_million + 1, 120))
    request = pb.UsageReportRequest(month="2026-02", group_by=["group"])

    report = await stub.GetUsageReport(request, metadata=AUTH)

    assert report.totals.cost_usd == "10000000.000000000001"
    assert not report.totals.HasField("cost_picousd")
    assert [row.cost_picousd for row in report.rows] == [five_million, five_million + 1]
    period = Period(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    by = ("group_id",)
    direct = await store.query(period.start, period.end, by)
    assert render(rows_from_report(report), by, period, "csv") == render(direct, by, period, "csv")


async def test_usage_needs_the_admin_token_and_whole_hours(
    usage_api: tuple[pb_grpc.UsageReportsStub, UsageStore],
) -> None:
    stub, _ = usage_api
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.GetUsageReport(pb.UsageReportRequest())
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await stub.GetUsageReport(
            pb.UsageReportRequest(start="2026-02-01T10:15:00Z"), metadata=AUTH
        )
    assert invalid.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "whole UTC hour" in (invalid.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.GetUsageReport(pb.UsageReportRequest(group_by=["colour"]), metadata=AUTH)
    assert unknown.value.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_the_api_reports_the_cache_writes_and_tool_requests_the_store_holds(
    usage_api: tuple[pb_grpc.UsageReportsStub, UsageStore],
) -> None:
    stub, store = usage_api
    dims = {"route": "anthropic-messages", "model": "claude-sonnet-4-0", "provider": "mock",
            "group_id": "research"}  # fmt: skip
    for searches in (3, 1):
        await store.record(
            UsageEntry(T0, dims, 100, 20, cache_write_tokens=22, cache_write_1h_tokens=12,
                       server_tool_requests={"web_search": searches, "web_fetch": 2})
        )  # fmt: skip
    request = pb.UsageReportRequest(month="2026-02", group_by=["group"])

    report = await stub.GetUsageReport(request, metadata=AUTH)

    [row] = report.rows
    assert (row.cache_write_tokens, row.cache_write_1h_tokens) == (44, 24)
    assert dict(row.server_tool_requests) == {"web_search": 4, "web_fetch": 4}
    assert dict(report.totals.server_tool_requests) == {"web_search": 4, "web_fetch": 4}
    # `extproc usage report --api` prints what it prints from the store, tools included.
    period = Period(datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))
    direct = await store.query(period.start, period.end, ("group_id",))
    for fmt in ("json", "csv", "table"):
        from_api = render(rows_from_report(report), ("group_id",), period, fmt)
        assert from_api == render(direct, ("group_id",), period, fmt)
