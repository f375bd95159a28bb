"""Token counts under quotas: one request against request limits, no tokens reserved.

Decision (docs/quotas.md is not in scope; documented in docs/providers.md): a count is
a call to the provider, so request-rate limits count it; it generates nothing, so it
reserves and consumes no tokens and is never refused for a spent token budget.
"""

from __future__ import annotations

import anthropic
import httpx
import orjson

from extproc.devstack import LocalStack
from tests.integration.test_quotas import KEYS, quota_stack, within_one_minute_window

__all__ = ["quota_stack"]
MODEL = "claude-3-5-haiku-latest"
PROMPT = [{"role": "user", "content": "count me please"}]


def count(stack: LocalStack, key: str) -> httpx.Response:
    return httpx.post(
        f"{stack.base_url}/v1/messages/count_tokens",
        content=orjson.dumps({"model": MODEL, "messages": PROMPT}),
        headers={"x-api-key": KEYS[key], "content-type": "application/json"},
        timeout=30.0,
    )


def test_a_spent_token_budget_still_counts_and_counts_use_none_of_it(
    quota_stack: LocalStack,
) -> None:
    # "tiny" has 10 tokens an hour: less than any Messages call would reserve.
    answers = [count(quota_stack, "tiny") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert all(answer.json()["input_tokens"] > 0 for answer in answers)


def test_a_hard_capped_budget_does_not_add_max_tokens_to_a_count(
    quota_stack: LocalStack,
) -> None:
    client = anthropic.Anthropic(
        base_url=quota_stack.base_url, api_key=None,
        default_headers={"x-api-key": KEYS["capped"]}, max_retries=0,
    )  # fmt: skip
    assert client.messages.count_tokens(model=MODEL, messages=PROMPT).input_tokens > 0


def test_counts_are_requests_for_request_rate_limits(quota_stack: LocalStack) -> None:
    within_one_minute_window()
    # "beta" may make 5 requests a minute: the sixth count is refused, in Anthropic's shape.
    answers = [count(quota_stack, "beta") for _ in range(6)]
    assert [answer.status_code for answer in answers] == [200] * 5 + [429]
    assert answers[-1].json()["type"] == "error"
    assert answers[-1].json()["error"]["type"] == "rate_limit_error"
