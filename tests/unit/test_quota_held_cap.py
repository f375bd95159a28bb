"""A hard-capped token budget too low for a prompt only because running requests hold it.

Three long requests of group engineering hold 99,018 tokens of its hard-capped 100,000-token
monthly quota; nothing is spent yet. A fourth request with a prompt of about 1,000 tokens got
"Token budget nearly used ... not enough for this prompt", `insufficient_quota`,
`retry-after` at the end of the month and `x-should-retry: false`: the SDKs gave up on a
request that would pass as soon as one of the three settled. Now it gets the same short,
retryable wait as a budget the store refuses because running requests hold it; a budget
whose settled usage leaves no room for the prompt still refuses until its period ends.

Against a real Valkey, through the processor, as tests/unit/test_quota_held.py.
"""

from __future__ import annotations

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.config.quota_model import HELD_RETRY_AFTER_S
from extproc.processor import Processor
from extproc.quota.store import QuotaStore
from extproc.runtime import Services
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.test_quota_held import (
    BUDGET,
    GATEWAY,
    Call,
    _answer,
    _headers,
    counted,
    counter_key,
    held_key,
)
from tests.unit.test_quota_held import _processor as held_processor
from tests.unit.test_quota_held import _running as held_running

RULES = f"""
quotas:
  rules:
    - name: team-month
      subject: group
      token_quota: {{limit: {BUDGET}, period: calendar_month}}
      hard_cap: true
"""
CONFIG = GATEWAY.replace("\nstore:\n", "\nstore:\n  timeout_ms: 4000\n", 1) + RULES
LONG = 33_000
ESTIMATE = 6 + LONG
# 4,000 characters: 1,000 tokens and 4 of overhead, more than the 982 the three leave.
BIG_PROMPT = "word " * 800
BIG = 1004


def _processor(store: QuotaStore, config: str = CONFIG) -> tuple[Processor, Services]:
    return held_processor(store, config)


async def _running(processor: Processor, count: int, max_tokens: int = LONG) -> list[Call]:
    return await held_running(processor, count, max_tokens)


async def _refused(processor: Processor) -> tuple[dict[str, str], dict[str, str]]:
    """The big prompt's refusal: its error object and headers."""
    call = Call(processor, 100, BIG_PROMPT)
    assert not await call.admitted()
    refusal = call.refusal
    assert refusal is not None and refusal.status.code == 429
    return orjson.loads(refusal.body)["error"], _headers(refusal)


async def test_a_prompt_that_running_requests_leave_no_room_for_waits_seconds(
    quota_store: QuotaStore,
) -> None:
    processor, services = _processor(quota_store)
    running = await _running(processor, 3)
    assert await counted(quota_store) == (3 * ESTIMATE, 3 * ESTIMATE)

    error, headers = await _refused(processor)

    assert error["type"] == "rate_limit_error"  # Anthropic's shape: the client's API
    assert error["message"].startswith(
        "Token budget of group 'engineering' (rule 'team-month') held by running requests:"
        f" {BUDGET - 3 * ESTIMATE} tokens left, not enough for this prompt, and requests"
        f" still running hold {3 * ESTIMATE} tokens reserved for their answers"
    )
    assert 1 <= int(headers["retry-after"]) <= HELD_RETRY_AFTER_S
    assert "x-should-retry" not in headers
    assert headers["x-ratelimit-remaining-tokens"] == str(BUDGET - 3 * ESTIMATE)
    await quota_store.flush()
    # The refused request gave back what it reserved, and holds nothing.
    assert await counted(quota_store) == (3 * ESTIMATE, 3 * ESTIMATE)

    # One of the three ends, having used 2,000 of its 33,006: the prompt fits now.
    await running.pop().finish(_answer(2000))
    await quota_store.flush()
    [again] = await _running_big(processor)
    for call in [*running, again]:
        await call.finish(_answer(BIG + 50))
    await quota_store.flush()
    assert await counted(quota_store) == (2000 + 3 * (BIG + 50), None)
    decisions = [line["quota_decision"] for line in services.access_log.lines()]
    assert decisions.count("rejected") == 1


async def _running_big(processor: Processor) -> list[Call]:
    call = Call(processor, 100, BIG_PROMPT)
    assert await call.admitted()
    return [call]


