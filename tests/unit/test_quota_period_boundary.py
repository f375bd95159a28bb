"""A request that starts before a calendar period ends and is checked after it (its body
still arriving, a guard still deciding) counts in its token quota's period it started in:
the period its log line's timestamp and its usage rollup's hour name, so that the month's
quota counter and the month's report agree. Its settlement, after the boundary, lands on
that same counter. Rate limits count it when it is checked. Against a real Valkey,
through the processor, with the store's clock moved past the month's end between the
request's headers and its body."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.loader import parse_config
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.quota.windows import WindowKind, window_for
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, response_body, response_headers
from tests.unit.conftest import MemoryLog

CONFIG = (
    Path("config/gateway.yaml").read_text(encoding="utf-8")
    + """
quotas:
  rules:
    - name: engineering-monthly
      subject: group
      token_quota: {limit: 1000000, period: calendar_month}
    - {name: key-per-minute, subject: api_key, requests_per_minute: 100}
"""
)
ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42},
}


async def _request_checked_after_the_month_ended(
    store: QuotaStore,
) -> AsyncIterator[ext.ProcessingRequest]:
    """Key team1 (group engineering) sends its headers in this month; by the time its body
    is read the store's clock says the next month has begun."""
    yield request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"})
    month_end = window_for(WindowKind.CALENDAR_MONTH, store.now()).end
    assert month_end is not None
    # As the clock reads it a few seconds into the next month.
    store._offset += month_end - store.now() + 5
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    yield request_body(orjson.dumps({**body, "max_tokens": 50}))
    yield response_headers(200)
    yield response_body(orjson.dumps(ANSWER))


async def test_a_request_counts_in_the_month_it_started_as_its_report_does(
    quota_store: QuotaStore,
) -> None:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(parse_config(CONFIG, "gateway.yaml", {}), services)
    this_month = window_for(WindowKind.CALENDAR_MONTH, quota_store.now())
    processor = Processor(lambda: runtime, default_stages())
    async for _ in processor.process(_request_checked_after_the_month_ended(quota_store)):
        pass
    await quota_store.flush()

    [line] = services.access_log.lines()
    assert line["http_status_code"] == 200 and line["total_tokens"] == 42
    # The report counts the request in the hour (so the month) its log line names.
    logged = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    assert this_month.key == f"cm:{logged.astimezone(UTC):%Y-%m}@UTC"

    client = quota_store._client  # the store's own counters, read directly
    group = "test:q:{group:engineering}:engineering-monthly:t:"
    assert await client.get(f"{group}{this_month.key}") == b"42"
    next_month = window_for(WindowKind.CALENDAR_MONTH, quota_store.now())
    assert next_month.key != this_month.key
    # Nothing of it in the next month's counter: neither its reservation nor its settlement.
    assert await client.get(f"{group}{next_month.key}") is None
    # A rate limit paces the calls the provider gets: the request counts in the minute it
    # was checked and sent on, whenever it started.
    checked = window_for(WindowKind.MINUTE, quota_store.now()).key
    assert await client.keys("test:q:{api_key:team1}:key-per-minute:r:m:*") == [
        f"test:q:{{api_key:team1}}:key-per-minute:r:{checked}".encode()
    ]


async def test_a_request_refused_by_the_month_it_started_in_retries_in_the_next(
    quota_store: QuotaStore,
) -> None:
    # The group used up this month's quota; the request began before midnight and is
    # checked after it, so this month's quota refuses it, and says to retry at once.
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=quota_store)
    runtime = Runtime(parse_config(CONFIG, "gateway.yaml", {}), services)
    [spent] = runtime.quota_rules.limits_for_subject("group", "engineering", quota_store.now())
    await quota_store.settle_now([(spent, spent.limit)])
    processor = Processor(lambda: runtime, default_stages())
    answers = [
        a async for a in processor.process(_request_checked_after_the_month_ended(quota_store))
    ]

    refusal = answers[-1].immediate_response
    assert refusal.status.code == 429
    headers = {
        each.header.key: each.header.raw_value.decode() for each in refusal.headers.set_headers
    }
    assert headers["retry-after"] == "1"
    assert "x-should-retry" not in headers  # an SDK retries, in the new month
    assert b"engineering-monthly" in refusal.body
