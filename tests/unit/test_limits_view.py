"""``GET /aigw/v1/limits``: a caller reads its own limits, through the processor, on a real
Valkey.

team1 (user alice, group engineering) has spent part of its group's $0.20 budget and one
of its five requests this minute; it sees both, with what is left and when each resets,
and the limit its ``x-team`` header falls under. It never sees another group's budget nor
an operator's shadow pilot. A key kept to one route still reads its limits; a POST is a
405; a store that does not answer is a 503 in OpenAI's shape.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from extproc.config.loader import parse_config
from extproc.management.quotas import QuotaAdmin
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.stages.quota import usd_micros
from extproc.store.connection import connect
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_headers
from tests.unit.conftest import MemoryLog
from tests.unit.test_management import early_in_the_minute
from tests.unit.test_quota_held import GATEWAY, Call, _answer

NARROW_KEY = "narrow-secret-key-0001"
CONFIG = GATEWAY.replace("\nstore:\n", "\nstore:\n  timeout_ms: 4000\n", 1).replace(
    "  api_keys:\n",
    "  api_keys:\n    - {id: narrow, key: " + NARROW_KEY + ", group_id: engineering,"
    " allowed_routes: [openai-chat]}\n",
    1,
) + (
    """
quotas:
  time_zone: Europe/Berlin
  rules:
    - name: team-budget
      subject: group
      cost_quota: {limit_usd: 0.20, period: calendar_month}
    - {name: keys-rpm, subject: api_key, requests_per_minute: 5}
    - name: blue-team
      subject: "header:x-team"
      match: blue
      models: [gpt-4o]
      tokens_per_day: 900
    - {name: pilot, subject: api_key, requests_per_minute: 1, mode: shadow}
"""
)
# What the held test's Claude answer of 1,000 tokens costs (6 prompt, 994 completion).
SPENT_MICRO_USD = usd_micros(6 * 800_000 + 994 * 4_000_000)


def processor(store: QuotaStore, admin: QuotaAdmin | None = None) -> Processor:
    services = Services(GatewayMetrics(), MemoryLog(), quota_store=store)
    services.quota_admin = admin or QuotaAdmin(store._client, "test:", store)
    runtime = Runtime(parse_config(CONFIG, "gateway.yaml", {}), services)
    return Processor(lambda: runtime, default_stages())


async def limits(
    gateway: Processor, key: str = "team1-key", method: str = "GET", **headers: str
) -> tuple[int, Any]:
    async def messages() -> Any:
        yield request_headers(
            "/aigw/v1/limits",
            method=method,
            headers={"authorization": f"Bearer {key}", **headers},
            end_of_stream=True,
        )

    answers = [answer async for answer in gateway.process(messages())]
    reply = answers[-1].immediate_response
    return reply.status.code, orjson.loads(reply.body)


async def test_a_caller_reads_its_own_limits_with_what_is_used_and_left(
    quota_store: QuotaStore,
) -> None:
    early_in_the_minute()  # its request and the read count in one minute's window
    gateway = processor(quota_store)
    call = Call(gateway)  # one Claude request of team1, as the held test sends it
    assert await call.admitted()
    await call.finish(_answer(1000))
    await quota_store.flush()

    status, body = await limits(gateway, **{"x-team": "blue"})

    assert status == 200 and body["object"] == "list"
    by_rule = {entry["rule"]: entry for entry in body["data"]}
    # The operator's shadow pilot never refuses: not shown.
    assert list(by_rule) == ["team-budget", "keys-rpm", "blue-team"]
    budget = by_rule["team-budget"]
    assert budget == {
        "rule": "team-budget",
        "subject_kind": "group",
        "subject": "engineering",
        "counter": "cost_quota",
        "unit": "usd",
        "limit": 0.2,
        "used": SPENT_MICRO_USD / 10**6,
        "reserved": 0.0,
        "remaining": (200_000 - SPENT_MICRO_USD) / 10**6,
        "resets_at": budget["resets_at"],
        "models": None,
    }
    assert budget["resets_at"].endswith(("+01:00", "+02:00"))  # the month ends in Berlin
    assert math.isclose(budget["used"], 0.003981)
    rpm = by_rule["keys-rpm"]
    assert (rpm["subject_kind"], rpm["subject"], rpm["unit"]) == ("api_key", "team1", "requests")
    assert (rpm["limit"], rpm["used"], rpm["remaining"]) == (5, 1, 4)
    blue = by_rule["blue-team"]
    assert (blue["subject_kind"], blue["subject"], blue["models"]) == (
        "header:x-team",
        "blue",
        ["gpt-4o"],
    )
    assert (blue["unit"], blue["limit"], blue["used"]) == ("tokens", 900, 0)


async def test_another_group_sees_its_own_budget_not_engineerings(
    quota_store: QuotaStore,
) -> None:
    gateway = processor(quota_store)
    call = Call(gateway)
    assert await call.admitted()
    await call.finish(_answer(1000))
    await quota_store.flush()

    status, body = await limits(gateway, key="team2-key")

    assert status == 200
    [budget, rpm] = body["data"]
    assert (budget["subject"], budget["used"], budget["remaining"]) == ("marketing", 0.0, 0.2)
    assert (rpm["subject"], rpm["used"]) == ("team2", 0)
    assert "engineering" not in orjson.dumps(body).decode()


async def test_a_key_kept_to_one_route_still_reads_its_limits(quota_store: QuotaStore) -> None:
    status, body = await limits(processor(quota_store), key=NARROW_KEY)
    assert status == 200
    assert [(e["rule"], e["subject"]) for e in body["data"]] == [
        ("team-budget", "engineering"),
        ("keys-rpm", "narrow"),
    ]


async def test_only_get_and_head_are_served(quota_store: QuotaStore) -> None:
    status, body = await limits(processor(quota_store), method="POST")
    assert status == 405
    assert body["error"]["message"] == "POST is not allowed on /aigw/v1/limits"


async def test_without_a_key_the_limits_are_refused(quota_store: QuotaStore) -> None:
    status, body = await limits(processor(quota_store), key="not-a-key")
    assert status == 401 and body["error"]["type"] == "authentication_error"


async def test_a_store_that_does_not_answer_is_a_503(quota_store: QuotaStore) -> None:
    nowhere = connect("redis://127.0.0.1:1/0", 0.5)  # a port nothing listens on
    try:
        status, body = await limits(
            processor(quota_store, QuotaAdmin(nowhere, "test:", quota_store))
        )
    finally:
        await nowhere.aclose()
    assert status == 503
    assert body["error"]["code"] == "quota_store_unavailable"


@pytest.mark.parametrize("path", ["/aigw/v1/limits"])
def test_the_route_is_in_the_default_config(path: str) -> None:
    config = parse_config(GATEWAY, "gateway.yaml", {})
    assert [route.name for route in config.routes if route.path == path] == ["aigw-limits"]
