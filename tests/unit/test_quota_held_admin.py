"""What an operator reads of a token budget that running requests hold.

Three long requests of group marketing hold 96,000 tokens of its monthly quota; one
request before them used 500. `extproc quota get` (and the management API's GetQuota and
ListQuotas) said "used 96500", though the month had 500 tokens spent and the gauges said
`aigw_quota_used 500`, `aigw_quota_reserved 96000`: an operator took reservations for
spent quota, and granted tokens (or reset the month) that nobody needed. Now `used` is the
settled usage, as the gauge counts it, and `reserved` what running requests hold; both read
in the same round trip as before.

Against a real Valkey, over the real gRPC management API and the CLI.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import orjson
import pytest
from grpc import aio as grpc_aio

from extproc.management.v1 import management_pb2 as pb
from extproc.quota.store import Reservation, held_key
from extproc.store.embedded import EmbeddedValkey
from tests.unit.admin_cli import run_admin_cli
from tests.unit.test_management import PREFIX, TOKEN, Api, gateway_config, running_api

MONTHLY = 5_000_000
LONG = 32_000


@pytest.fixture
async def api(valkey: EmbeddedValkey) -> AsyncIterator[Api]:
    async with running_api(valkey, gateway_config()) as running:
        yield running


async def _three_running_after_one_settled(api: Api) -> list[Reservation]:
    first = await api.send(tokens=2000)
    assert isinstance(first, Reservation)
    api.quota_store.settle(first, 500)
    await api.quota_store.flush()
    running = [await api.send(key=f"team{n}", tokens=LONG) for n in (1, 2, 3)]
    assert all(isinstance(each, Reservation) for each in running)
    return [each for each in running if isinstance(each, Reservation)]


def _monthly(state: pb.QuotaState) -> pb.LimitState:
    [quota] = [limit for limit in state.limits if limit.counter == "token_quota"]
    return quota


async def test_get_tells_spent_usage_from_what_running_requests_hold(api: Api) -> None:
    running = await _three_running_after_one_settled(api)

    quota = (await api.get("group", "marketing"))["token_quota"]

    assert (quota.used, quota.reserved) == (500, 3 * LONG)
    # What the next request is checked against: nothing changes there.
    assert quota.remaining == MONTHLY - 500 - 3 * LONG
    # As they settle, what they held becomes what they used.
    for reservation in running:
        api.quota_store.settle(reservation, 1000)
    await api.quota_store.flush()
    quota = (await api.get("group", "marketing"))["token_quota"]
    assert (quota.used, quota.reserved, quota.remaining) == (3500, 0, MONTHLY - 3500)


async def test_request_limits_hold_nothing(api: Api) -> None:
    await _three_running_after_one_settled(api)

    per_minute = (await api.get("api_key", "team1"))["requests_per_minute"]

    assert (per_minute.used, per_minute.reserved, per_minute.remaining) == (2, 0, 3)


async def test_the_list_shows_what_each_subject_holds(api: Api) -> None:
    await _three_running_after_one_settled(api)
    await api.send(key="team1", group="sales", tokens=700)  # no rule for sales: not listed

    answer = await api.call("ListQuotas", pb.ListQuotasRequest(subject_kind="group"))

    assert [(s.subject, _monthly(s).used, _monthly(s).reserved) for s in answer.states] == [
        ("marketing", 500, 3 * LONG)
    ]


async def test_a_grant_while_requests_run_shows_as_room_not_as_a_negative_hold(
    api: Api,
) -> None:
    """A grant larger than what was spent takes the counter below what running requests
    hold: what they hold is then at most the counter, never more than was counted."""
    await _three_running_after_one_settled(api)
    grant = pb.AdjustUsageRequest(
        subject_kind="group", subject="marketing", rule="marketing-monthly",
        counter="token_quota", delta=-10_000,
    )  # fmt: skip

    [quota] = (await api.call("AdjustUsage", grant)).limits

    assert (quota.used, quota.reserved) == (0, 500 + 3 * LONG - 10_000)
    assert quota.remaining == MONTHLY - (500 + 3 * LONG - 10_000)


async def test_a_held_amount_the_gateway_never_wrote_is_named(api: Api) -> None:
    """The reserve script refuses the subject's requests over it (a store failure), so the
    operator reading the subject is told which key to move away, as for a counter."""
    await _three_running_after_one_settled(api)
    [limit] = [
        limit
        for limit in api.runtime.quota_rules.limits_for_subject(
            "group", "marketing", api.quota_store.now()
        )
        if limit.kind == "t"
    ]
    held = held_key(limit.key(PREFIX))
    await api.client.set(held, "lots")

    with pytest.raises(grpc_aio.AioRpcError) as refused:
        await api.call("GetQuota", pb.GetQuotaRequest(subject_kind="group", subject="marketing"))

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{held} holds no integer" in (refused.value.details() or "")


async def test_the_cli_shows_reserved_beside_used(api: Api) -> None:
    await _three_running_after_one_settled(api)

    code, table, err = await run_admin_cli(
        api.address, TOKEN, "quota", "get", "--kind", "group", "--subject", "marketing"
    )

    assert (code, err) == (0, "")
    header, row = table.splitlines()
    assert header.split()[5:8] == ["USED", "RESERVED", "REMAINING"]
    assert row.split()[6:9] == ["500", str(3 * LONG), str(MONTHLY - 500 - 3 * LONG)]

    code, out, err = await run_admin_cli(
        api.address, TOKEN, "quota", "list", "--kind", "api_key", "--format", "json"
    )
    assert (code, err) == (0, "")
    listed = {
        state["subject"]: [(limit["used"], limit["reserved"]) for limit in state["limits"]]
        for state in orjson.loads(out)
    }
    # Each key's requests per minute: counted, holding nothing.
    assert listed == {"team1": [(2, 0)], "team2": [(1, 0)], "team3": [(1, 0)]}


async def test_the_cli_marks_request_limits_as_holding_nothing(api: Api) -> None:
    await _three_running_after_one_settled(api)

    code, table, _ = await run_admin_cli(
        api.address, TOKEN, "quota", "get", "--kind", "api_key", "--subject", "team2"
    )

    assert code == 0
    [row] = table.splitlines()[1:]
    assert row.split()[6:9] == ["1", "-", "4"]
