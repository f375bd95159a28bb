"""Quota accounting found wrong in review (s36): what a client of a hard-capped key gets
from Claude, on the real embedded Valkey."""

from __future__ import annotations

import orjson

from extproc.quota.store import QuotaStore
from tests.unit.test_quota_review_s35 import CAPPED_DAY, CLAUDE_CHAT, chat, gateway, refusal


async def test_a_hard_capped_key_gets_claudes_answer_bounded_as_any_other_key(
    quota_store: QuotaStore,
) -> None:
    # An OpenAI client naming no max_tokens: the translation for Claude writes its own
    # 4,096 (Anthropic's API requires a bound). A hard cap with room to spare wrote the
    # 1,000 of quotas.default_max_tokens instead, so a capped key's answers stopped at a
    # quarter of everyone else's ("finish_reason": "length").
    answer = await chat(gateway(quota_store, CAPPED_DAY % 1_000_000), CLAUDE_CHAT)

    assert refusal(answer) is None
    sent = orjson.loads(answer.request_body.response.body_mutation.body)
    assert sent["max_tokens"] == 4096
