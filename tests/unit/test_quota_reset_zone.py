"""The reset time a token budget's 429 writes is in the budget's own zone.

A Berlin month's budget said "it resets at 2026-12-31T23:00:00+00:00": the right instant,
written in UTC, so an operator (or a user reading the message) had to work out that this
is midnight on the 1st in Berlin, the moment the docs and `extproc quota get` name. Now
the message writes the window's end in the zone the window is computed in, with its
offset (``2027-01-01T00:00:00+01:00``); ``retry-after`` still counts the seconds to it.
Rate limits, whose windows are UTC's, keep ``+00:00``.

Against a real Valkey, through the processor, with the counters written directly.
"""

from __future__ import annotations

import re
from datetime import datetime

import orjson
import pytest

from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.test_quota_review import runtime_with
from tests.unit.test_quota_spent_wording import APIS, AUTH, _fill, _refusal

BUDGET = 100_000
BERLIN_MONTH = f"""
quotas:
  rules:
    - name: key-month
      subject: api_key
      token_quota: {{limit: {BUDGET}, period: calendar_month, time_zone: Europe/Berlin}}
"""
MINUTE = """
quotas:
  rules:
    - {name: key-rpm, subject: api_key, requests_per_minute: 1}
"""
_RESETS = re.compile(r"it resets at (\S+)$")


def _reset_named(message: str) -> datetime:
    found = _RESETS.search(message)
    assert found is not None, message
    return datetime.fromisoformat(found.group(1))


@pytest.mark.parametrize("api", list(APIS))
async def test_a_berlin_month_resets_at_midnight_berlin_time(
    quota_store: QuotaStore, api: str
) -> None:
    await _fill(quota_store, BERLIN_MONTH, BUDGET + 5, 0)
    now = quota_store.now()

    message, headers = await _refusal(quota_store, BERLIN_MONTH, api)

    reset = _reset_named(message)
    # Midnight on the 1st, as Berlin's clocks show it, with Berlin's offset (before:
    # 23:00 or 22:00 the day before, +00:00).
    assert (reset.day, reset.hour, reset.minute, reset.second) == (1, 0, 0, 0), message
    offset = reset.utcoffset()
    assert offset is not None and offset.total_seconds() in (3600, 7200), message
    # The same instant retry-after counts down to.
    assert abs(reset.timestamp() - now - int(headers["retry-after"])) <= 2


async def test_a_rate_limit_still_names_utc(quota_store: QuotaStore) -> None:
    path, body = APIS["openai"]
    runtime = runtime_with(quota_store, MINUTE)
    processor = Processor(lambda: runtime, default_stages())
    stream = [request_headers(path, headers=AUTH), request_body(orjson.dumps(body))]
    await run_stream(processor, stream)

    answers = await run_stream(processor, stream)

    refused = answers[-1].immediate_response
    assert refused.status.code == 429, refused
    reset = _reset_named(orjson.loads(refused.body)["error"]["message"])
    offset = reset.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert reset.second == 0
