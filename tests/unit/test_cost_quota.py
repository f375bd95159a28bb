"""Budgets in dollars (``cost_quota``): through the processor, on a real Valkey.

Engineering may spend $0.20 a month on Claude. Each request reserves what it may cost
(its prompt estimate at the input price, its ``max_tokens`` at the output price) while it
runs, and settles at what its answer cost, the chargeback's figure rounded up to the
millionth of a dollar. Two long requests hold the budget: the third is asked to retry
shortly; once one ends, having cost less than $0.004, the next one passes. A spent
budget refuses until its month ends, in dollars.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
from pydantic import ValidationError

from extproc.config.loader import ConfigError, parse_config
from extproc.config.quota_model import LimitRule, usd_micros_text
from extproc.quota.store import QuotaStore
from extproc.runtime import Runtime, Services
from extproc.stages.quota import usd_micros
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers
from tests.unit.test_quota_held import GATEWAY, PROMPT, Call, _answer, _headers, _processor

BUDGET_MICRO_USD = 200_000
CONFIG = GATEWAY.replace("\nstore:\n", "\nstore:\n  timeout_ms: 4000\n", 1) + (
    """
quotas:
  rules:
    - name: team-budget
      subject: group
      cost_quota: {limit_usd: 0.20, period: calendar_month}
"""
)
# claude-3-5-haiku-latest in the default price table, picodollars per token.
INPUT, OUTPUT = 800_000, 4_000_000
# The held test's request: 6 prompt tokens (estimated) and max_tokens 32,000.
ESTIMATE_MICRO_USD = usd_micros(6 * INPUT + 32_000 * OUTPUT)


def counter_key() -> str:
    return f"test:q:{{group:engineering}}:team-budget:c:cm:{datetime.now(UTC):%Y-%m}@UTC"


async def counted(store: QuotaStore) -> tuple[int, int]:
    """The group's budget counter and what running requests hold of it."""
    client = store._client
    counter, held = await client.get(counter_key()), await client.get(counter_key() + ":held")
    return int(counter or 0), int(held or 0)


def test_a_cost_is_counted_in_millionths_of_a_dollar_rounded_up() -> None:
    assert [usd_micros(p) for p in (0, 1, 10**6, 10**6 + 1, 3_980_800_000)] == [0, 1, 1, 2, 3981]
    assert ESTIMATE_MICRO_USD == 128_004_800 // 1000 + 1  # $0.1280048, rounded up
    assert [usd_micros_text(m) for m in (200_000, 15, 5_000_000_000, 3981)] == [
        "$0.20",
        "$0.000015",
        "$5,000.00",
        "$0.003981",
    ]


async def test_running_requests_hold_the_budget_and_settle_at_their_cost(
    quota_store: QuotaStore,
) -> None:
    processor, _ = _processor(quota_store, CONFIG)
    running = [Call(processor), Call(processor)]
    assert [await call.admitted() for call in running] == [True, True]
    assert await counted(quota_store) == (2 * ESTIMATE_MICRO_USD, 2 * ESTIMATE_MICRO_USD)

    third = Call(processor)
    assert not await third.admitted()
    refusal = third.refusal
    assert refusal is not None and refusal.status.code == 429
    message = orjson.loads(refusal.body)["error"]["message"]
    assert message.startswith(
        "Cost budget of group 'engineering' (rule 'team-budget') held by running requests:"
        " $0.20 per calendar month (UTC), $0.00 used, and requests still running hold the"
        f" rest (${Decimal(2 * ESTIMATE_MICRO_USD) / 10**6} reserved for their answers)"
    )
    headers = _headers(refusal)
    assert "x-should-retry" not in headers and int(headers["retry-after"]) >= 1
    # OpenAI's headers count requests and tokens: a cost budget sets none of them.
    assert not any(name.startswith("x-ratelimit-") for name in headers)

    # One ends, having used 6 prompt and 994 completion tokens: $0.0039808, rounded up.
    await running.pop().finish(_answer(1000))
    await quota_store.flush()
    cost = usd_micros(6 * INPUT + 994 * OUTPUT)
    assert cost == 3981
    assert await counted(quota_store) == (ESTIMATE_MICRO_USD + cost, ESTIMATE_MICRO_USD)
    fourth = Call(processor)
    assert await fourth.admitted()

    # Both end at 1,000 tokens: only their cost stays counted, nothing held.
    for call in (*running, fourth):
        await call.finish(_answer(1000))
    await quota_store.flush()
    assert await counted(quota_store) == (3 * cost, 0)


