"""A chat request that forces a tool call without declaring a tool, to a provider the
gateway translates for (Anthropic, Bedrock): OpenAI refuses it, and so does the gateway,
before anything is reserved. Dropped with the missing tools, the choice would have
brought a text answer to a client waiting for a call."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.quota.store import QuotaStore
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.quota_helpers import capped, used_tokens
from tests.unit.test_completions_api import AUTH, error_of
from tests.unit.test_guard_flow import upstream_body

CHAT = "/v1/chat/completions"
FORCED = ["required", {"type": "function", "function": {"name": "get_weather"}}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}


def chat(model: str, **fields: Any) -> bytes:
    messages = [{"role": "user", "content": "Weather in Lyon?"}]
    return orjson.dumps({"model": model, "messages": messages, **fields})


@pytest.mark.parametrize("choice", FORCED, ids=["required", "named"])
@pytest.mark.parametrize(
    "model", ["claude-3-5-haiku-latest", "anthropic.claude-3-haiku-20240307-v1:0"]
)
async def test_a_forced_call_without_tools_is_refused_before_the_quota(
    quota_store: QuotaStore, model: str, choice: Any
) -> None:
    processor, _ = capped(quota_store, 100_000)
    answers = await run_stream(
        processor,
        [request_headers(CHAT, headers=AUTH), request_body(chat(model, tool_choice=choice))],
    )
    status, error = error_of(answers[1])
    assert (status, error["param"]) == (400, "tool_choice")
    assert "declares no tools" in error["message"]
    assert await used_tokens(quota_store, 100_000) == 0


@pytest.mark.parametrize("choice", ["auto", "none"])
async def test_a_choice_that_forces_nothing_still_passes_without_tools(
    quota_store: QuotaStore, choice: str
) -> None:
    processor, _ = capped(quota_store, 100_000)
    answers = await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat("claude-3-5-haiku-latest", tool_choice=choice)),
        ],
    )
    assert "tools" not in upstream_body(answers[1])


async def test_a_forced_call_with_its_tools_goes_to_the_provider(quota_store: QuotaStore) -> None:
    processor, _ = capped(quota_store, 100_000)
    body = chat("claude-3-5-haiku-latest", tools=[TOOL], tool_choice="required")
    answers = await run_stream(processor, [request_headers(CHAT, headers=AUTH), request_body(body)])
    assert upstream_body(answers[1])["tool_choice"] == {"type": "any"}