@pytest.mark.parametrize(
    ("settled", "held"),
    [
        # Settled, the budget leaves the prompt 1,005 tokens: itself and one for the answer.
        (BUDGET - BIG - 1, True),
        # One token less: even with nothing running, the prompt would not fit this month.
        (BUDGET - BIG, False),
    ],
    ids=["settled usage leaves room", "settled usage leaves none"],
)
async def test_what_decides_is_whether_the_settled_usage_leaves_room(
    quota_store: QuotaStore, settled: int, held: bool
) -> None:
    processor, _ = _processor(quota_store)
    [first] = await _running(processor, 1)
    await first.finish(_answer(settled))
    await quota_store.flush()
    # A short request holds 106 tokens: the remainder is short of the prompt either way.
    [holding] = await _running(processor, 1, 100)
    assert await counted(quota_store) == (settled + 106, 106)

    error, headers = await _refused(processor)

    left = BUDGET - settled - 106
    assert headers["x-ratelimit-remaining-tokens"] == str(left)
    if held:
        assert "held by running requests" in error["message"]
        assert "hold 106 tokens reserved" in error["message"]
        assert int(headers["retry-after"]) <= HELD_RETRY_AFTER_S
        assert "x-should-retry" not in headers
    else:
        assert error["message"].startswith(
            f"Token budget nearly used for group 'engineering' (rule 'team-month'): {left}"
            " tokens left, not enough for this prompt; it resets at"
        )
        assert int(headers["retry-after"]) > 60 and headers["x-should-retry"] == "false"
    await holding.finish(_answer(50))


async def test_openai_clients_get_rate_limit_exceeded(quota_store: QuotaStore) -> None:
    """The code the OpenAI SDKs and the gateway's docs tell a wait by: a held budget's,
    not insufficient_quota, which reads as "the quota is spent"."""
    processor, _ = _processor(quota_store)
    running = await _running(processor, 3)
    body = {"model": "gpt-4o-mini", "max_tokens": 100, "messages": [
        {"role": "user", "content": BIG_PROMPT}
    ]}  # fmt: skip
    messages = [
        request_headers("/v1/chat/completions", headers={"authorization": "Bearer team1-key"}),
        request_body(orjson.dumps(body)),
    ]

    answers: list[ext.ProcessingResponse] = await run_stream(processor, messages)

    refusal = answers[-1].immediate_response
    assert refusal.status.code == 429
    error = orjson.loads(refusal.body)["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert "held by running requests" in error["message"]
    for call in running:
        await call.finish(_answer(10))


async def test_a_spent_day_is_named_over_a_month_running_requests_hold(
    quota_store: QuotaStore,
) -> None:
    """The key's hard-capped day has too little settled room for the prompt, the group's
    month only too little beside what runs: the request passes only once both take it, so
    the 429 names the day, with its end."""
    day = "    - {name: key-day, subject: api_key, tokens_per_day: 200000, hard_cap: true}\n"
    processor, _ = _processor(quota_store, CONFIG + day)
    running = await _running(processor, 3)
    day_key = await _only_key(quota_store, "test:q:{api_key:team1}:key-day:t:*")
    await quota_store._client.set(day_key, 199_500, keepttl=True)
    await quota_store._client.delete(day_key + ":held")  # the day: spent, not held

    error, headers = await _refused(processor)

    assert "rule 'key-day'" in error["message"] and "nearly used" in error["message"]
    assert int(headers["retry-after"]) > HELD_RETRY_AFTER_S
    await quota_store.flush()
    # The refused request gave back its reservation: the month holds the three's alone.
    assert int(await quota_store._client.get(held_key()) or 0) == 3 * ESTIMATE
    for call in running:
        await call.finish(_answer(10))


async def _only_key(store: QuotaStore, pattern: str) -> str:
    found = [
        key.decode() async for key in store._client.scan_iter(match=pattern)
        if not key.decode().endswith(":held")
    ]  # fmt: skip
    [key] = found
    return key


@pytest.mark.parametrize(
    ("text", "held"),
    [("refactor", True), (BIG_PROMPT, False)],
    ids=["a prompt the settled usage leaves room for", "one it leaves none for"],
)
async def test_a_budget_a_capped_reservation_filled_tells_held_from_spent_by_the_prompt(
    quota_store: QuotaStore, text: str, held: bool
) -> None:
    """A capped reservation fills its budget to the token, so the store refuses the next
    request before the hard cap looks at its prompt. 500 tokens are left once the running
    request settles: a short prompt waits seconds; one of 1,004 tokens was told the same,
    and its retry met "nearly used" until the month's end."""
    await quota_store._client.set(counter_key(), BUDGET - 500, ex=3600)
    processor, _ = _processor(quota_store)
    [running] = await _running(processor, 1, 1000)
    assert await counted(quota_store) == (BUDGET, 500)

    call = Call(processor, 100, text)
    assert not await call.admitted() and call.refusal is not None
    error, headers = orjson.loads(call.refusal.body)["error"], _headers(call.refusal)

    if held:
        assert "held by running requests" in error["message"]
        assert int(headers["retry-after"]) <= HELD_RETRY_AFTER_S
        assert "x-should-retry" not in headers
    else:
        assert error["message"].startswith(
            f"Rate limit reached for group 'engineering' (rule 'team-month'): {BUDGET} tokens"
            f" per calendar month (UTC), {BUDGET - 500} used and 500 held by running"
            " requests; it resets at"
        )
        assert int(headers["retry-after"]) > 60 and headers["x-should-retry"] == "false"
    await running.finish(_answer(300))
