"""The ``x-ratelimit-*`` headers of a request whose window ended while it was checked: a
token quota's period it started in (its body or guards straddled midnight), or a rate
limit's minute that ended during the store's round trip. Such a request counts in the
window that ended; the client's next request counts in the one that holds the moment it
was admitted, and the headers describe that one: when it resets, never ``0s`` (which
OpenAI's SDKs and pacing clients read as "reset now", again and again), and what it has
left, nothing of it used by this request. Against a real Valkey, through the processor."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.loader import parse_config
from extproc.headers import METADATA_NAMESPACE, RATE_LIMIT_HEADERS, metadata_key
from extproc.processor import Processor
from extproc.quota.rules import Limit
from extproc.quota.store import Denial, PromptCost, QuotaStore, Reservation
from extproc.quota.windows import WindowKind, window_for
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog

DEFAULT_CONFIG = Path("config/gateway.yaml").read_text(encoding="utf-8")
MONTHLY = """
quotas:
  rules:
    - name: engineering-monthly
      subject: group
      token_quota: {limit: 1000000, period: calendar_month, time_zone: Asia/Kolkata}
"""
PER_MINUTE = """
quotas:
  rules:
    - {name: key-minute, subject: api_key, requests_per_minute: 100, tokens_per_minute: 5000}
    - {name: group-day, subject: group, tokens_per_day: 900000}
"""
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}


def _processor(store: QuotaStore, quotas: str) -> Processor:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=store)
    runtime = Runtime(parse_config(DEFAULT_CONFIG + quotas, "gateway.yaml", {}), services)
    return Processor(lambda: runtime, default_stages())


def _published(answer: ext.ProcessingResponse) -> dict[str, str]:
    """The rate-limit headers Envoy adds to the answer, from the body answer's metadata."""
    fields = answer.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields
    return {
        name: fields[metadata_key(name)].string_value
        for name in RATE_LIMIT_HEADERS
        if metadata_key(name) in fields
    }


def _seconds(duration: str) -> int:
    """An OpenAI reset (``1h2m3s``) in seconds."""
    total, number = 0, ""
    for char in duration:
        if char.isdigit():
            number += char
            continue
        total += int(number) * {"h": 3600, "m": 60, "s": 1}[char]
        number = ""
    return total


async def _month_crossing(store: QuotaStore) -> AsyncIterator[ext.ProcessingRequest]:
    """Key team1 (group engineering) sends its headers in this month in Kolkata; its body
    is checked five seconds into the next."""
    yield request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"})
    end = window_for(WindowKind.CALENDAR_MONTH, store.now(), "Asia/Kolkata").end
    assert end is not None
    store._offset += end - store.now() + 5
    yield request_body(orjson.dumps(BODY))


async def test_a_quota_period_that_ended_while_the_request_was_checked_reports_the_next(
    quota_store: QuotaStore,
) -> None:
    started = window_for(WindowKind.CALENDAR_MONTH, quota_store.now(), "Asia/Kolkata")
    processor = _processor(quota_store, MONTHLY)
    replies = [reply async for reply in processor.process(_month_crossing(quota_store))]
    headers = _published(replies[-1])
    now = quota_store.now()
    following = window_for(WindowKind.CALENDAR_MONTH, now, "Asia/Kolkata")
    assert following.key != started.key and following.end is not None
    # It counted in the month it started in (docs/quotas.md), which has reset: the client
    # is told when the month it now spends in resets, four weeks or so away, not `0s`.
    assert abs(_seconds(headers["x-ratelimit-reset-tokens"]) - (following.end - now)) <= 2
    # ...and what that month has left: nothing of it is this request's.
    assert headers["x-ratelimit-limit-tokens"] == "1000000"
    assert headers["x-ratelimit-remaining-tokens"] == "1000000"


class _SlowRoundTrip(QuotaStore):
    """A store whose reservations land, as its clock reads it, 0.3 s after the window of
    the first limit asked for ended: a round trip that crossed a minute's end."""

    async def reserve(
        self,
        limits: list[Limit],
        cost: int,
        usd_micros: int = 0,
        room: int = 0,
        prompt: PromptCost | None = None,
    ) -> Reservation | Denial:
        result = await super().reserve(limits, cost, usd_micros, room, prompt)
        end = min(limit.window.end for limit in limits if limit.window.end is not None)
        self._offset += end - self.now() + 0.3
        return result


async def test_a_minute_that_ended_during_the_round_trip_reports_the_next_minute(
    quota_store: QuotaStore,
) -> None:
    store = _SlowRoundTrip(quota_store._client, "test:")
    await store.start()
    try:
        replies = await run_stream(
            _processor(store, PER_MINUTE),
            [
                request_headers(
                    "/v1/chat/completions", headers={"authorization": "Bearer team1-key"}
                ),
                request_body(orjson.dumps(BODY)),
            ],
        )
        headers = _published(replies[-1])
    finally:
        await store.close()
    # The minute it counted in has ended; the next one resets in a minute, nothing of it
    # used by this request. Before: `0s` for both, and the minute's remaining.
    assert 55 <= _seconds(headers["x-ratelimit-reset-requests"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == "100"
    assert headers["x-ratelimit-remaining-requests"] == "100"
    # Of the token limits, the group's day is now the tightest: the key's new minute has
    # all its 5,000 tokens, the day 900,000 less this request's estimate.
    tokens: dict[str, Any] = {k: v for k, v in headers.items() if k.endswith("-tokens")}
    assert tokens["x-ratelimit-limit-tokens"] == "5000"
    assert tokens["x-ratelimit-remaining-tokens"] == "5000"
    assert 55 <= _seconds(tokens["x-ratelimit-reset-tokens"]) <= 60
