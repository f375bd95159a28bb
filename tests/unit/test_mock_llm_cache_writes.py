"""The mock reports prompt-cache writes split by lifetime when a test asks (x-mock-cache-write)."""

from __future__ import annotations

import anthropic
import pytest
from anthropic import AsyncAnthropic
from anthropic.types import MessageParam

from extproc.mock_llm import bedrock_api
from extproc.mock_llm.anthropic_api import CacheWrites, CacheWriteSpecError, cache_writes
from tests.unit.mock_helpers import anthropic_message, plain_whole_and_streamed

MESSAGES: list[MessageParam] = [
    {"role": "user", "content": "Summarise the handbook for a new colleague, please"}
]


async def test_anthropic_reports_writes_to_each_cache_apart_from_input(
    anthropic_client: AsyncAnthropic,
) -> None:
    asked = {"x-mock-cache-write": "5m=3; 1h=4", "x-mock-fault": "cached=2"}
    plain, written, streamed = await plain_whole_and_streamed(anthropic_client, MESSAGES, asked)
    assert plain.usage.cache_creation_input_tokens is None
    for message in (written, streamed):
        usage = message.usage
        assert usage.cache_creation is not None
        assert (usage.cache_creation.ephemeral_5m_input_tokens,
                usage.cache_creation.ephemeral_1h_input_tokens) == (3, 4)  # fmt: skip
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (7, 2)
        # The prompt is the same size: input_tokens is what was neither read nor written.
        assert usage.input_tokens == plain.usage.input_tokens - 7 - 2


async def test_anthropic_refuses_a_malformed_request_for_writes(
    anthropic_client: AsyncAnthropic,
) -> None:
    with pytest.raises(anthropic.BadRequestError, match="x-mock-cache-write"):
        await anthropic_message(anthropic_client, MESSAGES, headers={"x-mock-cache-write": "1d=5"})


def test_bedrock_reports_writes_in_cache_details_one_hour_first() -> None:
    reply = bedrock_api.Reply(["a", "b"], "end_turn", 10, cache_writes=CacheWrites(3, 4))
    assert reply.usage() == {
        "inputTokens": 3, "outputTokens": 2, "totalTokens": 12, "cacheWriteInputTokens": 7,
        "cacheDetails": [{"ttl": "1h", "inputTokens": 4}, {"ttl": "5m", "inputTokens": 3}],
    }  # fmt: skip
    only_5m = bedrock_api.Reply(["a"], "end_turn", 10, cache_writes=CacheWrites(3, 0))
    assert only_5m.usage()["cacheDetails"] == [{"ttl": "5m", "inputTokens": 3}]


def test_writes_never_exceed_the_prompt_left_after_reads() -> None:
    assert CacheWrites(50, 8).within(10) == CacheWrites(2, 8)
    assert CacheWrites(5, 50).within(10) == CacheWrites(0, 10)


@pytest.mark.parametrize("spec", ["5m=-1", "5m=x", "5m", "1d=3", "5m=²"])
def test_a_malformed_header_names_itself(spec: str) -> None:
    with pytest.raises(CacheWriteSpecError, match="x-mock-cache-write"):
        cache_writes({"x-mock-cache-write": spec})
    assert cache_writes({"x-mock-cache-write": "1h=7"}) == CacheWrites(0, 7)
    assert cache_writes({}) == CacheWrites()
