"""An operator's review of run-time quota management, on a real Valkey over real gRPC.

What an operator types (set, adjust, reset, list) against what the next request
is checked against: absurd numbers are refused as bad input, subject ids with
the characters Redis hash tags care about are listed under their own names,
and a request refused by several limits at once is told about the one that
holds longest (its ``retry-after`` and message come from it).
"""

from __future__ import annotations

import asyncio
import time
from calendar import monthrange
from collections.abc import AsyncIterator
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from grpc import aio as grpc_aio

from extproc.config import GatewayConfig, parse_config
from extproc.devstack import DEFAULT_CONFIG
from extproc.management.v1 import management_pb2 as pb
from extproc.quota.store import Denial, QuotaStore, Reservation
from extproc.quota.windows import WindowKind, window_for
from extproc.runtime import Runtime, Services
from extproc.store.connection import connect
from extproc.store.embedded import EmbeddedValkey
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from tests.unit.test_management import PREFIX, TOKEN, Api, early_in_the_minute, running_api

QUOTAS = """
quotas:
  rules:
    - name: keys-5-rpm
      subject: api_key
      requests_per_minute: 5
    - name: keys-lifetime
      subject: api_key
      match: [once]
      token_quota: {limit: 10, period: lifetime}
    - name: users-hourly
      subject: user
      requests_per_hour: 100
      tokens_per_hour: 100000
"""
# The largest integer a Lua number (a double) holds exactly: the quota scripts
# compute with Lua numbers, so no limit or adjustment may be larger.
LUA_EXACT = 2**53 - 1


def review_config() -> GatewayConfig:
    return parse_config(
        DEFAULT_CONFIG.read_text() + QUOTAS, "gateway.yaml", {"AIGW_ADMIN_TOKEN": TOKEN}
    )


@pytest.fixture
async def api(valkey: EmbeddedValkey) -> AsyncIterator[Api]:
    async with running_api(valkey, review_config()) as running:
        yield running


def set_rpm(subject: str, limit: int) -> pb.SetLimitRequest:
    return pb.SetLimitRequest(
        subject_kind="api_key", subject=subject, rule="keys-5-rpm",
        counter="requests_per_minute", limit=limit,
    )  # fmt: skip


def adjust_rpm(subject: str, delta: int) -> pb.AdjustUsageRequest:
    return pb.AdjustUsageRequest(
        subject_kind="api_key", subject=subject, rule="keys-5-rpm",
        counter="requests_per_minute", delta=delta,
    )  # fmt: skip


async def refused(api: Api, method: str, request: Any) -> grpc_aio.AioRpcError:
    with pytest.raises(grpc_aio.AioRpcError) as error:
        await api.call(method, request)
    return error.value


@pytest.mark.parametrize(
    "limit", [2**63 - 1, LUA_EXACT + 1, 10**18], ids=["int64-max", "past-exact", "1e18"]
)
async def test_a_limit_too_large_to_count_is_refused_and_the_old_one_stays(
    api: Api, limit: int
) -> None:
    """Stored, 2**63-1 came back from the reserve script as -2**63: every answer then
    carried `x-ratelimit-limit-requests: -9223372036854775808`."""
    early_in_the_minute()
    error = await refused(api, "SetLimit", set_rpm("team1", limit))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {LUA_EXACT}" in (error.details() or "")
    assert (await api.get("api_key", "team1"))["requests_per_minute"].limit == 5
    admitted = await api.send()
    assert isinstance(admitted, Reservation)
    assert admitted.effective[0] == 5  # what x-ratelimit-limit-requests shows


async def test_the_largest_allowed_limit_is_counted_exactly(api: Api) -> None:
    early_in_the_minute()
    state = await api.call("SetLimit", set_rpm("team1", LUA_EXACT))

    assert state.limits[0].limit == LUA_EXACT
    admitted = await api.send()
    assert isinstance(admitted, Reservation) and admitted.effective[0] == LUA_EXACT