async def test_a_spent_budget_refuses_until_its_month_ends_in_dollars(
    quota_store: QuotaStore,
) -> None:
    processor, _ = _processor(quota_store, CONFIG)
    await quota_store._client.set(counter_key(), BUDGET_MICRO_USD + 17)

    call = Call(processor, max_tokens=10)
    assert not await call.admitted()
    refusal = call.refusal
    assert refusal is not None and refusal.status.code == 429
    error = orjson.loads(refusal.body)["error"]
    assert error["message"].startswith(
        "Rate limit reached for group 'engineering' (rule 'team-budget'): $0.20 per calendar"
        " month (UTC), $0.200017 used; it resets at "
    )
    headers = _headers(refusal)
    # The month's end is far off: no SDK should retry it on its own.
    assert headers["x-should-retry"] == "false" and int(headers["retry-after"]) >= 1
    assert await counted(quota_store) == (BUDGET_MICRO_USD + 17, 0)


@pytest.mark.parametrize(
    ("budget", "problem"),
    [
        ("{limit_usd: 0.0000001}", "at most six decimals"),
        ("{limit_usd: 0}", "greater than 0"),
        ("{limit_usd: 10, time_zone: Mars/Olympus}", "rules[0].cost_quota.time_zone"),
    ],
)
def test_a_budget_the_store_cannot_count_is_refused_at_load(budget: str, problem: str) -> None:
    config = CONFIG.replace("{limit_usd: 0.20, period: calendar_month}", budget)
    with pytest.raises(ConfigError) as refused:
        # The zone is checked where the rules are built, with every other rule's zone.
        services = Services(GatewayMetrics(), AccessLog(stdout=False))
        Runtime(parse_config(config, "gateway.yaml", {}), services)
    assert any(problem in line for line in refused.value.problems), refused.value.problems


def test_a_hard_cap_needs_a_token_budget_and_a_held_wait_a_budget() -> None:
    with pytest.raises(ValidationError, match="hard_cap caps answers"):
        LimitRule.model_validate(
            {"name": "r", "subject": "group", "cost_quota": {"limit_usd": 5}, "hard_cap": True}
        )
    rule = LimitRule.model_validate(
        {"name": "r", "subject": "group", "cost_quota": {"limit_usd": 5}, "held_retry_after_s": 9}
    )
    assert rule.cost_quota is not None and rule.cost_quota.limit_micro_usd == 5_000_000


async def test_a_failover_chain_reserves_at_its_dearest_members_prices(
    quota_store: QuotaStore,
) -> None:
    # gpt-4.1-nano ($0.10 / $0.40 per million) fails over to Claude 3 Haiku on Bedrock
    # ($0.25 / $1.25): either may answer and be billed, so the dearer one is reserved.
    config = CONFIG.replace(
        "  - name: gpt-4.1-nano\n    provider: ${LLM_PROVIDER:-mock}\n",
        "  - name: gpt-4.1-nano\n    provider: ${LLM_PROVIDER:-mock}\n"
        "    fallbacks: [anthropic.claude-3-haiku-20240307-v1:0]\n",
    )
    assert config != CONFIG
    processor, _ = _processor(quota_store, config)
    body = {"model": "gpt-4.1-nano", "max_tokens": 1000, "messages": PROMPT}
    decided = asyncio.Event()

    async def messages() -> AsyncIterator[ext.ProcessingRequest]:
        yield request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"})
        yield request_body(orjson.dumps(body))
        await decided.wait()

    async def serve() -> None:
        async for answer in processor.process(messages()):
            if answer.HasField("request_body") or answer.HasField("immediate_response"):
                assert answer.HasField("request_body"), answer
                reserved.append(await counted(quota_store))
                decided.set()

    reserved: list[tuple[int, int]] = []
    await asyncio.wait_for(serve(), 10)

    prompt = 6  # "refactor" and the message's overhead, as the estimate counts it
    dearest = usd_micros(prompt * 250_000 + 1000 * 1_250_000)
    assert dearest > usd_micros(prompt * 100_000 + 1000 * 400_000)
    assert reserved == [(dearest, dearest)]
