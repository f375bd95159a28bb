"""What a spent token budget's 429 says, in every client API's error shape.

`extproc quota get` and the gauges tell settled usage (`used`) from what running requests
hold (`reserved`), but the budget's refusal quoted the counter's sum: "100312 used" for a
budget the operator's tools showed at 100100 used and 212 reserved. Now the refusal says
both ("100100 used and 212 held by running requests"), or "N used" alone when nothing is
held.

And a prompt that a hard-capped budget could not take even empty: refused with "Prompt
too large" and no `retry-after` when the store admits it, but with the budget's period
(`retry-after` at the end of the day) when the budget was spent, so the store refused
first; the client came back the next day to be refused for good. Both now get the "Prompt
too large" refusal, decided from what the store's refusal carries (no second round trip).

Against a real Valkey, through the processor, with the counters written directly.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.processor import Processor
from extproc.quota.store import QuotaStore, held_key
from extproc.stages.pipeline import default_stages
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.test_converse_review import converse_path
from tests.unit.test_quota_review import runtime_with

BUDGET = 100_000
DAY = f"""
quotas:
  rules:
    - {{name: key-day, subject: api_key, tokens_per_day: {BUDGET}}}
"""
AUTH = {"authorization": "Bearer team1-key", "x-api-key": "team1-key"}
SHORT = "Hello"
# Each client API's path and a short request of it.
APIS: dict[str, tuple[str, dict[str, Any]]] = {
    "openai": (
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": SHORT}]},
    ),
    "anthropic": (
        "/v1/messages",
        {
            "model": "claude-3-5-haiku-latest",
            "max_tokens": 100,
            "messages": [{"role": "user", "content": SHORT}],
        },
    ),
    "bedrock": (converse_path(), {"messages": [{"role": "user", "content": [{"text": SHORT}]}]}),
}


def _message(api: str, body: bytes) -> str:
    answer = orjson.loads(body)
    return str(answer["message"] if api == "bedrock" else answer["error"]["message"])


async def _refusal(
    quota_store: QuotaStore, rules: str, api: str, body: dict[str, Any] | None = None
) -> tuple[str, dict[str, str]]:
    """Key team1's request on ``api`` under ``rules``: its 429's message and headers
    (to an AWS SDK, a refusal no retry soon can pass is a 400
    ``ServiceQuotaExceededException``, which botocore does not retry)."""
    runtime = runtime_with(quota_store, rules)
    path, default = APIS[api]
    stream = [request_headers(path, headers=AUTH), request_body(orjson.dumps(body or default))]
    answers: list[ext.ProcessingResponse] = await run_stream(
        Processor(lambda: runtime, default_stages()), stream
    )
    refused = answers[-1].immediate_response
    headers = {h.header.key: h.header.raw_value.decode() for h in refused.headers.set_headers}
    for_good = api == "bedrock" and headers.get("x-should-retry") == "false"
    assert refused.status.code == (400 if for_good else 429), refused
    if for_good:
        assert headers["x-amzn-errortype"] == "ServiceQuotaExceededException"
    return _message(api, refused.body), headers


async def _fill(quota_store: QuotaStore, rules: str, counted: int, held: int) -> None:
    """Key team1's daily counter at ``counted``, of which running requests hold ``held``."""
    runtime = runtime_with(quota_store, rules)
    [limit] = runtime.quota_rules.limits_for_subject("api_key", "team1", quota_store.now())
    counter = limit.key("test:")
    await quota_store._client.set(counter, counted, ex=3600)
    if held:
        await quota_store._client.set(held_key(counter), held, ex=3600)


@pytest.mark.parametrize("api", list(APIS))
async def test_a_spent_budget_says_what_is_used_and_what_running_requests_hold(
    quota_store: QuotaStore, api: str
) -> None:
    await _fill(quota_store, DAY, BUDGET + 312, 212)

    message, headers = await _refusal(quota_store, DAY, api)

    assert message.startswith(
        f"Rate limit reached for api_key 'team1' (rule 'key-day'): {BUDGET} tokens per day,"
        f" {BUDGET + 100} used and 212 held by running requests; it resets at"
    )
    assert f"{BUDGET + 312} used" not in message
    # Spent: refused until the day ends, running requests or not.
    assert int(headers["retry-after"]) > 60 and headers["x-should-retry"] == "false"


@pytest.mark.parametrize("api", list(APIS))
async def test_a_spent_budget_nothing_holds_says_what_is_used_alone(
    quota_store: QuotaStore, api: str
) -> None:
    await _fill(quota_store, DAY, BUDGET + 12, 0)

    message, _ = await _refusal(quota_store, DAY, api)

    assert message.startswith(
        f"Rate limit reached for api_key 'team1' (rule 'key-day'): {BUDGET} tokens per day,"
        f" {BUDGET + 12} used; it resets at"
    )
    assert "held" not in message


SMALL = 200
CAPPED = f"""
quotas:
  rules:
    - {{name: key-day, subject: api_key, tokens_per_day: {SMALL}, hard_cap: true}}
"""
MONTH = (
    "    - {name: key-month, subject: api_key, hard_cap: true,"
    " token_quota: {limit: 900000, period: calendar_month}}\n"
)
# 4,000 characters: about 1,000 prompt tokens, five times the whole daily budget.
HUGE = "word " * 800


def _huge(api: str) -> dict[str, Any]:
    body = orjson.loads(orjson.dumps(APIS[api][1]))
    if api == "bedrock":
        body["messages"][0]["content"][0]["text"] = HUGE
    else:
        body["messages"][0]["content"] = HUGE
    return dict(body)


@pytest.mark.parametrize("spent", [False, True], ids=["budget untouched", "budget spent"])
@pytest.mark.parametrize("api", list(APIS))
async def test_a_prompt_larger_than_the_whole_budget_is_refused_for_good_either_way(
    quota_store: QuotaStore, api: str, spent: bool
) -> None:
    if spent:
        await _fill(quota_store, CAPPED, SMALL, 0)

    message, headers = await _refusal(quota_store, CAPPED, api, _huge(api))

    assert message.startswith(
        "Prompt too large for the token budget of api_key 'team1' (rule 'key-day'): about"
    )
    assert f"leave no room for an answer in {SMALL} tokens per day" in message
    # No wait helps: no retry-after, and the SDKs are told not to retry on their own.
    assert "retry-after" not in headers and headers["x-should-retry"] == "false"
    assert headers["x-ratelimit-limit-tokens"] == str(SMALL)


async def test_a_prompt_too_large_for_a_spent_day_is_named_over_a_spent_month(
    quota_store: QuotaStore,
) -> None:
    """Both budgets spent: the month's refusal lasts longer, but the day's could never take
    the prompt, which no wait cures."""
    rules = CAPPED + MONTH
    runtime = runtime_with(quota_store, rules)
    for limit in runtime.quota_rules.limits_for_subject("api_key", "team1", quota_store.now()):
        await quota_store._client.set(limit.key("test:"), limit.limit, ex=3600)

    message, headers = await _refusal(quota_store, rules, "openai", _huge("openai"))

    assert message.startswith("Prompt too large") and "rule 'key-day'" in message
    assert "retry-after" not in headers


async def test_a_spent_budget_the_prompt_fits_still_waits_for_its_reset(
    quota_store: QuotaStore,
) -> None:
    await _fill(quota_store, CAPPED, SMALL, 0)

    message, headers = await _refusal(quota_store, CAPPED, "openai")

    assert message.startswith("Rate limit reached for api_key 'team1' (rule 'key-day')")
    assert int(headers["retry-after"]) > 60