@pytest.mark.parametrize("delta", [2**63 - 1, -(2**63), LUA_EXACT + 1])
async def test_an_adjustment_too_large_to_count_is_bad_input_not_a_store_outage(
    api: Api, delta: int
) -> None:
    """It reached Redis, failed there, and came back as UNAVAILABLE "store error":
    an operator would look for a broken store."""
    error = await refused(api, "AdjustUsage", adjust_rpm("team1", delta))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {LUA_EXACT}" in (error.details() or "")
    assert (await api.get("api_key", "team1"))["requests_per_minute"].used == 0


ODD_SUBJECTS = ["team}1", "te{am", "a:b", "{x}", "team1}"]


async def test_subjects_with_braces_and_colons_are_listed_under_their_own_names(
    api: Api,
) -> None:
    """The list cut a subject at its first `}` (where Redis's hash tag ends): `team}1`
    was listed as nothing at all, or as `team1`'s usage for `team1}`."""
    early_in_the_minute()
    for subject in ODD_SUBJECTS:
        assert isinstance(await api.send(key=subject), Reservation)
    assert isinstance(await api.send(key="team1"), Reservation)
    assert isinstance(await api.send(key="team1"), Reservation)

    answer = await api.call("ListQuotas", pb.ListQuotasRequest(subject_kind="api_key"))

    used = {state.subject: state.limits[0].used for state in answer.states}
    assert used == {**dict.fromkeys(ODD_SUBJECTS, 1), "team1": 2}


async def test_changes_to_an_odd_subject_touch_only_that_subject(api: Api) -> None:
    early_in_the_minute()
    for _ in range(2):
        await api.send(key="team1")
        await api.send(key="team1}")

    await api.call("ResetUsage", pb.ResetUsageRequest(subject_kind="api_key", subject="team1}"))
    state = await api.call("SetLimit", set_rpm("team1}", 1))

    assert (state.subject, state.limits[0].used, state.limits[0].limit) == ("team1}", 0, 1)
    assert (await api.get("api_key", "team1"))["requests_per_minute"].used == 2
    assert (await api.get("api_key", "team1"))["requests_per_minute"].limit == 5
    assert isinstance(await api.send(key="team1}"), Reservation)
    assert isinstance(await api.send(key="team1}"), Denial)
    assert isinstance(await api.send(key="team1"), Reservation)


async def test_a_refusal_names_the_limit_that_holds_longest(api: Api) -> None:
    """Key `once` has 5 requests a minute and 10 tokens for its lifetime. Once both are
    used up, the minute's limit was named (retry-after under 60 s, code
    rate_limit_exceeded), though after that minute the lifetime quota still refuses."""
    early_in_the_minute()
    lowered = await api.call("SetLimit", set_rpm("once", 1))
    assert lowered.limits[0].limit == 1
    first = await api.send(key="once", tokens=50)
    assert isinstance(first, Reservation)
    # Answered: its 50 tokens are spent, not held by a request still running (which
    # could settle below the quota, and would be a short wait).
    api.quota_store.settle(first, 50)
    await api.quota_store.flush()

    second = await api.send(key="once")

    assert isinstance(second, Denial)
    assert (second.limit.rule, second.limit.counter) == ("keys-lifetime", "token_quota")
    assert second.limit.window.end is None  # so no retry-after: it never resets


async def test_a_lower_limit_refuses_at_once_and_its_headers_never_go_negative(
    api: Api,
) -> None:
    early_in_the_minute()
    for _ in range(3):
        assert isinstance(await api.send(), Reservation)

    await api.call("SetLimit", set_rpm("team1", 2))
    state = (await api.get("api_key", "team1"))["requests_per_minute"]
    refusal = await api.send()

    assert (state.used, state.limit, state.remaining) == (3, 2, 0)
    assert isinstance(refusal, Denial)
    assert (refusal.used, refusal.effective_limit) == (3, 2)


