"""Request and token rate limits as an operator who bills and caps teams uses them,
found wrong in review.

Each test is what a client sends and what it, or the operator, must see: a body naming
an absurd ``max_tokens`` beside a shadow rule, a request the gateway refused itself
after reserving, a default allowance the store cannot count.
"""

from __future__ import annotations

import orjson
import pytest

from extproc.config import ConfigError, parse_config
from extproc.config.quota_model import MAX_LIMIT
from extproc.processor import Processor
from extproc.quota.store import QuotaStore, Reservation
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.quota_helpers import DEFAULT_CONFIG
from tests.unit.test_quota_review import (
    OPENAI_AUTH,
    TEAM1,
    chat,
    gateway,
    refusal,
    runtime_with,
)

# Key team1: two requests an hour, enforced (an hour, not a minute: three requests in one
# fixed window, not two windows across a boundary); its tokens watched by a shadow rule.
WATCHED = """
quotas:
  on_store_failure: %s
  rules:
    - {name: two-rph, subject: api_key, requests_per_hour: 2}
    - {name: token-watch, subject: api_key, tokens_per_day: 100000, mode: shadow}
"""


def chat_asking(max_tokens: int) -> bytes:
    return orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "hi"}],
        }
    )


# -- a client's max_tokens past what the store counts --------------------------------------


@pytest.mark.parametrize("failure", ["fail_open", "fail_closed"])
async def test_a_huge_max_tokens_neither_escapes_the_request_limit_nor_fails_the_store(
    quota_store: QuotaStore, failure: str
) -> None:
    # The body's max_tokens (a valid 64-bit integer) went into the shadow rule's counter
    # as a float the store refused: under fail_open each request passed uncounted by the
    # enforced two-an-hour limit, under fail_closed each got a 503 "store unavailable".
    processor, _ = gateway(quota_store, WATCHED % failure)
    answers = []
    for _ in range(3):
        stream = [
            request_headers("/v1/chat/completions", headers=OPENAI_AUTH),
            request_body(chat_asking(2**63 - 1)),
        ]
        answers.append(refusal((await run_stream(processor, stream))[1]))
    assert answers[:2] == [None, None]
    third = answers[2]
    assert third is not None
    status, body = third
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "rule 'two-rph'" in body["error"]["message"]


async def test_a_settlement_past_what_the_store_counts_still_lands(
    quota_store: QuotaStore,
) -> None:
    # A settlement whose count was past 2^53 failed its whole batch in the store (set
    # aside from the spool later): the shadow counter kept the reservation instead.
    runtime = runtime_with(quota_store, WATCHED % "fail_closed")
    limits = runtime.quota_rules.limits_for(TEAM1, {}, "gpt-4o-mini", quota_store.now())
    reservation = await quota_store.reserve(limits, 10)
    assert isinstance(reservation, Reservation)
    quota_store.settle(reservation, 2**63 - 1)
    await quota_store.flush()
    after = await quota_store.reserve(limits, 0)
    assert isinstance(after, Reservation)
    [tokens] = [used for limit, used in zip(limits, after.used, strict=True) if limit.kind == "t"]
    assert tokens == MAX_LIMIT


def test_a_default_allowance_past_what_the_store_counts_is_refused_at_load() -> None:
    quotas = f"\nquotas:\n  default_max_tokens: {MAX_LIMIT + 1}\n  rules: []\n"
    with pytest.raises(ConfigError) as refused:
        parse_config(DEFAULT_CONFIG + quotas, "gateway.yaml", {})
    assert any("default_max_tokens" in problem for problem in refused.value.problems)


# -- a request the gateway refused after reserving -------------------------------------------

CAPPED = """
quotas:
  rules:
    - {name: three-rpm, subject: api_key, requests_per_minute: 3}
    - {name: day-budget, subject: api_key, tokens_per_day: 150, hard_cap: true}
"""


async def test_a_released_reservation_gives_back_its_request_and_its_tokens(
    quota_store: QuotaStore,
) -> None:
    # What the quota stage calls when a hard cap refuses the prompt: nothing of the
    # request stays counted, as when the store itself refuses.
    runtime = runtime_with(quota_store, CAPPED)
    limits = runtime.quota_rules.limits_for(TEAM1, {}, "gpt-4o-mini", quota_store.now())
    reservation = await quota_store.reserve(limits, 100)
    assert isinstance(reservation, Reservation)
    quota_store.release(reservation)
    await quota_store.flush()
    after = await quota_store.reserve(limits, 0)
    assert isinstance(after, Reservation)
    used = {limit.counter: count for limit, count in zip(limits, after.used, strict=True)}
    assert used == {"requests_per_minute": 1, "tokens_per_day": 0}


async def test_a_prompt_the_hard_cap_refuses_takes_no_request_of_the_minute(
    quota_store: QuotaStore,
) -> None:
    # Three prompts too large for the day's budget, each refused with a 429 before it
    # reached the provider, used up the three requests of the minute: a small prompt
    # that fits was then refused by the request limit.
    processor, _ = gateway(quota_store, CAPPED)
    large = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 800}]}
    )
    for _ in range(3):
        stream = [
            request_headers("/v1/chat/completions", headers=OPENAI_AUTH),
            request_body(large),
        ]
        refused = refusal((await run_stream(processor, stream))[1])
        assert refused is not None
        assert refused[1]["error"]["code"] == "insufficient_quota"
        await quota_store.flush()
    small = [request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(chat())]
    assert refusal((await run_stream(processor, small))[1]) is None


# Key team1: 1,000 tokens a minute and 1,200 a day, both hard-capped.
TWO_BUDGETS = """
quotas:
  rules:
    - {name: minute-budget, subject: api_key, tokens_per_minute: 1000, hard_cap: true}
    - {name: day-budget, subject: api_key, tokens_per_day: 1200, hard_cap: true}
"""


async def test_a_hard_cap_refusal_names_the_budget_that_holds_longest(
    quota_store: QuotaStore,
) -> None:
    # 900 tokens used this minute and today: 100 left in the minute, 300 in the day, and
    # a prompt of about 400 tokens fits neither. The 429 named the minute's budget (the
    # fewest left): the client came back within a minute and was refused again, since
    # the day's budget was just as short of it.
    runtime = runtime_with(quota_store, TWO_BUDGETS)
    limits = runtime.quota_rules.limits_for(TEAM1, {}, "gpt-4o-mini", quota_store.now())
    spent = await quota_store.reserve(limits, 900)
    assert isinstance(spent, Reservation)
    # Settled: used, not held by a request still running (which would be a short wait).
    quota_store.settle(spent, 900)
    await quota_store.flush()
    processor = Processor(lambda: runtime, default_stages())
    prompt = orjson.dumps(
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 1600}]}
    )
    stream = [request_headers("/v1/chat/completions", headers=OPENAI_AUTH), request_body(prompt)]
    answer = (await run_stream(processor, stream))[1]
    refused = refusal(answer)
    assert refused is not None
    assert "rule 'day-budget'" in refused[1]["error"]["message"]
    headers = {h.header.key: h.header.raw_value.decode() for h in
               answer.immediate_response.headers.set_headers}  # fmt: skip
    assert headers["x-ratelimit-remaining-tokens"] == "300"
    assert int(headers["retry-after"]) > 60
    assert headers["x-should-retry"] == "false"
