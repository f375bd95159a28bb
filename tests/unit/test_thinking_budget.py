"""Extended thinking under a hard cap: a Messages body's thinking budget must stay at
least 1,024 and below max_tokens, or Anthropic (and Bedrock) refuse it with a 400; the
cap lowers both, or refuses a request it cannot leave that much room."""

from __future__ import annotations

from typing import Any

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext

from extproc.quota.store import QuotaStore
from extproc.quota.thinking_budget import cap_thinking, least_completion
from tests.unit.quota_helpers import capped_request

AUTH = {"authorization": "Bearer team1-key", "anthropic-version": "2023-06-01"}
MESSAGES = [{"role": "user", "content": "Plan the refactoring, then do it."}]


def claude_code_body(max_tokens: int = 32_000, budget: int = 31_999) -> dict[str, Any]:
    """What Claude Code sends: a thinking budget just below a large max_tokens."""
    return {
        "model": "claude-sonnet-4-0",
        "max_tokens": max_tokens,
        "thinking": {"type": "enabled", "budget_tokens": budget},
        "messages": MESSAGES,
    }


async def capped_messages(
    quota_store: QuotaStore, budget: int, body: dict[str, Any]
) -> ext.ProcessingResponse:
    return await capped_request(quota_store, budget, "/v1/messages", body)


def sent_body(answer: ext.ProcessingResponse) -> dict[str, Any]:
    """The body the gateway sent on, which it must have changed."""
    mutation = answer.request_body.response.body_mutation
    assert mutation.WhichOneof("mutation") == "body", "the body went unchanged"
    sent: dict[str, Any] = orjson.loads(mutation.body)
    return sent


async def test_a_cap_lowers_the_thinking_budget_below_the_max_tokens_it_leaves(
    quota_store: QuotaStore,
) -> None:
    answer = await capped_messages(quota_store, 5_000, claude_code_body())

    sent = sent_body(answer)
    assert 1_024 < sent["max_tokens"] < 5_000
    assert 1_024 <= sent["thinking"]["budget_tokens"] < sent["max_tokens"]


async def test_a_cap_too_small_for_thinking_is_refused_as_a_spent_budget(
    quota_store: QuotaStore,
) -> None:
    answer = await capped_messages(quota_store, 600, claude_code_body())

    assert answer.WhichOneof("response") == "immediate_response"
    assert answer.immediate_response.status.code == 429
    error = orjson.loads(answer.immediate_response.body)
    assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"


async def test_without_thinking_a_small_cap_still_answers(quota_store: QuotaStore) -> None:
    body = {"model": "claude-sonnet-4-0", "max_tokens": 32_000, "messages": MESSAGES}
    answer = await capped_messages(quota_store, 600, body)

    assert 0 < sent_body(answer)["max_tokens"] < 600


def test_adaptive_thinking_and_budgets_within_max_tokens_are_left_alone() -> None:
    adaptive: dict[str, Any] = {"max_tokens": 2_000, "thinking": {"type": "adaptive"}}
    assert not cap_thinking(adaptive) and least_completion(adaptive) == 1
    within = claude_code_body(max_tokens=8_000, budget=4_000)
    assert not cap_thinking(within) and within["thinking"]["budget_tokens"] == 4_000
    assert least_completion(within) == 1_025
