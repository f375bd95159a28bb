"""``aigw.management.v1.UsageReports``: the usage report over the management API.

The same query and the same records as ``extproc usage report`` (the rollups in
the store, summed by ``extproc.chargeback.report``), behind the admin tokens of
the other management services. ``rows_from_report`` (``extproc.management.usage_rows``)
turns an answer back into rollup rows, so the CLI prints exactly the same thing
whichever way it asked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from grpc import aio as grpc_aio

from extproc.chargeback.latency import BOUNDS_MS
from extproc.chargeback.period import Period, PeriodError, resolve_period
from extproc.chargeback.pricing import usd_text
from extproc.chargeback.report import dimensions, totals
from extproc.chargeback.retention import expired_before
from extproc.management.audit import AuditLog
from extproc.management.guesses import FailedAttempts
from extproc.management.quotas import InvalidArgumentError
from extproc.management.service import AdminService
from extproc.management.usage_rows import rows_from_report as rows_from_report
from extproc.management.usage_rows import unreadable_from_report as unreadable_from_report
from extproc.management.v1 import management_pb2 as pb
from extproc.management.v1 import management_pb2_grpc as pb_grpc
from extproc.runtime import Runtime
from extproc.store.usage import (
    IMAGE_GENERATION,
    IMAGE_INPUT,
    SEARCH,
    UnreadableHour,
    UsageRow,
    UsageStore,
)


class UsageReportService(AdminService, pb_grpc.UsageReportsServicer):
    def __init__(
        self,
        runtime: Callable[[], Runtime],
        store: UsageStore,
        audit: AuditLog,
        attempts: FailedAttempts | None = None,
    ) -> None:
        super().__init__(runtime, audit, attempts)
        self._store = store

    async def GetUsageReport(  # noqa: N802 - gRPC method name
        self, request: pb.UsageReportRequest, context: grpc_aio.ServicerContext
    ) -> pb.UsageReport:
        async def work(caller: str) -> pb.UsageReport:
            try:
                by = dimensions(",".join(request.group_by) or "model")
                period = resolve_period(
                    start=request.start or None,
                    end=request.end or None,
                    day=request.day or None,
                    month=request.month or None,
                    last_month=request.last_month,
                    zone_name=request.time_zone or "UTC",
                )
                found = await self._store.read(period.start, period.end, by)
            except (PeriodError, ValueError) as exc:
                raise InvalidArgumentError(str(exc)) from None
            answer = usage_report(found.rows, by, period, found.unreadable)
            # The hours the store no longer keeps read as no usage: the answer says so, as
            # the CLI's report from the store does (the CLI prints the same note from it).
            retention = self._store.retention_days
            kept_from = expired_before(period, retention)
            if kept_from is not None:
                answer.expired_before = kept_from.isoformat()
                answer.usage_retention_days = retention
            return answer

        return await self._call(context, work, "usage:read")


_INT64_MAX = 2**63 - 1


def _row(row: UsageRow) -> pb.UsageRow:
    answer = pb.UsageRow(
        dimensions=row.dimensions,
        requests=row.requests,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        cached_tokens=row.cached_tokens,
        total_tokens=row.total_tokens,
        unpriced_requests=row.unpriced_requests,
        cost_usd=usd_text(row.cost_picousd),
        latency_buckets=row.latency_buckets,
        cache_write_tokens=row.cache_write_tokens,
        cache_write_1h_tokens=row.cache_write_1h_tokens,
        server_tool_requests=row.server_tool_requests,
        prompt_audio_tokens=row.prompt_audio_tokens,
        cached_audio_tokens=row.cached_audio_tokens,
        completion_audio_tokens=row.completion_audio_tokens,
        completion_image_tokens=row.completion_image_tokens,
        **{name: getattr(row, name) for name in (*IMAGE_INPUT, *IMAGE_GENERATION, *SEARCH)},
    )
    if row.cost_picousd <= _INT64_MAX:
        answer.cost_picousd = row.cost_picousd
    p50, p95 = row.latency_ms(0.50), row.latency_ms(0.95)
    if p50 is not None and p95 is not None:
        answer.latency_p50_ms = p50
        answer.latency_p95_ms = p95
    return answer


def usage_report(
    rows: list[UsageRow],
    by: tuple[str, ...],
    period: Period,
    unreadable: Sequence[UnreadableHour] = (),
) -> pb.UsageReport:
    return pb.UsageReport(
        start=period.start.isoformat(),
        end=period.end.isoformat(),
        group_by=by,
        rows=[_row(row) for row in rows],
        totals=_row(totals(rows)),
        latency_bucket_bounds_ms=[float(bound) for bound in BOUNDS_MS],
        unreadable_hours=[
            pb.UnreadableHour(hour=hour.start.isoformat(), key=hour.key, reason=hour.reason)
            for hour in unreadable
        ],
    )