async def test_adjustments_racing_with_live_traffic_lose_no_update(api: Api) -> None:
    """Fifty requests and fifty +1 adjustments at once, across the same counter."""
    grant = pb.AdjustUsageRequest(
        subject_kind="user", subject="ann", rule="users-hourly",
        counter="requests_per_hour", delta=1,
    )  # fmt: skip
    grants = [api.call("AdjustUsage", grant) for _ in range(50)]
    requests = [send_as_user(api, "ann") for _ in range(50)]

    results = await asyncio.gather(*grants, *requests)

    assert all(isinstance(r, Reservation) for r in results[50:])
    assert (await api.get("user", "ann"))["requests_per_hour"].used == 100


async def send_as_user(api: Api, user: str) -> Any:
    limits = api.runtime.quota_rules.limits_for_subject("user", user, api.quota_store.now())
    return await api.quota_store.reserve(limits, 1)


async def test_a_reset_does_not_let_earlier_requests_erase_later_usage(api: Api) -> None:
    """A request in flight during a reset settles afterwards: its give-back of what it
    reserved but did not use comes off the counter the reset started again, so the
    usage of requests admitted after the reset disappears."""
    hourly = api.runtime.quota_rules.limits_for_subject("user", "bea", api.quota_store.now())
    in_flight = await api.quota_store.reserve(hourly, 1000)
    assert isinstance(in_flight, Reservation)

    await api.call("ResetUsage", pb.ResetUsageRequest(subject_kind="user", subject="bea"))
    after_reset = await api.quota_store.reserve(hourly, 40)
    assert isinstance(after_reset, Reservation)
    api.quota_store.settle(in_flight, 10)  # it used 10 of its 1000
    await api.quota_store.flush()

    # The 40 tokens reserved after the reset are still counted, and only they: the
    # earlier request's usage went with the reset (the later one still runs: held).
    hourly_state = (await api.get("user", "bea"))["tokens_per_hour"]
    assert (hourly_state.used, hourly_state.reserved) == (0, 40)


MONTH_STARTS_2028 = [(2028, month) for month in range(1, 13)]


@pytest.mark.parametrize(("year", "month"), MONTH_STARTS_2028)
def test_a_monthly_quota_in_berlin_starts_again_at_local_midnight_of_the_first(
    year: int, month: int
) -> None:
    """2028: a leap February, and the clock changes at the end of March and October."""
    first = datetime(year, month, 1, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()

    before = window_for(WindowKind.CALENDAR_MONTH, first - 1, "Europe/Berlin")
    after = window_for(WindowKind.CALENDAR_MONTH, first, "Europe/Berlin")

    assert before.end == after.start == first
    assert after.key == f"cm:{year}-{month:02d}@Europe/Berlin" != before.key
    days = monthrange(year, month)[1]
    dst_change = {3: -3600, 10: 3600}.get(month, 0)
    assert after.end is not None and after.end - after.start == days * 86400 + dst_change


async def test_windows_and_expiry_follow_the_stores_clock_not_a_skewed_one(
    valkey: EmbeddedValkey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway whose clock is 2 hours behind counts in the store's hour, and its
    counter outlives that hour by the slack, not by two hours more."""
    skew = 2 * 3600.0
    slow = SimpleNamespace(time=lambda: time.time() - skew, monotonic=time.monotonic)
    monkeypatch.setattr("extproc.quota.store.time", slow)
    client = connect(valkey.url, 2.0)
    await client.flushdb()
    quota_store = QuotaStore(client, PREFIX)
    await quota_store.start()
    try:
        seconds, micros = await client.time()
        server_now = seconds + micros / 1e6
        rules = Runtime(review_config(), Services(GatewayMetrics(), AccessLog(stdout=False)))
        found = rules.quota_rules.limits_for_subject("user", "cy", quota_store.now())
        assert isinstance(await quota_store.reserve(found, 5), Reservation)
        hourly = next(limit for limit in found if limit.counter == "tokens_per_hour")

        assert hourly.window.start <= server_now < (hourly.window.end or 0)
        ttl = await client.ttl(hourly.key(PREFIX))
        assert 0 < ttl <= (hourly.window.end or 0) - server_now + 3600 + 1
    finally:
        await quota_store.close()
        await client.aclose()
